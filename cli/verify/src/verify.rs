//! `edgectl verify`: make sure every selected node runs an agent (the NixOS service, or one
//! uploaded and started for this run), ask each for facts and runtime results, have them
//! measure latency to each other, stop what was started, and judge it all.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edgectl_agent::facts::Facts;
use edgectl_agent::pki::{CONTROLLER, Pki};
use edgectl_agent::proto::{ColdStart, PairStat, Peer, RayFacts, Request, Response, WasiOutcome};
use edgectl_agent::server::{CA_FILE, CERT_FILE, KEY_FILE, PID_FILE};
use edgectl_agent::{client, tls};
use edgectl_deploy::host::{Host, SshHost, SshTarget, argv};
use edgectl_deploy::state::State;
use edgectl_deploy::{EngineError, Run};
use edgectl_model::{Feature, LoadOptions, Node};
use quinn::Connection;
use serde::{Deserialize, Serialize};

use crate::checks::{self, Check, Verdict};

pub const DEFAULT_AGENT_DIR: &str = "/var/lib/edgectl-agent";
pub const DEFAULT_AGENT_PORT: u16 = 7443;
/// Not zenohd's 7447: a Zenoh router on the node may hold that one.
pub const DEFAULT_ZENOH_PORT: u16 = 7448;
pub const RAY_GCS_PORT: u16 = 6379;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub on: Option<String>,
    pub identity: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub load: LoadOptions,
    /// Where keys (and an uploaded agent) live on the nodes.
    pub agent_dir: String,
    pub agent_port: u16,
    pub zenoh_port: u16,
    /// An agent binary already on the nodes at this path: nothing is uploaded.
    pub agent_bin: Option<String>,
    /// Round trips per pair and transport.
    pub samples: u32,
    /// Skip the Zenoh matrix (QUIC only).
    pub no_zenoh: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            on: None,
            identity: None,
            connect_timeout: Duration::from_secs(10),
            load: LoadOptions::default(),
            agent_dir: DEFAULT_AGENT_DIR.into(),
            agent_port: DEFAULT_AGENT_PORT,
            zenoh_port: DEFAULT_ZENOH_PORT,
            agent_bin: None,
            samples: 100,
            no_zenoh: false,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    /// "service" (already running), "started" (uploaded for this run) or "unreachable".
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<Facts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm_cold_start: Option<ColdStart>,
    /// The node's `wasmtime` and `wasmedge` programs' cold starts (see `wasm_cli`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasm_cli: Option<edgectl_agent::wasm_cli::WasmCli>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ray: Option<RayFacts>,
    /// What the Ray probe measured from the head (see `ray_probe`): on the head's report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_probe: Option<edgectl_agent::ray_probe::RayProbe>,
    /// The built-in unikernel's boots under KVM (nodes with the unikernel feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unikernel_boot: Option<edgectl_agent::unikernel::UnikernelBoot>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_checks: BTreeMap<String, WasiOutcome>,
    /// Who was applying to the node while it was verified (its lock's holder): the results
    /// may describe a node in the middle of a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_in_progress: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub total_ms: f64,
    pub agents_ms: f64,
    pub matrix_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub cluster: String,
    pub topology: String,
    pub ok: bool,
    pub summary: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    pub nodes: Vec<NodeReport>,
    pub checks: Vec<Check>,
    pub quic: Vec<PairStat>,
    pub zenoh: Vec<PairStat>,
    /// Zenoh round trips through each of the cluster's routers (see `zenoh_router`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zenoh_routers: Vec<crate::zenoh_router::RouterPairs>,
    pub timings: Timings,
}

impl Report {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }
}

struct Prepared {
    ssh: Option<SshHost>,
    started: bool,
    /// The node runs NixOS, where the agent is a service of the applied system.
    nixos: bool,
    error: Option<String>,
    /// The holder of the node's lock, when an apply is running there.
    applying: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Runs `argv` as root and wants exit 0.
fn run_ok(h: &SshHost, a: Vec<String>) -> Result<String, String> {
    let o = h.run(&a, true).map_err(|e| e.to_string())?;
    if o.ok() {
        Ok(o.stdout)
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            a.join(" "),
            o.status,
            o.stderr.trim()
        ))
    }
}

