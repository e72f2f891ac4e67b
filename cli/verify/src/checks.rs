//! Facts against expectations: the node's hardware profile, the topology's features and roles,
//! and the targets. Every check carries both values, so a failure explains itself.

use edgectl_agent::facts::{DiskFact, Facts, GpuFact, NicFact};
use edgectl_agent::gpu::GpuDetail;
use edgectl_agent::proto::{ColdStart, PairStat, RayFacts, WasiOutcome};
use edgectl_model::profile::{CpuVendor, DiskKind, Gpu, Profile};
use edgectl_model::{Cluster, Feature, Node, Role};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub node: String,
    /// hardware, config, runtime, ray, network, user
    pub category: String,
    pub name: String,
    pub expected: String,
    pub actual: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn check(
    node: &str,
    category: &str,
    name: &str,
    expected: impl Into<String>,
    actual: impl Into<String>,
    ok: bool,
) -> Check {
    Check {
        node: node.to_string(),
        category: category.to_string(),
        name: name.to_string(),
        expected: expected.into(),
        actual: actual.into(),
        verdict: if ok { Verdict::Pass } else { Verdict::Fail },
        reason: None,
    }
}

fn skip(
    node: &str,
    category: &str,
    name: &str,
    expected: impl Into<String>,
    reason: impl Into<String>,
) -> Check {
    Check {
        node: node.to_string(),
        category: category.to_string(),
        name: name.to_string(),
        expected: expected.into(),
        actual: "-".into(),
        verdict: Verdict::Skip,
        reason: Some(reason.into()),
    }
}

/// A CPU brand string taken apart: "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz" is Intel,
/// family "xeon silver", model number "4114"; "Intel(R) Xeon(R) CPU E5-2630 v3 @ 2.40GHz" is
/// Intel, "xeon e5", "2630 v3"; "AMD EPYC 7302P 16-Core Processor" is AMD, "epyc", "7302p". A
/// generic name a hypervisor gives ("Intel Xeon Processor (Skylake, IBRS)", "AMD EPYC", "QEMU
/// Virtual CPU version 2.5+", "Common KVM processor") has no model number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuName {
    pub vendor: CpuVendor,
    /// Lower case, space separated: "xeon silver", "xeon e5", "epyc", "core i7", "ryzen 9".
    pub family: String,
    /// Lower case, with a generation suffix where the brand has one ("2630 v3").
    pub number: Option<String>,
}

impl std::fmt::Display for CpuName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = match self.vendor {
            CpuVendor::Intel => "intel",
            CpuVendor::Amd => "amd",
            CpuVendor::Other => "unknown vendor",
        };
        write!(f, "{v} {}", self.family)?;
        match &self.number {
            Some(n) => write!(f, " {n}"),
            None => write!(f, " (no model number)"),
        }
    }
}

fn vendor_word(w: &str) -> Option<CpuVendor> {
    match w {
        "intel" | "genuineintel" => Some(CpuVendor::Intel),
        "amd" | "authenticamd" => Some(CpuVendor::Amd),
        _ => None,
    }
}

/// CPUID's vendor string (`vendor_id`) as a profile vendor; `None` when unknown or empty.
pub fn vendor_from_id(vendor_id: &str) -> Option<CpuVendor> {
    vendor_word(&vendor_id.trim().to_lowercase())
}

pub fn vendor_name(v: CpuVendor) -> &'static str {
    match v {
        CpuVendor::Intel => "intel",
        CpuVendor::Amd => "amd",
        CpuVendor::Other => "other",
    }
}

pub fn parse_cpu_name(s: &str) -> CpuName {
    let s = s.split('@').next().unwrap_or(s).to_lowercase();
    let s = ["(r)", "(tm)", "®", "™"]
        .iter()
        .fold(s, |s, m| s.replace(m, " "));
    // Parentheses hold a hypervisor's microarchitecture ("(Skylake, IBRS)"), never the model.
    let mut depth = 0u32;
    let s: String = s
        .chars()
        .filter_map(|c| match c {
            '(' => {
                depth += 1;
                None
            }
            ')' => {
                depth = depth.saturating_sub(1);
                Some(' ')
            }
            _ if depth > 0 => None,
            c if c.is_alphanumeric() || c == '+' || c == '.' => Some(c),
            _ => Some(' '),
        })
        .collect();
    let raw: Vec<&str> = s.split_whitespace().collect();
    let ordinal = |w: &str| {
        let d = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        !d.is_empty()
            && d.chars().all(|c| c.is_ascii_digit())
            && ["st", "nd", "rd", "th"].contains(&&w[d.len()..])
    };
    let count_word = |w: &str| {
        w.chars().all(|c| c.is_ascii_digit())
            || [
                "dual", "quad", "six", "eight", "ten", "twelve", "sixteen", "multi",
            ]
            .contains(&w)
    };
    let mut vendor = None;
    let mut words: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let w = raw[i];
        i += 1;
        // "QEMU Virtual CPU version 2.5+", "AMD Ryzen 7 5800H with Radeon Graphics".
        if w == "version" || w == "with" {
            break;
        }
        if let Some(v) = vendor_word(w) {
            vendor = vendor.or(Some(v));
            continue;
        }
        // "13th Gen Intel(R) Core(TM) i7-13700K".
        if ordinal(w) {
            if raw.get(i) == Some(&"gen") {
                i += 1;
            }
            continue;
        }
        // "16-Core", "Eight-Core", "64-Cores", "Dual Core": a count, not the brand "Core".
        if (w == "core" || w == "cores") && words.last().is_some_and(|p| count_word(p)) {
            words.pop();
            continue;
        }
        if ["cpu", "processor", "gen"].contains(&w) || w.contains('.') {
            continue;
        }
        words.push(w);
    }
    let is_number = |w: &str| {
        w.len() >= 3 && w.chars().any(|c| c.is_ascii_digit()) && !w.contains("xx") && !ordinal(w)
    };
    let at = words.iter().position(|w| is_number(w));
    let family: Vec<&str> = words[..at.unwrap_or(words.len())]
        .iter()
        .copied()
        .filter(|w| !w.contains("xx"))
        .collect();
    let number = at.map(|at| {
        let mut n = words[at].to_string();
        // "E5-2630 v3"; "E5-2630 0" is the first generation, written without a suffix.
        if let Some(v) = words.get(at + 1).filter(|v| {
            v.len() >= 2 && v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit())
        }) {
            n.push(' ');
            n.push_str(v);
        }
        n
    });
    let vendor = vendor.unwrap_or_else(|| match family.first().copied() {
        Some("xeon" | "core" | "pentium" | "celeron" | "atom") => CpuVendor::Intel,
        Some("epyc" | "ryzen" | "opteron" | "athlon" | "threadripper" | "phenom") => CpuVendor::Amd,
        _ => CpuVendor::Other,
    });
    CpuName {
        vendor,
        family: family.join(" "),
        number,
    }
}

