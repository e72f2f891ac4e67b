//! Fan-out: the controller (often a laptop far from the cluster) uploads each closure once, to
//! one node (the seed: the first in rollout order that needs it), and the cluster LAN carries
//! it on to the other nodes.
//!
//! The upload is a `nix-store --export` stream of every path some node lacks. The seed imports
//! it and, while it is still arriving, tees it over SSH into the `nix-store --import` of up to
//! `--parallel` peers, so the LAN copies overlap the controller's upload instead of following
//! it: on a slow controller link the whole cluster is served in about the time one node takes.
//! Nodes past that bound copy from the seed afterwards (`nix copy --to ssh://peer`, which never
//! sends a path the peer has). Why Nix over SSH with a cluster key edgectl generates rather than
//! a signed binary cache on the seed: no extra service, port or signing key on the nodes, and
//! every node already runs sshd.
//!
//! Each node's system closure is mostly shared packages plus a few per-host paths, so the
//! stream holds the union of all closures, restricted to what some node lacks, and every
//! receiver imports all of it: a path's references are then always valid before it (a peer
//! holds a few other hosts' paths, which the next garbage collection removes). Whether a node
//! got its closure is read back from the node, not inferred from the stream: a node without
//! it is copied from the seed, and without a seed, from the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgectl_model::Cluster;
use serde::Serialize;

use crate::event::{Event, Phase, Sender, State as Ev, emit};
use crate::host::{Host, argv};
use crate::nixcmd;
use crate::pool::parallel_map;
use crate::session::Session;

/// `--fanout`: whether closures spread over the cluster LAN, and whether a node may fall back
/// to a copy from the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fanout {
    /// Every node from the controller.
    Off,
    /// Over the LAN; a node the LAN cannot serve gets its copy from the controller, with a
    /// warning and the reason in the report.
    On,
    /// Over the LAN or not at all: such a node fails instead (on a slow controller link a
    /// fallback is the difference between minutes and an hour).
    Require,
}

/// Where a node's closure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// From the controller, as asked (`--fanout off`, or one node only).
    Controller,
    /// The seed: from the controller, once for the whole cluster.
    Seed,
    /// Teed from the seed's import while the upload was arriving.
    SeedStream,
    /// `nix copy` from the seed after the upload.
    SeedCopy,
    /// Nothing was missing.
    Held,
    /// Meant to come over the LAN, but came from the controller: see `fallback_reason`.
    ControllerFallback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub from: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

impl Delivery {
    fn from(from: Source, seed: Option<&Session>) -> Delivery {
        Delivery {
            from,
            seed: seed.map(|s| s.name.clone()),
            fallback_reason: None,
        }
    }
}

/// Each node's delivery, or why it has no closure.
pub type Deliveries = BTreeMap<String, Result<Delivery, String>>;

/// How long a peer may leave the stream unread while there is data for it (see [`RELAY`]).
pub const STALL: Duration = Duration::from_secs(20);

pub const CLUSTER_KEY: &str = "/nix/var/edgectl/cluster_key";
pub const KNOWN_HOSTS: &str = "/nix/var/edgectl/known_hosts";

/// What the cluster key may do on a peer, whatever command the seed asks for: import a store
/// stream, or serve `nix copy` (the seed's command only selects which). Root through `sudo -n`
/// where the login user is not root.
pub const SERVE: &str = include_str!("sh/serve_cluster_key.sh");

/// Lets the cluster key in, restricted to [`SERVE`]: `sh -c AUTHORIZE edgectl-authorize
/// PUBLIC_KEY SERVE`. Every step's failure is the script's (a key that did not land must not
/// look added); a file whose last line has no newline gets one first, so the key never glues
/// onto that line; an unrestricted line for the same key (older edgectl) is replaced.
pub const AUTHORIZE: &str = include_str!("sh/authorize_cluster_key.sh");

/// Takes the cluster key out again when the apply is done: `sh -c DEAUTHORIZE x PUBLIC_KEY`.
pub const DEAUTHORIZE: &str = include_str!("sh/deauthorize_cluster_key.sh");

