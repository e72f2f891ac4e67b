//! What a node is and how it is set up, read from /proc, /sys and a few commands. Parsers take
//! text so they can be tested on recordings from other machines.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::gpu::{self, GpuDetail};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuFacts {
    /// The brand string (`model name` in /proc/cpuinfo), as the CPU reports it.
    pub model: String,
    /// CPUID's vendor (`vendor_id`: GenuineIntel, AuthenticAMD), empty when not reported.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vendor_id: String,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskFact {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl DiskFact {
    /// The profile's disk kind this device is: "nvme" (an `nvme*` device), "hdd" (rotational)
    /// or "ssd" (any other non-rotational device).
    pub fn kind(&self) -> &'static str {
        if self.name.starts_with("nvme") {
            "nvme"
        } else if self.rotational {
            "hdd"
        } else {
            "ssd"
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NicFact {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Link speed in Mbit/s, when the driver reports one (virtual links do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u64>,
    /// The kernel driver bound to the device (`/sys/class/net/NAME/device/driver`), e.g.
    /// ixgbe, igb, mlx5_core, mlx4_core, virtio_net.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// The fastest link mode the port supports (`ethtool NAME`), read only when the link reports
    /// no speed (down, or no cable), so a port that is there but idle can still be recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supported_mbps: Option<u64>,
    /// A physical device (not veth, bridge, tun...).
    pub physical: bool,
    /// IPv4 addresses with prefix, in this node's network namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuFact {
    pub model: String,
    pub memory_mib: u64,
    pub driver_version: String,
    pub compute_capability: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub hostname: String,
    pub cpu: CpuFacts,
    pub memory_bytes: u64,
    pub disks: Vec<DiskFact>,
    pub nics: Vec<NicFact>,
    pub gpus: Vec<GpuFact>,
    /// Why GPU facts are missing or partial (no nvidia-smi, or it failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_note: Option<String>,
    /// Per GPU, what `nvidia-smi -q -x` and the device query say (driver, persistence, ECC,
    /// clocks, PCIe link; see [`crate::gpu`]). Asked only where `gpus` found some; empty from
    /// an agent that predates them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_details: Vec<GpuDetail>,
    /// Why `gpu_details` are missing or partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_details_note: Option<String>,
    pub kernel: String,
    pub sysctl: BTreeMap<String, String>,
    pub modules: Vec<String>,
    /// `systemctl is-active` per unit, or "unknown" without systemd.
    pub units: BTreeMap<String, String>,
    pub kvm_present: bool,
    pub kvm_usable: bool,
    /// Tools looked up on PATH: name to path, absent when not found.
    pub tools: BTreeMap<String, String>,
}

pub const SYSCTLS: &[&str] = &[
    "net.core.default_qdisc",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_available_congestion_control",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_mtu_probing",
    "net.core.netdev_max_backlog",
];
pub const UNITS: &[&str] = &["zenohd", "ray-head", "ray-worker", "edgectl-agent"];
pub const TOOLS: &[&str] = &["wasmtime", "wasmedge", "ops", "ray", "nvidia-smi", "zenohd"];
pub const NVIDIA_SMI_ARGS: &[&str] = &[
    "--query-gpu=name,memory.total,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
];

pub fn parse_cpuinfo(text: &str) -> CpuFacts {
    let mut model = String::new();
    let mut vendor_id = String::new();
    let mut threads = 0u32;
    let mut sockets = std::collections::BTreeSet::new();
    let mut cores = std::collections::BTreeSet::new();
    let mut cpu_cores = 0u32;
    let (mut phys, mut core) = (None::<String>, None::<String>);
    let mut flush = |phys: &mut Option<String>, core: &mut Option<String>| {
        if let Some(p) = phys.take() {
            sockets.insert(p.clone());
            if let Some(c) = core.take() {
                cores.insert((p, c));
            }
        }
        *core = None;
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            if line.trim().is_empty() {
                flush(&mut phys, &mut core);
            }
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" if model.is_empty() => model = v.to_string(),
            "vendor_id" if vendor_id.is_empty() => vendor_id = v.to_string(),
            "physical id" => phys = Some(v.to_string()),
            "core id" => core = Some(v.to_string()),
            "cpu cores" => cpu_cores = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    flush(&mut phys, &mut core);
    let s = (sockets.len() as u32).max(1);
    let c = if !cores.is_empty() {
        cores.len() as u32
    } else if cpu_cores > 0 {
        cpu_cores * s
    } else {
        threads
    };
    CpuFacts {
        model,
        vendor_id,
        sockets: s,
        cores: c,
        threads,
    }
}

/// `lscpu -J`, flat (util-linux before 2.38) or nested under `children` (newer): model, vendor,
/// sockets, cores (sockets x cores per socket) and threads (`CPU(s)`). `None` when the text is
/// not lscpu's JSON or names no CPUs.
pub fn parse_lscpu_json(text: &str) -> Option<CpuFacts> {
    fn walk(v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        for e in v.as_array().into_iter().flatten() {
            if let (Some(k), Some(d)) = (e["field"].as_str(), e["data"].as_str()) {
                out.entry(k.trim().trim_end_matches(':').to_string())
                    .or_insert_with(|| d.trim().to_string());
            }
            walk(&e["children"], out);
        }
    }
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut m = BTreeMap::new();
    walk(&v["lscpu"], &mut m);
    let num = |k: &str| m.get(k).and_then(|s| s.parse::<u32>().ok());
    let threads = num("CPU(s)").filter(|t| *t > 0)?;
    let sockets = num("Socket(s)").filter(|s| *s > 0).unwrap_or(1);
    let per_socket = num("Core(s) per socket").or_else(|| num("Core(s) per cluster"));
    let cores = per_socket
        .and_then(|c| c.checked_mul(sockets))
        .filter(|c| *c > 0)
        .unwrap_or(threads);
    Some(CpuFacts {
        model: m.get("Model name").cloned().unwrap_or_default(),
        vendor_id: m.get("Vendor ID").cloned().unwrap_or_default(),
        sockets,
        cores,
        threads,
    })
}

pub fn parse_meminfo(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// `nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap
/// --format=csv,noheader,nounits`: one line per GPU, fields separated by ", ".
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<GpuFact>, String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 4 {
            return Err(format!("unexpected nvidia-smi line: {line}"));
        }
        let memory_mib = f[1]
            .trim_end_matches("MiB")
            .trim()
            .parse()
            .map_err(|_| format!("unexpected memory.total `{}` in: {line}", f[1]))?;
        out.push(GpuFact {
            model: f[0].to_string(),
            memory_mib,
            driver_version: f[2].to_string(),
            compute_capability: f[3].to_string(),
        });
    }
    Ok(out)
}

/// `ip -o -4 addr show`: interface name to its addresses.
pub fn parse_ip_addr(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 4 && w[2] == "inet" {
            let name = w[1].split('@').next().unwrap_or(w[1]).to_string();
            m.entry(name).or_default().push(w[3].to_string());
        }
    }
    m
}

/// `/sys/class/net/NAME/speed` in Mbit/s: `None` for -1 (link down, or no fixed speed), the
/// unsigned forms of "unknown" some kernels print, and anything that is not a number.
pub fn parse_sysfs_speed(text: &str) -> Option<u64> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| *s > 0 && *s != 0xffff && *s != 0xffff_ffff)
        .map(|s| s as u64)
}