/// Whether a machine's CPU is the profile's: vendor (CPUID's `vendor_id` where the machine
/// reports one), family and model number must all be equal. A brand string without a model
/// number proves nothing and fails, on either side.
pub fn compare_cpu(
    expected: &str,
    expected_vendor: CpuVendor,
    actual: &str,
    actual_vendor_id: &str,
) -> Result<(), String> {
    let a = parse_cpu_name(actual);
    let Some(a_number) = &a.number else {
        return Err(if actual.trim().is_empty() {
            "model not reported by this machine (no model name in /proc/cpuinfo)".into()
        } else {
            format!(
                "model not reported by this machine: {actual:?} names no model number \
                 (a virtual machine's generic CPU?), so it cannot be the profile's CPU"
            )
        });
    };
    let e = parse_cpu_name(expected);
    let Some(e_number) = &e.number else {
        return Err(format!(
            "the profile's model {expected:?} names no model number to compare against"
        ));
    };
    let want_vendor = if expected_vendor == CpuVendor::Other {
        e.vendor
    } else {
        expected_vendor
    };
    let got_vendor = vendor_from_id(actual_vendor_id).unwrap_or(a.vendor);
    if want_vendor != got_vendor {
        return Err(format!(
            "vendor differs: expected {}, got {}",
            vendor_name(want_vendor),
            vendor_name(got_vendor)
        ));
    }
    if e.family != a.family {
        return Err(format!(
            "family differs: expected {:?}, got {:?}",
            e.family, a.family
        ));
    }
    if e_number != a_number {
        return Err(format!(
            "model number differs: expected {e_number}, got {a_number}"
        ));
    }
    Ok(())
}

/// MemTotal, as a share of the profile's nominal size, that passes: the kernel keeps 1-5% for
/// itself (c220g5: about 187.5 of 192 GiB), and MemTotal can never exceed what is installed.
pub const MEMORY_BAND: (f64, f64) = (0.92, 1.00);
/// A disk's size, as a share of the profile's nominal decimal GB, that passes: drives hold a
/// little more than their label (a "480 GB" S3500 is 480.1 GB), 500 GB is not 480 GB.
pub const DISK_BAND: (f64, f64) = (0.98, 1.03);
/// `memory.total` of a GPU, as a share of the profile's GiB, that passes: the driver reserves
/// some (an A100 40GB reports 40536 MiB) and ECC takes up to 1/16 of GDDR memory.
pub const GPU_MEMORY_BAND: (f64, f64) = (0.90, 1.02);

fn in_band(actual: f64, nominal: f64, (lo, hi): (f64, f64)) -> bool {
    nominal > 0.0 && actual >= nominal * lo && actual <= nominal * hi
}

fn pct((lo, hi): (f64, f64)) -> String {
    format!("{:.0}-{:.0}%", lo * 100.0, hi * 100.0)
}

const GIB: f64 = (1u64 << 30) as f64;

/// A check whose fail says why.
fn judged(
    node: &str,
    name: &str,
    expected: impl Into<String>,
    actual: impl Into<String>,
    result: Result<(), String>,
) -> Check {
    let mut c = check(node, "hardware", name, expected, actual, result.is_ok());
    c.reason = result.err();
    c
}

fn exact(node: &str, name: &str, what: &str, want: u32, got: u32) -> Check {
    judged(
        node,
        name,
        want.to_string(),
        got.to_string(),
        if want == got {
            Ok(())
        } else {
            Err(format!("{what}: expected exactly {want}, found {got}"))
        },
    )
}

/// Hands out each of `items` at most once: group `g` in turn takes up to `counts[g]` of the
/// unassigned items it accepts (`fit(g, item)` is `Some`), best first (lowest fit). Returns the
/// items each group got.
fn assign<T>(
    items: &[T],
    counts: &[u32],
    fit: impl Fn(usize, &T) -> Option<f64>,
) -> Vec<Vec<usize>> {
    let mut used = vec![false; items.len()];
    counts
        .iter()
        .enumerate()
        .map(|(g, count)| {
            let mut c: Vec<(f64, usize)> = items
                .iter()
                .enumerate()
                .filter(|(i, _)| !used[*i])
                .filter_map(|(i, x)| fit(g, x).map(|f| (f, i)))
                .collect();
            c.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let got: Vec<usize> = c
                .into_iter()
                .take(*count as usize)
                .map(|(_, i)| i)
                .collect();
            for i in &got {
                used[*i] = true;
            }
            got
        })
        .collect()
}

fn disk_label(x: &DiskFact) -> String {
    format!(
        "{} {:.1} GB {}",
        x.name,
        x.size_bytes as f64 / 1e9,
        x.kind()
    )
}

fn nic_label(x: &NicFact) -> String {
    let speed = match (x.speed_mbps, x.supported_mbps) {
        (Some(s), _) => format!("{s} Mb/s"),
        (None, Some(s)) => format!("link down, supports {s} Mb/s"),
        (None, None) => "no link speed".into(),
    };
    format!(
        "{} {} {speed}",
        x.name,
        x.driver.as_deref().unwrap_or("no driver")
    )
}

