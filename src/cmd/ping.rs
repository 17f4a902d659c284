//! `ping`: answers `ok`, so a client can check the socket end to end.

use super::{Outcome, Reply};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping;

impl Ping {
    pub fn answer(&self, reply: &mut impl Reply) -> Outcome {
        reply.done();
        Outcome::OK
    }
}
