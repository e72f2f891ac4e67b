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
use std::time::{Duration, Instant};

use edgectl_model::Cluster;
use serde::Serialize;

use crate::event::{Event, Phase, Sender, State as Ev, emit};
use crate::host::{Host, argv};
use crate::nixcmd;
use crate::pool::parallel_map;
use crate::session::Session;
use crate::stop::Stop;

/// `--fanout`: whether closures spread over the cluster LAN, and whether a node may fall back
/// to a copy from the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fanout {
    /// Measures the controller's link to the first node: behind a slow one, `on` at once;
    /// otherwise the direct copies start, and the first node's link to a peer over the cluster
    /// LAN is measured meanwhile: when fan-out is predicted well ahead ([`AUTO_MARGIN`]), the
    /// copies still running are stopped and the rest fan out. The report says which and why.
    Auto,
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
    /// Built by the node itself from derivations the controller sent (`--build-on nodes`).
    BuiltOnNode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub from: Source,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// What `--fanout auto` chose, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto: Option<String>,
}

impl Delivery {
    pub(crate) fn from(from: Source, seed: Option<&Session>) -> Delivery {
        Delivery {
            from,
            seed: seed.map(|s| s.name.clone()),
            fallback_reason: None,
            auto: None,
        }
    }

    /// From the controller, though meant to come over the LAN, for `why`.
    fn fallback(why: String) -> Delivery {
        Delivery {
            fallback_reason: Some(why),
            ..Delivery::from(Source::ControllerFallback, None)
        }
    }
}

/// `auto` fans out only when that is predicted to take at most this share of the direct
/// copies' time: a relay costs the seed's CPU and a setup, and near a tie copying directly is
/// the safer choice.
pub const AUTO_MARGIN: f64 = 0.7;

/// What relaying a stream costs the seed against sending it once: the probe measures one
/// encrypted stream, a relayed one also passes through the stream file and its reader. On
/// the rig, where one machine's CPU is behind every node, fan-out took 1.29x the direct copies'
/// time at 8 nodes with the links measured alike.
pub const RELAY_COST: f64 = 1.5;

/// `auto`'s probe of the controller's link: one megabyte. Behind a slow link (one that reads
/// slower than [`PROBE_SLOW`]) it is enough to fan out; on a faster one the direct copies start
/// at once, and a longer probe would only hold them up.
const PROBE_FIRST: usize = 1 << 20;
/// Below this (bytes/s), the controller's link is slower than any cluster LAN (150 Mbit/s: a
/// megabyte takes 56 ms or more, more than a command's start-up varies by, so a fast link does
/// not read this slow).
const PROBE_SLOW: f64 = 18.75e6;

/// The LAN probe, run on the seed:
/// `sh -c PROBE_LAN edgectl-probe DEST PORT BYTES STREAMS DEADLINE`.
const PROBE_LAN: &str = node_ssh_script!("sh/probe_lan.sh");
/// What each of the LAN probe's streams sends: first the small amount, and the larger one only
/// when the small one leaves the choice close (within [`CLOSE`] of [`AUTO_MARGIN`] either way).
const PROBE_LAN_FIRST: usize = 1 << 20;
const PROBE_LAN_MORE: usize = 8 << 20;
const CLOSE: f64 = 1.5;
/// The LAN probe opens at most this many streams: each is a login on both nodes, taken from
/// the direct copies running beside it. The seed's `k` streams are estimated from them and
/// its cores (one stream's SSH runs on one core).
const PROBE_LAN_STREAMS: usize = 2;
/// What the LAN probe's deadline allows for its logins, beyond its data at the rate fan-out
/// would need.
const PROBE_LAN_LOGINS: f64 = 1.0;

/// `cat > /dev/null` on the node: what the probes send to.
fn sink() -> Vec<String> {
    argv(["sh", "-c", "cat > /dev/null"])
}

/// Bytes a second from this machine to `h` over OpenSSH (the transport both the copies and the
/// fan-out's upload use), timing `cat > /dev/null` of `bytes` incompressible bytes less
/// `empty`, an empty command's time; None when the node cannot say.
fn probe_bps(h: &dyn Host, bytes: usize, empty: Duration) -> Option<f64> {
    use std::io::Write;
    // xorshift, a word at a time: no transport compression can shrink it, and it is ready in
    // milliseconds.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = vec![0u8; bytes];
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let (reader, mut writer) = std::io::pipe().ok()?;
    let t = Instant::now();
    let feed = std::thread::spawn(move || writer.write_all(&data));
    let o = h.run_piped(&sink(), false, reader.into());
    let fed = feed.join().ok().is_some_and(|r| r.is_ok());
    let took = t
        .elapsed()
        .saturating_sub(empty)
        .max(Duration::from_micros(100));
    (fed && o.ok()?.ok()).then(|| bytes as f64 / took.as_secs_f64())
}

/// What `--fanout auto` measured: bytes a second from the controller to the first node, and
/// from it to the second over the cluster LAN (as the relay sends).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    pub controller: Option<f64>,
    pub lan: Option<Lan>,
}

/// The LAN as the seed's `k` streams would see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Lan {
    /// Bytes a second over the `k` streams at once.
    Measured(f64),
    /// The probe of `streams` streams of `bytes` each ran past its deadline: the LAN was too
    /// slow for fan-out to pay, or the nodes too busy to say.
    Late {
        streams: usize,
        bytes: usize,
        deadline: Duration,
    },
}

fn mbit(b: f64) -> String {
    format!("{:.0} Mbit/s", b * 8.0 / 1e6)
}

/// `--fanout auto`'s choice for `n` nodes, the seed serving `k` peers: (fan out, why). `lan` is
/// what the seed sends over `k` connections at once, in all. The model charges the upload and
/// the seed's relays one after another (they share the seed's CPU, and on one machine
/// everything's): fan-out ~ 1/controller + RELAY_COST k/lan, direct copies ~ n/controller
/// (the controller's link carries every copy).
pub(crate) fn choose(n: usize, k: usize, first: &str, m: Measured) -> (bool, String) {
    if n < 2 {
        return (false, "one node: copied from the controller".into());
    }
    let Some(ctl) = m.controller else {
        return (
            true,
            format!("the controller's link to {first} could not be measured: fanned out"),
        );
    };
    if ctl < PROBE_SLOW {
        return (
            true,
            format!(
                "the controller's link to {first} measured {}, slower than any cluster LAN: uploaded once and fanned out",
                mbit(ctl)
            ),
        );
    }
    let Some(lan) = m.lan else {
        return (
            false,
            format!(
                "the controller's link to {first} measured {}, but {first} could not measure the cluster LAN: copied from the controller to each node",
                mbit(ctl)
            ),
        );
    };
    let lan = match lan {
        Lan::Measured(l) => l,
        Lan::Late {
            streams,
            bytes,
            deadline,
        } => {
            return (
                false,
                format!(
                    "controller to {first} {}, but {first}'s LAN probe ({streams} stream(s) of {} MiB) ran past its {:.1} s deadline, so fan-out cannot pay: copied from the controller to each node",
                    mbit(ctl),
                    bytes >> 20,
                    deadline.as_secs_f64()
                ),
            );
        }
    };
    let ratio = predicted(n, k, ctl, lan);
    let measured = format!(
        "controller to {first} {}, {first} to {k} peer(s) at once {}: fan-out predicted at {ratio:.2}x the time of {n} direct copies",
        mbit(ctl),
        mbit(lan)
    );
    if ratio <= AUTO_MARGIN {
        (true, format!("{measured}, so uploaded once and fanned out"))
    } else {
        (
            false,
            format!(
                "{measured} (fan-out needs {AUTO_MARGIN}x or less), so copied from the controller to each node"
            ),
        )
    }
}

/// Measures the controller's link to `first` with one small write. The first command also
/// opens the connection that the copy to `first` then uses, and is timed again once that is
/// open: that time, a command's own, is not the link's.
fn measure_controller(first: &Session) -> Option<f64> {
    let h = first.host.as_ref();
    h.run_piped(&sink(), false, std::process::Stdio::null())
        .ok()?;
    let t = Instant::now();
    h.run_piped(&sink(), false, std::process::Stdio::null())
        .ok()?;
    probe_bps(h, PROBE_FIRST, t.elapsed())
}

/// Fan-out's time over the direct copies' in [`choose`]'s model.
fn predicted(n: usize, k: usize, ctl: f64, lan: f64) -> f64 {
    (1.0 / ctl + RELAY_COST * k as f64 / lan) / (n as f64 / ctl)
}

