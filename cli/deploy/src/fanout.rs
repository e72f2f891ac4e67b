//! Fan-out: the controller (often a laptop far from the cluster) uploads each closure once, to
//! one node (the seed: the first in rollout order that needs it); the seed then copies to the
//! other nodes over the cluster LAN.
//!
//! Why Nix over SSH between nodes (with a cluster key edgectl generates) rather than a signed
//! binary cache on the seed: it needs no extra service, port or signing key on the nodes, works
//! with the legacy `ssh://` store that already carries the controller's copies (no signatures
//! needed when pushing as root), and every node already runs sshd. The seed pushes
//! (`nix copy --to ssh://peer`) so paths a peer already has are never sent.
//!
//! Each node's system closure is mostly shared packages plus a few per-host paths, so the seed
//! receives the union of all closures and serves every peer itself; peers do not serve each
//! other (a peer lacks the others' per-host paths). If the seed fails, each remaining node gets
//! its closure from the controller instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use edgectl_model::Cluster;

use crate::engine::{Session, parallel_map};
use crate::event::{Event, Phase, Sender, State as Ev, emit};
use crate::host::{Host, argv};
use crate::nixcmd;

pub const CLUSTER_KEY: &str = "/nix/var/edgectl/cluster_key";
pub const KNOWN_HOSTS: &str = "/nix/var/edgectl/known_hosts";

/// Adds the cluster key to the login user's authorized_keys, once.
const AUTHORIZE: &str = r#"k=$1; d="$HOME/.ssh"; f="$d/authorized_keys"
mkdir -p "$d" && chmod 700 "$d" || exit 1
grep -qxF "$k" "$f" 2>/dev/null || printf '%s\n' "$k" >> "$f"
chmod 600 "$f"
"#;

fn closure_bytes(paths: &[String]) -> Option<u64> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for p in paths {
        for i in nixcmd::local_closure(p).ok()? {
            if seen.insert(i.path.clone()) {
                total += i.nar_size;
            }
        }
    }
    Some(total)
}

fn emit_bytes(tx: &Sender, node: &str, state: Ev, message: String, bytes: Option<u64>) {
    let _ = tx.send(Event {
        node: node.into(),
        phase: Phase::Copy,
        state,
        message,
        bytes,
    });
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!(" ({:.1} MiB)", b as f64 / 1048576.0))
        .unwrap_or_default()
}

/// The plain per-node copy: controller to node.
pub fn copy_from_controller(s: &Session, tx: &Sender) -> Result<(), String> {
    let bytes = closure_bytes(std::slice::from_ref(&s.system));
    emit_bytes(
        tx,
        &s.name,
        Ev::Started,
        format!("from controller{}", mib(bytes)),
        bytes,
    );
    match s.host.copy_closure(std::slice::from_ref(&s.system)) {
        Ok(()) => {
            emit_bytes(tx, &s.name, Ev::Ok, "copied from controller".into(), bytes);
            Ok(())
        }
        Err(e) => {
            emit(tx, &s.name, Phase::Copy, Ev::Failed, e.clone());
            Err(e)
        }
    }
}

/// The cluster-internal SSH key, created on first use beside the state.
pub fn ensure_cluster_key(state_dir: &Path) -> Result<(Vec<u8>, String), String> {
    let key = state_dir.join("cluster_key");
    if !key.exists() {
        std::fs::create_dir_all(state_dir).map_err(|e| e.to_string())?;
        let o = std::process::Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "edgectl-cluster",
                "-f",
            ])
            .arg(&key)
            .output()
            .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "ssh-keygen: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    let private = std::fs::read(&key).map_err(|e| format!("{}: {e}", key.display()))?;
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| format!("{}.pub: {e}", key.display()))?;
    Ok((private, public.trim().to_string()))
}

