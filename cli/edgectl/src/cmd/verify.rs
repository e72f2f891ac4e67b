//! `edgectl verify` and `edgectl agent`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use edgectl_agent::server::AgentOptions;
use edgectl_deploy::EngineError;
use edgectl_model::{LoadOptions, ProfileSet};
use edgectl_verify::checks::Verdict;
use edgectl_verify::verify::{self, VerifyOptions};

use super::fail;
use crate::table::Table;
use crate::{Ctx, ProfileArgs, exit};

#[derive(Args, Clone)]
pub struct VerifyArgs {
    /// Nodes to verify: names, globs (worker*) and tags (@gpu), comma-separated.
    #[arg(long, value_name = "SEL")]
    pub on: Option<String>,
    /// Every fact and check as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write index.html, latency.svg and report.json into DIR.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// SSH private key (default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// SSH connect timeout in seconds.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub connect_timeout: u64,
    /// Directory on the nodes for the agent's keys (and an agent uploaded for the run).
    #[arg(long, default_value = verify::DEFAULT_AGENT_DIR, value_name = "DIR")]
    pub agent_dir: String,
    /// The agents' QUIC port.
    #[arg(long, default_value_t = verify::DEFAULT_AGENT_PORT, value_name = "PORT")]
    pub agent_port: u16,
    /// The port the agents' Zenoh sessions listen on.
    #[arg(long, default_value_t = verify::DEFAULT_ZENOH_PORT, value_name = "PORT")]
    pub zenoh_port: u16,
    /// Use the agent binary already at PATH on the nodes instead of uploading this edgectl.
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<String>,
    /// Round trips per node pair and transport.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub samples: u32,
    /// Measure latency over QUIC only.
    #[arg(long)]
    pub no_zenoh: bool,
    #[command(flatten)]
    pub profiles: ProfileArgs,
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// Address and UDP port to serve QUIC on.
    #[arg(long, default_value = "0.0.0.0:7443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,
    /// Holds ca.pem, node.pem and node.key (uploaded by `edgectl verify`, mode 0600).
    #[arg(long, default_value = verify::DEFAULT_AGENT_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Exit after S seconds (for an agent started only for one `verify`).
    #[arg(long, value_name = "S")]
    pub exit_after: Option<u64>,
    /// Print this machine's facts as JSON and exit.
    #[arg(long)]
    pub print_facts: bool,
    /// Judge this machine's NVIDIA GPUs against a hardware profile (a name, or a NAME.toml
    /// file) the way `verify` does, print their facts and the checks, and exit: 0 when all
    /// pass, 4 when one fails, 1 without a GPU (see scripts/gpu-check.sh).
    #[arg(long, value_name = "PROFILE")]
    pub gpu_check: Option<String>,
    #[command(flatten)]
    pub profiles: ProfileArgs,
    /// Internal: run one WASI job from stdin in a sandbox process (the agent starts these).
    #[arg(long, hide = true)]
    pub run_wasi: bool,
    /// Run a Zenoh router instead of the agent, listening on ENDPOINT (e.g.
    /// tcp/10.0.0.1:7447; repeatable): the `zenoh` crate in router mode, configured as the
    /// router nodes' zenohd, for a node or test rig without zenohd. Ends with --exit-after.
    #[arg(long, value_name = "ENDPOINT")]
    pub zenoh_router: Vec<String>,
}

pub fn agent(a: &AgentArgs) -> u8 {
    if a.run_wasi {
        // Before anything else starts a thread: the sandbox drops root for the whole process.
        return if edgectl_agent::wasm::runner_main() == 0 {
            exit::OK
        } else {
            exit::ERROR
        };
    }
    if let Some(p) = &a.gpu_check {
        return gpu_check(p, &a.profiles);
    }
    if !a.zenoh_router.is_empty() {
        let exit_after = a.exit_after.map(Duration::from_secs);
        return match edgectl_agent::zn_router::run_router(&a.zenoh_router, exit_after) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("edgectl agent --zenoh-router: {e}");
                exit::ERROR
            }
        };
    }
    if a.print_facts {
        let f = edgectl_agent::facts::gather();
        println!("{}", serde_json::to_string_pretty(&f).unwrap_or_default());
        return exit::OK;
    }
    match edgectl_agent::server::run(AgentOptions {
        listen: a.listen,
        state_dir: a.state_dir.clone(),
        exit_after: a.exit_after.map(Duration::from_secs),
        wasi_runner: None,
    }) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("edgectl agent: {e}");
            exit::ERROR
        }
    }
}

