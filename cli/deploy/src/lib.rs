//! edgectl's deploy engine: a small `Host` trait (SSH, fakes), a `Goal` that maps onto
//! `switch-to-configuration`, bounded parallel rollout with node-side confirmation and
//! rollback, state with pinned host keys, and progress as events with two renderers.

// A node that cannot be opened returns its full result (with its host key) as the error, once
// per node per run: its size does not matter.
#![allow(clippy::result_large_err)]

/// The node's state folder (root-only, survives reboots), spelled once: a literal so that
/// paths under it and the node scripts can be put together at compile time.
macro_rules! state_dir {
    () => {
        "/nix/var/edgectl"
    };
}

/// The ciphers and key exchanges every OpenSSH connection edgectl opens for data prefers (the
/// controller's `ssh` and `nix copy` children, and the relay and probe between nodes), spelled
/// once: AES-GCM (server CPUs have AES instructions; OpenSSH's default ChaCha20-Poly1305 costs
/// several times as much) and curve25519 (OpenSSH 9's default sntrup761 hybrid costs about
/// 0.13 s of client CPU per connection). Explicit lists of names every OpenSSH since 7.4
/// knows, not `^` (which OpenSSH before 8.2 rejects).
macro_rules! ssh_ciphers {
    () => {
        "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-ctr"
    };
}
macro_rules! ssh_kex {
    () => {
        "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,diffie-hellman-group14-sha256"
    };
}

/// A node-side program from `src/sh` with `EDGECTL_STATE` set on its first line, so that the
/// scripts name the state folder through that variable and never spell it.
macro_rules! node_script {
    ($file:literal) => {
        concat!("EDGECTL_STATE=", state_dir!(), "\n", include_str!($file))
    };
}

/// Where a seed or inner node of the fan-out keeps the cluster key and the peers' host keys.
macro_rules! cluster_key_path {
    () => {
        concat!(state_dir!(), "/cluster_key")
    };
}
macro_rules! cluster_known_hosts_path {
    () => {
        concat!(state_dir!(), "/known_hosts")
    };
}

/// The OpenSSH options of every node-to-node connection (the relay, the LAN probe, the seed's
/// `nix copy` to a peer), less the port, spelled once: the cluster key only, the peers' pinned
/// host keys, no prompt, the same liveness limits as the controller's connections, and the
/// cheap ciphers. Words without spaces or quotes, so that a shell may split them.
macro_rules! cluster_ssh_options {
    () => {
        concat!(
            "-i ",
            cluster_key_path!(),
            " -o IdentitiesOnly=yes -o UserKnownHostsFile=",
            cluster_known_hosts_path!(),
            " -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10",
            " -o ServerAliveInterval=5 -o ServerAliveCountMax=6",
            " -o Ciphers=",
            ssh_ciphers!(),
            " -o KexAlgorithms=",
            ssh_kex!()
        )
    };
}

/// [`node_script`] for a program that opens SSH connections to other nodes:
/// `EDGECTL_SSH` set too, to [`cluster_ssh_options`].
macro_rules! node_ssh_script {
    ($file:literal) => {
        concat!(
            "EDGECTL_SSH='",
            cluster_ssh_options!(),
            "'\n",
            node_script!($file)
        )
    };
}

pub mod activate;
pub mod apply;
pub mod boot_gate;
pub mod day2;
pub mod event;
pub mod facts;
pub mod fake;
pub mod fanout;
pub mod host;
pub mod install;
pub mod install_state;
pub mod login_key;
mod mux;
pub mod nixcmd;
pub mod node_build;
pub mod nodenix;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod quote;
pub mod report;
pub mod run;
pub mod secrets;
pub mod select;
pub mod session;
pub mod state;
pub mod stop;

pub use activate::Goal;
pub use apply::apply;
pub use plan::plan;
pub use report::{ApplyReport, NodeOutcome, NodeResult, Plan};
pub use run::{BuildOn, EngineError, Options, Run};