/// A GPU name as words, without the brand words drivers add or drop between releases
/// ("NVIDIA", "Tesla"): "Tesla P100-PCIE-12GB" is ["p100", "pcie", "12gb"].
fn gpu_words(s: &str) -> Vec<String> {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && *w != "nvidia" && *w != "tesla")
        .map(String::from)
        .collect()
}

/// The profile's GPU name is the machine's, or a leading part of it ("NVIDIA A100" names an
/// "NVIDIA A100-SXM4-40GB"; never "A10", never "V100S" for "V100").
pub fn same_gpu(expected: &str, actual: &str) -> bool {
    let (e, a) = (gpu_words(expected), gpu_words(actual));
    !e.is_empty() && a.starts_with(&e)
}

fn found_list(items: Vec<String>) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

pub fn hardware(node: &Node, f: &Facts) -> Vec<Check> {
    hardware_checks(&node.name, &node.profile, f)
}

/// The hardware checks of one node: `f` (the machine's facts) against profile `p`. Every check
/// carries what the profile says and what the machine has, and a failed one the reason.
pub fn hardware_checks(n: &str, p: &Profile, f: &Facts) -> Vec<Check> {
    let mut v = vec![
        judged(
            n,
            "cpu model",
            &p.cpu.model,
            &f.cpu.model,
            compare_cpu(&p.cpu.model, p.cpu.vendor, &f.cpu.model, &f.cpu.vendor_id),
        ),
        exact(n, "cpu sockets", "sockets", p.cpu.sockets, f.cpu.sockets),
        exact(n, "cpu cores", "physical cores", p.cpu.cores, f.cpu.cores),
        exact(
            n,
            "cpu threads",
            "hardware threads",
            p.cpu.threads,
            f.cpu.threads,
        ),
    ];

    let want = f64::from(p.memory_gib);
    let got = f.memory_bytes as f64 / GIB;
    let share = if want > 0.0 { got / want * 100.0 } else { 0.0 };
    v.push(judged(
        n,
        "memory",
        format!("{} GiB (MemTotal {} of it)", p.memory_gib, pct(MEMORY_BAND)),
        format!("{got:.2} GiB MemTotal ({share:.1}%)"),
        if in_band(got, want, MEMORY_BAND) {
            Ok(())
        } else if f.memory_bytes == 0 {
            Err("MemTotal not reported by this machine".into())
        } else {
            Err(format!(
                "MemTotal is {share:.1}% of {} GiB, outside {}",
                p.memory_gib,
                pct(MEMORY_BAND)
            ))
        },
    ));

    // Disks: one check per size and kind, each device counted for one entry only.
    let mut disk_groups: Vec<(u64, DiskKind, u32)> = Vec::new();
    for d in &p.disks {
        match disk_groups
            .iter_mut()
            .find(|(s, k, _)| *s == d.size_gb && *k == d.kind)
        {
            Some(g) => g.2 += d.count,
            None => disk_groups.push((d.size_gb, d.kind, d.count)),
        }
    }
    let counts: Vec<u32> = disk_groups.iter().map(|g| g.2).collect();
    let got = assign(&f.disks, &counts, |g, x| {
        let (size, kind, _) = disk_groups[g];
        let nominal = size as f64 * 1e9;
        let s = x.size_bytes as f64;
        (x.kind() == kind_name(kind) && in_band(s, nominal, DISK_BAND))
            .then(|| (s / nominal - 1.0).abs())
    });
    for ((size, kind, count), got) in disk_groups.iter().zip(got) {
        let kind = kind_name(*kind);
        let kind_says = match kind {
            "hdd" => "rotational",
            "nvme" => "NVMe",
            _ => "non-rotational, not NVMe",
        };
        let found: Vec<String> = got.iter().map(|i| disk_label(&f.disks[*i])).collect();
        let result = if found.len() as u32 == *count {
            Ok(())
        } else {
            let all: Vec<String> = f.disks.iter().map(disk_label).collect();
            Err(format!(
                "found {} of {count} {kind} disks of {size} GB ({} of it); this machine has: {}",
                found.len(),
                pct(DISK_BAND),
                if all.is_empty() {
                    "no disks".into()
                } else {
                    all.join(", ")
                }
            ))
        };
        v.push(judged(
            n,
            &format!("disk {size} GB {kind}"),
            format!(
                "{count}x {size} GB {kind} ({kind_says}; size {} of {size} GB)",
                pct(DISK_BAND)
            ),
            found_list(found),
            result,
        ));
    }

    // NICs: one check per speed and driver; a port counts for one entry only. It counts when
    // its driver is the profile's and its link runs at exactly the nominal speed, or, with the
    // link down, the fastest mode it supports is the nominal speed.
    let mut nic_groups: Vec<(u32, Option<String>, u32)> = Vec::new();
    for x in &p.nics {
        match nic_groups
            .iter_mut()
            .find(|(s, d, _)| *s == x.speed_gbps && *d == x.driver)
        {
            Some(g) => g.2 += x.ports,
            None => nic_groups.push((x.speed_gbps, x.driver.clone(), x.ports)),
        }
    }
    // Entries that name a driver pick their ports first.
    nic_groups.sort_by_key(|g| g.1.is_none());
    let phys: Vec<&NicFact> = f.nics.iter().filter(|x| x.physical).collect();
    let counts: Vec<u32> = nic_groups.iter().map(|g| g.2).collect();
    let got = assign(&phys, &counts, |g, x| {
        let (gbps, driver, _) = &nic_groups[g];
        let mbps = u64::from(*gbps) * 1000;
        let driver_ok = driver.is_none() || x.driver == *driver;
        let up = x.speed_mbps == Some(mbps);
        let down = x.speed_mbps.is_none() && x.supported_mbps == Some(mbps);
        // A running link at the speed is better evidence than an idle port.
        (driver_ok && (up || down)).then_some(if up { 0.0 } else { 1.0 })
    });
    for ((gbps, driver, ports), got) in nic_groups.iter().zip(got) {
        let mbps = u64::from(*gbps) * 1000;
        let found: Vec<String> = got.iter().map(|i| nic_label(phys[*i])).collect();
        let result = if found.len() as u32 == *ports {
            Ok(())
        } else {
            let all: Vec<String> = phys.iter().map(|x| nic_label(x)).collect();
            Err(format!(
                "found {} of {ports} ports{} at {mbps} Mb/s; physical ports here: {}",
                found.len(),
                driver
                    .as_ref()
                    .map(|d| format!(" driven by {d}"))
                    .unwrap_or_default(),
                if all.is_empty() {
                    "none".into()
                } else {
                    all.join(", ")
                }
            ))
        };
        v.push(judged(
            n,
            &match driver {
                Some(d) => format!("nic {gbps} Gb/s {d}"),
                None => format!("nic {gbps} Gb/s"),
            },
            format!(
                "{ports}x {mbps} Mb/s{}",
                driver
                    .as_ref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            found_list(found),
            result,
        ));
    }

    v.extend(gpu_checks(n, p, f));
    v
}

/// The GPU checks of one node: per `[[gpu]]` entry of profile `p`, the GPUs by name, memory
/// and compute capability (each GPU counts for one entry only), then one check per
/// expectation the entry writes (driver branch, persistence, ECC, PCIe link) against what
/// `nvidia-smi -q -x` says of every GPU of its model.
pub fn gpu_checks(n: &str, p: &Profile, f: &Facts) -> Vec<Check> {
    let mut v = Vec::new();
    let gpu_label = |x: &GpuFact| {
        format!(
            "{} {} MiB cc {}",
            x.model, x.memory_mib, x.compute_capability
        )
    };
    let counts: Vec<u32> = p.gpus.iter().map(|g| g.count).collect();
    let got = assign(&f.gpus, &counts, |i, x| {
        let g = &p.gpus[i];
        (same_gpu(&g.model, &x.model)
            && x.compute_capability == g.compute_capability
            && in_band(
                x.memory_mib as f64,
                f64::from(g.memory_gib) * 1024.0,
                GPU_MEMORY_BAND,
            ))
        .then_some(0.0)
    });
    for (g, got) in p.gpus.iter().zip(got) {
        let found: Vec<String> = got.iter().map(|i| gpu_label(&f.gpus[*i])).collect();
        let result = if found.len() as u32 == g.count {
            Ok(())
        } else if f.gpus.is_empty() {
            Err(format!(
                "no GPUs reported{}",
                f.gpu_note
                    .as_ref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default()
            ))
        } else {
            Err(format!(
                "found {} of {} (name {:?}, {} of {} GiB, cc {}); GPUs here: {}",
                found.len(),
                g.count,
                g.model,
                pct(GPU_MEMORY_BAND),
                g.memory_gib,
                g.compute_capability,
                f.gpus.iter().map(gpu_label).collect::<Vec<_>>().join(", ")
            ))
        };
        v.push(judged(
            n,
            &format!("gpu {}", g.model),
            format!(
                "{}x {} {} GiB ({} of it) cc {}",
                g.count,
                g.model,
                g.memory_gib,
                pct(GPU_MEMORY_BAND),
                g.compute_capability
            ),
            found_list(found),
            result,
        ));
        v.extend(gpu_detail_checks(n, g, f));
    }
    v
}

/// "GPU 1 (00000000:06:00.0)".
fn gpu_id(d: &GpuDetail) -> String {
    format!("GPU {} ({})", d.index, d.bus_id)
}

fn on_off(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

/// One expectation of a `[[gpu]]` entry judged on every GPU of its model: `look` gives, per
/// GPU, whether it meets the expectation (`None`: not reported) and what it has.
fn judge_each(
    n: &str,
    name: &str,
    expected: String,
    mine: &[&GpuDetail],
    look: impl Fn(&GpuDetail) -> (Option<bool>, String),
) -> Check {
    let seen: Vec<(&GpuDetail, Option<bool>, String)> = mine
        .iter()
        .map(|d| {
            let (ok, shown) = look(d);
            (*d, ok, shown)
        })
        .collect();
    let actual = if seen.iter().all(|(_, _, s)| *s == seen[0].2) {
        if seen.len() > 1 {
            format!("{} (all {})", seen[0].2, seen.len())
        } else {
            seen[0].2.clone()
        }
    } else {
        seen.iter()
            .map(|(d, _, s)| format!("GPU {}: {s}", d.index))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let bad: Vec<String> = seen
        .iter()
        .filter(|(_, ok, _)| *ok != Some(true))
        .map(|(d, _, s)| format!("{} has {s}", gpu_id(d)))
        .collect();
    let result = if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} of {} GPUs differ: {}",
            bad.len(),
            seen.len(),
            bad.join("; ")
        ))
    };
    judged(n, name, expected, actual, result)
}

