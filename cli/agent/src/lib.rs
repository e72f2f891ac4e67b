//! The edgectl agent and `verify`: a QUIC server with mutual TLS on every node that reports
//! facts, runs Wasm and measures latency to its peers; and the controller side that uploads and
//! starts it, asks every agent, and turns the answers into checks and a report.

pub mod checks;
pub mod client;
pub mod facts;
pub mod pki;
pub mod proto;
pub mod ray;
pub mod report;
pub mod server;
pub mod tls;
pub mod verify;
pub mod wasm;
#[cfg(feature = "zenoh")]
pub mod zn;

pub use proto::{PairStat, Request, Response};
pub use verify::{Report, VerifyOptions};