/// Distributes every needing node's system; returns the nodes whose copy failed, with why.
pub fn distribute(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    c: &Cluster,
    state_dir: &Path,
    parallel: usize,
    tx: &Sender,
) -> BTreeMap<String, String> {
    let mut errors = BTreeMap::new();
    let seed = needing[0].clone();
    let union: Vec<String> = needing
        .iter()
        .map(|s| s.system.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let bytes = closure_bytes(&union);
    emit_bytes(
        tx,
        &seed.name,
        Ev::Started,
        format!(
            "seed: from controller, all {} closures{}",
            union.len(),
            mib(bytes)
        ),
        bytes,
    );
    let seeded = seed.host.copy_closure(&union).and_then(|()| {
        let (private, public) = ensure_cluster_key(state_dir)?;
        seed.host
            .upload(CLUSTER_KEY, &private, 0o600)
            .map_err(|e| e.to_string())?;
        let mut known = String::new();
        for p in &needing[1..] {
            if let (Some(k), Some(n)) = (&p.key, c.node(&p.name)) {
                let addr = edgectl_render::host::lan_address(n);
                let h = if n.port == 22 {
                    addr
                } else {
                    format!("[{addr}]:{}", n.port)
                };
                known.push_str(&format!("{h} {}\n", k.public));
            }
        }
        seed.host
            .upload(KNOWN_HOSTS, known.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        Ok(public)
    });
    let public = match seeded {
        Ok(p) => {
            emit_bytes(
                tx,
                &seed.name,
                Ev::Ok,
                "seed holds every closure".into(),
                bytes,
            );
            p
        }
        Err(e) => {
            emit(
                tx,
                &seed.name,
                Phase::Copy,
                Ev::Failed,
                format!("seeding failed: {e}; falling back to per-node copies"),
            );
            errors.insert(seed.name.clone(), e);
            let rest: Vec<Arc<Session>> = needing[1..].to_vec();
            let tx2 = tx.clone();
            for (n, r) in parallel_map(rt, parallel, rest, move |s: Arc<Session>| {
                (s.name.clone(), copy_from_controller(&s, &tx2))
            }) {
                if let Err(e) = r {
                    errors.insert(n, e);
                }
            }
            return errors;
        }
    };
    let peers: Vec<(Arc<Session>, String, u16, String)> = needing[1..]
        .iter()
        .filter_map(|p| {
            c.node(&p.name).map(|n| {
                (
                    p.clone(),
                    edgectl_render::host::lan_address(n),
                    n.port,
                    n.user.clone(),
                )
            })
        })
        .collect();
    let (seed2, tx2) = (seed.clone(), tx.clone());
    let results = parallel_map(rt, parallel, peers, move |(peer, addr, port, user)| {
        let bytes = closure_bytes(std::slice::from_ref(&peer.system));
        emit_bytes(
            &tx2,
            &peer.name,
            Ev::Started,
            format!("from {} over the LAN{}", seed2.name, mib(bytes)),
            bytes,
        );
        let via_seed = peer
            .host
            .run(&argv(["sh", "-c", AUTHORIZE, "edgectl-authorize", &public]), false)
            .map_err(|e| e.to_string())
            .and_then(|o| if o.ok() { Ok(()) } else { Err(o.stderr) })
            .and_then(|()| {
                let mut url = format!("ssh://{user}@{addr}");
                if user != "root" {
                    url.push_str("?remote-program=sudo%20-n%20nix-store");
                }
                // AES-GCM first: server CPUs have AES instructions, and the LAN copy is bound by
                // the cipher, not the wire.
                let opts = format!(
                    "NIX_SSHOPTS=-p {port} -i {CLUSTER_KEY} -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 -o Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com"
                );
                let cmd = argv(["env", &opts, "nix", "--extra-experimental-features", "nix-command", "copy", "--to", &url, &peer.system]);
                match seed2.host.run(&cmd, true) {
                    Ok(o) if o.ok() => Ok(()),
                    Ok(o) => Err(o.stderr.trim().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            });
        match via_seed {
            Ok(()) => {
                emit_bytes(
                    &tx2,
                    &peer.name,
                    Ev::Ok,
                    format!("copied from {}", seed2.name),
                    bytes,
                );
                (peer.name.clone(), Ok(()))
            }
            Err(e) => {
                emit(
                    &tx2,
                    &peer.name,
                    Phase::Copy,
                    Ev::Progress,
                    format!(
                        "from {} failed ({e}); copying from the controller",
                        seed2.name
                    ),
                );
                (peer.name.clone(), copy_from_controller(&peer, &tx2))
            }
        }
    });
    for (n, r) in results {
        if let Err(e) = r {
            errors.insert(n, e);
        }
    }
    errors
}