// Constant scripts: every value reaches them as a positional argument, never as shell text.
/// Stops the agent that pid file `$1` names, and only that one: a stale file's pid may belong
/// to any process by now. The file holds "PID START" (`server::PID_FILE`); the process must
/// have started then (when the file says) and be an `edgectl agent` serving the file's directory.
const STOP_OLD: &str = r#"f=$1
dir=${f%/*}
[ -f "$f" ] || exit 0
read -r pid start <"$f"
rm -f "$f"
case $pid in ''|*[!0-9]*) exit 0 ;; esac
stat=/proc/$pid/stat
[ -r "$stat" ] || exit 0
if [ -n "$start" ]; then
  [ "$(sed 's/.*) //' "$stat" | cut -d' ' -f20)" = "$start" ] || exit 0
fi
args=$(tr '\0' '\n' <"/proc/$pid/cmdline")
printf '%s\n' "$args" | grep -qx agent || exit 0
printf '%s\n' "$args" | grep -qxF -- "$dir" || exit 0
kill "$pid" 2>/dev/null
true"#;
const DETACH: &str = r#"exec "$@" >"$0" 2>&1 </dev/null"#;

fn prepare(
    node: &Node,
    target: SshTarget,
    pki: &Pki,
    opts: &VerifyOptions,
    exe: &[u8],
) -> Prepared {
    let fail = |e: String| Prepared {
        ssh: None,
        started: false,
        nixos: false,
        error: Some(e),
        applying: None,
    };
    let h = match SshHost::connect(target) {
        Ok(h) => h,
        Err(e) => return fail(e.to_string()),
    };
    let nixos = h
        .run(&argv(["cat", "/etc/os-release"]), false)
        .map(|o| is_nixos(&o.stdout))
        .unwrap_or(false);
    let go = || -> Result<bool, String> {
        let id = pki.identity(edgectl_agent::pki::Party::Node(&node.name))?;
        let dir = opts.agent_dir.trim_end_matches('/');
        run_ok(&h, argv(["mkdir", "-p", "-m", "0700", dir]))?;
        let up = |name: &str, bytes: &[u8], mode: u32| {
            h.upload(&format!("{dir}/{name}"), bytes, mode)
                .map_err(|e| format!("upload {name}: {e}"))
        };
        up(CA_FILE, pki.ca_pem.as_bytes(), 0o644)?;
        up(CERT_FILE, id.cert_pem.as_bytes(), 0o644)?;
        up(KEY_FILE, id.key_pem.as_bytes(), 0o600)?;
        let service = h
            .run(&argv(["systemctl", "is-active", "edgectl-agent"]), false)
            .map(|o| o.stdout.trim() == "active")
            .unwrap_or(false);
        // On NixOS the agent is edgectl-agent.service of the applied system, and a generic
        // binary could not run anyway: NixOS has no /lib64/ld-linux-x86-64.so.2.
        if service || (nixos && opts.agent_bin.is_none()) {
            return Ok(false);
        }
        let bin = match &opts.agent_bin {
            Some(b) => b.clone(),
            None => {
                let bin = format!("{dir}/edgectl");
                let have = h
                    .run(&argv(["sha256sum", &bin]), true)
                    .map(|o| o.stdout.split_whitespace().next().unwrap_or("").to_string())
                    .unwrap_or_default();
                if have != sha256_hex(exe) {
                    up("edgectl", exe, 0o755)?;
                }
                bin
            }
        };
        let pid = format!("{dir}/{PID_FILE}");
        run_ok(&h, argv(["sh", "-c", STOP_OLD, "edgectl-stop", &pid]))?;
        run_ok(
            &h,
            argv([
                "setsid".to_string(),
                "-f".into(),
                // Probes should measure the network, not a busy node's scheduler.
                "nice".into(),
                "-n".into(),
                "-10".into(),
                "sh".into(),
                "-c".into(),
                DETACH.into(),
                format!("{dir}/agent.log"),
                bin,
                "agent".into(),
                "--listen".into(),
                format!("0.0.0.0:{}", opts.agent_port),
                "--state-dir".into(),
                dir.to_string(),
                // A safety net: the controller stops it at the end of the run.
                "--exit-after".into(),
                "900".into(),
            ]),
        )?;
        Ok(true)
    };
    let applying = edgectl_deploy::session::apply_in_progress(&h);
    match go() {
        Ok(started) => Prepared {
            ssh: Some(h),
            started,
            nixos,
            error: None,
            applying,
        },
        Err(e) => Prepared {
            ssh: Some(h),
            started: false,
            nixos,
            error: Some(e),
            applying,
        },
    }
}

/// Whether an `/etc/os-release` text describes NixOS.
pub fn is_nixos(os_release: &str) -> bool {
    os_release.lines().any(|l| {
        l.trim()
            .strip_prefix("ID=")
            .is_some_and(|v| v.trim_matches(['"', '\'']) == "nixos")
    })
}

fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    (host, port).to_socket_addrs().ok()?.find(|a| a.is_ipv4())
}

/// The address peers should use: the node's first LAN address when the node really has it,
/// else its SSH host.
fn peer_ip(node: &Node, facts: Option<&Facts>, host: IpAddr) -> IpAddr {
    if let Some(f) = facts {
        for i in &node.interfaces {
            let a = i.address.to_string();
            let ip = a.split('/').next().unwrap_or("");
            if f.nics
                .iter()
                .any(|n| n.addresses.iter().any(|x| x.split('/').next() == Some(ip)))
                && let Ok(ip) = ip.parse()
            {
                return ip;
            }
        }
    }
    host
}

/// Verifies the run's selected nodes (`opts.on` and `opts.load` were used to make `run`).
pub fn verify(run: &Run, opts: &VerifyOptions) -> Result<Report, EngineError> {
    let t0 = Instant::now();
    let (topology, loaded) = (run.topology.as_path(), &run.loaded);
    let cluster = &loaded.cluster;
    let state_dir = run.state_dir.clone();
    let st = State::load(&state_dir)?;
    let pki = Pki::open(&state_dir.join("pki"), &cluster.name)?;
    let controller = pki.identity(CONTROLLER)?;
    let user_modules = user_modules(topology, &loaded.file.checks)?;
    let exe = if opts.agent_bin.is_none() {
        own_binary()?
    } else {
        Vec::new()
    };
    let nodes: Vec<&Node> = run
        .selected
        .iter()
        .filter_map(|n| cluster.node(n))
        .collect();
    let prepared = prepare_all(&nodes, &st, &state_dir, &pki, opts, &exe);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut report = rt.block_on(collect(
        cluster,
        &nodes,
        &prepared,
        &pki.ca_pem,
        &controller,
        opts,
        &user_modules,
    ))?;
    explain_unreachable(&mut report.nodes, &prepared, opts);
    // Stop what this run started, whatever happened above.
    stop_started(&prepared, opts);
    report.cluster = cluster.name.clone();
    report.topology = topology.display().to_string();
    report.latency_p99_ms = cluster.targets.latency_p99_ms;
    report.summary = summary(&report.checks);
    report.ok = !report.failed();
    record(&state_dir, &report);
    report.timings.total_ms = ms(t0.elapsed());
    Ok(report)
}

/// The topology's `[[check]]`s, their modules read from beside the topology file.
fn user_modules(
    topology: &Path,
    checks: &[edgectl_model::topology::CheckSpec],
) -> Result<Vec<UserModule>, String> {
    let base = topology.parent().unwrap_or(Path::new("."));
    let mut user_modules = Vec::new();
    for c in checks {
        let p = base.join(&c.wasm);
        let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        user_modules.push(UserModule {
            name: c.name.clone(),
            module_b64: base64::engine::general_purpose::STANDARD.encode(b),
            args: c.args.clone(),
            timeout: Duration::from_secs_f64(c.timeout_s.unwrap_or(USER_CHECK_TIMEOUT_S)),
        });
    }
    Ok(user_modules)
}

/// This edgectl binary, to upload as the agent.
fn own_binary() -> Result<Vec<u8>, String> {
    let p =
        std::env::current_exe().map_err(|e| format!("cannot find edgectl's own binary: {e}"))?;
    std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Prepares every node's agent at once, each over SSH with its pinned host key.
fn prepare_all(
    nodes: &[&Node],
    st: &State,
    state_dir: &Path,
    pki: &Pki,
    opts: &VerifyOptions,
    exe: &[u8],
) -> Vec<Prepared> {
    std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|n| {
                let target = edgectl_deploy::run::ssh_target(
                    n,
                    st,
                    opts.identity.as_deref(),
                    opts.connect_timeout,
                    state_dir,
                );
                s.spawn(move || prepare(n, target, pki, opts, exe))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or(Prepared {
                    ssh: None,
                    started: false,
                    nixos: false,
                    error: Some("worker panicked".into()),
                    applying: None,
                })
            })
            .collect()
    })
}

/// An agent started here that never answered says why in its log; a NixOS node's says
/// where to look, since nothing was started there.
fn explain_unreachable(reports: &mut [NodeReport], prepared: &[Prepared], opts: &VerifyOptions) {
    for (r, p) in reports.iter_mut().zip(prepared) {
        if p.nixos && !p.started && r.agent == "unreachable" && p.ssh.is_some() {
            let e = r.error.get_or_insert_with(String::new);
            e.push_str(&format!(
                "; on NixOS the agent is the edgectl-agent service of the applied system (feature \"agent\"), listening on UDP {}: apply a configuration with it, and see `journalctl -u edgectl-agent` on {}",
                opts.agent_port, r.name
            ));
        }
        if p.started
            && r.agent == "unreachable"
            && let Some(h) = &p.ssh
        {
            let log = format!("{}/agent.log", opts.agent_dir.trim_end_matches('/'));
            if let Ok(o) = h.run(&argv(["tail", "-n", "5", &log]), true)
                && !o.stdout.trim().is_empty()
            {
                let e = r.error.get_or_insert_with(String::new);
                e.push_str(&format!(
                    "; {log}: {}",
                    o.stdout.trim().replace('\n', " | ")
                ));
            }
        }
    }
}

/// Stops the agents this run started.
fn stop_started(prepared: &[Prepared], opts: &VerifyOptions) {
    for p in prepared {
        if p.started
            && let Some(h) = &p.ssh
        {
            let pid = format!("{}/{PID_FILE}", opts.agent_dir.trim_end_matches('/'));
            let _ = h.run(&argv(["sh", "-c", STOP_OLD, "edgectl-stop", &pid]), true);
        }
    }
}

/// Keeps each node's verdict in the state for `edgectl status`; a state that cannot be written
/// loses only that (the report itself is printed either way).
fn record(state_dir: &Path, report: &Report) {
    let Ok(mut st) = State::load(state_dir) else {
        return;
    };
    let at = edgectl_deploy::state::now();
    for n in &report.nodes {
        let mine = report.checks.iter().filter(|c| c.node == n.name);
        let s = summary(&mine.cloned().collect::<Vec<_>>());
        st.nodes.entry(n.name.clone()).or_default().last_verify =
            Some(edgectl_deploy::state::VerifyRecord {
                at,
                pass: s.pass,
                fail: s.fail,
                skip: s.skip,
            });
    }
    let _ = st.save(state_dir);
}

fn summary(checks: &[Check]) -> Summary {
    let mut s = Summary::default();
    for c in checks {
        match c.verdict {
            Verdict::Pass => s.pass += 1,
            Verdict::Fail => s.fail += 1,
            Verdict::Skip => s.skip += 1,
        }
    }
    s
}

async fn connect_agent(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    name: &str,
    wait: Duration,
) -> Result<Connection, String> {
    let end = Instant::now() + wait;
    loop {
        match client::connect(ep, None, addr, name, Duration::from_millis(500)).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > end => return Err(format!("agent on {addr}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

const REQ_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `[[check]]` module may run unless it says (`timeout_s`).
pub const USER_CHECK_TIMEOUT_S: f64 = 30.0;

/// A `[[check]]`, ready to send.
struct UserModule {
    name: String,
    module_b64: String,
    args: Vec<String>,
    timeout: Duration,
}

/// An agent as the matrix uses it: its node's index in `nodes`, its connection, and the
/// address its peers reach it at.
type Live<'a> = (usize, &'a Connection, SocketAddr);

#[allow(clippy::too_many_arguments)]
async fn collect(
    cluster: &edgectl_model::Cluster,
    nodes: &[&Node],
    prepared: &[Prepared],
    ca_pem: &str,
    controller: &edgectl_agent::pki::Identity,
    opts: &VerifyOptions,
    user_modules: &[UserModule],
) -> Result<Report, String> {
    let t_agents = Instant::now();
    let ep = client::endpoint(tls::client(ca_pem, Some(controller))?)?;
    let mut reports: Vec<NodeReport> = nodes
        .iter()
        .zip(prepared)
        .map(|(n, p)| first_report(n, p))
        .collect();
    let mut checks = Vec::new();
    let answers = ask_agents(&ep, cluster, nodes, prepared, opts, user_modules).await;
    let mut conns: Vec<Option<(Connection, SocketAddr)>> = Vec::new();
    for ((n, r), a) in nodes.iter().zip(reports.iter_mut()).zip(answers) {
        conns.push(match a {
            Err(e) => {
                checks.push(unreachable(n, r, e));
                None
            }
            Ok(a) => Some(judge(cluster, n, r, a, opts.agent_port, &mut checks)),
        });
    }
    // The Ray probe from the head, while no other agent is busy for verify.
    checks.extend(crate::ray_probe::probe(cluster, nodes, &mut reports, &conns).await);
    let agents_ms = ms(t_agents.elapsed());

    // The matrix, between the agents that answered.
    let t_matrix = Instant::now();
    let live: Vec<Live> = conns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.as_ref().map(|(c, a)| (i, c, *a)))
        .collect();
    let (mut quic, mut zenoh) = if live.len() >= 2 {
        matrix(nodes, &live, opts, &mut checks).await?
    } else {
        Default::default()
    };
    let order = node_order(nodes);
    sort_pairs(&order, &mut quic);
    sort_pairs(&order, &mut zenoh);
    let t = cluster.targets.latency_p99_ms;
    checks.extend(quic.iter().map(|s| checks::latency("quic", s, t)));
    checks.extend(zenoh.iter().map(|s| checks::latency("zenoh", s, t)));
    let zenoh_routers = if edgectl_agent::ZENOH && !opts.no_zenoh {
        crate::zenoh_router::measure(cluster, nodes, &live, opts.samples, &mut checks).await
    } else {
        Vec::new()
    };
    let matrix_ms = ms(t_matrix.elapsed());

    release(prepared, &conns).await;
    ep.wait_idle().await;
    sort_checks(&order, &mut checks);
    Ok(Report {
        nodes: reports,
        checks,
        quic,
        zenoh,
        zenoh_routers,
        timings: Timings {
            total_ms: 0.0,
            agents_ms,
            matrix_ms,
        },
        ..Default::default()
    })
}

/// A node's report before its agent is asked anything: how its agent was prepared.
fn first_report(n: &Node, p: &Prepared) -> NodeReport {
    NodeReport {
        name: n.name.clone(),
        agent: if p.error.is_some() {
            "unreachable".into()
        } else if p.started {
            "started".into()
        } else {
            "service".into()
        },
        error: p.error.clone(),
        apply_in_progress: p.applying.clone(),
        ..Default::default()
    }
}

/// What one agent answered.
struct Answers {
    conn: Connection,
    addr: SocketAddr,
    facts: Facts,
    /// Asked on nodes with the wasm feature.
    cold: Option<Result<ColdStart, String>>,
    /// Asked on nodes with the wasm feature: the node's own runtimes.
    wasm_cli: Option<Result<edgectl_agent::wasm_cli::WasmCli, String>>,
    /// Asked on nodes with the unikernel feature.
    unikernel: Option<Result<edgectl_agent::unikernel::UnikernelBoot, String>>,
    /// Each `[[check]]` by name.
    user: Vec<(String, Result<WasiOutcome, String>)>,
    /// Asked of the Ray head, where the cluster wants Ray.
    ray: Option<Result<RayFacts, String>>,
}

/// An agent's answer of the kind `want` takes, the error it sent, or why none came.
fn answer<T>(
    r: Result<Response, String>,
    want: impl FnOnce(Response) -> Result<T, Response>,
) -> Result<T, String> {
    match r? {
        Response::Error { message } => Err(message),
        o => want(o).map_err(|o| format!("unexpected answer {o:?}")),
    }
}

/// Every agent answers its own questions concurrently; the answers in `nodes`' order.
async fn ask_agents(
    ep: &quinn::Endpoint,
    cluster: &edgectl_model::Cluster,
    nodes: &[&Node],
    prepared: &[Prepared],
    opts: &VerifyOptions,
    user_modules: &[UserModule],
) -> Vec<Result<Answers, String>> {
    let ray_wanted = cluster.nodes.iter().any(|n| n.has(Feature::Ray));
    let asks = nodes.iter().zip(prepared).map(|(n, p)| {
        let host_addr = resolve(&n.host, opts.agent_port);
        let has_ray_head = n.is(edgectl_model::Role::RayHead) && ray_wanted;
        let failed = p.error.clone();
        async move {
            if let Some(e) = failed {
                return Err(e);
            }
            let addr = host_addr.ok_or_else(|| format!("cannot resolve {}", n.host))?;
            ask_agent(ep, n, addr, has_ray_head, user_modules).await
        }
    });
    join_vec(asks.collect()).await
}

/// One agent's facts, its wasm cold start, the `[[check]]`s and, on the Ray head, Ray's status.
async fn ask_agent(
    ep: &quinn::Endpoint,
    n: &Node,
    addr: SocketAddr,
    has_ray_head: bool,
    user_modules: &[UserModule],
) -> Result<Answers, String> {
    let conn = connect_agent(ep, addr, &n.name, Duration::from_secs(15)).await?;
    let facts = answer(
        client::request(&conn, &Request::Facts, REQ_TIMEOUT).await,
        |r| match r {
            Response::Facts(f) => Ok(*f),
            o => Err(o),
        },
    )?;
    let cold = if n.has(Feature::Wasm) {
        let r = client::request(&conn, &Request::WasmColdStart, REQ_TIMEOUT).await;
        Some(answer(r, |r| match r {
            Response::ColdStart(c) => Ok(c),
            o => Err(o),
        }))
    } else {
        None
    };
    let unikernel = if n.has(Feature::Unikernel) {
        let req = Request::UnikernelBoot {
            runs: edgectl_agent::unikernel::RUNS,
        };
        let r = client::request(&conn, &req, REQ_TIMEOUT).await;
        Some(answer(r, |r| match r {
            Response::UnikernelBoot(b) => Ok(b),
            o => Err(o),
        }))
    } else {
        None
    };
    let wasm_cli = if n.has(Feature::Wasm) {
        Some(crate::wasm_cli::ask(&conn).await)
    } else {
        None
    };
    let user = run_user_checks(&conn, user_modules).await;
    let ray = if has_ray_head {
        // The head's GCS listens on the node's cluster address (modules/lib/ray.nix).
        let req = Request::RayStatus {
            address: Some(format!(
                "{}:{}",
                peer_ip(n, Some(&facts), addr.ip()),
                RAY_GCS_PORT
            )),
        };
        let r = client::request(&conn, &req, REQ_TIMEOUT).await;
        Some(answer(r, |r| match r {
            Response::Ray(r) => Ok(r),
            o => Err(o),
        }))
    } else {
        None
    };
    Ok(Answers {
        conn,
        addr,
        facts,
        cold,
        wasm_cli,
        unikernel,
        user,
        ray,
    })
}

/// Each `[[check]]` module on one agent, one after another.
async fn run_user_checks(
    conn: &Connection,
    user_modules: &[UserModule],
) -> Vec<(String, Result<WasiOutcome, String>)> {
    let mut user = Vec::new();
    for m in user_modules {
        let req = Request::RunWasi {
            name: m.name.clone(),
            module_b64: m.module_b64.clone(),
            args: m.args.clone(),
            timeout_ms: m.timeout.as_millis() as u64,
        };
        // The agent answers by the module's limit plus its sandbox's grace.
        let wait = m.timeout + edgectl_agent::wasm::PROCESS_GRACE + REQ_TIMEOUT;
        let r = answer(client::request(conn, &req, wait).await, |r| match r {
            Response::Wasi(o) => Ok(o),
            o => Err(o),
        });
        user.push((m.name.clone(), r));
    }
    user
}

/// An agent that did not answer: its report says why, and so does a failed check.
fn unreachable(n: &Node, r: &mut NodeReport, e: String) -> Check {
    r.agent = "unreachable".into();
    r.error = Some(e.clone());
    Check {
        node: n.name.clone(),
        category: "agent".into(),
        name: "agent reachable".into(),
        expected: "answers over QUIC with mutual TLS".into(),
        actual: e,
        verdict: Verdict::Fail,
        reason: None,
    }
}

/// Judges one agent's answers into `out` and keeps them in its report; returns its connection
/// and the address its peers reach its agent at.
fn judge(
    cluster: &edgectl_model::Cluster,
    n: &Node,
    r: &mut NodeReport,
    a: Answers,
    agent_port: u16,
    out: &mut Vec<Check>,
) -> (Connection, SocketAddr) {
    out.extend(checks::hardware(n, &a.facts));
    out.extend(checks::config(n, &a.facts));
    if let Some(c) = &a.cold {
        out.extend(checks::wasm(
            n,
            &a.facts,
            c.as_ref().map_err(String::as_str),
            cluster.targets.wasm_cold_start_ms,
        ));
        r.wasm_cold_start = c.as_ref().ok().cloned();
    }
    if let Some(w) = &a.wasm_cli {
        out.extend(crate::wasm_cli::checks(
            n,
            w.as_ref().map_err(String::as_str),
            r.wasm_cold_start.as_ref(),
            cluster.targets.wasm_cold_start_ms,
        ));
        r.wasm_cli = w.as_ref().ok().cloned();
    }
    if let Some(b) = &a.unikernel {
        out.push(crate::unikernel::check(
            &n.name,
            b.as_ref().map_err(String::as_str),
            cluster.targets.unikernel_boot_ms,
        ));
        r.unikernel_boot = b.as_ref().ok().cloned();
    }
    for (name, o) in &a.user {
        out.push(checks::user(
            &n.name,
            name,
            o.as_ref().map_err(String::as_str),
        ));
        if let Ok(o) = o {
            r.user_checks.insert(name.clone(), o.clone());
        }
    }
    if let Some(ray) = &a.ray {
        out.extend(checks::ray(
            cluster,
            n,
            ray.as_ref().map_err(String::as_str),
        ));
        r.ray = ray.as_ref().ok().cloned();
    }
    let ip = peer_ip(n, Some(&a.facts), a.addr.ip());
    r.address = Some(ip.to_string());
    r.facts = Some(a.facts);
    (a.conn, SocketAddr::new(ip, agent_port))
}

fn zenoh_endpoint(a: &SocketAddr, port: u16) -> String {
    format!("tcp/{}:{}", a.ip(), port)
}

/// The latency matrix between the `live` agents: QUIC, and Zenoh unless it is off or a
/// session would not open.
async fn matrix(
    nodes: &[&Node],
    live: &[Live<'_>],
    opts: &VerifyOptions,
    checks: &mut Vec<Check>,
) -> Result<(Vec<PairStat>, Vec<PairStat>), String> {
    let zenoh_attempted = edgectl_agent::ZENOH && !opts.no_zenoh;
    let zenoh_ok = zenoh_attempted && open_zenoh(nodes, live, opts.zenoh_port, checks).await?;
    let pairs = probe(nodes, live, opts, zenoh_ok, checks).await?;
    // Zenoh's listeners ask for no certificate: none stays open after the matrix, on a
    // service agent either (which closes it by itself when this connection ends, too).
    if zenoh_attempted {
        let closes = live.iter().map(|(_, conn, _)| {
            client::request(conn, &Request::ZenohClose, Duration::from_secs(10))
        });
        join_vec(closes.collect()).await;
    }
    Ok(pairs)
}

/// Opens a Zenoh peer session on every live agent; false, with a failed check, where one
/// does not open.
async fn open_zenoh(
    nodes: &[&Node],
    live: &[Live<'_>],
    port: u16,
    checks: &mut Vec<Check>,
) -> Result<bool, String> {
    // In order, each connecting to those before it: every pair gets one direct link,
    // and every endpoint it dials is already listening.
    for (k, (i, conn, addr)) in live.iter().enumerate() {
        let req = Request::ZenohOpen {
            me: nodes[*i].name.clone(),
            listen: zenoh_endpoint(addr, port),
            connect: live[..k]
                .iter()
                .map(|(_, _, a)| zenoh_endpoint(a, port))
                .collect(),
        };
        match client::request(conn, &req, Duration::from_secs(20)).await {
            Ok(Response::Ok) => {}
            Ok(Response::Error { message }) | Err(message) => {
                checks.push(Check {
                    node: nodes[*i].name.clone(),
                    category: "network".into(),
                    name: "zenoh session".into(),
                    expected: format!("peer session on {}", zenoh_endpoint(addr, port)),
                    actual: message,
                    verdict: Verdict::Fail,
                    reason: None,
                });
                return Ok(false);
            }
            Ok(o) => return Err(format!("unexpected answer {o:?}")),
        }
    }
    Ok(true)
}

/// Rounds of (sender, echo) pairs, every ordered pair once: each of [`pair_rounds`], then
/// the same pairs the other way.
pub(crate) fn directed_rounds(n: usize) -> Vec<Vec<(usize, usize)>> {
    pair_rounds(n)
        .into_iter()
        .flat_map(|r| {
            let back: Vec<(usize, usize)> = r.iter().map(|&(a, b)| (b, a)).collect();
            [r, back]
        })
        .collect()
}

/// Each live agent measures its round trips to each other, over QUIC and (when `zenoh`)
/// Zenoh.
async fn probe(
    nodes: &[&Node],
    live: &[Live<'_>],
    opts: &VerifyOptions,
    zenoh: bool,
    checks: &mut Vec<Check>,
) -> Result<(Vec<PairStat>, Vec<PairStat>), String> {
    let (mut quic, mut zen) = (Vec::new(), Vec::new());
    // Rounds in which every node is in at most one probe, as sender or as echo: probes
    // never compete for a node's CPU, and n nodes take 2(n-1) (or 2n) rounds, not n(n-1).
    for round in directed_rounds(live.len()) {
        let reqs: Vec<_> = round
            .iter()
            .map(|&(x, y)| {
                let (i, conn, _) = live[x];
                let (j, _, addr) = live[y];
                let req = Request::Matrix {
                    me: nodes[i].name.clone(),
                    peers: vec![Peer {
                        name: nodes[j].name.clone(),
                        quic: addr,
                        zenoh: zenoh_endpoint(&addr, opts.zenoh_port),
                    }],
                    samples: opts.samples,
                    zenoh,
                };
                async move {
                    (
                        i,
                        client::request(conn, &req, Duration::from_secs(300)).await,
                    )
                }
            })
            .collect();
        for (i, res) in join_vec(reqs).await {
            match res {
                Ok(Response::Matrix { quic: q, zenoh: z }) => {
                    quic.extend(q);
                    zen.extend(z);
                }
                Ok(Response::Error { message }) | Err(message) => checks.push(Check {
                    node: nodes[i].name.clone(),
                    category: "network".into(),
                    name: "latency matrix".into(),
                    expected: "measured".into(),
                    actual: message,
                    verdict: Verdict::Fail,
                    reason: None,
                }),
                Ok(o) => return Err(format!("unexpected answer {o:?}")),
            }
        }
    }
    Ok((quic, zen))
}

/// Each node's place in the topology.
fn node_order<'a>(nodes: &[&'a Node]) -> BTreeMap<&'a str, usize> {
    nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect()
}

/// Pairs in the topology's order, by sender then peer.
fn sort_pairs(order: &BTreeMap<&str, usize>, pairs: &mut [PairStat]) {
    pairs.sort_by_key(|s| {
        (
            order.get(s.from.as_str()).copied(),
            order.get(s.to.as_str()).copied(),
        )
    });
}

/// Checks per node as the topology lists them, then by category.
fn sort_checks(order: &BTreeMap<&str, usize>, checks: &mut [Check]) {
    checks.sort_by_key(|c| {
        (
            order.get(c.node.as_str()).copied().unwrap_or(usize::MAX),
            category_rank(&c.category),
        )
    });
}

/// Agents this run started go now; a service stays.
async fn release(prepared: &[Prepared], conns: &[Option<(Connection, SocketAddr)>]) {
    for (p, c) in prepared.iter().zip(conns) {
        if let Some((conn, _)) = c {
            if p.started {
                let _ = client::request(conn, &Request::Shutdown, Duration::from_secs(2)).await;
            }
            conn.close(0u32.into(), b"done");
        }
    }
}

/// Round-robin (circle method) schedule of all unordered pairs of `n` items.
pub fn pair_rounds(n: usize) -> Vec<Vec<(usize, usize)>> {
    let mut idx: Vec<Option<usize>> = (0..n).map(Some).collect();
    if n % 2 == 1 {
        idx.push(None);
    }
    let m = idx.len();
    let mut rounds = Vec::new();
    for _ in 0..m.saturating_sub(1) {
        let round: Vec<(usize, usize)> = (0..m / 2)
            .filter_map(|k| match (idx[k], idx[m - 1 - k]) {
                (Some(a), Some(b)) => Some((a.min(b), a.max(b))),
                _ => None,
            })
            .collect();
        rounds.push(round);
        idx[1..].rotate_right(1);
    }
    rounds
}

fn category_rank(c: &str) -> usize {
    [
        "agent", "hardware", "config", "runtime", "user", "ray", "network",
    ]
    .iter()
    .position(|x| *x == c)
    .unwrap_or(99)
}

/// Awaits all futures concurrently on this task, results in order (no futures crate).
pub(crate) async fn join_vec<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{
        Check, Prepared, Response, STOP_OLD, Summary, Verdict, answer, directed_rounds,
        first_report, is_nixos, node_order, pair_rounds, sort_checks, sort_pairs, summary,
    };
    use edgectl_agent::proto::PairStat;
    use edgectl_agent::server::{PID_FILE, proc_start_time};
    use edgectl_model::Node;
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::{Child, Command};
    use std::time::Duration;

    /// Runs [`STOP_OLD`] here, as `verify` does on a node, on `dir`'s pid file.
    fn stop_old(dir: &Path) {
        let pid = dir.join(PID_FILE);
        let o = Command::new("sh")
            .args(["-c", STOP_OLD, "edgectl-stop"])
            .arg(&pid)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        assert!(!pid.exists(), "the pid file stays");
    }

    /// Whether `c` is still running after a moment (a signal takes a moment to land).
    fn survives(c: &mut Child) -> bool {
        std::thread::sleep(Duration::from_millis(200));
        c.try_wait().unwrap().is_none()
    }

    fn write_pid(dir: &Path, line: String) {
        std::fs::write(dir.join(PID_FILE), line).unwrap();
    }

    #[test]
    fn a_stale_pid_file_stops_only_the_agent_it_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        // An unrelated process that now has the pid, in the file as an agent writes it (with
        // its very start time) and as an older agent did (the pid alone): it lives on.
        let mut sleep = Command::new("sleep").arg("60").spawn().unwrap();
        let start = proc_start_time(sleep.id()).unwrap();
        for line in [format!("{} {start}\n", sleep.id()), sleep.id().to_string()] {
            write_pid(dir, line.clone());
            stop_old(dir);
            assert!(survives(&mut sleep), "{line:?} killed an unrelated `sleep`");
        }
        let _ = sleep.kill();
        let _ = sleep.wait();

        // A process that looks like the agent of this directory...
        let mut agent = Command::new("sh")
            .args(["-c", "while :; do sleep 0.1; done", "agent", "--state-dir"])
            .arg(dir)
            .spawn()
            .unwrap();
        let start = proc_start_time(agent.id()).unwrap();
        // ... of another one's directory, or started at another time than the file says (the
        // pid came round again): not the one the file is about.
        let other = tempfile::tempdir().unwrap();
        for (d, line) in [
            (other.path(), format!("{} {start}", agent.id())),
            (dir, format!("{} {}", agent.id(), start + 1)),
        ] {
            write_pid(d, line.clone());
            stop_old(d);
            assert!(survives(&mut agent), "{line:?} in {d:?} stopped it");
        }
        // The agent the file names is stopped.
        write_pid(dir, format!("{} {start}\n", agent.id()));
        stop_old(dir);
        let mut gone = false;
        for _ in 0..50 {
            if agent.try_wait().unwrap().is_some() {
                gone = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !gone {
            let _ = agent.kill();
        }
        assert!(gone, "the agent the pid file names still runs");
    }

    #[test]
    fn nixos_is_told_by_the_id_line_alone() {
        assert!(is_nixos("NAME=NixOS\nID=nixos\nVERSION_ID=\"25.11\"\n"));
        assert!(is_nixos("ID=\"nixos\"\n"));
        assert!(!is_nixos("NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\n"));
        // A derivative that names NixOS only in ID_LIKE is not NixOS's layout promise.
        assert!(!is_nixos("ID=somethingelse\nID_LIKE=nixos\n"));
        assert!(!is_nixos(""));
    }

    /// Every pair of `rounds` (for `n` nodes), asserting that none comes twice and that no
    /// node is in two pairs of one round.
    fn pairs_once_no_node_twice(
        rounds: &[Vec<(usize, usize)>],
        n: usize,
    ) -> BTreeSet<(usize, usize)> {
        let mut all = BTreeSet::new();
        for r in rounds {
            let mut seen = BTreeSet::new();
            for &(a, b) in r {
                assert!(seen.insert(a) && seen.insert(b), "n={n} {r:?}");
                assert!(all.insert((a, b)), "pair twice, n={n}");
            }
        }
        all
    }

    #[test]
    fn rounds_cover_every_pair_once_and_no_node_twice_per_round() {
        for n in 0..9 {
            let all = pairs_once_no_node_twice(&pair_rounds(n), n);
            assert_eq!(all.len(), n * n.saturating_sub(1) / 2, "n={n}");
        }
    }

    #[test]
    fn every_ordered_pair_is_probed_once_and_no_node_twice_per_round() {
        for n in 0..9 {
            let rounds = directed_rounds(n);
            assert_eq!(rounds.len(), 2 * pair_rounds(n).len(), "n={n}");
            let all = pairs_once_no_node_twice(&rounds, n);
            assert_eq!(all.len(), n * n.saturating_sub(1), "n={n}");
        }
    }

    fn prepared(error: Option<&str>, started: bool) -> Prepared {
        Prepared {
            ssh: None,
            started,
            nixos: false,
            error: error.map(String::from),
            applying: Some("edgectl user=bob".into()),
        }
    }

    fn example() -> Vec<Node> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster
            .nodes
    }

    #[test]
    fn a_nodes_report_starts_from_how_its_agent_was_prepared() {
        let nodes = example();
        let r = first_report(&nodes[0], &prepared(Some("ssh: refused"), true));
        assert_eq!(
            (r.agent.as_str(), r.error.as_deref()),
            ("unreachable", Some("ssh: refused"))
        );
        assert_eq!(r.apply_in_progress.as_deref(), Some("edgectl user=bob"));
        assert_eq!(
            first_report(&nodes[0], &prepared(None, true)).agent,
            "started"
        );
        let r = first_report(&nodes[0], &prepared(None, false));
        assert_eq!(
            (r.name.as_str(), r.agent.as_str()),
            (nodes[0].name.as_str(), "service")
        );
    }

    fn check(node: &str, category: &str, verdict: Verdict) -> Check {
        Check {
            node: node.into(),
            category: category.into(),
            name: String::new(),
            expected: String::new(),
            actual: String::new(),
            verdict,
            reason: None,
        }
    }

    #[test]
    fn pairs_and_checks_follow_the_topology_then_the_category() {
        let all = example();
        let nodes: Vec<&Node> = all.iter().rev().collect();
        let (a, b, c) = (&nodes[0].name, &nodes[1].name, &nodes[2].name);
        let order = node_order(&nodes);
        let mut pairs = vec![
            PairStat::new(c, a),
            PairStat::new(b, a),
            PairStat::new(a, c),
            PairStat::new(a, b),
        ];
        sort_pairs(&order, &mut pairs);
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.from.as_str(), p.to.as_str()))
            .collect();
        assert_eq!(got, [(a.as_str(), b.as_str()), (a, c), (b, a), (c, a)]);
        let mut checks = vec![
            check("elsewhere", "agent", Verdict::Fail),
            check(b, "network", Verdict::Pass),
            check(b, "hardware", Verdict::Pass),
            check(a, "ray", Verdict::Skip),
            check(a, "agent", Verdict::Fail),
        ];
        sort_checks(&order, &mut checks);
        let got: Vec<(&str, &str)> = checks
            .iter()
            .map(|c| (c.node.as_str(), c.category.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (a.as_str(), "agent"),
                (a, "ray"),
                (b, "hardware"),
                (b, "network"),
                ("elsewhere", "agent")
            ]
        );
        let Summary { pass, fail, skip } = summary(&checks);
        assert_eq!((pass, fail, skip), (2, 2, 1));
    }

    #[test]
    fn an_agents_answer_is_the_kind_asked_for_or_says_why_not() {
        let ok = |r: Response| match r {
            Response::Ok => Ok(()),
            o => Err(o),
        };
        assert_eq!(answer(Ok(Response::Ok), ok), Ok(()));
        let refused = Response::Error {
            message: "no such module".into(),
        };
        assert_eq!(answer(Ok(refused), ok), Err("no such module".into()));
        assert_eq!(answer(Err("timed out".into()), ok), Err("timed out".into()));
        let other = answer(
            Ok(Response::Matrix {
                quic: vec![],
                zenoh: vec![],
            }),
            ok,
        );
        assert_eq!(
            other,
            Err("unexpected answer Matrix { quic: [], zenoh: [] }".into())
        );
    }
}
