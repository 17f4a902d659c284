//! Feeds arbitrary bytes through what the sidecar does with a client's bytes: split them into
//! frames (the length-prefix check), parse each frame as a request, and encode the answer a
//! request would get. Any panic is a bug: a client must never be able to crash the sidecar.
//!
//! cargo +nightly fuzz run frames_and_requests -- -max_total_time=600

#![no_main]

use libfuzzer_sys::fuzz_target;
use nearkv::protocol::frame::{check, FrameCheck};
use nearkv::protocol::request::{encode, parse};
use nearkv::protocol::response::encode_error;

const MAX_FRAME: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The bytes as a stream of frames, as a connection reads them.
    let mut rest = data;
    loop {
        match check(rest, MAX_FRAME) {
            FrameCheck::Complete(len) => {
                let body = &rest[4..4 + len];
                answer(body);
                rest = &rest[4 + len..];
            }
            FrameCheck::Incomplete | FrameCheck::TooLarge(_) => break,
        }
    }
    // And the bytes as one frame body.
    answer(data);
});

/// Parses a body; a request that parses must encode back to a frame that parses to the same
/// request, and an error must encode into a response frame.
fn answer(body: &[u8]) {
    match parse(body) {
        Ok((id, request)) => {
            let mut frame = Vec::new();
            encode(id, &request, &mut frame);
            let again = parse(&frame[4..]).expect("an encoded request parses");
            assert_eq!(again, (id, request));
        }
        Err(err) => {
            let mut frame = Vec::new();
            encode_error(&mut frame, err.id, &err.error);
            assert!(!err.error.message.is_empty());
        }
    }
}