/// The expectations a `[[gpu]]` entry writes, one check each, against the `nvidia-smi -q -x`
/// details of every GPU of its model. Where the node has no GPU of that model the checks are
/// skipped (check `gpu MODEL` fails for it); where it has one but reported no details, they
/// fail with the reason.
pub fn gpu_detail_checks(n: &str, g: &Gpu, f: &Facts) -> Vec<Check> {
    // Per expectation: its name, what it expects, and per GPU whether it meets it (`None`:
    // not reported) and what it has.
    type Look = Box<dyn Fn(&GpuDetail) -> (Option<bool>, String)>;
    fn shown(x: Option<String>) -> String {
        x.unwrap_or_else(|| "not reported".into())
    }
    let mut wanted: Vec<(&str, String, Look)> = Vec::new();
    if let Some(want) = g.driver_branch {
        wanted.push((
            "driver branch",
            want.to_string(),
            Box::new(move |d| {
                (
                    d.driver_branch.map(|b| b == want),
                    shown(
                        d.driver_branch
                            .map(|b| format!("{b} ({})", d.driver_version)),
                    ),
                )
            }),
        ));
    }
    if let Some(want) = g.persistence {
        wanted.push((
            "persistence mode",
            on_off(want).into(),
            Box::new(move |d| {
                (
                    d.persistence_mode.map(|b| b == want),
                    shown(d.persistence_mode.map(|b| on_off(b).into())),
                )
            }),
        ));
    }
    if let Some(want) = g.ecc {
        wanted.push((
            "ecc",
            on_off(want).into(),
            Box::new(move |d| {
                (
                    d.ecc_mode.map(|b| b == want),
                    shown(d.ecc_mode.map(|b| on_off(b).into())),
                )
            }),
        ));
    }
    // The link's maximum is judged: an idle GPU lowers its current link, which is shown.
    if let Some(want) = g.pcie_gen {
        wanted.push((
            "pcie gen",
            format!("gen {want} (the link's maximum)"),
            Box::new(move |d| {
                let now = match d.pcie_gen {
                    Some(c) if Some(c) != d.pcie_gen_max => format!(", now gen {c}"),
                    _ => String::new(),
                };
                (
                    d.pcie_gen_max.map(|x| x == want),
                    shown(d.pcie_gen_max.map(|x| format!("gen {x}{now}"))),
                )
            }),
        ));
    }
    if let Some(want) = g.pcie_width {
        wanted.push((
            "pcie width",
            format!("x{want} (the link's maximum)"),
            Box::new(move |d| {
                let now = match d.pcie_width {
                    Some(c) if Some(c) != d.pcie_width_max => format!(", now x{c}"),
                    _ => String::new(),
                };
                (
                    d.pcie_width_max.map(|x| x == want),
                    shown(d.pcie_width_max.map(|x| format!("x{x}{now}"))),
                )
            }),
        ));
    }
    let name = |what: &str| format!("gpu {} {what}", g.model);
    let mine: Vec<&GpuDetail> = f
        .gpu_details
        .iter()
        .filter(|d| same_gpu(&g.model, &d.product_name))
        .collect();
    if mine.is_empty() && !f.gpus.iter().any(|x| same_gpu(&g.model, &x.model)) {
        let why = format!("no {} here; see check `gpu {}`", g.model, g.model);
        return wanted
            .into_iter()
            .map(|(what, expected, _)| skip(n, "hardware", &name(what), expected, why.clone()))
            .collect();
    }
    if mine.is_empty() {
        let why = match &f.gpu_details_note {
            Some(e) => format!("nvidia-smi -q -x gave no details: {e}"),
            None if f.gpu_details.is_empty() => {
                "no nvidia-smi -q -x details from this agent (an edgectl older than them?)".into()
            }
            None => format!(
                "nvidia-smi -q -x names no {}: {}",
                g.model,
                f.gpu_details
                    .iter()
                    .map(|d| d.product_name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return wanted
            .into_iter()
            .map(|(what, expected, _)| {
                judged(n, &name(what), expected, "not reported", Err(why.clone()))
            })
            .collect();
    }
    wanted
        .into_iter()
        .map(|(what, expected, look)| judge_each(n, &name(what), expected, &mine, look))
        .collect()
}

fn kind_name(k: DiskKind) -> &'static str {
    match k {
        DiskKind::Ssd => "ssd",
        DiskKind::Hdd => "hdd",
        DiskKind::Nvme => "nvme",
    }
}

/// The sysctl values `modules/lib/sysctl.nix` sets for a NIC speed.
pub fn expected_sysctls(nic_gbps: u32) -> Vec<(&'static str, String)> {
    let (max, cap) = if nic_gbps <= 10 {
        (134217728u64, 67108864u64)
    } else {
        (268435456, 134217728)
    };
    vec![
        ("net.ipv4.tcp_congestion_control", "bbr".into()),
        ("net.core.default_qdisc", "fq".into()),
        ("net.core.rmem_max", max.to_string()),
        ("net.core.wmem_max", max.to_string()),
        ("net.ipv4.tcp_rmem", format!("4096 87380 {cap}")),
        ("net.ipv4.tcp_wmem", format!("4096 65536 {cap}")),
    ]
}

pub fn config(node: &Node, f: &Facts) -> Vec<Check> {
    let n = node.name.as_str();
    let c = "config";
    let mut v = Vec::new();
    if node.has(Feature::NetTuning) {
        for (k, want) in expected_sysctls(node.profile.experiment_nic_gbps().unwrap_or(10)) {
            let got = f.sysctl.get(k).cloned().unwrap_or_else(|| "absent".into());
            v.push(check(
                n,
                c,
                &format!("sysctl {k}"),
                &want,
                &got,
                got == want,
            ));
        }
    }
    if node.has(Feature::Unikernel) {
        v.push(check(
            n,
            c,
            "kvm usable",
            "/dev/kvm opens read-write",
            if f.kvm_usable {
                "usable"
            } else if f.kvm_present {
                "present, not usable"
            } else {
                "absent"
            },
            f.kvm_usable,
        ));
        v.push(tool(n, "runtime", "ops", f));
    }
    let mut units = Vec::new();
    if node.is(Role::ZenohRouter) {
        units.push("zenohd");
    }
    if node.is(Role::RayHead) {
        units.push("ray-head");
    }
    if node.is(Role::RayWorker) {
        units.push("ray-worker");
    }
    if node.has(Feature::Agent) {
        units.push("edgectl-agent");
    }
    for u in units {
        let state = f.units.get(u).map(String::as_str).unwrap_or("unknown");
        if state == "unknown" {
            v.push(skip(
                n,
                c,
                &format!("service {u}"),
                "active",
                "no systemd on this node (state unknown)",
            ));
        } else {
            v.push(check(
                n,
                c,
                &format!("service {u}"),
                "active",
                state,
                state == "active",
            ));
        }
    }
    v
}

fn tool(n: &str, category: &str, t: &str, f: &Facts) -> Check {
    let got = f.tools.get(t);
    check(
        n,
        category,
        &format!("{t} on PATH"),
        "present",
        got.cloned().unwrap_or_else(|| "not found".into()),
        got.is_some(),
    )
}

pub fn wasm(
    node: &Node,
    f: &Facts,
    cold: Result<&ColdStart, &str>,
    target_ms: Option<f64>,
) -> Vec<Check> {
    let n = node.name.as_str();
    let mut v = vec![
        tool(n, "runtime", "wasmtime", f),
        tool(n, "runtime", "wasmedge", f),
    ];
    v.push(match cold {
        Ok(c) => {
            let actual = format!("{:.2} ms (compile {:.1} ms)", c.cold_start_ms, c.compile_ms);
            match target_ms {
                Some(t) => check(
                    n,
                    "runtime",
                    "wasm cold start",
                    format!("<= {t} ms"),
                    actual,
                    c.result == 500500 && c.cold_start_ms <= t,
                ),
                None => check(
                    n,
                    "runtime",
                    "wasm cold start",
                    "runs (no wasm_cold_start_ms target)",
                    actual,
                    c.result == 500500,
                ),
            }
        }
        Err(e) => check(n, "runtime", "wasm cold start", "runs", e, false),
    });
    v
}

pub fn ray(cluster: &Cluster, head: &Node, r: Result<&RayFacts, &str>) -> Vec<Check> {
    let n = head.name.as_str();
    let ray_nodes: Vec<&Node> = cluster
        .nodes
        .iter()
        .filter(|x| x.has(Feature::Ray))
        .collect();
    let want_nodes = ray_nodes.len();
    let want_gpus: u32 = ray_nodes.iter().map(|x| x.profile.gpu_count()).sum();
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            return vec![check(
                n,
                "ray",
                "ray nodes alive",
                want_nodes.to_string(),
                e,
                false,
            )];
        }
    };
    if !r.present {
        return vec![
            skip(
                n,
                "ray",
                "ray nodes alive",
                want_nodes.to_string(),
                format!("ray is not installed on {n}"),
            ),
            skip(
                n,
                "ray",
                "ray gpus",
                want_gpus.to_string(),
                format!("ray is not installed on {n}"),
            ),
        ];
    }
    let first = r.output.lines().last().unwrap_or("").to_string();
    vec![
        check(
            n,
            "ray",
            "ray nodes alive",
            want_nodes.to_string(),
            if r.ok {
                r.alive_nodes.to_string()
            } else {
                format!("`ray status` failed: {first}")
            },
            r.ok && r.alive_nodes as usize == want_nodes,
        ),
        check(
            n,
            "ray",
            "ray gpus",
            want_gpus.to_string(),
            format!("{}", r.gpus),
            r.ok && (r.gpus - f64::from(want_gpus)).abs() < 0.5,
        ),
    ]
}

