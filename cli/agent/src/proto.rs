//! What the controller and agents say to each other. Every exchange is one QUIC bidirectional
//! stream whose first byte says what follows: `J` one JSON request (the sender finishes its
//! side; the answer is the whole of the other side), `P` one echo. Latency samples are QUIC
//! datagrams starting with `S`, which an agent sends straight back.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::facts::Facts;
use crate::unikernel::UnikernelBoot;

pub const ALPN: &[u8] = b"edgectl-agent/1";
pub const KIND_PING: u8 = b'P';
pub const KIND_JSON: u8 = b'J';
pub const KIND_ECHO_DATAGRAM: u8 = b'S';
/// Largest request the agent reads (a larger one is answered with an error): a user's WASI
/// module of up to about 12 MiB fits, base64 in JSON; a flood does not.
pub const MAX_REQUEST: usize = 16 << 20;
/// Largest answer the controller reads (a WASI outcome holds up to 1 MiB each of the
/// module's stdout and stderr, which JSON may escape to six bytes a byte).
pub const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub name: String,
    /// The peer agent's QUIC address.
    pub quic: SocketAddr,
    /// The peer's Zenoh endpoint, e.g. `tcp/10.0.0.2:7447`.
    pub zenoh: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Facts,
    /// Runs the built-in Wasm module and times its cold start.
    WasmColdStart,
    /// Runs a user's WASI module sandboxed (see `wasm`: its own unprivileged process, no host
    /// files, no network, a memory cap and the time limit).
    RunWasi {
        name: String,
        /// The module (binary or WAT text), base64.
        module_b64: String,
        args: Vec<String>,
        timeout_ms: u64,
    },
    /// Opens this agent's Zenoh session (peer mode, no scouting) and answers pings on it.
    ZenohOpen {
        me: String,
        listen: String,
        connect: Vec<String>,
    },
    /// Closes this agent's Zenoh session, and with it its listener (it also closes when the
    /// connection that opened it does).
    ZenohClose,
    /// Measures round trips to every peer, over QUIC and (when a session is open) Zenoh.
    Matrix {
        me: String,
        peers: Vec<Peer>,
        samples: u32,
        zenoh: bool,
    },
    /// `ray status` on this node, against the head's GCS address when given.
    RayStatus {
        #[serde(default)]
        address: Option<String>,
    },
    /// From the Ray head: one actor per alive node, timed calls to each, and a batch of tasks
    /// on the head alone and on every node (see `ray_probe`); answered with `RayProbe`.
    RayProbe {
        #[serde(default)]
        address: Option<String>,
        samples: u32,
        scaling_s: f64,
    },
    /// Boots the built-in unikernel image under KVM `runs` times (see `unikernel`).
    UnikernelBoot {
        runs: u32,
    },
    /// Ends the agent (one started by `verify` for the run).
    Shutdown,
    /// Opens this agent's Zenoh session through the cluster's router: client mode, connected
    /// to `routers` only (no listener, no scouting), answering pings under keys of its own
    /// (see `zn_router`). It closes with the connection that opened it.
    ZenohRouterOpen {
        me: String,
        routers: Vec<String>,
    },
    /// Closes the session through the router.
    ZenohRouterClose,
    /// Round trips through the router to each of `peers` (nodes whose session is open);
    /// answered with `Pairs`.
    ZenohRouterPairs {
        peers: Vec<String>,
        samples: u32,
    },
    /// Runs a small WASI module `runs` times with each of the node's Wasm CLIs (`wasmtime`,
    /// `wasmedge`); answered with `WasmCli` (see `wasm_cli`).
    WasmCliColdStart {
        runs: u32,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    Facts(Box<Facts>),
    ColdStart(ColdStart),
    Wasi(WasiOutcome),
    Matrix {
        quic: Vec<PairStat>,
        zenoh: Vec<PairStat>,
    },
    Ray(RayFacts),
    RayProbe(Box<crate::ray_probe::RayProbe>),
    UnikernelBoot(UnikernelBoot),
    Pairs {
        pairs: Vec<PairStat>,
    },
    WasmCli(crate::wasm_cli::WasmCli),
    Ok,
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColdStart {
    /// Compiling the module (not part of the cold start the target is about).
    pub compile_ms: f64,
    /// Instantiating it and making the first call.
    pub cold_start_ms: f64,
    pub result: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WasiOutcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// A trap or a load error, when the module did not run to an exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub elapsed_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PairStat {
    pub from: String,
    pub to: String,
    pub samples: u32,
    pub lost: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answered round trips (ms, ascending), for the report's distribution: see
    /// [`round_trips`]. Empty from an agent older than this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtt_ms: Vec<f64>,
}

impl PairStat {
    /// A pair not measured yet: no samples, no error.
    pub fn new(from: &str, to: &str) -> PairStat {
        PairStat {
            from: from.to_string(),
            to: to.to_string(),
            samples: 0,
            lost: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            error: None,
            rtt_ms: Vec::new(),
        }
    }
}

/// Most round trips a [`PairStat`] carries.
pub const MAX_RTT_SAMPLES: usize = 1000;

/// `sorted` round trips as a [`PairStat`] carries them: rounded to the microsecond, and beyond
/// [`MAX_RTT_SAMPLES`] that many evenly spaced ranks (the first and the last among them).
pub fn round_trips(sorted: &[f64]) -> Vec<f64> {
    let n = sorted.len();
    let k = n.min(MAX_RTT_SAMPLES);
    (0..k)
        .map(|i| {
            let at = if k < 2 { 0 } else { i * (n - 1) / (k - 1) };
            (sorted[at] * 1000.0).round() / 1000.0
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RayFacts {
    /// False when `ray` is not on PATH.
    pub present: bool,
    pub ok: bool,
    pub alive_nodes: u32,
    pub gpus: f64,
    pub output: String,
}

/// Nearest-rank percentile of samples in milliseconds (0 for none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn round_trips_keep_the_ends_and_at_most_the_cap() {
        assert!(round_trips(&[]).is_empty());
        assert_eq!(round_trips(&[0.123_456_7, 2.0]), [0.123, 2.0]);
        let v: Vec<f64> = (0..5000).map(|i| f64::from(i) / 1000.0).collect();
        let r = round_trips(&v);
        assert_eq!(r.len(), MAX_RTT_SAMPLES);
        assert_eq!((r[0], r[r.len() - 1]), (0.0, 4.999));
        assert!(r.windows(2).all(|w| w[0] <= w[1]));
    }
}