/// The slowest LAN (bytes a second over `k` streams) for which [`choose`]'s model still
/// predicts fan-out at `ratio` or less; None when no LAN is fast enough.
fn lan_needed(n: usize, k: usize, ctl: f64, ratio: f64) -> Option<f64> {
    let room = n as f64 * ratio - 1.0;
    (room > 0.0).then(|| RELAY_COST * k as f64 * ctl / room)
}

/// How long the LAN probe of `streams` streams of `bytes` may take, for `k` streams at once
/// at `needed` bytes a second: its logins, then twice its data's time at the rate its streams
/// would reach if the seed's cores let `k` streams go `k / streams` times as fast (the most
/// they could, so the deadline is the longest).
fn lan_deadline(bytes: usize, streams: usize, k: usize, needed: f64) -> Duration {
    let per_probe = needed * streams as f64 / k.max(streams) as f64;
    Duration::from_secs_f64(PROBE_LAN_LOGINS + 2.0 * (bytes * streams) as f64 / per_probe)
}

/// The LAN probe's words: the seed's cores, and bytes a second over its streams or `late`.
fn lan_probe_said(out: &str) -> (Option<usize>, Option<Result<f64, ()>>) {
    let field = |key: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    };
    let cores = field("cores ").and_then(|c| c.parse().ok());
    let said = if out.lines().any(|l| l.trim() == "late") {
        Some(Err(()))
    } else {
        field("bps ")
            .and_then(|b| b.parse::<f64>().ok())
            .filter(|b| *b > 0.0)
            .map(Ok)
    };
    (cores, said)
}

/// Measures what `first` can send over the cluster LAN, with the cluster key, as the relay
/// would to `k` peers at once: up to [`PROBE_LAN_STREAMS`] connections to `second` (so the
/// seed's CPU shares as it would among its peers, up to its cores), a megabyte each, then more
/// only when that leaves `n` nodes' choice close; each probe stopped at a deadline past which
/// fan-out could not pay. Leaves the key where fan-out puts it (the caller takes it away
/// again).
fn measure_lan(
    first: &Session,
    second: &Arc<Session>,
    (n, k, ctl): (usize, usize, f64),
    c: &Cluster,
    state_dir: &Path,
) -> Option<Lan> {
    let needed = lan_needed(n, k, ctl, AUTO_MARGIN * CLOSE)?;
    let peer = lan_peers(c, std::slice::from_ref(second)).pop()?;
    let (private, public) = ensure_cluster_key(state_dir).ok()?;
    let h = first.host.as_ref();
    h.upload(CLUSTER_KEY, &private, 0o600).ok()?;
    h.upload(
        KNOWN_HOSTS,
        known_hosts(std::slice::from_ref(&peer)).as_bytes(),
        0o644,
    )
    .ok()?;
    authorize(second.host.as_ref(), &public).ok()?;
    let dest = format!("{}@{}", peer.user, peer.addr);
    let streams = k.clamp(1, PROBE_LAN_STREAMS);
    let probe = |bytes: usize| {
        let deadline = lan_deadline(bytes, streams, k, needed);
        let a = argv([
            "sh",
            "-c",
            PROBE_LAN,
            "edgectl-probe",
            &dest,
            &peer.port.to_string(),
            &bytes.to_string(),
            &streams.to_string(),
            &format!("{:.3}", deadline.as_secs_f64()),
        ]);
        let (cores, said) = lan_probe_said(&h.run(&a, true).ok()?.stdout);
        // One stream's SSH is one core's work: `k` streams go as far as the cores take them.
        let scale = (k.min(cores.unwrap_or(1).max(1)) as f64 / streams as f64).max(1.0);
        Some(match said? {
            Ok(bps) => Lan::Measured(bps * scale),
            Err(()) => Lan::Late {
                streams,
                bytes,
                deadline,
            },
        })
    };
    let lan = probe(PROBE_LAN_FIRST)?;
    let Lan::Measured(bps) = lan else {
        return Some(lan);
    };
    if !(AUTO_MARGIN / CLOSE..=AUTO_MARGIN * CLOSE).contains(&predicted(n, k, ctl, bps)) {
        return Some(lan);
    }
    probe(PROBE_LAN_MORE).or(Some(lan))
}

/// Why a node has no closure after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutError {
    /// The copy from the controller failed; Nix's account.
    Controller(String),
    /// The node was the seed, and seeding it failed for `why`.
    Seed { seed: String, why: String },
    /// Under `--fanout require`, the LAN could not serve the node for this reason.
    Required(String),
    /// The cluster's own SSH key could not be made or read.
    ClusterKey(String),
    /// The node could not build its own system (`--build-on nodes`); Nix's account.
    NodeBuild(String),
}

impl std::fmt::Display for FanoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FanoutError::Controller(d) => write!(
                f,
                "the copy from the controller failed: {d}; check the node's free space under /nix and the controller's link, then run again (only missing paths are sent)"
            ),
            FanoutError::Seed { seed, why } => write!(
                f,
                "seeding {seed} failed: {why}; run again, or use `--fanout off` to copy to each node from the controller"
            ),
            FanoutError::Required(why) => write!(
                f,
                "fan-out is required, but {why}; not copied from the controller (`--fanout on` allows that)"
            ),
            FanoutError::NodeBuild(d) => write!(
                f,
                "building the system on the node failed: {d}; check the binary caches the node reaches (`nix.settings.substituters`) and its free space under /nix, or build here with `--build-on controller`"
            ),
            FanoutError::ClusterKey(d) => write!(
                f,
                "cannot make the cluster key: {d}; install OpenSSH's ssh-keygen (Debian: openssh-client), or use `--fanout off`"
            ),
        }
    }
}

impl std::error::Error for FanoutError {}

/// Each node's delivery, or why it has no closure.
pub type Deliveries = BTreeMap<String, Result<Delivery, FanoutError>>;

/// How long a peer may leave the stream unread while there is data for it (see [`RELAY`]).
pub const STALL: Duration = Duration::from_secs(20);

pub const CLUSTER_KEY: &str = cluster_key_path!();
pub const KNOWN_HOSTS: &str = cluster_known_hosts_path!();

/// What the cluster key may do on a peer, whatever command the seed asks for: import a store
/// stream, or serve `nix copy` (the seed's command only selects which). Root through `sudo -n`
/// where the login user is not root.
pub const SERVE: &str = node_script!("sh/serve_cluster_key.sh");

/// Where an inner node of the fan-out tree keeps [`RELAY`], for [`SERVE`] to run.
pub const RELAY_FILE: &str = concat!(state_dir!(), "/relay.sh");

/// Lets the cluster key in, restricted to [`SERVE`]: `sh -c AUTHORIZE edgectl-authorize
/// PUBLIC_KEY SERVE`. Every step's failure is the script's (a key that did not land must not
/// look added); a file whose last line has no newline gets one first, so the key never glues
/// onto that line; an unrestricted line for the same key (older edgectl) is replaced.
pub const AUTHORIZE: &str = include_str!("sh/authorize_cluster_key.sh");

/// Takes the cluster key out again when the apply is done: `sh -c DEAUTHORIZE x PUBLIC_KEY`.
pub const DEAUTHORIZE: &str = include_str!("sh/deauthorize_cluster_key.sh");

