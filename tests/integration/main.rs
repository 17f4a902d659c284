//! Integration tests: nearkv against real nats-server processes on loopback.
//! Run them with ./scripts/test.sh, which installs nats-server and nats-py first.

mod harness;

mod access;
mod auth;
mod bench;
mod cas;
mod cli;
mod cluster;
mod consistency;
mod failover;
mod faults;
mod fleet;
mod freshness;
mod history;
mod interop;
mod limits;
mod operability;
mod ops;
mod outage;
mod raw_socket;
mod resp;
mod warm;
