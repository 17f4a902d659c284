//! Feeds arbitrary bytes through the Redis face's parser as a connection reads them: any panic
//! is a bug, and no command may hand out more bytes than the input holds.
//!
//! cargo +nightly fuzz run resp_requests -- -max_total_time=600

#![no_main]

use libfuzzer_sys::fuzz_target;
use nearkv::fuzzing::parse_resp_stream;

fuzz_target!(|data: &[u8]| {
    let (commands, _error) = parse_resp_stream(data, 64 * 1024);
    let handed_out: usize = commands.iter().flatten().map(|arg| arg.len()).sum();
    assert!(handed_out <= data.len());
});