/// `edgectl agent --gpu-check PROFILE`: this machine's GPU facts and the GPU checks of
/// `verify` against the profile.
fn gpu_check(profile: &str, dirs: &ProfileArgs) -> u8 {
    let (mut set, mut diags) = ProfileSet::builtin();
    for d in &dirs.profile_dirs {
        diags.extend(set.add_dir(d));
    }
    let path = Path::new(profile);
    let name = if profile.ends_with(".toml") || profile.contains('/') {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match edgectl_model::load::read_source(path) {
            Ok(src) => diags.extend(set.add_file(&name, src, &path.display().to_string())),
            Err(d) => diags.push(d),
        }
        name
    } else {
        profile.to_string()
    };
    if diags.is_empty() && !set.contains(&name) {
        let all: Vec<&str> = set.names().collect();
        eprintln!(
            "edgectl agent --gpu-check: unknown profile `{name}`; known: {}",
            all.join(", ")
        );
        return exit::ERROR;
    }
    let p = set.resolve(&name, &mut diags);
    let p = match p {
        Ok(p) if diags.is_empty() => p,
        _ => {
            eprint!("{}", diags.render(false, 50));
            return exit::ERROR;
        }
    };
    let f = edgectl_agent::facts::gather_gpus();
    if f.gpus.is_empty() {
        eprintln!(
            "edgectl agent --gpu-check: no NVIDIA GPU on this machine ({})",
            f.gpu_note.as_deref().unwrap_or("nvidia-smi lists none")
        );
        return exit::ERROR;
    }
    let opt = |x: Option<u32>| x.map_or("-".to_string(), |x| x.to_string());
    let mut t = Table::new(&[
        "GPU",
        "BUS ID",
        "NAME",
        "CC",
        "MEMORY",
        "DRIVER",
        "CUDA",
        "PERSIST",
        "ECC",
        "SM MHZ",
        "MEM MHZ",
        "PCIE GEN",
        "PCIE WIDTH",
    ]);
    for d in &f.gpu_details {
        let mode = |b: Option<bool>| match b {
            Some(true) => "on",
            Some(false) => "off",
            None => "-",
        };
        t.row(vec![
            d.index.to_string(),
            d.bus_id.clone(),
            d.product_name.clone(),
            d.compute_capability.clone().unwrap_or("-".into()),
            d.memory_total_mib
                .map_or("-".into(), |m| format!("{m} MiB")),
            d.driver_version.clone(),
            d.cuda_version.clone().unwrap_or("-".into()),
            mode(d.persistence_mode).into(),
            mode(d.ecc_mode).into(),
            format!("{}/{}", opt(d.sm_clock_mhz), opt(d.max_sm_clock_mhz)),
            format!("{}/{}", opt(d.mem_clock_mhz), opt(d.max_mem_clock_mhz)),
            format!("{}/{}", opt(d.pcie_gen), opt(d.pcie_gen_max)),
            format!("{}/{}", opt(d.pcie_width), opt(d.pcie_width_max)),
        ]);
    }
    if f.gpu_details.is_empty() {
        for g in &f.gpus {
            t.row(vec![
                "-".into(),
                "-".into(),
                g.model.clone(),
                g.compute_capability.clone(),
                format!("{} MiB", g.memory_mib),
                g.driver_version.clone(),
            ]);
        }
    }
    println!("GPUs on {} (clocks and PCIe: now/max):", f.hostname);
    print!("{}", t.render());
    if let Some(n) = &f.gpu_details_note {
        println!("note: {n}");
    }
    let checks = edgectl_verify::checks::gpu_checks(&f.hostname, &p, &f);
    let mut t = Table::new(&["CHECK", "EXPECTED", "ACTUAL", "VERDICT"]);
    for c in &checks {
        let actual = match &c.reason {
            Some(why) => format!("{} ({why})", c.actual),
            None => c.actual.clone(),
        };
        t.row(vec![
            c.name.clone(),
            c.expected.clone(),
            actual,
            c.verdict.as_str().to_string(),
        ]);
    }
    println!("\nAgainst profile {} ({}):", p.name, p.origin);
    print!("{}", t.render());
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count();
    let failed = count(Verdict::Fail);
    println!(
        "\n{} passed, {failed} failed, {} skipped",
        count(Verdict::Pass),
        count(Verdict::Skip)
    );
    if checks.is_empty() {
        println!(
            "(profile {} lists no GPU, so there was nothing to check)",
            p.name
        );
    }
    if failed > 0 {
        exit::CHECKS_FAILED
    } else {
        exit::OK
    }
}

