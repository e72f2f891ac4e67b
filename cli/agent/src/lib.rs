//! The edgectl node agent: a QUIC server with mutual TLS on every node that reports facts,
//! runs Wasm and measures latency to its peers, and the protocol, client and PKI that the
//! controller (`edgectl-verify`) uses to talk to it. It depends on no deploy logic.

pub mod checks;
pub mod client;
pub mod facts;
pub mod gpu;
pub mod http3;
pub mod pki;
pub mod proto;
pub mod ray;
pub mod ray_probe;
pub mod server;
pub mod tls;
pub mod unikernel;
pub mod wasm;
pub mod wasm_cli;
#[cfg(feature = "zenoh")]
pub mod zn;
#[cfg(feature = "zenoh")]
pub mod zn_router;

pub use proto::{PairStat, Request, Response};

/// Whether this build's agent can open Zenoh sessions (the `zenoh` feature): `verify` measures
/// the Zenoh matrix only then, since the agents it starts are this same binary.
pub const ZENOH: bool = cfg!(feature = "zenoh");