pub fn latency(kind: &str, s: &PairStat, target_ms: Option<f64>) -> Check {
    let name = format!("latency {} -> {} ({kind})", s.from, s.to);
    let node = s.from.as_str();
    if let Some(e) = &s.error {
        return check(
            node,
            "network",
            &name,
            "round trips answered",
            e.clone(),
            false,
        );
    }
    let actual = format!(
        "p50 {:.2} ms, p99 {:.2} ms ({} samples, {} lost)",
        s.p50_ms, s.p99_ms, s.samples, s.lost
    );
    match target_ms {
        Some(t) => check(
            node,
            "network",
            &name,
            format!("p99 <= {t} ms"),
            actual,
            s.samples > 0 && s.p99_ms <= t,
        ),
        None => check(
            node,
            "network",
            &name,
            "answered (no latency_p99_ms target)",
            actual,
            s.samples > 0,
        ),
    }
}

pub fn user(node: &str, name: &str, o: Result<&WasiOutcome, &str>) -> Check {
    let cname = format!("wasi {name}");
    match o {
        Ok(o) => {
            let out = o
                .stdout
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(120)
                .collect::<String>();
            let actual = match &o.error {
                Some(e) => e.clone(),
                None if out.is_empty() => format!("exit {}", o.exit_code),
                None => format!("exit {}: {out}", o.exit_code),
            };
            check(
                node,
                "user",
                &cname,
                "exit 0",
                actual,
                o.error.is_none() && o.exit_code == 0,
            )
        }
        Err(e) => check(node, "user", &cname, "exit 0", e, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn name(s: &str) -> (CpuVendor, String, Option<String>) {
        let c = parse_cpu_name(s);
        (c.vendor, c.family, c.number)
    }

    #[test]
    fn cpu_names_come_apart() {
        use CpuVendor::*;
        let n = |v, f: &str, m: Option<&str>| (v, f.to_string(), m.map(String::from));
        assert_eq!(
            name("Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz"),
            n(Intel, "xeon silver", Some("4114"))
        );
        assert_eq!(
            name("Intel Xeon Silver 4114"),
            n(Intel, "xeon silver", Some("4114"))
        );
        assert_eq!(
            name("Intel(R) Xeon(R) CPU E5-2630 v3 @ 2.40GHz"),
            n(Intel, "xeon e5", Some("2630 v3"))
        );
        assert_eq!(
            name("Intel(R) Xeon(R) CPU E5-2630 0 @ 2.30GHz"),
            n(Intel, "xeon e5", Some("2630"))
        );
        assert_eq!(
            name("AMD EPYC 7302P 16-Core Processor"),
            n(Amd, "epyc", Some("7302p"))
        );
        assert_eq!(
            name("13th Gen Intel(R) Core(TM) i7-13700K"),
            n(Intel, "core i7", Some("13700k"))
        );
        assert_eq!(
            name("AMD Ryzen 9 5950X 16-Core Processor"),
            n(Amd, "ryzen 9", Some("5950x"))
        );
        assert_eq!(
            name("AMD Ryzen 7 5800H with Radeon Graphics"),
            n(Amd, "ryzen 7", Some("5800h"))
        );
        assert_eq!(
            name("Intel(R) Core(TM)2 Duo CPU     E8400  @ 3.00GHz"),
            n(Intel, "core 2 duo", Some("e8400"))
        );
        assert_eq!(name("AMD EPYC"), n(Amd, "epyc", None));
        assert_eq!(
            name("Intel Xeon Processor (Skylake, IBRS)"),
            n(Intel, "xeon", None)
        );
        assert_eq!(
            name("QEMU Virtual CPU version 2.5+"),
            n(Other, "qemu virtual", None)
        );
        assert_eq!(
            name("Intel Core i7 9xx (Nehalem Class Core i7)"),
            n(Intel, "core i7", None)
        );
        assert_eq!(name(""), n(Other, "", None));
    }

    #[test]
    fn cpu_models_compare_exactly() {
        use CpuVendor::*;
        let silver = "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz";
        assert_eq!(compare_cpu(silver, Intel, silver, "GenuineIntel"), Ok(()));
        assert_eq!(
            compare_cpu("Intel Xeon Silver 4114", Intel, silver, ""),
            Ok(())
        );
        let gold = compare_cpu(
            silver,
            Intel,
            "Intel(R) Xeon(R) Gold 6136 CPU @ 3.00GHz",
            "",
        );
        assert!(gold.unwrap_err().contains("family differs"));
        let other = compare_cpu(
            silver,
            Intel,
            "Intel(R) Xeon(R) Silver 4116 CPU @ 2.10GHz",
            "",
        );
        assert!(other.unwrap_err().contains("expected 4114, got 4116"));
        // A VM's generic name passes for nothing, and says so.
        for vm in [
            "Intel(R) Xeon(R) Processor @ 2.80GHz",
            "Intel Xeon Processor (Skylake, IBRS)",
            "QEMU Virtual CPU version 2.5+",
            "",
        ] {
            let e = compare_cpu(silver, Intel, vm, "GenuineIntel").unwrap_err();
            assert!(
                e.starts_with("model not reported by this machine"),
                "{vm}: {e}"
            );
        }
        let e = compare_cpu(
            "AMD EPYC 7302 16-Core Processor",
            Amd,
            "AMD EPYC",
            "AuthenticAMD",
        );
        assert!(e.unwrap_err().starts_with("model not reported"));
        // 7302P is a different part from 7302.
        let e = compare_cpu(
            "AMD EPYC 7302 16-Core Processor",
            Amd,
            "AMD EPYC 7302P 16-Core Processor",
            "AuthenticAMD",
        );
        assert!(e.unwrap_err().contains("expected 7302, got 7302p"));
        // CPUID's vendor outranks the name.
        let e = compare_cpu(silver, Intel, silver, "AuthenticAMD");
        assert!(e.unwrap_err().contains("vendor differs"));
        // A profile without a model number cannot pass anything.
        let e = compare_cpu("AMD EPYC", Amd, "AMD EPYC 7302 16-Core Processor", "");
        assert!(e.unwrap_err().contains("profile's model"));
    }

    #[test]
    fn gpu_names() {
        assert!(same_gpu("Tesla P100-PCIE-12GB", "Tesla P100-PCIE-12GB"));
        assert!(same_gpu("NVIDIA A100", "NVIDIA A100-SXM4-40GB"));
        assert!(same_gpu("A100-SXM4-40GB", "NVIDIA A100-SXM4-40GB"));
        assert!(!same_gpu("NVIDIA A10", "NVIDIA A100-SXM4-40GB"));
        assert!(!same_gpu("Tesla V100-SXM2-16GB", "Tesla V100S-PCIE-32GB"));
        assert!(!same_gpu("Tesla P100-PCIE-12GB", "Tesla P100-PCIE-16GB"));
        assert!(!same_gpu("", "Tesla P4"));
        assert!(!same_gpu("NVIDIA", "Tesla P4"));
    }

    fn v100_entry() -> Gpu {
        Gpu {
            model: "Tesla V100-SXM2-16GB".into(),
            count: 2,
            arch: edgectl_model::profile::GpuArch::Volta,
            compute_capability: "7.0".into(),
            memory_gib: 16,
            driver_branch: Some(580),
            persistence: Some(true),
            ecc: Some(true),
            pcie_gen: Some(3),
            pcie_width: Some(16),
        }
    }

    fn v100(index: u32, bus: &str) -> GpuDetail {
        GpuDetail {
            index,
            bus_id: bus.into(),
            product_name: "Tesla V100-SXM2-16GB".into(),
            driver_version: "580.119.02".into(),
            driver_branch: Some(580),
            cuda_version: Some("13.0".into()),
            persistence_mode: Some(true),
            ecc_mode: Some(true),
            pcie_gen: Some(3),
            pcie_gen_max: Some(3),
            pcie_width: Some(16),
            pcie_width_max: Some(16),
            memory_total_mib: Some(16384),
            compute_capability: Some("7.0".into()),
            ..Default::default()
        }
    }

    fn two_v100s() -> Facts {
        let fact = GpuFact {
            model: "Tesla V100-SXM2-16GB".into(),
            memory_mib: 16384,
            driver_version: "580.119.02".into(),
            compute_capability: "7.0".into(),
        };
        Facts {
            gpus: vec![fact.clone(), fact],
            gpu_details: vec![v100(0, "00000000:04:00.0"), v100(1, "00000000:06:00.0")],
            ..Default::default()
        }
    }

    fn by_name(cs: &[Check]) -> BTreeMap<&str, &Check> {
        cs.iter()
            .map(|c| (c.name.strip_prefix("gpu Tesla V100-SXM2-16GB ").unwrap(), c))
            .collect()
    }

    #[test]
    fn gpu_details_pass() {
        let cs = gpu_detail_checks("n1", &v100_entry(), &two_v100s());
        let m = by_name(&cs);
        let got: Vec<(&str, &str, &str, Verdict)> = m
            .iter()
            .map(|(k, c)| (*k, c.expected.as_str(), c.actual.as_str(), c.verdict))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "driver branch",
                    "580",
                    "580 (580.119.02) (all 2)",
                    Verdict::Pass
                ),
                ("ecc", "enabled", "enabled (all 2)", Verdict::Pass),
                (
                    "pcie gen",
                    "gen 3 (the link's maximum)",
                    "gen 3 (all 2)",
                    Verdict::Pass
                ),
                (
                    "pcie width",
                    "x16 (the link's maximum)",
                    "x16 (all 2)",
                    Verdict::Pass
                ),
                (
                    "persistence mode",
                    "enabled",
                    "enabled (all 2)",
                    Verdict::Pass
                ),
            ]
        );
        assert!(
            cs.iter()
                .all(|c| c.category == "hardware" && c.reason.is_none())
        );
        // An idle link below its maximum passes, and shows it.
        let mut f = two_v100s();
        f.gpu_details[1].pcie_gen = Some(1);
        let cs = gpu_detail_checks("n1", &v100_entry(), &f);
        let c = by_name(&cs)["pcie gen"];
        assert_eq!(c.verdict, Verdict::Pass);
        assert_eq!(c.actual, "GPU 0: gen 3, GPU 1: gen 3, now gen 1");
        // Only what the entry writes is checked.
        let mut g = v100_entry();
        (g.driver_branch, g.ecc, g.pcie_width) = (None, None, None);
        let cs = gpu_detail_checks("n1", &g, &f);
        assert_eq!(
            by_name(&cs).into_keys().collect::<Vec<_>>(),
            ["pcie gen", "persistence mode"]
        );
        g.persistence = Some(false);
        g.pcie_gen = None;
        let cs = gpu_detail_checks("n1", &g, &f);
        assert_eq!(cs[0].verdict, Verdict::Fail, "{cs:?}");
        g.persistence = None;
        assert!(gpu_detail_checks("n1", &g, &f).is_empty());
    }

    #[test]
    fn gpu_details_fail_with_the_gpu_that_differs() {
        let g = v100_entry();
        let mut f = two_v100s();
        let d = &mut f.gpu_details[1];
        d.driver_version = "535.183.01".into();
        d.driver_branch = Some(535);
        d.persistence_mode = Some(false);
        d.ecc_mode = None;
        d.pcie_gen_max = Some(2);
        d.pcie_gen = Some(2);
        d.pcie_width_max = Some(8);
        d.pcie_width = Some(8);
        let cs = gpu_detail_checks("n1", &g, &f);
        let m = by_name(&cs);
        assert!(cs.iter().all(|c| c.verdict == Verdict::Fail), "{cs:#?}");
        let reason = |k: &str| m[k].reason.clone().unwrap();
        assert_eq!(
            reason("driver branch"),
            "1 of 2 GPUs differ: GPU 1 (00000000:06:00.0) has 535 (535.183.01)"
        );
        assert_eq!(
            m["driver branch"].actual,
            "GPU 0: 580 (580.119.02), GPU 1: 535 (535.183.01)"
        );
        assert!(reason("persistence mode").contains("GPU 1 (00000000:06:00.0) has disabled"));
        assert!(reason("ecc").contains("has not reported"));
        assert!(reason("pcie gen").contains("has gen 2"));
        assert!(reason("pcie width").contains("has x8"));
        // Both wrong: both named.
        f.gpu_details[0].persistence_mode = Some(false);
        let cs = gpu_detail_checks("n1", &g, &f);
        assert!(
            by_name(&cs)["persistence mode"]
                .reason
                .as_deref()
                .unwrap()
                .starts_with("2 of 2 GPUs differ")
        );
    }

    #[test]
    fn gpu_details_missing() {
        let g = v100_entry();
        // GPUs there, details not: every expectation fails, saying why.
        let mut f = two_v100s();
        f.gpu_details.clear();
        f.gpu_details_note = Some("nvidia-smi -q -x failed: Unknown Error".into());
        let cs = gpu_detail_checks("n1", &g, &f);
        assert_eq!(cs.len(), 5);
        for c in &cs {
            assert_eq!(
                (c.verdict, c.actual.as_str()),
                (Verdict::Fail, "not reported")
            );
            assert!(
                c.reason.as_deref().unwrap().contains("Unknown Error"),
                "{c:?}"
            );
        }
        f.gpu_details_note = None;
        let cs = gpu_detail_checks("n1", &g, &f);
        assert!(cs[0].reason.as_deref().unwrap().contains("older"));
        // No V100 at all: skipped, check `gpu MODEL` fails for it.
        let cs = gpu_detail_checks("n1", &g, &Facts::default());
        assert_eq!(cs.len(), 5);
        for c in &cs {
            assert_eq!(c.verdict, Verdict::Skip);
            assert!(
                c.reason
                    .as_deref()
                    .unwrap()
                    .contains("no Tesla V100-SXM2-16GB here")
            );
        }
        // Another model's details do not stand in.
        let mut f = two_v100s();
        for d in &mut f.gpu_details {
            d.product_name = "Tesla P100-PCIE-12GB".into();
        }
        let cs = gpu_detail_checks("n1", &g, &f);
        assert!(cs.iter().all(|c| c.verdict == Verdict::Fail));
        assert!(
            cs[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("names no Tesla V100")
        );
    }

    #[test]
    fn latency_verdicts() {
        let s = PairStat {
            from: "a".into(),
            to: "b".into(),
            samples: 100,
            lost: 0,
            p50_ms: 3.1,
            p99_ms: 3.6,
            error: None,
            rtt_ms: vec![],
        };
        assert_eq!(latency("quic", &s, Some(2.0)).verdict, Verdict::Fail);
        assert_eq!(latency("quic", &s, Some(5.0)).verdict, Verdict::Pass);
        assert_eq!(latency("quic", &s, None).verdict, Verdict::Pass);
    }
}