fn closure_bytes(paths: &[String]) -> Option<u64> {
    let read: Result<BTreeMap<_, _>, _> = paths
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
    if mode == Fanout::Auto && needing.len() >= 2 {
        return auto(rt, needing, c, state_dir, parallel, tx);
    }
    if fans_out(mode, needing.len()) {
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
    direct_copies(rt, parallel, needing, &Stop::default(), tx)
}

/// `--fanout auto`: measures the controller's link to the first node; behind a slow one, fans
/// out at once. Otherwise the direct copies start right away and the LAN is measured while
/// they run, so that when copying directly is the answer (as it mostly is on a fast link) the
/// measurement cost little; if fan-out is predicted well ahead after all, the copies are
/// stopped (what they copied stays) and the closures fan out.
fn auto(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    c: &Cluster,
    state_dir: &Path,
    parallel: usize,
    tx: &Sender,
) -> Deliveries {
    let (first, second) = (&needing[0], &needing[1]);
    let k = parallel.max(1).min(needing.len() - 1);
    let controller = measure_controller(first);
    let decide = |lan| {
        let (fan, why) = choose(needing.len(), k, &first.name, Measured { controller, lan });
        emit(
            tx,
            &first.name,
            Phase::Copy,
            Ev::Progress,
            format!("--fanout auto: {why}"),
        );
        (fan, why)
    };
    let with_why = |mut out: Deliveries, why: &str| {
        for d in out.values_mut().flatten() {
            d.auto = Some(why.to_string());
        }
        out
    };
    // Behind a link that slow, any LAN relays better: its probe would only cost time.
    if controller.is_none_or(|b| b < PROBE_SLOW) {
        let (_, why) = decide(None);
        return with_why(
            copy_closures(rt, needing, c, state_dir, parallel, Fanout::On, tx),
            &why,
        );
    }
    let stop = Stop::default();
    std::thread::scope(|scope| {
        let direct = scope.spawn(|| direct_copies(rt, parallel, needing, &stop, tx));
        let ctl = controller.unwrap_or_default();
        let lan = measure_lan(first, second, (needing.len(), k, ctl), c, state_dir);
        let (fan, why) = decide(lan);
        if !fan {
            // The LAN probe left the cluster key on the first node and in the second's keys.
            forget_cluster_key(rt, &needing[..2], state_dir, parallel);
            let out = direct.join().unwrap_or_default();
            return with_why(out, &why);
        }
        stop.stop();
        // A node whose copy ended before the stop keeps it (or its failure).
        let mut out = direct.join().unwrap_or_default();
        let rest: Vec<Arc<Session>> = needing
            .iter()
            .filter(|s| !out.contains_key(&s.name))
            .cloned()
            .collect();
        let why = match rest.len() {
            0 => format!("{why}; every direct copy begun while the LAN was measured had ended"),
            n => format!("{why}; {n} direct copies begun while the LAN was measured were stopped"),
        };
        out.extend(copy_closures(
            rt,
            &rest,
            c,
            state_dir,
            parallel,
            Fanout::On,
            tx,
        ));
        // The probe's key placement, where the fan-out did not take it away again.
        forget_cluster_key(rt, &needing[..2], state_dir, parallel);
        with_why(out, &why)
    })
}

/// Copies every node's closure from the controller, at most `parallel` at once, until `stop`;
/// a node whose copy was stopped has no entry.
fn direct_copies(
    rt: &tokio::runtime::Runtime,
    parallel: usize,
    nodes: &[Arc<Session>],
    stop: &Stop,
    tx: &Sender,
) -> Deliveries {
    let (stop, tx) = (stop.clone(), tx.clone());
    parallel_map(rt, parallel, nodes.to_vec(), move |s: Arc<Session>| {
        let r = copy_from_controller_until(&s, &tx, &stop);
        (s.name.clone(), r)
    })
    .into_iter()
    .filter_map(|(name, r)| match r {
        Ok(true) => Some((name, Ok(Delivery::from(Source::Controller, None)))),
        Ok(false) => None,
        Err(e) => Some((name, Err(e))),
    })
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
    let seed = choose_seed(needing).0.name.clone();
    parallel_map(rt, parallel, needing.to_vec(), move |s: Arc<Session>| {
        // The seed and the tree's inner nodes held the key and the relay.
        let _ = s.host.run(
            &argv(["rm", "-f", CLUSTER_KEY, KNOWN_HOSTS, RELAY_FILE]),
            true,
        );
        if s.name != seed {
            let _ = s.host.run(
                &argv(["sh", "-c", DEAUTHORIZE, "edgectl-deauthorize", &public]),
                false,
            );
        }
    });
}

/// The plain per-node copy: controller to node.
pub fn copy_from_controller(s: &Session, tx: &Sender) -> Result<(), FanoutError> {
    copy_from_controller_until(s, tx, &Stop::default()).map(|_| ())
}

/// [`copy_from_controller`] until `stop`: Ok(false) when stopped first.
fn copy_from_controller_until(s: &Session, tx: &Sender, stop: &Stop) -> Result<bool, FanoutError> {
    let bytes = closure_bytes(std::slice::from_ref(&s.system));
    emit_bytes(
        tx,
        &s.name,
        Ev::Started,
        format!("from controller{}", mib(bytes)),
        bytes,
    );
    match s
        .host
        .copy_closure_until(std::slice::from_ref(&s.system), stop)
    {
        Ok(true) => {
            emit_bytes(tx, &s.name, Ev::Ok, "copied from controller".into(), bytes);
            Ok(true)
        }
        Ok(false) => {
            emit(
                tx,
                &s.name,
                Phase::Copy,
                Ev::Progress,
                "copy from the controller stopped: fanning out instead",
            );
            Ok(false)
        }
        Err(e) => {
            let e = FanoutError::Controller(e);
            emit(tx, &s.name, Phase::Copy, Ev::Failed, e.to_string());
            Err(e)
        }
    }
}

/// The cluster-internal SSH key, created on first use beside the state.
pub fn ensure_cluster_key(state_dir: &Path) -> Result<(Vec<u8>, String), FanoutError> {
    let key = state_dir.join("cluster_key");
    let bad = FanoutError::ClusterKey;
    if !key.exists() {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| bad(format!("{}: {e}", state_dir.display())))?;
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
            .map_err(|e| bad(format!("cannot run ssh-keygen: {e}")))?;
        if !o.status.success() {
            return Err(bad(format!(
                "ssh-keygen: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
    }
    let private = std::fs::read(&key).map_err(|e| bad(format!("{}: {e}", key.display())))?;
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| bad(format!("{}.pub: {e}", key.display())))?;
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
const RELAY: &str = node_ssh_script!("sh/relay_closure.sh");

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
#[derive(Clone)]
struct Peer {
    s: Arc<Session>,
    addr: String,
    port: u16,
    user: String,
}

/// Where each live peer sits in the fan-out tree: the seed has up to `degree` peers, and each
/// peer up to `degree` of its own, filled level by level (peer `p`, counted from 1, hangs
/// under `(p - 1) / degree`, 0 being the seed). In preorder: (index into live, depth from 1,
/// the relay's tag for it: `2` is the seed's second peer, `2.1` that peer's first).
fn tree(len: usize, degree: usize) -> Vec<(usize, usize, String)> {
    fn walk(
        pos: usize,
        depth: usize,
        tag: &str,
        len: usize,
        k: usize,
        out: &mut Vec<(usize, usize, String)>,
    ) {
        for j in 1..=k {
            let child = pos * k + j;
            if child > len {
                return;
            }
            let t = if tag.is_empty() {
                j.to_string()
            } else {
                format!("{tag}.{j}")
            };
            out.push((child - 1, depth, t.clone()));
            walk(child, depth + 1, &t, len, k, out);
        }
    }
    let mut out = Vec::with_capacity(len);
    walk(0, 1, "", len, degree.max(1), &mut out);
    out
}

/// The live peer that live peer `i` hangs under in the [`tree`]; None: the seed.
fn parent_of(i: usize, degree: usize) -> Option<usize> {
    (i / degree.max(1)).checked_sub(1)
}

/// The live peers that relay the stream on to peers of their own.
fn inner(len: usize, degree: usize) -> Vec<usize> {
    let k = degree.max(1);
    (0..len).filter(|i| (i + 1) * k < len).collect()
}

/// Streams `paths` from the controller through the seed into `live`, which relay it on down the
/// [`tree`]; returns the relay's report (stdout and stderr) or why it broke.
fn relay(seed: &Session, live: &[Peer], degree: usize, paths: &[String]) -> Result<String, String> {
    let mut a = argv(["sh", "-c", RELAY, "edgectl-relay"]);
    a.push(STALL.as_secs().to_string());
    for (i, depth, _) in tree(live.len(), degree) {
        // The peer's forced command (SERVE) runs the import or the relay, as root.
        let p = &live[i];
        a.push(format!("{depth},{}@{},{}", p.user, p.addr, p.port));
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

/// The seed: the first node in rollout order that needs a closure; the rest are its peers.
/// [`forget_cluster_key`] asks the same, to know which node holds the private key.
fn choose_seed<T>(needing: &[T]) -> (&T, &[T]) {
    needing
        .split_first()
        .expect("fan-out serves two or more nodes")
}

/// Whether [`copy_closures`] fans out: when `mode` allows and there are two or more nodes (a
/// single node has no peer to serve, so it is copied from the controller, even under
/// `--fanout require`).
fn fans_out(mode: Fanout, needing: usize) -> bool {
    mode != Fanout::Off && needing >= 2
}

/// The peers as the seed reaches them over the LAN (a session whose node `c` lacks is left out).
fn lan_peers(c: &Cluster, peers: &[Arc<Session>]) -> Vec<Peer> {
    peers
        .iter()
        .filter_map(|p| {
            c.node(&p.name).map(|n| Peer {
                s: p.clone(),
                addr: edgectl_render::host::lan_address(n),
                port: n.port,
                user: n.user.clone(),
            })
        })
        .collect()
}

/// The seed's known_hosts: each peer's pinned host key under the name the seed dials.
fn known_hosts(peers: &[Peer]) -> String {
    let mut known = String::new();
    for p in peers {
        if let Some(k) = &p.s.key {
            let h = if p.port == 22 {
                p.addr.clone()
            } else {
                format!("[{}]:{}", p.addr, p.port)
            };
            known.push_str(&format!("{h} {}\n", k.public));
        }
    }
    known
}

/// What the nodes answered before the upload.
#[derive(Debug, PartialEq, Eq)]
struct Asked {
    /// Every path some node lacks, sorted: the export stream.
    stream: Vec<String>,
    /// The peers that did not let the cluster key in: the relay cannot log in to them.
    unauthorized: BTreeSet<String>,
}

impl Asked {
    /// From each node's (name, paths it lacks, whether it let the seed in).
    fn tally(answers: impl IntoIterator<Item = (String, Vec<String>, bool)>) -> Asked {
        let mut stream = BTreeSet::new();
        let mut unauthorized = BTreeSet::new();
        for (name, lacks, ok) in answers {
            stream.extend(lacks);
            if !ok {
                unauthorized.insert(name);
            }
        }
        Asked {
            stream: stream.into_iter().collect(),
            unauthorized,
        }
    }
}

/// The peers the relay serves while the upload arrives (all the seed may log in to: the tree
/// bounds what each node relays), and those that copy from the seed after it.
fn split_live<T>(peers: Vec<T>, unauthorized: impl Fn(&T) -> bool) -> (Vec<T>, Vec<T>) {
    peers.into_iter().partition(|p| !unauthorized(p))
}

/// The relay's word on one peer: "peer TAG STATUS PATHS ERROR" (see [`RELAY`] and [`tree`]).
#[derive(Debug, PartialEq, Eq)]
struct Said {
    /// ssh's exit status; None when `dropped` or not reported.
    code: Option<i32>,
    /// How many store paths its import took.
    paths: Option<usize>,
    err: String,
}

impl Said {
    /// On the peer `tag` names (see [`tree`]), in the relay's report, or why it broke.
    fn of(report: &Result<String, String>, tag: &str) -> Said {
        let tag = format!("peer {tag} ");
        match report
            .as_ref()
            .map(|r| r.lines().find_map(|l| l.strip_prefix(&tag)))
        {
            Ok(Some(l)) => {
                let (code, rest) = l.split_once(' ').unwrap_or((l, ""));
                let (paths, err) = rest.split_once(' ').unwrap_or((rest, ""));
                Said {
                    code: code.parse().ok(),
                    paths: paths.parse().ok(),
                    err: err.trim().to_string(),
                }
            }
            Ok(None) => Said {
                code: None,
                paths: None,
                err: "no report".into(),
            },
            Err(e) => Said {
                code: None,
                paths: None,
                err: e.clone(),
            },
        }
    }
}

/// What becomes of a live peer once the seed holds every closure.
#[derive(Debug, PartialEq, Eq)]
enum AfterRelay {
    /// Status 0 and every path imported: the peer's import took the whole stream, which holds
    /// all it lacked, while the seed was receiving it.
    Streamed,
    /// Nothing was streamed: no node lacked a path.
    Held,
    /// Unless it holds its system anyway, copied again this way.
    Unsure(Retry),
}

/// How a live peer the relay did not serve gets its closure.
#[derive(Debug, PartialEq, Eq)]
enum Retry {
    /// `nix copy` from the seed.
    FromSeed,
    /// From the controller (a fallback, or a failure under `--fanout require`), for this reason.
    FromController(String),
}

impl Retry {
    fn says(&self) -> &'static str {
        match self {
            Retry::FromSeed => "copying again",
            Retry::FromController(_) => "copying from the controller",
        }
    }
}

fn after_relay(said: &Said, stream_len: usize, from: &str) -> AfterRelay {
    if said.code == Some(0) && said.paths == Some(stream_len) {
        return AfterRelay::Streamed;
    }
    if stream_len == 0 {
        return AfterRelay::Held;
    }
    // 255: the relaying node's SSH could not reach or log in to the peer, which a `nix copy` from the
    // seed would only repeat.
    AfterRelay::Unsure(if said.code == Some(255) {
        Retry::FromController(format!(
            "{from} could not log in to it over SSH: {}",
            said.err
        ))
    } else {
        Retry::FromSeed
    })
}

/// A peer the LAN could not serve, for `why`: the warning it gets when it may be copied from
/// the controller instead, or under `--fanout require` the error it fails with.
fn fall_back_or_fail(require: bool, why: &str) -> Result<String, FanoutError> {
    if require {
        Err(FanoutError::Required(why.to_string()))
    } else {
        Ok(format!(
            "copying from the controller instead of over the LAN: {why}"
        ))
    }
}

/// Distributes every needing node's system: the seed gets the stream from the controller and
/// relays it to up to `parallel` peers as it arrives; the rest copy from the seed afterwards,
/// and a peer the LAN cannot serve falls back to the controller (fails when `require`).
/// Returns each node's delivery, or why it has no closure.
pub fn distribute(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    c: &Cluster,
    state_dir: &Path,
    parallel: usize,
    require: bool,
    tx: &Sender,
) -> Deliveries {
    let (seed, rest) = choose_seed(needing);
    let mut d = Distribution::start(rt, seed, needing, parallel, require, tx);
    let peers = lan_peers(c, rest);
    let public = match d.seed_keys(&peers, state_dir) {
        Ok(p) => p,
        Err(e) => {
            let why = format!("seeding {} failed: {e}", d.seed.name);
            d.seed_failed(e);
            d.fall_back(peers.into_iter().map(|p| (p, why.clone())).collect());
            return d.out;
        }
    };
    let asked = d.ask(needing, &public);
    let (live, mut late) = split_live(peers, |p| asked.unauthorized.contains(&p.s.name));
    let live = d.arm_inner_nodes(live, &mut late, state_dir);
    d.announce(&live);
    let report = if asked.stream.is_empty() {
        Ok(String::new())
    } else {
        relay(&d.seed, &live, d.parallel, &asked.stream)
    };
    if let Err(e) = d.seed_holds(&report) {
        d.seed_lost(e, live.into_iter().chain(late).collect());
        return d.out;
    }
    let (again, direct) = d.settle(live, &report, &asked.stream);
    d.fall_back(direct);
    d.copy_again(again.into_iter().chain(late).collect(), &public);
    d.out
}

/// One fan-out under way: the seed, the closures, and each node's delivery so far.
struct Distribution<'a> {
    rt: &'a tokio::runtime::Runtime,
    parallel: usize,
    require: bool,
    tx: &'a Sender,
    seed: Arc<Session>,
    /// Every needing node's system, once each.
    union: Vec<String>,
    closures: Arc<Closures>,
    /// The size of `union`'s closure, when the controller could read it.
    bytes: Option<u64>,
    out: Deliveries,
}

impl<'a> Distribution<'a> {
    fn start(
        rt: &'a tokio::runtime::Runtime,
        seed: &Arc<Session>,
        needing: &[Arc<Session>],
        parallel: usize,
        require: bool,
        tx: &'a Sender,
    ) -> Distribution<'a> {
        let union: Vec<String> = needing
            .iter()
            .map(|s| s.system.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let closures = Closures::read(rt, parallel, &union);
        Distribution {
            rt,
            parallel,
            require,
            tx,
            seed: seed.clone(),
            bytes: closures.bytes(&union),
            union,
            closures: Arc::new(closures),
            out: Deliveries::new(),
        }
    }

    fn delivery(&self, from: Source) -> Delivery {
        Delivery::from(from, Some(&self.seed))
    }

    /// Puts the cluster key and the peers' host keys on the seed; returns the key's public half.
    fn seed_keys(&self, peers: &[Peer], state_dir: &Path) -> Result<String, String> {
        if !self.closures.complete(&self.union) {
            return Err("cannot read the closures on the controller".to_string());
        }
        let (private, public) = ensure_cluster_key(state_dir).map_err(|e| e.to_string())?;
        self.seed
            .host
            .upload(CLUSTER_KEY, &private, 0o600)
            .map_err(|e| e.to_string())?;
        self.seed
            .host
            .upload(KNOWN_HOSTS, known_hosts(peers).as_bytes(), 0o644)
            .map_err(|e| e.to_string())?;
        Ok(public)
    }

    /// The tree's inner nodes relay too: each gets the cluster key, the known hosts and the
    /// relay. One that cannot is moved to `late` (copied from the seed afterwards), and the
    /// tree is laid out again without it.
    fn arm_inner_nodes(
        &self,
        mut live: Vec<Peer>,
        late: &mut Vec<Peer>,
        state_dir: &Path,
    ) -> Vec<Peer> {
        let Ok((private, _)) = ensure_cluster_key(state_dir) else {
            return live;
        };
        let known = known_hosts(&live);
        let mut armed = BTreeSet::new();
        loop {
            let todo: Vec<Peer> = inner(live.len(), self.parallel)
                .into_iter()
                .map(|i| live[i].clone())
                .filter(|p| !armed.contains(&p.s.name))
                .collect();
            if todo.is_empty() {
                return live;
            }
            let (private, known) = (private.clone(), known.clone());
            let done = parallel_map(self.rt, self.parallel, todo, move |p: Peer| {
                let h = p.s.host.as_ref();
                let r = h
                    .upload(CLUSTER_KEY, &private, 0o600)
                    .and_then(|()| h.upload(KNOWN_HOSTS, known.as_bytes(), 0o644))
                    .and_then(|()| h.upload(RELAY_FILE, RELAY.as_bytes(), 0o500));
                (p.s.name.clone(), r)
            });
            for (name, r) in done {
                match r {
                    Ok(()) => {
                        armed.insert(name);
                    }
                    Err(e) => {
                        emit(
                            self.tx,
                            &name,
                            Phase::Copy,
                            Ev::Progress,
                            format!(
                                "cannot relay to others ({e}); copied from {} after the upload",
                                self.seed.name
                            ),
                        );
                        let at = live
                            .iter()
                            .position(|p| p.s.name == name)
                            .expect("a live peer");
                        late.push(live.remove(at));
                    }
                }
            }
        }
    }

    /// Every node says what it lacks and lets the seed in, all at once.
    fn ask(&self, needing: &[Arc<Session>], public: &str) -> Asked {
        let closure: Vec<String> = self
            .closures
            .paths(&self.union)
            .keys()
            .map(|p| p.to_string())
            .collect();
        let (public, seed) = (public.to_string(), self.seed.name.clone());
        Asked::tally(parallel_map(
            self.rt,
            self.parallel,
            needing.to_vec(),
            move |s: Arc<Session>| {
                let lacks = lacking(s.host.as_ref(), &closure);
                let authorized = s.name == seed || authorize(s.host.as_ref(), &public).is_ok();
                (s.name.clone(), lacks, authorized)
            },
        ))
    }

    /// The upload begins: to the seed, and on to the live peers as it arrives.
    fn announce(&self, live: &[Peer]) {
        emit_bytes(
            self.tx,
            &self.seed.name,
            Ev::Started,
            format!(
                "seed: from controller, all {} closures{}, relayed to {} peer(s) as it arrives",
                self.union.len(),
                mib(self.bytes),
                live.len()
            ),
            self.bytes,
        );
        for (i, p) in live.iter().enumerate() {
            let b = self.closures.bytes(std::slice::from_ref(&p.s.system));
            let from = parent_of(i, self.parallel).map_or(&self.seed.name, |j| &live[j].s.name);
            emit_bytes(
                self.tx,
                &p.s.name,
                Ev::Started,
                format!("from {from} over the LAN{}", mib(b)),
                b,
            );
        }
    }

    /// Records the seed's delivery if it holds every closure, else says why not.
    fn seed_holds(&mut self, report: &Result<String, String>) -> Result<(), String> {
        // A relay that exited 0 imported the whole stream on the seed; otherwise ask the seed.
        if report.is_ok() || holds(self.seed.host.as_ref(), &self.union) {
            emit_bytes(
                self.tx,
                &self.seed.name,
                Ev::Ok,
                "seed holds every closure".into(),
                self.bytes,
            );
            let seed = self.seed.name.clone();
            self.out
                .insert(seed, Ok(Delivery::from(Source::Seed, None)));
            return Ok(());
        }
        Err(report
            .clone()
            .err()
            .unwrap_or_else(|| "the seed lacks closures after the upload".into()))
    }

    fn seed_failed(&mut self, e: String) {
        emit(
            self.tx,
            &self.seed.name,
            Phase::Copy,
            Ev::Failed,
            format!("seeding failed: {e}; falling back to per-node copies"),
        );
        let seed = self.seed.name.clone();
        let e = FanoutError::Seed {
            seed: seed.clone(),
            why: e,
        };
        self.out.insert(seed, Err(e));
    }

    /// The seed failed during the upload: a peer the stream reached keeps what it got, every
    /// other falls back.
    fn seed_lost(&mut self, e: String, peers: Vec<Peer>) {
        let why = format!("the seed {} failed: {e}", self.seed.name);
        self.seed_failed(e);
        let (got, missing): (Vec<Peer>, Vec<Peer>) = peers
            .into_iter()
            .partition(|p| holds(p.s.host.as_ref(), std::slice::from_ref(&p.s.system)));
        for p in got {
            holds_after_relay(&p, self.tx);
            let d = self.delivery(Source::SeedStream);
            self.out.insert(p.s.name.clone(), Ok(d));
        }
        self.fall_back(missing.into_iter().map(|p| (p, why.clone())).collect());
    }

    /// Each live peer by the relay's word on it (see [`after_relay`]); returns those to copy
    /// again from the seed, and those to copy from the controller, with why.
    fn settle(
        &mut self,
        live: Vec<Peer>,
        report: &Result<String, String>,
        stream: &[String],
    ) -> (Vec<Peer>, Vec<(Peer, String)>) {
        let sizes = self.closures.paths(&self.union);
        let stream_bytes: u64 = stream.iter().filter_map(|p| sizes.get(p.as_str())).sum();
        let (mut again, mut direct) = (Vec::new(), Vec::new());
        let mut tags = vec![String::new(); live.len()];
        for (i, _, tag) in tree(live.len(), self.parallel) {
            tags[i] = tag;
        }
        // Who relayed the stream to each: the seed, or the peer it hangs under.
        let parents: Vec<String> = (0..live.len())
            .map(|i| {
                parent_of(i, self.parallel)
                    .map_or(&self.seed.name, |j| &live[j].s.name)
                    .clone()
            })
            .collect();
        for ((p, tag), parent) in live.into_iter().zip(tags).zip(parents) {
            let said = Said::of(report, &tag);
            let name = p.s.name.clone();
            let retry = match after_relay(&said, stream.len(), &parent) {
                AfterRelay::Streamed => {
                    let m = format!(
                        "streamed from {parent} during the upload: {} paths{}",
                        stream.len(),
                        mib(Some(stream_bytes))
                    );
                    emit_bytes(self.tx, &name, Ev::Ok, m, Some(stream_bytes));
                    let d = self.delivery(Source::SeedStream);
                    self.out.insert(name, Ok(d));
                    continue;
                }
                AfterRelay::Held => {
                    emit(
                        self.tx,
                        &name,
                        Phase::Copy,
                        Ev::Ok,
                        "already held every path",
                    );
                    self.out
                        .insert(name, Ok(Delivery::from(Source::Held, None)));
                    continue;
                }
                AfterRelay::Unsure(retry) => retry,
            };
            if holds(p.s.host.as_ref(), std::slice::from_ref(&p.s.system)) {
                holds_after_relay(&p, self.tx);
                let d = self.delivery(Source::SeedStream);
                self.out.insert(name, Ok(d));
                continue;
            }
            let m = format!(
                "the relay did not reach it ({}); {}",
                said.err,
                retry.says()
            );
            emit(self.tx, &name, Phase::Copy, Ev::Progress, m);
            match retry {
                Retry::FromController(why) => direct.push((p, why)),
                Retry::FromSeed => again.push(p),
            }
        }
        (again, direct)
    }

    /// The peers the relay did not serve, each with `nix copy` from the seed; one whose copy
    /// fails falls back.
    fn copy_again(&mut self, again: Vec<Peer>, public: &str) {
        let (seed, tx) = (self.seed.clone(), self.tx.clone());
        let (closures, public) = (self.closures.clone(), public.to_string());
        let copied = parallel_map(self.rt, self.parallel, again, move |p: Peer| {
            let r = copy_via_seed(&seed, &p, &public, &closures, &tx);
            (p, r)
        });
        let mut failed = Vec::new();
        for (p, r) in copied {
            match r {
                Ok(()) => {
                    let d = self.delivery(Source::SeedCopy);
                    self.out.insert(p.s.name.clone(), Ok(d));
                }
                Err(e) => failed.push((p, format!("the copy from {} failed: {e}", self.seed.name))),
            }
        }
        self.fall_back(failed);
    }

    /// Peers the LAN could not serve, each with the reason: copied from the controller with a
    /// warning, or, with `--fanout require`, failed without a copy.
    fn fall_back(&mut self, peers: Vec<(Peer, String)>) {
        let mut go = Vec::new();
        for (p, why) in peers {
            match fall_back_or_fail(self.require, &why) {
                Ok(warning) => {
                    emit(self.tx, &p.s.name, Phase::Copy, Ev::Warning, warning);
                    go.push((p, why));
                }
                Err(e) => {
                    emit(self.tx, &p.s.name, Phase::Copy, Ev::Failed, e.to_string());
                    self.out.insert(p.s.name.clone(), Err(e));
                }
            }
        }
        let tx = self.tx.clone();
        let copied = parallel_map(
            self.rt,
            self.parallel,
            go,
            move |(p, why): (Peer, String)| {
                let r = copy_from_controller(&p.s, &tx);
                (p.s.name.clone(), why, r)
            },
        );
        for (name, why, r) in copied {
            self.out.insert(name, r.map(|()| Delivery::fallback(why)));
        }
    }
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
        let opts = format!("NIX_SSHOPTS=-p {} {}", p.port, cluster_ssh_options!());
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

/// What fan-out decides, in pure functions and against scripted nodes: the seed, the stream,
/// which peers the relay serves, what its report means, and when a peer falls back to the
/// controller or fails instead. The rig proves the real copies.
#[cfg(test)]
mod decisions {
    use super::*;
    use crate::fake::{Call, FakeHost, ok};
    use crate::host::Host;

    fn example() -> Cluster {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster
    }

    fn system(name: &str) -> String {
        // Not a store path the controller has: reading its closure fails at once.
        format!("/nix/store/fake-{name}-system")
    }

    fn node(name: &str) -> (FakeHost, Arc<Session>) {
        let h = FakeHost::new(name);
        let s = Session {
            name: name.into(),
            host: Box::new(h.clone()),
            key: h.host_key(),
            system: system(name),
            current: None,
            generation: None,
            unchanged: false,
            lock_owner: "edgectl test".into(),
        };
        (h, Arc::new(s))
    }

    /// Answers `nix-store --check-validity PATHS` on `h`: they are all there.
    fn holding(h: &FakeHost) {
        h.on(
            |a| a.len() >= 2 && a[0] == "nix-store" && a[1] == "--check-validity",
            |_| ok(""),
        );
    }

    fn peer(s: &Arc<Session>, port: u16) -> Peer {
        Peer {
            s: s.clone(),
            addr: format!("10.10.1.{}", s.name.len()),
            port,
            user: "root".into(),
        }
    }

    /// (node, state, message) of every event sent so far.
    fn events(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<crate::event::Event>,
    ) -> Vec<(String, Ev, String)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push((e.node, e.state, e.message));
        }
        out
    }

    fn copies(h: &FakeHost) -> Vec<Vec<String>> {
        h.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Copy(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    fn fanned(seed: &str, from: Source) -> Result<Delivery, FanoutError> {
        Ok(Delivery {
            from,
            seed: Some(seed.into()),
            fallback_reason: None,
            auto: None,
        })
    }

    /// A fan-out whose seed is `seed` and whose closures the controller could not read.
    fn distribution<'a>(
        rt: &'a tokio::runtime::Runtime,
        tx: &'a Sender,
        seed: &Arc<Session>,
        require: bool,
    ) -> Distribution<'a> {
        Distribution {
            rt,
            parallel: 4,
            require,
            tx,
            seed: seed.clone(),
            union: vec![seed.system.clone()],
            closures: Arc::new(Closures(BTreeMap::new())),
            bytes: None,
            out: Deliveries::new(),
        }
    }

    #[test]
    fn fan_out_takes_a_mode_that_allows_it_and_two_nodes_and_seeds_the_first() {
        assert!(!fans_out(Fanout::Off, 4));
        // One node has no peer: it is copied from the controller, even when fan-out is required.
        assert!(!fans_out(Fanout::On, 1));
        assert!(!fans_out(Fanout::Require, 1));
        assert!(fans_out(Fanout::On, 2));
        assert!(fans_out(Fanout::Require, 3));
        let (seed, peers) = choose_seed(&["worker2", "head", "worker1"]);
        assert_eq!((*seed, peers), ("worker2", &["head", "worker1"][..]));
    }

    #[test]
    fn the_stream_is_every_path_some_node_lacks_and_peers_the_seed_cannot_enter_wait() {
        let asked = Asked::tally([
            ("head".to_string(), vec!["/nix/store/b".into()], true),
            (
                "worker1".to_string(),
                vec!["/nix/store/a".into(), "/nix/store/b".into()],
                false,
            ),
            ("worker2".to_string(), vec![], true),
        ]);
        assert_eq!(asked.stream, ["/nix/store/a", "/nix/store/b"]);
        assert_eq!(asked.unauthorized, BTreeSet::from(["worker1".to_string()]));

        let peers = ["w1", "w2", "w3", "w4", "w5"];
        let (live, late) = split_live(peers.to_vec(), |p| *p == "w2");
        assert_eq!(live, ["w1", "w3", "w4", "w5"], "all the seed may log in to");
        assert_eq!(late, ["w2"]);
    }

    #[test]
    fn auto_fans_out_when_the_lan_relays_well_ahead_of_direct_copies() {
        let m = |c: f64, l: f64| Measured {
            controller: Some(c),
            lan: Some(Lan::Measured(l)),
        };
        // Behind 100 Mbit/s: fan-out, without a LAN measurement.
        let slow = Measured {
            controller: Some(12.5e6),
            lan: None,
        };
        let (fan, why) = choose(8, 7, "n1", slow);
        assert!(fan, "{why}");
        assert!(
            why.contains("measured 100 Mbit/s, slower than any cluster LAN"),
            "{why}"
        );
        // 400 Mbit/s, and the seed sends five times that to its peers: fan-out is far ahead.
        let (fan, why) = choose(8, 7, "n1", m(50e6, 250e6));
        assert!(fan, "{why}");
        assert!(
            why.contains("controller to n1 400 Mbit/s, n1 to 7 peer(s) at once 2000 Mbit/s"),
            "{why}"
        );
        // One machine's CPU behind everything (the rig unthrottled): the seed's streams share
        // what the controller's do, so copy directly.
        let (fan, why) = choose(8, 7, "n1", m(67e6, 67e6));
        assert!(!fan, "{why}");
        assert!(why.contains("predicted at 1.44x"), "{why}");
        // A laptop's 500 Mbit/s to sixteen nodes on a 10 Gbit/s LAN, as a tree of 8.
        assert!(choose(16, 8, "n1", m(62e6, 1.2e9)).0);
        // No LAN measurement (the seed cannot reach the peer): fan-out would fall back anyway.
        let (fan, why) = choose(
            4,
            3,
            "n1",
            Measured {
                controller: Some(1e8),
                lan: None,
            },
        );
        assert!(
            !fan && why.contains("could not measure the cluster LAN"),
            "{why}"
        );
        let (fan, _) = choose(
            4,
            3,
            "n1",
            Measured {
                controller: None,
                lan: None,
            },
        );
        assert!(fan, "nothing measured: the default of old");
        assert!(!choose(1, 1, "n1", m(1e6, 1e9)).0, "one node has no peer");
    }

    #[test]
    fn the_lan_probe_is_cut_off_once_fan_out_could_no_longer_pay() {
        // 8 nodes, 7 peers, 400 Mbit/s to the controller: fan-out at 1.05x (the top of the
        // close band) needs the seed to send 1.5 * 7 * 50e6 / (8 * 1.05 - 1) bytes/s to its peers.
        let needed = lan_needed(8, 7, 50e6, AUTO_MARGIN * CLOSE).unwrap();
        assert!((needed - 1.5 * 7.0 * 50e6 / 7.4).abs() < 1.0, "{needed}");
        assert!(
            (predicted(8, 7, 50e6, needed) - AUTO_MARGIN * CLOSE).abs() < 1e-9,
            "the model at that LAN is the ratio asked for"
        );
        assert_eq!(
            lan_needed(1, 1, 50e6, 0.7),
            None,
            "one node: no LAN is enough"
        );
        // Two streams of a megabyte, standing for 7 that may go 3.5x as fast: the logins' second
        // and twice the data's time at the rate they would need.
        let d = lan_deadline(1 << 20, 2, 7, needed);
        let data = 2.0 * (2 << 20) as f64 / (needed * 2.0 / 7.0);
        assert!(
            (d.as_secs_f64() - PROBE_LAN_LOGINS - data).abs() < 1e-6,
            "{d:?}"
        );
        // A faster controller needs a faster LAN, so its deadline is sooner.
        assert!(lan_deadline(1 << 20, 2, 7, needed * 2.0) < d);
        // A late probe copies directly, whatever the controller's link.
        let (fan, why) = choose(
            8,
            7,
            "n1",
            Measured {
                controller: Some(50e6),
                lan: Some(Lan::Late {
                    streams: 2,
                    bytes: 1 << 20,
                    deadline: Duration::from_millis(1300),
                }),
            },
        );
        assert!(!fan, "{why}");
        assert!(
            why.contains("n1's LAN probe (2 stream(s) of 1 MiB) ran past its 1.3 s deadline"),
            "{why}"
        );
    }

    #[test]
    fn every_data_connection_prefers_the_same_ciphers_and_key_exchange() {
        let ciphers = crate::host::FAST_CRYPTO[1]
            .strip_prefix("Ciphers=")
            .unwrap();
        let kex = crate::host::FAST_CRYPTO[3]
            .strip_prefix("KexAlgorithms=")
            .unwrap();
        assert!(ciphers.starts_with("aes128-gcm@openssh.com,"), "{ciphers}");
        assert!(kex.starts_with("curve25519-sha256,"), "{kex}");
        let cluster = cluster_ssh_options!();
        assert!(cluster.contains(&format!(" -o Ciphers={ciphers} -o KexAlgorithms={kex}")));
        assert!(cluster.starts_with(&format!("-i {CLUSTER_KEY} ")));
        assert!(cluster.contains(&format!("UserKnownHostsFile={KNOWN_HOSTS} ")));
        // Split by a shell unquoted, and by Nix in NIX_SSHOPTS: nothing a split would break.
        assert!(!cluster.contains(['\'', '"', '\\', '$']));
        for script in [RELAY, PROBE_LAN] {
            assert!(script.starts_with(&format!("EDGECTL_SSH='{cluster}'\n")));
            assert!(script.contains(r#"ssh -p "$port" $EDGECTL_SSH -- "$dest""#));
        }
    }

    #[test]
    fn the_lan_probes_words_are_its_cores_and_a_rate_or_late() {
        assert_eq!(
            lan_probe_said("cores 40\nbps 123456\n"),
            (Some(40), Some(Ok(123456.0)))
        );
        assert_eq!(lan_probe_said("cores 2\nlate\n"), (Some(2), Some(Err(()))));
        assert_eq!(lan_probe_said("cores x\nbps 0\n"), (None, None));
        assert_eq!(lan_probe_said(""), (None, None));
    }

    #[test]
    fn the_tree_fills_level_by_level_with_at_most_degree_peers_under_each_node() {
        // 15 peers, 4 under each: the seed's 4, then 4 under each of them but the last 3.
        let t = tree(15, 4);
        let at = |tag: &str| {
            t.iter()
                .find(|(_, _, x)| x == tag)
                .map(|(i, d, _)| (*i, *d))
        };
        assert_eq!(t.len(), 15);
        assert_eq!(at("1"), Some((0, 1)));
        assert_eq!(at("4"), Some((3, 1)));
        assert_eq!(at("1.1"), Some((4, 2)), "peer 5 hangs under peer 1");
        assert_eq!(at("1.4"), Some((7, 2)));
        assert_eq!(at("3.3"), Some((14, 2)));
        assert_eq!(at("4.1"), None);
        // Preorder: each peer comes before its subtree, which comes before its next sibling.
        let order: Vec<&str> = t.iter().map(|(_, _, x)| x.as_str()).take(6).collect();
        assert_eq!(order, ["1", "1.1", "1.2", "1.3", "1.4", "2"]);
        assert_eq!(inner(15, 4), [0, 1, 2], "peers 1 to 3 relay on");
        assert_eq!(parent_of(3, 4), None, "the seed's fourth");
        assert_eq!(parent_of(4, 4), Some(0), "peer 5 under peer 1");
        assert_eq!(parent_of(14, 4), Some(2));
        // Up to `degree` peers: the seed alone relays, as before trees.
        assert!(tree(8, 8).iter().all(|(_, d, _)| *d == 1));
        assert!(inner(8, 8).is_empty());
        // Degree 1 is a chain; a depth keeps growing.
        assert_eq!(tree(3, 1).last().unwrap(), &(2, 3, "1.1.1".to_string()));
        // Depth grows with log N: 100 peers, 4 under each, are 4 levels deep.
        assert_eq!(tree(100, 4).iter().map(|(_, d, _)| *d).max(), Some(4));
    }

    #[test]
    fn the_relays_word_on_a_peer_is_found_by_its_number() {
        let report: Result<String, String> = Ok("imported 7\n\
             peer 10 0 7 \n\
             peer 1 0 7 \n\
             peer 1.1 0 7 \n\
             peer 2 255 0 ssh: connect to host 10.10.1.3 port 22: Connection refused \n\
             peer 3 dropped 2 \n"
            .into());
        let said = |code, paths, err: &str| Said {
            code,
            paths,
            err: err.into(),
        };
        assert_eq!(Said::of(&report, "1"), said(Some(0), Some(7), ""));
        assert_eq!(
            Said::of(&report, "1.1"),
            said(Some(0), Some(7), ""),
            "in peer 1's subtree"
        );
        assert_eq!(
            Said::of(&report, "2"),
            said(
                Some(255),
                Some(0),
                "ssh: connect to host 10.10.1.3 port 22: Connection refused"
            )
        );
        assert_eq!(Said::of(&report, "3"), said(None, Some(2), ""), "dropped");
        assert_eq!(Said::of(&report, "4"), said(None, None, "no report"));
        assert_eq!(
            Said::of(&report, "3.1"),
            said(None, None, "no report"),
            "under a dropped peer"
        );
        let broken = Err("import on the seed: disk full".to_string());
        assert_eq!(
            Said::of(&broken, "1"),
            said(None, None, "import on the seed: disk full")
        );
    }

    #[test]
    fn after_the_relay_a_peer_is_streamed_held_or_copied_again_from_the_seed_or_controller() {
        let said = |code, paths, err: &str| Said {
            code,
            paths,
            err: err.into(),
        };
        let after = |s: Said, n| after_relay(&s, n, "head");
        assert_eq!(after(said(Some(0), Some(5), ""), 5), AfterRelay::Streamed);
        // Exit 0 but fewer paths than the stream: not known to be complete.
        assert_eq!(
            after(said(Some(0), Some(4), ""), 5),
            AfterRelay::Unsure(Retry::FromSeed)
        );
        assert_eq!(after(said(None, None, "no report"), 0), AfterRelay::Held);
        assert_eq!(
            after(said(None, Some(1), "stalled"), 5),
            AfterRelay::Unsure(Retry::FromSeed)
        );
        // The seed could not log in: a `nix copy` from it would fail the same way.
        assert_eq!(
            after(said(Some(255), Some(0), "Permission denied"), 5),
            AfterRelay::Unsure(Retry::FromController(
                "head could not log in to it over SSH: Permission denied".into()
            ))
        );
        assert_eq!(Retry::FromSeed.says(), "copying again");
        assert_eq!(
            Retry::FromController(String::new()).says(),
            "copying from the controller"
        );
    }

    #[test]
    fn a_peer_the_lan_cannot_serve_is_warned_about_or_under_require_fails() {
        assert_eq!(
            fall_back_or_fail(false, "the seed head failed: x"),
            Ok(
                "copying from the controller instead of over the LAN: the seed head failed: x"
                    .into()
            )
        );
        assert_eq!(
            fall_back_or_fail(true, "the seed head failed: x"),
            Err(FanoutError::Required("the seed head failed: x".into()))
        );
        assert_eq!(
            fall_back_or_fail(true, "x").unwrap_err().to_string(),
            "fan-out is required, but x; not copied from the controller (`--fanout on` allows that)"
        );
    }

    #[test]
    fn the_seeds_known_hosts_name_each_peer_as_it_dials_it() {
        let (_, a) = node("a");
        let (_, bb) = node("bb");
        let h = FakeHost::new("ccc");
        let keyless = Arc::new(Session {
            name: "ccc".into(),
            host: Box::new(h),
            key: None,
            system: system("ccc"),
            current: None,
            generation: None,
            unchanged: false,
            lock_owner: String::new(),
        });
        let peers = [peer(&a, 22), peer(&bb, 2222), peer(&keyless, 22)];
        assert_eq!(
            known_hosts(&peers),
            "10.10.1.1 ssh-ed25519 AAAAfakea\n[10.10.1.2]:2222 ssh-ed25519 AAAAfakebb\n"
        );
    }

    #[test]
    fn one_node_or_fanout_off_is_copied_from_the_controller() {
        let rt = crate::pool::runtime(4);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let state = tempfile::tempdir().unwrap();
        let c = example();
        let (h, head) = node("head");
        let got = copy_closures(
            &rt,
            std::slice::from_ref(&head),
            &c,
            state.path(),
            4,
            Fanout::Require,
            &tx,
        );
        let direct = Ok(Delivery::from(Source::Controller, None));
        assert_eq!(got["head"], direct);
        assert_eq!(copies(&h), [vec![system("head")]]);
        let (w, worker1) = node("worker1");
        w.fail_copy(Some("connection reset".into()));
        let got = copy_closures(&rt, &[head, worker1], &c, state.path(), 4, Fanout::Off, &tx);
        assert_eq!(got["head"], direct);
        assert_eq!(
            got["worker1"],
            Err(FanoutError::Controller("connection reset".into()))
        );
        assert!(h.scripts().is_empty(), "no cluster key with --fanout off");
    }

    #[test]
    fn a_seed_that_cannot_be_prepared_sends_its_peers_to_the_controller_or_fails_them() {
        let rt = crate::pool::runtime(4);
        let state = tempfile::tempdir().unwrap();
        let c = example();
        let why = "seeding worker2 failed: cannot read the closures on the controller";
        for mode in [Fanout::On, Fanout::Require] {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            // In rollout order: the first is the seed.
            let nodes = ["worker2", "head", "worker1"].map(node);
            let needing: Vec<_> = nodes.iter().map(|(_, s)| s.clone()).collect();
            let got = copy_closures(&rt, &needing, &c, state.path(), 4, mode, &tx);
            assert_eq!(
                got["worker2"],
                Err(FanoutError::Seed {
                    seed: "worker2".into(),
                    why: "cannot read the closures on the controller".into()
                })
            );
            assert!(nodes[0].0.calls().is_empty(), "nothing went to the seed");
            let ev = events(&mut rx);
            assert!(ev.contains(&(
                "worker2".into(),
                Ev::Failed,
                "seeding failed: cannot read the closures on the controller; falling back to per-node copies".into()
            )));
            for (h, s) in &nodes[1..] {
                if mode == Fanout::On {
                    assert_eq!(got[&s.name], Ok(Delivery::fallback(why.into())));
                    assert_eq!(copies(h), [vec![s.system.clone()]]);
                    let warned = fall_back_or_fail(false, why).unwrap();
                    assert!(ev.contains(&(s.name.clone(), Ev::Warning, warned)));
                } else {
                    let e = fall_back_or_fail(true, why).unwrap_err();
                    assert_eq!(got[&s.name], Err(e.clone()));
                    assert!(copies(h).is_empty(), "{}: copied anyway", s.name);
                    assert!(ev.contains(&(s.name.clone(), Ev::Failed, e.to_string())));
                }
            }
        }
    }

    #[test]
    fn the_cluster_key_leaves_the_seed_and_every_peer_afterwards() {
        let rt = crate::pool::runtime(4);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let state = tempfile::tempdir().unwrap();
        std::fs::write(
            state.path().join("cluster_key.pub"),
            "ssh-ed25519 AAAAkey edgectl\n",
        )
        .unwrap();
        let nodes = ["worker1", "head"].map(node);
        for (h, _) in &nodes {
            h.on(|_| true, |_| ok(""));
        }
        let needing: Vec<_> = nodes.iter().map(|(_, s)| s.clone()).collect();
        copy_closures(&rt, &needing, &example(), state.path(), 4, Fanout::On, &tx);
        let seed = nodes[0].0.calls();
        let rm = argv(["rm", "-f", CLUSTER_KEY, KNOWN_HOSTS, RELAY_FILE]);
        let removed = |calls: &[Call]| {
            calls.contains(&Call::Run {
                argv: rm.clone(),
                root: true,
            })
        };
        assert!(removed(&seed), "{seed:?}");
        // A peer may have relayed as an inner node of the tree: it loses the key too.
        assert!(removed(&nodes[1].0.calls()), "{:?}", nodes[1].0.calls());
        assert_eq!(nodes[1].0.scripts(), ["edgectl-deauthorize"]);
        let Some(Call::Run { argv, .. }) = nodes[1].0.calls().pop() else {
            panic!("no call")
        };
        assert_eq!(argv[4], "ssh-ed25519 AAAAkey edgectl");
    }

    #[test]
    fn after_the_relay_each_live_peer_is_judged_by_its_report_then_by_its_store() {
        let rt = crate::pool::runtime(4);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_, head) = node("head");
        let nodes = ["w1", "w2", "w3", "w4"].map(node);
        holding(&nodes[3].0);
        let live: Vec<Peer> = nodes.iter().map(|(_, s)| peer(s, 22)).collect();
        let stream: Vec<String> = ["a", "b", "c"].map(|p| format!("/nix/store/{p}")).into();
        // w1 took it all; the seed could not log in to w2; w3's import failed; w4 unreported.
        let report =
            Ok("peer 1 0 3 \npeer 2 255 0 Connection refused\npeer 3 1 2 import failed\n".into());
        let mut d = distribution(&rt, &tx, &head, false);
        let (again, direct) = d.settle(live, &report, &stream);
        assert_eq!(d.out["w1"], fanned("head", Source::SeedStream));
        assert_eq!(
            d.out["w4"],
            fanned("head", Source::SeedStream),
            "holds its system"
        );
        assert_eq!(d.out.len(), 2);
        let names = |v: Vec<&Peer>| v.iter().map(|p| p.s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(again.iter().collect()), ["w3"]);
        assert_eq!(names(direct.iter().map(|(p, _)| p).collect()), ["w2"]);
        assert_eq!(
            direct[0].1,
            "head could not log in to it over SSH: Connection refused"
        );
        let ev = events(&mut rx);
        assert!(ev.contains(&(
            "w2".into(),
            Ev::Progress,
            "the relay did not reach it (Connection refused); copying from the controller".into()
        )));
        assert!(ev.contains(&(
            "w3".into(),
            Ev::Progress,
            "the relay did not reach it (import failed); copying again".into()
        )));
        // Under --fanout require the one the LAN cannot serve fails.
        d.require = true;
        d.fall_back(direct);
        assert!(
            d.out["w2"]
                .as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("fan-out is required")
        );
        assert!(copies(&nodes[1].0).is_empty());

        // Nothing to stream: every peer already held everything.
        let mut d = distribution(&rt, &tx, &head, false);
        let live: Vec<Peer> = nodes.iter().map(|(_, s)| peer(s, 22)).collect();
        let (again, direct) = d.settle(live, &Ok(String::new()), &[]);
        assert!(again.is_empty() && direct.is_empty());
        assert!(
            d.out
                .values()
                .all(|r| r == &Ok(Delivery::from(Source::Held, None)))
        );
    }

    #[test]
    fn a_seed_lost_mid_upload_leaves_peers_what_the_stream_gave_them() {
        let rt = crate::pool::runtime(4);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (seed_host, head) = node("head");
        let broken: Result<String, String> = Err("import on the seed: disk full".into());
        // The relay broke off, but the seed holds every closure: it counts as seeded.
        holding(&seed_host);
        let mut d = distribution(&rt, &tx, &head, false);
        assert_eq!(d.seed_holds(&broken), Ok(()));
        assert_eq!(d.out["head"], Ok(Delivery::from(Source::Seed, None)));
        // It does not: the seed failed, and its peers hold their system or fall back.
        let (seed_host, head) = node("head");
        let mut d = distribution(&rt, &tx, &head, false);
        let e = d.seed_holds(&broken).unwrap_err();
        assert_eq!(e, "import on the seed: disk full");
        assert!(!seed_host.calls().is_empty(), "the seed was asked");
        let nodes = ["w1", "w2"].map(node);
        holding(&nodes[0].0);
        d.seed_lost(e, nodes.iter().map(|(_, s)| peer(s, 22)).collect());
        let lost = FanoutError::Seed {
            seed: "head".into(),
            why: "import on the seed: disk full".into(),
        };
        assert_eq!(d.out["head"], Err(lost));
        assert_eq!(d.out["w1"], fanned("head", Source::SeedStream));
        let why = "the seed head failed: import on the seed: disk full";
        assert_eq!(d.out["w2"], Ok(Delivery::fallback(why.into())));
        assert!(copies(&nodes[0].0).is_empty());
        assert_eq!(copies(&nodes[1].0), [vec![system("w2")]]);
    }
}