/// The driver's name from where `device/driver` points
/// (`../../../../bus/pci/drivers/ixgbe` is "ixgbe").
pub fn driver_from_link(target: &Path) -> Option<String> {
    target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
}

/// What `ethtool NAME` says about a port's link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ethtool {
    /// `Speed:` in Mbit/s, when the link has one.
    pub speed_mbps: Option<u64>,
    /// The fastest of `Supported link modes:` ("10000baseT/Full" is 10000).
    pub supported_max_mbps: Option<u64>,
    /// `Link detected:`.
    pub link_detected: Option<bool>,
}

/// `ethtool NAME` (the settings report): speed, supported link modes (which may continue on
/// the following lines) and whether a link is detected. Anything else is ignored.
pub fn parse_ethtool(text: &str) -> Ethtool {
    fn modes(v: &str, max: &mut Option<u64>) {
        for m in v.split_whitespace() {
            let Some((speed, _)) = m.split_once("base") else {
                continue;
            };
            if let Ok(s) = speed.parse::<u64>() {
                *max = Some(max.map_or(s, |x| x.max(s)));
            }
        }
    }
    let mut e = Ethtool::default();
    let mut in_supported = false;
    for line in text.lines() {
        let t = line.trim();
        match t.split_once(':') {
            Some((k, v)) => {
                let k = k.trim();
                in_supported = k == "Supported link modes";
                match k {
                    "Supported link modes" => modes(v, &mut e.supported_max_mbps),
                    "Speed" => {
                        e.speed_mbps = v.trim().strip_suffix("Mb/s").and_then(parse_sysfs_speed)
                    }
                    "Link detected" => {
                        e.link_detected = match v.trim() {
                            "yes" => Some(true),
                            "no" => Some(false),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            None if in_supported => modes(t, &mut e.supported_max_mbps),
            None => {}
        }
    }
    e
}

fn read(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// `name` on PATH, or where NixOS and a Nix install on another distribution put tools (an
/// agent often runs with a service's or an SSH session's minimal PATH).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/run/current-system/sw/bin",
                "/nix/var/nix/profiles/default/bin",
                "/usr/local/bin",
                "/usr/bin",
                "/bin",
                "/usr/sbin",
                "/sbin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Block devices under `SYS/block` (`sys` is `/sys` on a node, a recorded tree in tests):
/// size from `size` (512-byte sectors), `queue/rotational`, `device/model`. Loop, RAM, zram,
/// device-mapper, optical, md and nbd devices and empty devices are left out.
pub fn disks_at(sys: &Path) -> Vec<DiskFact> {
    let mut v = Vec::new();
    let Ok(rd) = fs::read_dir(sys.join("block")) else {
        return v;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram", "dm-", "sr", "md", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let d = e.path();
        let sectors: u64 = read(d.join("size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if sectors == 0 {
            continue;
        }
        v.push(DiskFact {
            name,
            size_bytes: sectors.saturating_mul(512),
            rotational: read(d.join("queue/rotational")).as_deref() == Some("1"),
            model: read(d.join("device/model")).filter(|s| !s.is_empty()),
        });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Interfaces under `SYS/class/net` (`sys` is `/sys` on a node, a recorded tree in tests):
/// MAC, link speed, the driver bound to the device and whether there is a device at all. For a
/// physical port without a speed, `ethtool(name)` (the text of `ethtool NAME`, when it can be
/// had) gives the fastest link mode it supports.
pub fn nics_at(sys: &Path, ethtool: &dyn Fn(&str) -> Option<String>) -> BTreeMap<String, NicFact> {
    let mut m: BTreeMap<String, NicFact> = BTreeMap::new();
    let Ok(rd) = fs::read_dir(sys.join("class/net")) else {
        return m;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let d = e.path();
        let driver = fs::read_link(d.join("device/driver"))
            .ok()
            .and_then(|p| driver_from_link(&p));
        let physical = d.join("device").exists();
        // -1 (or an error) when the link is down or has no fixed speed.
        let speed_mbps = read(d.join("speed")).and_then(|s| parse_sysfs_speed(&s));
        let supported_mbps = if physical && speed_mbps.is_none() {
            ethtool(&name).and_then(|t| parse_ethtool(&t).supported_max_mbps)
        } else {
            None
        };
        m.insert(
            name.clone(),
            NicFact {
                name,
                mac: read(d.join("address")),
                speed_mbps,
                physical,
                driver,
                supported_mbps,
                addresses: Vec::new(),
            },
        );
    }
    m
}

/// How long one external probe (ip, ethtool, nvidia-smi, systemctl, lscpu) may take. A GPU
/// driver in a bad state can hang nvidia-smi for minutes; a hung probe fails its own check,
/// never the whole node.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What [`run_bounded`] saw of a program.
pub struct Ran {
    pub output: Output,
    /// From the start to the program's exit (not to its pipes' end), to the microsecond.
    pub took: Duration,
    /// It outlived its time and was killed, with its process group.
    pub killed: bool,
}

/// Output kept of each stream of a bounded run; the rest is read and dropped.
const OUTPUT_LIMIT: u64 = 16 << 20;

/// Runs `program` with no input (in `dir`, when given) and kills it, with its process group,
/// after `timeout`. The clock stops when the process exits: `waitid` with `WNOWAIT` sees the
/// exit without reaping, so the watchdog can never signal a later process that got the pid.
pub fn run_bounded<S: AsRef<std::ffi::OsStr>>(
    program: &Path,
    args: &[S],
    dir: Option<&Path>,
    timeout: Duration,
) -> Result<Ran, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::sync::mpsc;
    let name = program.display();
    let t0 = Instant::now();
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    let mut child = c.spawn().map_err(|e| format!("cannot run {name}: {e}"))?;
    // Drained while it runs, so a chatty program cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = (&mut r).take(OUTPUT_LIMIT).read_to_end(&mut v);
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            let _ = tx.send(v);
        });
        rx
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let pid = child.id();
    let (done, dog_rx) = mpsc::channel::<()>();
    let dog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = dog_rx.recv_timeout(timeout) {
            // SAFETY: kill(2) on the process group our unreaped child leads.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
            return true;
        }
        false
    });
    let exited = wait_exit(pid);
    let took = t0.elapsed();
    let _ = done.send(());
    let killed = dog.join().unwrap_or(false);
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {name}: {e}"))?;
    exited.map_err(|e| format!("waiting for {name}: {e}"))?;
    // A process it left behind may hold the pipes open: do not wait on that for long.
    let grace = Duration::from_secs(2);
    Ok(Ran {
        output: Output {
            status,
            stdout: out.recv_timeout(grace).unwrap_or_default(),
            stderr: err.recv_timeout(grace).unwrap_or_default(),
        },
        took,
        killed,
    })
}

/// Waits until child `pid` has exited, leaving it unreaped.
fn wait_exit(pid: u32) -> std::io::Result<()> {
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it for our own child, and
        // WNOWAIT leaves the child for `Child::wait` to reap.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Runs a probe with no input, killed (with its process group) after `timeout`.
pub fn probe(program: &Path, args: &[&str], timeout: Duration) -> Result<Output, String> {
    let r = run_bounded(program, args, None, timeout)?;
    if r.killed {
        return Err(format!(
            "{} did not answer within {} s",
            program.display(),
            timeout.as_secs_f64()
        ));
    }
    Ok(r.output)
}

fn nics() -> Vec<NicFact> {
    let addrs = which("ip")
        .ok_or_else(|| "ip not found".to_string())
        .and_then(|ip| probe(&ip, &["-o", "-4", "addr", "show"], PROBE_TIMEOUT))
        .map(|o| parse_ip_addr(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    let ethtool_bin = which("ethtool");
    let ethtool = |name: &str| {
        let o = probe(ethtool_bin.as_ref()?, &[name], PROBE_TIMEOUT).ok()?;
        Some(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let mut m = nics_at(Path::new("/sys"), &ethtool);
    // sysfs may belong to another network namespace than ours (containers, the test rig), so
    // interfaces seen only by `ip` are facts too.
    for (name, a) in addrs {
        if name == "lo" {
            continue;
        }
        m.entry(name.clone())
            .or_insert_with(|| NicFact {
                name,
                ..Default::default()
            })
            .addresses = a;
    }
    m.into_values().collect()
}

fn gpus() -> (Vec<GpuFact>, Option<String>) {
    let Some(smi) = which("nvidia-smi") else {
        return (Vec::new(), Some("nvidia-smi not found".into()));
    };
    gpus_from(&smi, PROBE_TIMEOUT)
}

/// GPU facts from the `nvidia-smi` at `smi`, or why there are none.
pub fn gpus_from(smi: &Path, timeout: Duration) -> (Vec<GpuFact>, Option<String>) {
    match probe(smi, NVIDIA_SMI_ARGS, timeout) {
        Ok(o) if o.status.success() => {
            match parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)) {
                Ok(g) => (g, None),
                Err(e) => (Vec::new(), Some(e)),
            }
        }
        Ok(o) => (
            Vec::new(),
            Some(format!(
                "nvidia-smi failed: {}{}",
                String::from_utf8_lossy(&o.stdout).trim(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
        ),
        Err(e) => (Vec::new(), Some(e)),
    }
}

/// The details of the GPUs the plain query found (`nvidia-smi -q -x` and the device query).
/// Nothing is asked where it found none: without nvidia-smi, or when it failed, a node keeps
/// what it had (and a hung nvidia-smi is not waited for twice).
fn gpu_details(found: &[GpuFact]) -> (Vec<GpuDetail>, Option<String>) {
    match which("nvidia-smi") {
        Some(smi) if !found.is_empty() => gpu::details_from(&smi, PROBE_TIMEOUT),
        _ => (Vec::new(), None),
    }
}

fn units() -> BTreeMap<String, String> {
    let systemd = Path::new("/run/systemd/system").is_dir();
    let ctl = which("systemctl");
    UNITS
        .iter()
        .map(|u| {
            let state = match (&ctl, systemd) {
                (Some(c), true) => match probe(c, &["is-active", u], PROBE_TIMEOUT) {
                    Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
                    Err(e) if e.contains("did not answer") => "timed out".into(),
                    Err(_) => "unknown".into(),
                },
                _ => "unknown".into(),
            };
            (u.to_string(), state)
        })
        .collect()
}

/// /proc/cpuinfo; where it names no model (some ARM kernels), `lscpu -J` fills in the model
/// and vendor.
fn cpu() -> CpuFacts {
    let mut c = parse_cpuinfo(&read("/proc/cpuinfo").unwrap_or_default());
    if c.model.is_empty()
        && let Some(l) = which("lscpu")
            .and_then(|l| probe(&l, &["-J"], PROBE_TIMEOUT).ok())
            .and_then(|o| parse_lscpu_json(&String::from_utf8_lossy(&o.stdout)))
    {
        c.model = l.model;
        if c.vendor_id.is_empty() {
            c.vendor_id = l.vendor_id;
        }
    }
    c
}

/// The GPU facts only (`gpus`, `gpu_details` and their notes, and the hostname), as [`gather`]
/// has them: what `edgectl agent --gpu-check` judges.
pub fn gather_gpus() -> Facts {
    let (gpus, gpu_note) = gpus();
    let (gpu_details, gpu_details_note) = gpu_details(&gpus);
    Facts {
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
        gpus,
        gpu_note,
        gpu_details,
        gpu_details_note,
        ..Default::default()
    }
}

pub fn gather() -> Facts {
    let Facts {
        gpus,
        gpu_note,
        gpu_details,
        gpu_details_note,
        ..
    } = gather_gpus();
    let kvm = Path::new("/dev/kvm");
    Facts {
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_default(),
        cpu: cpu(),
        memory_bytes: parse_meminfo(&read("/proc/meminfo").unwrap_or_default()),
        disks: disks_at(Path::new("/sys")),
        nics: nics(),
        gpus,
        gpu_note,
        gpu_details,
        gpu_details_note,
        kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
        sysctl: SYSCTLS
            .iter()
            .filter_map(|k| {
                let p = format!("/proc/sys/{}", k.replace('.', "/"));
                // Tabs separate the fields of the triples; the topology writes spaces.
                read(p).map(|v| {
                    (
                        k.to_string(),
                        v.split_whitespace().collect::<Vec<_>>().join(" "),
                    )
                })
            })
            .collect(),
        modules: read("/proc/modules")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect(),
        units: units(),
        kvm_present: kvm.exists(),
        kvm_usable: fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm)
            .is_ok(),
        tools: TOOLS
            .iter()
            .filter_map(|t| which(t).map(|p| (t.to_string(), p.display().to_string())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPU driver that hangs nvidia-smi costs its own check, within the probe's limit, and
    /// the rest of the facts are still gathered.
    #[test]
    fn a_hung_probe_fails_alone_and_in_time() {
        let d = tempfile::tempdir().unwrap();
        let smi = d.path().join("nvidia-smi");
        std::fs::write(&smi, "#!/bin/sh\nsleep 600 & wait\n").unwrap();
        std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let t0 = Instant::now();
        let (gpus, why) = gpus_from(&smi, Duration::from_millis(300));
        assert!(gpus.is_empty());
        let why = why.unwrap();
        assert!(why.contains("did not answer within 0.3 s"), "{why}");
        // The probe's whole process group is gone, its sleep included.
        assert!(t0.elapsed() < Duration::from_secs(10));
        let o = probe(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(
            (o.status.code(), o.stdout.as_slice(), o.stderr.as_slice()),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
        assert!(
            probe(Path::new("/nonexistent/probe"), &[], Duration::from_secs(1))
                .unwrap_err()
                .contains("cannot run")
        );
    }

    // Recordings in NVIDIA's documented `--format=csv,noheader,nounits` layout for the GPUs
    // CloudLab nodes carry (c240g5: P100, c4130-class: P4, d7525: A30) and an H100.
    const P100: &str = "Tesla P100-PCIE-12GB, 12288, 535.183.01, 6.0\n";
    const P4: &str = "Tesla P4, 7680, 535.183.01, 6.1\nTesla P4, 7680, 535.183.01, 6.1\n";
    const A30: &str = "NVIDIA A30, 24576, 550.54.15, 8.0\n";
    const H100: &str = "NVIDIA H100 80GB HBM3, 81559, 550.90.07, 9.0\n";

    #[test]
    fn nvidia_smi_recordings() {
        let g = parse_nvidia_smi(P100).unwrap();
        assert_eq!(
            g,
            vec![GpuFact {
                model: "Tesla P100-PCIE-12GB".into(),
                memory_mib: 12288,
                driver_version: "535.183.01".into(),
                compute_capability: "6.0".into()
            }]
        );
        let g = parse_nvidia_smi(P4).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[1].model.as_str(), g[1].compute_capability.as_str()),
            ("Tesla P4", "6.1")
        );
        let g = parse_nvidia_smi(A30).unwrap();
        assert_eq!(
            (g[0].memory_mib, g[0].compute_capability.as_str()),
            (24576, "8.0")
        );
        let g = parse_nvidia_smi(H100).unwrap();
        assert_eq!(g[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(
            (g[0].memory_mib, g[0].driver_version.as_str()),
            (81559, "550.90.07")
        );
        // With units (a format without `nounits`) the memory still parses.
        assert_eq!(
            parse_nvidia_smi("Tesla P4, 7680 MiB, 535.183.01, 6.1").unwrap()[0].memory_mib,
            7680
        );
        assert!(
            parse_nvidia_smi(
                "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
            )
            .is_err()
        );
        assert!(parse_nvidia_smi("").unwrap().is_empty());
    }

    #[test]
    fn cpuinfo_counts_sockets_cores_threads() {
        let mut t = String::new();
        for (p, s, c) in [
            (0, 0, 0),
            (1, 0, 1),
            (2, 1, 0),
            (3, 1, 1),
            (4, 0, 0),
            (5, 0, 1),
            (6, 1, 0),
            (7, 1, 1),
        ] {
            t.push_str(&format!("processor\t: {p}\nmodel name\t: Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz\nphysical id\t: {s}\ncore id\t\t: {c}\ncpu cores\t: 2\n\n"));
        }
        let c = parse_cpuinfo(&t);
        assert_eq!((c.sockets, c.cores, c.threads), (2, 4, 8));
        assert!(c.model.contains("Silver 4114"));
        // No topology fields (some VMs): one socket, one core per thread.
        let c = parse_cpuinfo("processor : 0\nmodel name : X\n\nprocessor : 1\nmodel name : X\n");
        assert_eq!((c.sockets, c.cores, c.threads), (1, 2, 2));
    }

    #[test]
    fn meminfo_and_ip() {
        assert_eq!(
            parse_meminfo("MemTotal:       196608000 kB\nMemFree: 1 kB\n"),
            196608000 * 1024
        );
        let m = parse_ip_addr(
            "2: eth0    inet 10.233.1.11/24 brd 10.233.1.255 scope global eth0\\       valid_lft forever\n5: eth1@if6    inet 10.10.1.2/24 scope global eth1\n",
        );
        assert_eq!(m["eth0"], vec!["10.233.1.11/24"]);
        assert_eq!(m["eth1"], vec!["10.10.1.2/24"]);
    }
}
