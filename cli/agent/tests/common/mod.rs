//! An agent for node `n1` on loopback, in a thread of the test process, with its cluster's PKI:
//! what the agent tests talk to over real QUIC.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use edgectl_agent::pki::{self, Party, Pki};
use edgectl_agent::server::{self, AgentOptions, CA_FILE, CERT_FILE, KEY_FILE};

pub struct LoopbackAgent {
    /// Holds the PKI and the agent's state folder.
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub addr: SocketAddr,
    pub thread: std::thread::JoinHandle<Result<(), String>>,
}

/// Starts the agent with n1's key and certificate; it exits by itself after `exit_after`.
#[allow(dead_code)]
pub fn start(exit_after: Duration) -> LoopbackAgent {
    start_node("n1", exit_after)
}

/// Starts the agent of node `name`, with a cluster PKI of its own.
pub fn start_node(name: &str, exit_after: Duration) -> LoopbackAgent {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::open(&dir.path().join("pki"), "lab").unwrap();
    let node = pki.identity(Party::Node(name)).unwrap();
    let state = dir.path().join("agent");
    pki::write_private(&state.join(CA_FILE), pki.ca_pem.as_bytes()).unwrap();
    pki::write_private(&state.join(CERT_FILE), node.cert_pem.as_bytes()).unwrap();
    pki::write_private(&state.join(KEY_FILE), node.key_pem.as_bytes()).unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let thread = std::thread::spawn(move || {
        server::run(AgentOptions {
            listen: addr,
            state_dir: state,
            exit_after: Some(exit_after),
            wasi_runner: None,
        })
    });
    LoopbackAgent {
        dir,
        pki,
        addr,
        thread,
    }
}
