//! The controller side of `edgectl verify`: make sure every selected node runs an agent (upload
//! and start one over SSH where needed), ask every agent over QUIC, and turn the answers into
//! checks and a report. The node daemon itself is `edgectl-agent`, which does not depend on
//! deploy; this crate does.

pub mod checks;
pub mod measured;
pub mod ray_probe;
pub mod report;
pub mod svg;
pub mod unikernel;
pub mod verify;
pub mod wasm_cli;
pub mod zenoh_router;

pub use verify::{Report, VerifyOptions};