fn closure_bytes(paths: &[String]) -> Option<u64> {
    let read: Result<BTreeMap<_, _>, String> = paths
        .iter()
        .map(|p| nixcmd::local_closure(p).map(|c| (p.clone(), c)))
        .collect();
    Closures(read.ok()?).bytes(paths)
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

/// Gets every session's closure onto its node: over the LAN through a seed when `mode` allows
/// and there are two or more, else straight from the controller.
pub fn copy_closures(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    c: &Cluster,
    state_dir: &Path,
    parallel: usize,
    mode: Fanout,
    tx: &Sender,
) -> Deliveries {
    if mode != Fanout::Off && needing.len() >= 2 {
        let out = distribute(
            rt,
            needing,
            c,
            state_dir,
            parallel,
            mode == Fanout::Require,
            tx,
        );
        forget_cluster_key(rt, needing, state_dir, parallel);
        return out;
    }
    let tx = tx.clone();
    parallel_map(rt, parallel, needing.to_vec(), move |s: Arc<Session>| {
        let r = copy_from_controller(&s, &tx).map(|()| Delivery::from(Source::Controller, None));
        (s.name.clone(), r)
    })
    .into_iter()
    .collect()
}

/// The cluster key lives on the nodes only while closures travel: off the seed, and out of
/// every peer's authorized_keys, once the copies are done (a leaked key would otherwise let
/// anyone import store paths into every node, for ever).
fn forget_cluster_key(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    state_dir: &Path,
    parallel: usize,
) {
    let Ok(public) = std::fs::read_to_string(state_dir.join("cluster_key.pub")) else {
        return;
    };
    let public = public.trim().to_string();
    let seed = needing[0].name.clone();
    parallel_map(rt, parallel, needing.to_vec(), move |s: Arc<Session>| {
        if s.name == seed {
            let _ = s
                .host
                .run(&argv(["rm", "-f", CLUSTER_KEY, KNOWN_HOSTS]), true);
        } else {
            let _ = s.host.run(
                &argv(["sh", "-c", DEAUTHORIZE, "edgectl-deauthorize", &public]),
                false,
            );
        }
    });
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

/// Runs as root on the seed with the export stream on stdin: `sh -c RELAY edgectl-relay STALL
/// [DEST PORT COMMAND]...` (COMMAND selects the import on the peer). The stream lands in a file
/// as it arrives, under /nix (where the closure has room anyway); the seed's import and every
/// peer read that file at their own pace (`tail --pid` ends when the writer has finished and
/// all is read), so a peer that stops reading holds up nobody. A watchdog drops a peer that
/// leaves data unread for STALL seconds while there was data to read (alive, not reading: a
/// hung import, a stuck disk); it then gets its copy another way. Prints
/// "peer N STATUS PATHS ERROR" per peer (STATUS: ssh's exit status, or `dropped`; PATHS: how
/// many store paths its import took) and
/// exits with the seed's own import status.
const RELAY: &str = include_str!("sh/relay_closure.sh");

/// Reads a list of store paths from stdin and prints those that are not valid on the node.
const INVALID: &str = "xargs -r nix-store --check-validity --print-invalid";

/// The paths of `closure` that this node lacks; all of them when it cannot say.
fn lacking(h: &dyn Host, closure: &[String]) -> Vec<String> {
    let list = closure.join("\n") + "\n";
    match h.run_with_stdin(&argv(["sh", "-c", INVALID]), true, &mut list.as_bytes()) {
        Ok(o) if o.ok() => o.stdout.lines().map(String::from).collect(),
        _ => closure.to_vec(),
    }
}

fn holds(h: &dyn Host, paths: &[String]) -> bool {
    let mut a = argv(["nix-store", "--check-validity"]);
    a.extend(paths.iter().cloned());
    h.run(&a, true).is_ok_and(|o| o.ok())
}

/// The controller's view of each system's closure, read once (every `nix path-info` costs tens
/// of milliseconds of the CPU the copies need).
struct Closures(BTreeMap<String, Vec<nixcmd::PathInfo>>);

impl Closures {
    fn read(rt: &tokio::runtime::Runtime, parallel: usize, systems: &[String]) -> Closures {
        let got = parallel_map(rt, parallel, systems.to_vec(), |s: String| {
            let c = nixcmd::local_closure(&s);
            (s, c)
        });
        Closures(
            got.into_iter()
                .filter_map(|(s, c)| c.ok().map(|c| (s, c)))
                .collect(),
        )
    }

    fn complete(&self, systems: &[String]) -> bool {
        systems.iter().all(|s| self.0.contains_key(s))
    }

    fn paths(&self, systems: &[String]) -> BTreeMap<&str, u64> {
        systems
            .iter()
            .filter_map(|s| self.0.get(s))
            .flatten()
            .map(|i| (i.path.as_str(), i.nar_size))
            .collect()
    }

    fn bytes(&self, systems: &[String]) -> Option<u64> {
        self.complete(systems)
            .then(|| self.paths(systems).values().sum())
    }
}

/// A peer as the seed reaches it over the LAN.
struct Peer {
    s: Arc<Session>,
    addr: String,
    port: u16,
    user: String,
}

/// Streams `paths` from the controller through the seed into `live`; returns the relay's
/// report (stdout and stderr) or why it broke.
fn relay(seed: &Session, live: &[Peer], paths: &[String]) -> Result<String, String> {
    let mut a = argv(["sh", "-c", RELAY, "edgectl-relay"]);
    a.push(STALL.as_secs().to_string());
    for p in live {
        // The peer's forced command (SERVE) runs the import, as root; this only selects it.
        a.extend([
            format!("{}@{}", p.user, p.addr),
            p.port.to_string(),
            "nix-store --import".to_string(),
        ]);
    }
    let mut export = std::process::Command::new("nix-store")
        .arg("--export")
        .args(paths)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nix-store --export: {e}"))?;
    let out = export.stdout.take().expect("piped");
    let r = seed.host.run_piped(&a, true, out.into());
    let ex = export.wait_with_output();
    // The seed's side first: when it broke off, the export only saw a closed pipe.
    match r {
        Err(e) => Err(e.to_string()),
        Ok(o) if !o.ok() => Err(format!("import on the seed: {}", o.stderr.trim())),
        Ok(o) => match ex {
            Ok(x) if x.status.success() => Ok(o.stdout),
            Ok(x) => Err(format!(
                "nix-store --export: {}",
                String::from_utf8_lossy(&x.stderr).trim()
            )),
            Err(e) => Err(format!("nix-store --export: {e}")),
        },
    }
}

/// Distributes every needing node's system; returns the nodes whose copy failed, with why.
pub fn distribute(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    c: &Cluster,
    state_dir: &Path,
    parallel: usize,
    require: bool,
    tx: &Sender,
) -> Deliveries {
    let mut out = Deliveries::new();
    let seed = needing[0].clone();
    let fb = Fallback {
        rt,
        parallel,
        require,
        tx,
    };
    let union: Vec<String> = needing
        .iter()
        .map(|s| s.system.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let peers: Vec<Peer> = needing[1..]
        .iter()
        .filter_map(|p| {
            c.node(&p.name).map(|n| Peer {
                s: p.clone(),
                addr: edgectl_render::host::lan_address(n),
                port: n.port,
                user: n.user.clone(),
            })
        })
        .collect();
    let closures = Closures::read(rt, parallel, &union);
    let bytes = closures.bytes(&union);
    let closure: Vec<String> = closures
        .paths(&union)
        .keys()
        .map(|p| p.to_string())
        .collect();
    let seeded = (|| {
        if !closures.complete(&union) {
            return Err("cannot read the closures on the controller".to_string());
        }
        let (private, public) = ensure_cluster_key(state_dir)?;
        seed.host
            .upload(CLUSTER_KEY, &private, 0o600)
            .map_err(|e| e.to_string())?;
        let mut known = String::new();
        for p in &peers {
            if let Some(k) = &p.s.key {
                let h = if p.port == 22 {
                    p.addr.clone()
                } else {
                    format!("[{}]:{}", p.addr, p.port)
                };
                known.push_str(&format!("{h} {}\n", k.public));
            }
        }
        seed.host
            .upload(KNOWN_HOSTS, known.as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        Ok(public)
    })();
    let public = match seeded {
        Ok(p) => p,
        Err(e) => {
            let why = format!("seeding {} failed: {e}", seed.name);
            seed_failed(&seed, e, tx, &mut out);
            fb.run(
                peers.into_iter().map(|p| (p, why.clone())).collect(),
                &mut out,
            );
            return out;
        }
    };
    // Every node says what it lacks and lets the seed in, all at once.
    let asked = parallel_map(rt, parallel, needing.to_vec(), {
        let (closure, public, seed_name) = (closure.clone(), public.clone(), seed.name.clone());
        move |s: Arc<Session>| {
            let lacks = lacking(s.host.as_ref(), &closure);
            let authorized = s.name == seed_name || authorize(s.host.as_ref(), &public).is_ok();
            (s.name.clone(), lacks, authorized)
        }
    });
    let mut stream = BTreeSet::new();
    let mut unauthorized = BTreeSet::new();
    for (name, lacks, ok) in asked {
        stream.extend(lacks);
        if !ok {
            unauthorized.insert(name);
        }
    }
    let stream: Vec<String> = stream.into_iter().collect();
    let (live, late): (Vec<Peer>, Vec<Peer>) = {
        let mut live = Vec::new();
        let mut late = Vec::new();
        for p in peers {
            if live.len() < parallel.max(1) && !unauthorized.contains(&p.s.name) {
                live.push(p);
            } else {
                late.push(p);
            }
        }
        (live, late)
    };
    emit_bytes(
        tx,
        &seed.name,
        Ev::Started,
        format!(
            "seed: from controller, all {} closures{}, relayed to {} peer(s) as it arrives",
            union.len(),
            mib(bytes),
            live.len()
        ),
        bytes,
    );
    for p in &live {
        let b = closures.bytes(std::slice::from_ref(&p.s.system));
        emit_bytes(
            tx,
            &p.s.name,
            Ev::Started,
            format!("from {} over the LAN{}", seed.name, mib(b)),
            b,
        );
    }
    let report = if stream.is_empty() {
        Ok(String::new())
    } else {
        relay(&seed, &live, &stream)
    };
    // A relay that exited 0 imported the whole stream on the seed; otherwise ask the seed.
    if report.is_ok() || holds(seed.host.as_ref(), &union) {
        emit_bytes(
            tx,
            &seed.name,
            Ev::Ok,
            "seed holds every closure".into(),
            bytes,
        );
        out.insert(seed.name.clone(), Ok(Delivery::from(Source::Seed, None)));
    } else {
        let e = report
            .clone()
            .err()
            .unwrap_or_else(|| "the seed lacks closures after the upload".into());
        let why = format!("the seed {} failed: {e}", seed.name);
        seed_failed(&seed, e, tx, &mut out);
        let rest: Vec<Peer> = live.into_iter().chain(late).collect();
        let (got, missing): (Vec<Peer>, Vec<Peer>) = rest
            .into_iter()
            .partition(|p| holds(p.s.host.as_ref(), std::slice::from_ref(&p.s.system)));
        for p in got {
            holds_after_relay(&p, tx);
            out.insert(
                p.s.name.clone(),
                Ok(Delivery::from(Source::SeedStream, Some(&seed))),
            );
        }
        fb.run(
            missing.into_iter().map(|p| (p, why.clone())).collect(),
            &mut out,
        );
        return out;
    }
    // The relay's word on each peer: "peer N STATUS PATHS ERROR".
    let said = |i: usize| -> (Option<i32>, Option<usize>, String) {
        let tag = format!("peer {} ", i + 1);
        match report
            .as_ref()
            .map(|r| r.lines().find_map(|l| l.strip_prefix(&tag)))
        {
            Ok(Some(l)) => {
                let (code, rest) = l.split_once(' ').unwrap_or((l, ""));
                let (paths, err) = rest.split_once(' ').unwrap_or((rest, ""));
                (
                    code.parse().ok(),
                    paths.parse().ok(),
                    err.trim().to_string(),
                )
            }
            Ok(None) => (None, None, "no report".into()),
            Err(e) => (None, None, e.clone()),
        }
    };
    let sizes = closures.paths(&union);
    let stream_bytes: u64 = stream.iter().filter_map(|p| sizes.get(p.as_str())).sum();
    let mut again = Vec::new();
    let mut direct = Vec::new();
    for (i, p) in live.into_iter().enumerate() {
        // Status 0 and every path imported: the peer's import took the whole stream, which
        // holds all it lacked, while the seed was receiving it.
        let (code, paths, err) = said(i);
        if code == Some(0) && paths == Some(stream.len()) {
            emit_bytes(
                tx,
                &p.s.name,
                Ev::Ok,
                format!(
                    "streamed from {} during the upload: {} paths{}",
                    seed.name,
                    stream.len(),
                    mib(Some(stream_bytes))
                ),
                Some(stream_bytes),
            );
            out.insert(
                p.s.name.clone(),
                Ok(Delivery::from(Source::SeedStream, Some(&seed))),
            );
            continue;
        }
        if stream.is_empty() {
            emit(
                tx,
                &p.s.name,
                Phase::Copy,
                Ev::Ok,
                "already held every path",
            );
            out.insert(p.s.name.clone(), Ok(Delivery::from(Source::Held, None)));
            continue;
        }
        if holds(p.s.host.as_ref(), std::slice::from_ref(&p.s.system)) {
            holds_after_relay(&p, tx);
            out.insert(
                p.s.name.clone(),
                Ok(Delivery::from(Source::SeedStream, Some(&seed))),
            );
            continue;
        }
        // 255: the seed's SSH could not reach or log in to the peer, which a `nix copy` from
        // the seed would only repeat.
        let next = if code == Some(255) {
            "copying from the controller"
        } else {
            "copying again"
        };
        emit(
            tx,
            &p.s.name,
            Phase::Copy,
            Ev::Progress,
            format!("the relay did not reach it ({err}); {next}"),
        );
        if code == Some(255) {
            let why = format!("{} could not log in to it over SSH: {err}", seed.name);
            direct.push((p, why));
        } else {
            again.push(p);
        }
    }
    again.extend(late);
    fb.run(direct, &mut out);
    let (seed2, tx2, closures) = (seed.clone(), tx.clone(), Arc::new(closures));
    let copied = parallel_map(rt, parallel, again, move |p: Peer| {
        let r = copy_via_seed(&seed2, &p, &public, &closures, &tx2);
        (p, r)
    });
    let mut failed = Vec::new();
    for (p, r) in copied {
        match r {
            Ok(()) => {
                out.insert(
                    p.s.name.clone(),
                    Ok(Delivery::from(Source::SeedCopy, Some(&seed))),
                );
            }
            Err(e) => failed.push((p, format!("the copy from {} failed: {e}", seed.name))),
        }
    }
    fb.run(failed, &mut out);
    out
}

/// Peers the LAN could not serve, each with the reason: copied from the controller with a
/// warning, or, with `--fanout require`, failed without a copy.
struct Fallback<'a> {
    rt: &'a tokio::runtime::Runtime,
    parallel: usize,
    require: bool,
    tx: &'a Sender,
}

impl Fallback<'_> {
    fn run(&self, peers: Vec<(Peer, String)>, out: &mut Deliveries) {
        let mut go = Vec::new();
        for (p, why) in peers {
            if self.require {
                let e = format!(
                    "fan-out is required, but {why}; not copied from the controller (`--fanout on` allows that)"
                );
                emit(self.tx, &p.s.name, Phase::Copy, Ev::Failed, e.clone());
                out.insert(p.s.name.clone(), Err(e));
            } else {
                emit(
                    self.tx,
                    &p.s.name,
                    Phase::Copy,
                    Ev::Warning,
                    format!("copying from the controller instead of over the LAN: {why}"),
                );
                go.push((p, why));
            }
        }
        let tx = self.tx.clone();
        for (name, why, r) in parallel_map(
            self.rt,
            self.parallel,
            go,
            move |(p, why): (Peer, String)| {
                let r = copy_from_controller(&p.s, &tx);
                (p.s.name.clone(), why, r)
            },
        ) {
            out.insert(
                name,
                r.map(|()| Delivery {
                    from: Source::ControllerFallback,
                    seed: None,
                    fallback_reason: Some(why),
                }),
            );
        }
    }
}

fn seed_failed(seed: &Session, e: String, tx: &Sender, out: &mut Deliveries) {
    emit(
        tx,
        &seed.name,
        Phase::Copy,
        Ev::Failed,
        format!("seeding failed: {e}; falling back to per-node copies"),
    );
    out.insert(seed.name.clone(), Err(e));
}

fn authorize(h: &dyn Host, public: &str) -> Result<(), String> {
    h.run(
        &argv(["sh", "-c", AUTHORIZE, "edgectl-authorize", public, SERVE]),
        false,
    )
    .map_err(|e| e.to_string())
    .and_then(|o| if o.ok() { Ok(()) } else { Err(o.stderr) })
}

/// A peer the relay did not (fully) report on that holds its system anyway: nothing was sent
/// to it after the stream, and how much of the stream it took is unknown.
fn holds_after_relay(p: &Peer, tx: &Sender) {
    emit(
        tx,
        &p.s.name,
        Phase::Copy,
        Ev::Ok,
        "holds its system after the relay",
    );
}

/// One peer from the seed with `nix copy` (only what it lacks).
fn copy_via_seed(
    seed: &Session,
    p: &Peer,
    public: &str,
    closures: &Closures,
    tx: &Sender,
) -> Result<(), String> {
    let bytes = closures.bytes(std::slice::from_ref(&p.s.system));
    emit_bytes(
        tx,
        &p.s.name,
        Ev::Started,
        format!("from {} over the LAN{}", seed.name, mib(bytes)),
        bytes,
    );
    let via_seed = authorize(p.s.host.as_ref(), public).and_then(|()| {
        let mut url = format!("ssh://{}@{}", p.user, p.addr);
        if p.user != "root" {
            url.push_str("?remote-program=sudo%20-n%20nix-store");
        }
        // AES-GCM first: server CPUs have AES instructions, and the LAN copy is bound by the
        // cipher, not the wire.
        let opts = format!(
            "NIX_SSHOPTS=-p {} -i {CLUSTER_KEY} -o IdentitiesOnly=yes -o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 -o Ciphers=aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
            p.port
        );
        let cmd = argv([
            "env",
            &opts,
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            &url,
            &p.s.system,
        ]);
        match seed.host.run(&cmd, true) {
            Ok(o) if o.ok() => Ok(()),
            Ok(o) => Err(o.stderr.trim().to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    match via_seed {
        Ok(()) => {
            emit_bytes(
                tx,
                &p.s.name,
                Ev::Ok,
                format!("copied from {} after the upload", seed.name),
                bytes,
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::{AUTHORIZE, DEAUTHORIZE, SERVE};
    use std::process::Command;

    fn authorize(home: &std::path::Path, key: &str) -> std::process::Output {
        Command::new("sh")
            .args(["-c", AUTHORIZE, "edgectl-authorize", key, SERVE])
            .env("HOME", home)
            .output()
            .unwrap()
    }

    #[test]
    fn the_cluster_key_lands_once_on_a_line_of_its_own_or_the_script_fails() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join(".ssh/authorized_keys");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        // A user's file whose last line has no newline.
        std::fs::write(&f, "ssh-ed25519 AAAAuser user@laptop").unwrap();
        for _ in 0..2 {
            assert!(
                authorize(t.path(), "ssh-ed25519 AAAAcluster edgectl")
                    .status
                    .success()
            );
        }
        let serve = t.path().join(".ssh/edgectl-serve");
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!(
                "ssh-ed25519 AAAAuser user@laptop\nrestrict,command=\"/bin/sh '{}'\" ssh-ed25519 AAAAcluster edgectl\n",
                serve.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&serve).unwrap(), SERVE);
        // The forced command runs only store copies, whatever the client asks for.
        let o = Command::new("sh")
            .arg(&serve)
            .env("SSH_ORIGINAL_COMMAND", "id; cat /etc/shadow")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("only Nix store copies"));
        // An unrestricted line from an older edgectl is replaced, not kept beside it.
        std::fs::write(
            &f,
            "ssh-ed25519 AAAAcluster edgectl\nssh-ed25519 AAAAuser u\n",
        )
        .unwrap();
        assert!(
            authorize(t.path(), "ssh-ed25519 AAAAcluster edgectl")
                .status
                .success()
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.matches("AAAAcluster").count(), 1, "{text}");
        assert!(
            text.lines()
                .all(|l| !l.contains("AAAAcluster") || l.starts_with("restrict,command="))
        );
        // And taken out again, leaving the user's own keys.
        let o = Command::new("sh")
            .args(["-c", DEAUTHORIZE, "x", "ssh-ed25519 AAAAcluster edgectl"])
            .env("HOME", t.path())
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            "ssh-ed25519 AAAAuser u\n"
        );
        assert!(!serve.exists());
        // Where the key cannot be written, the script says so.
        let t2 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t2.path().join(".ssh/authorized_keys")).unwrap();
        let o = authorize(t2.path(), "ssh-ed25519 AAAAcluster edgectl");
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("authorized_keys"));
    }
}
