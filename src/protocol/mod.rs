//! Protocol v1 (docs/PROTOCOL.md): length-prefixed MessagePack maps over a Unix socket.
//!
//! Shared by the server and the client so the two cannot drift apart.

pub mod frame;
pub mod msgpack;
pub mod request;
pub mod response;
pub mod types;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use request::Request;
pub use types::{
    BucketStatus, Consistency, Entry, Freshness, Operation, ReadOptions, WriteOptions,
};