fn paint(ctx: &Ctx, v: Verdict) -> String {
    let s = v.as_str();
    if !ctx.color {
        return s.to_string();
    }
    let c = match v {
        Verdict::Pass => "32",
        Verdict::Fail => "1;31",
        Verdict::Skip => "2",
    };
    format!("\x1b[{c}m{s}\x1b[0m")
}

pub fn run(ctx: &Ctx, file: &Path, a: &VerifyArgs) -> u8 {
    let mut opts = VerifyOptions {
        on: a.on.clone(),
        identity: a.identity.clone(),
        connect_timeout: Duration::from_secs(a.connect_timeout.max(1)),
        load: LoadOptions {
            profile_dirs: a.profiles.profile_dirs.clone(),
        },
        agent_dir: a.agent_dir.clone(),
        agent_port: a.agent_port,
        zenoh_port: a.zenoh_port,
        agent_bin: a.agent_bin.clone(),
        samples: a.samples.max(1),
        no_zenoh: a.no_zenoh,
    };
    let run = match edgectl_deploy::Run::load(file, &opts.load, opts.on.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    opts.identity = run.identity(opts.identity.as_deref());
    let r = match verify::verify(&run, &opts) {
        Ok(r) => r,
        Err(e) => return fail(ctx, a.json, e),
    };
    if let Some(dir) = &a.report
        && let Err(e) = edgectl_verify::report::write(&r, dir)
    {
        return fail(ctx, a.json, EngineError::Failed(e));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    } else {
        let mut t = Table::new(&["NODE", "CATEGORY", "CHECK", "EXPECTED", "ACTUAL", "VERDICT"]);
        for c in &r.checks {
            let actual = match &c.reason {
                Some(why) => format!("{} ({why})", c.actual),
                None => c.actual.clone(),
            };
            t.row(vec![
                c.node.clone(),
                c.category.clone(),
                c.name.clone(),
                c.expected.clone(),
                actual,
                c.verdict.as_str().to_string(),
            ]);
        }
        // Colour after layout, so escape codes do not skew the column widths.
        let text = t.render();
        let text = if ctx.color {
            text.lines()
                .map(|l| {
                    for v in [Verdict::Fail, Verdict::Pass, Verdict::Skip] {
                        if let Some(head) = l.strip_suffix(v.as_str()) {
                            return format!("{head}{}\n", paint(ctx, v));
                        }
                    }
                    format!("{l}\n")
                })
                .collect()
        } else {
            text
        };
        print!("{text}");
        let mut matrices = vec![
            ("QUIC".to_string(), &r.quic),
            ("Zenoh".to_string(), &r.zenoh),
        ];
        matrices.extend(
            r.zenoh_routers
                .iter()
                .map(|z| (format!("Zenoh through router {}", z.router), &z.pairs)),
        );
        for (kind, stats) in matrices {
            if stats.is_empty() {
                continue;
            }
            println!("\n{kind} round trips, p50/p99 ms (rows send, columns answer):");
            let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
            let mut head = vec![""];
            head.extend(names.iter().copied());
            let mut m = Table::new(&head);
            for from in &names {
                let mut row = vec![from.to_string()];
                for to in &names {
                    row.push(
                        match stats.iter().find(|s| s.from == *from && s.to == *to) {
                            _ if from == to => "-".into(),
                            Some(s) if s.error.is_some() => "error".into(),
                            Some(s) => format!("{:.2}/{:.2}", s.p50_ms, s.p99_ms),
                            None => "n/a".into(),
                        },
                    );
                }
                m.row(row);
            }
            print!("{}", m.render());
        }
        println!(
            "\n{} passed, {} failed, {} skipped in {:.1} s (latency matrix {:.1} s){}",
            r.summary.pass,
            r.summary.fail,
            r.summary.skip,
            r.timings.total_ms / 1000.0,
            r.timings.matrix_ms / 1000.0,
            a.report
                .as_ref()
                .map(|d| format!("; report in {}", d.join("index.html").display()))
                .unwrap_or_default()
        );
        for n in &r.nodes {
            if let Some(holder) = &n.apply_in_progress {
                eprintln!(
                    "warning: an apply was running on {} during this verify ({holder}); its results may describe a node in the middle of a change",
                    n.name
                );
            }
        }
    }
    if r.failed() {
        exit::CHECKS_FAILED
    } else {
        exit::OK
    }
}
