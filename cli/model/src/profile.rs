//! Hardware profiles: what a node type really is (CPU, memory, disks, NICs, GPUs).
//!
//! Built-in profiles come from `profiles/*.toml` at the repository root and are embedded in the
//! binary. A user's directory may add profiles or replace a built-in one of the same name, and a
//! topology may declare profiles inline under `[profile.NAME]`. `extends = "c220g5"` starts from
//! another profile: scalar fields and `[cpu]`/`[memory]` keys override one by one, while a list
//! written in the child (`[[disk]]`, `[[nic]]`, `[[gpu]]`) replaces the parent's list whole, so
//! "a c220g5 plus a Tesla P4" is `extends = "c220g5"` and one `[[gpu]]`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Diagnostics, Kind, did_you_mean};
use crate::read::{Reader, Table};
use crate::source::SourceFile;

include!(concat!(env!("OUT_DIR"), "/builtin_profiles.rs"));

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuArch {
    Kepler,
    Maxwell,
    Pascal,
    Volta,
    Turing,
    Ampere,
    Ada,
    Hopper,
    Blackwell,
}

impl GpuArch {
    pub const ALL: &'static [(&'static str, GpuArch)] = &[
        ("kepler", GpuArch::Kepler),
        ("maxwell", GpuArch::Maxwell),
        ("pascal", GpuArch::Pascal),
        ("volta", GpuArch::Volta),
        ("turing", GpuArch::Turing),
        ("ampere", GpuArch::Ampere),
        ("ada", GpuArch::Ada),
        ("hopper", GpuArch::Hopper),
        ("blackwell", GpuArch::Blackwell),
    ];

    pub fn as_str(self) -> &'static str {
        GpuArch::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    /// CUDA compute-capability major versions that belong to this architecture.
    pub fn capability_majors(self) -> &'static [u32] {
        match self {
            GpuArch::Kepler => &[3],
            GpuArch::Maxwell => &[5],
            GpuArch::Pascal => &[6],
            GpuArch::Volta => &[7],
            GpuArch::Turing => &[7],
            GpuArch::Ampere => &[8],
            GpuArch::Ada => &[8],
            GpuArch::Hopper => &[9],
            GpuArch::Blackwell => &[10, 11, 12],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskKind {
    Ssd,
    Hdd,
    Nvme,
}

impl DiskKind {
    pub fn rotational(self) -> bool {
        self == DiskKind::Hdd
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicNetwork {
    Control,
    Experiment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuVendor {
    Intel,
    Amd,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub model: String,
    pub vendor: CpuVendor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microarch: Option<String>,
    pub sockets: u32,
    /// Physical cores in the whole machine.
    pub cores: u32,
    /// Hardware threads (logical CPUs) in the whole machine.
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub size_gb: u64,
    pub kind: DiskKind,
    pub count: u32,
    pub boot: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nic {
    pub model: String,
    pub speed_gbps: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    pub ports: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NicNetwork>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub model: String,
    pub count: u32,
    pub arch: GpuArch,
    /// CUDA compute capability as NVIDIA writes it, e.g. "6.1".
    pub compute_capability: String,
    pub memory_gib: u32,
    /// What `edgectl verify` expects `nvidia-smi -q -x` to say about each of these GPUs; an
    /// expectation left out is not checked. The driver branch: the major number of the
    /// driver's version (580 for 580.119.02).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_branch: Option<u32>,
    /// Persistence mode enabled (or, with `false`, disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistence: Option<bool>,
    /// ECC enabled now (`current_ecc`), or disabled with `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc: Option<bool>,
    /// The PCIe generation the link can run at (`max_link_gen`: the lower of the GPU's and
    /// the slot's); an idle GPU lowers its current link, so that is shown, not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_gen: Option<u32>,
    /// The PCIe lanes the link can run on (`max_link_width`): 1, 2, 4, 8, 12, 16 or 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie_width: Option<u32>,
}

/// The link widths PCIe defines.
pub const PCIE_WIDTHS: &[u32] = &[1, 2, 4, 8, 12, 16, 32];

/// A fully resolved hardware profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The chain of profiles this one was built from, nearest first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub extends: Vec<String>,
    pub cpu: Cpu,
    pub memory_gib: u32,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub gpus: Vec<Gpu>,
    /// "built-in", or the file it came from.
    pub origin: String,
}

impl Profile {
    pub fn gpu_count(&self) -> u32 {
        self.gpus.iter().map(|g| g.count).sum()
    }
    pub fn has_gpu(&self) -> bool {
        self.gpu_count() > 0
    }
    /// The fastest NIC on the experiment network (or any NIC if none is marked), in Gbit/s.
    pub fn experiment_nic_gbps(&self) -> Option<u32> {
        let exp = self
            .nics
            .iter()
            .filter(|n| n.network != Some(NicNetwork::Control));
        exp.map(|n| n.speed_gbps).max()
    }
    pub fn boot_disk(&self) -> Option<&Disk> {
        self.disks.iter().find(|d| d.boot)
    }
    /// A one-line GPU summary such as "1x Tesla P100-PCIE-12GB".
    pub fn gpu_summary(&self) -> String {
        if self.gpus.is_empty() {
            return "-".into();
        }
        self.gpus
            .iter()
            .map(|g| format!("{}x {}", g.count, g.model))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A profile as written in one file or inline table; every field may come from `extends`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    #[serde(skip_serializing_if = "CpuSpec::is_empty", default)]
    pub cpu: CpuSpec,
    #[serde(skip_serializing_if = "MemorySpec::is_empty", default)]
    pub memory: MemorySpec,
    #[serde(rename = "disk", skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<Disk>>,
    #[serde(rename = "nic", skip_serializing_if = "Option::is_none")]
    pub nics: Option<Vec<Nic>>,
    #[serde(rename = "gpu", skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Vec<Gpu>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<CpuVendor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microarch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

impl CpuSpec {
    fn is_empty(&self) -> bool {
        *self == CpuSpec::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemorySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gib: Option<u32>,
}

impl MemorySpec {
    fn is_empty(&self) -> bool {
        self.gib.is_none()
    }
}

const PROFILE_KEYS: &[&str] = &[
    "description",
    "site",
    "extends",
    "cpu",
    "memory",
    "disk",
    "nic",
    "gpu",
];

fn enum_value<T: Copy>(
    r: &mut Reader,
    t: &Table<'_, '_>,
    key: &str,
    allowed: &[(&str, T)],
) -> Option<T> {
    let s = r.string(t, key, false)?;
    if let Some((_, v)) = allowed.iter().find(|(n, _)| *n == s) {
        return Some(*v);
    }
    let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
    let span = r.spans.get(&t.child(key)).unwrap_or(t.span.clone());
    let help = match did_you_mean(&s, names.iter().copied()) {
        Some(m) => format!("did you mean \"{m}\"?"),
        None => format!("use one of: {}", names.join(", ")),
    };
    r.error(
        Kind::InvalidValue,
        span,
        format!("`{}` must be one of {}", t.child(key), names.join(", ")),
    )
    .field(t.child(key))
    .value(format!("{s:?}"))
    .help(help);
    None
}

/// Reads a profile table (a profile file's root, or `[profile.NAME]` in a topology).
pub fn read_profile_spec(r: &mut Reader, t: &Table<'_, '_>) -> ProfileSpec {
    r.check_keys(t, PROFILE_KEYS);
    let mut spec = ProfileSpec {
        description: r.string(t, "description", false),
        site: r.string(t, "site", false),
        extends: r.string(t, "extends", false),
        ..Default::default()
    };
    if let Some(cpu) = r.opt_table(t, "cpu") {
        r.check_keys(
            &cpu,
            &[
                "model",
                "vendor",
                "microarch",
                "sockets",
                "cores",
                "threads",
            ],
        );
        spec.cpu = CpuSpec {
            model: r.string(&cpu, "model", false),
            vendor: enum_value(
                r,
                &cpu,
                "vendor",
                &[
                    ("intel", CpuVendor::Intel),
                    ("amd", CpuVendor::Amd),
                    ("other", CpuVendor::Other),
                ],
            ),
            microarch: r.string(&cpu, "microarch", false),
            sockets: r.integer(&cpu, "sockets", false, 1, 64).map(|n| n as u32),
            cores: r
                .integer(&cpu, "cores", false, 1, 1 << 16)
                .map(|n| n as u32),
            threads: r
                .integer(&cpu, "threads", false, 1, 1 << 17)
                .map(|n| n as u32),
        };
    }
    if let Some(mem) = r.opt_table(t, "memory") {
        r.check_keys(&mem, &["gib"]);
        spec.memory.gib = r.integer(&mem, "gib", true, 1, 1 << 24).map(|n| n as u32);
    }
    if t.get("disk").is_some() {
        let mut disks = Vec::new();
        for d in r.tables(t, "disk") {
            r.check_keys(&d, &["model", "size_gb", "kind", "count", "boot"]);
            let model = r.string(&d, "model", false);
            let size = r.integer(&d, "size_gb", true, 1, 1 << 40);
            let kind = if d.get("kind").is_some() {
                enum_value(
                    r,
                    &d,
                    "kind",
                    &[
                        ("ssd", DiskKind::Ssd),
                        ("hdd", DiskKind::Hdd),
                        ("nvme", DiskKind::Nvme),
                    ],
                )
            } else {
                r.error(
                    Kind::MissingField,
                    d.span.clone(),
                    format!("missing required field `kind` in [{}]", d.path),
                )
                .field(d.child("kind"))
                .help("add `kind = \"ssd\"` (or \"hdd\", \"nvme\")");
                None
            };
            let count = r.integer(&d, "count", false, 1, 1024).unwrap_or(1) as u32;
            let boot = r.boolean(&d, "boot").unwrap_or(false);
            if boot && count != 1 {
                let span = r.spans.get(&d.child("count")).unwrap_or(d.span.clone());
                r.error(Kind::InvalidValue, span, "a boot disk entry must describe exactly one disk")
                    .field(d.child("count"))
                    .value(count.to_string())
                    .help("split it: one `[[disk]]` with `boot = true` and another with the rest of the count");
            }
            if let (Some(size), Some(kind)) = (size, kind) {
                disks.push(Disk {
                    model,
                    size_gb: size as u64,
                    kind,
                    count,
                    boot,
                });
            }
        }
        let boots: Vec<_> = disks.iter().filter(|d| d.boot).collect();
        if boots.len() > 1 {
            let span = r.spans.get("disk").unwrap_or(t.span.clone());
            r.error(
                Kind::InvalidValue,
                span,
                "more than one disk is marked `boot = true`",
            )
            .field(t.child("disk"))
            .help("mark only the disk the machine boots from");
        }
        spec.disks = Some(disks);
    }
    if t.get("nic").is_some() {
        let mut nics = Vec::new();
        for n in r.tables(t, "nic") {
            r.check_keys(&n, &["model", "speed_gbps", "driver", "ports", "network"]);
            let model = r.string(&n, "model", true);
            let speed = r.integer(&n, "speed_gbps", true, 1, 1600);
            let driver = r.string(&n, "driver", false);
            let ports = r.integer(&n, "ports", false, 1, 64).unwrap_or(1) as u32;
            let network = enum_value(
                r,
                &n,
                "network",
                &[
                    ("control", NicNetwork::Control),
                    ("experiment", NicNetwork::Experiment),
                ],
            );
            if let (Some(model), Some(speed)) = (model, speed) {
                nics.push(Nic {
                    model,
                    speed_gbps: speed as u32,
                    driver,
                    ports,
                    network,
                });
            }
        }
        spec.nics = Some(nics);
    }
    if t.get("gpu").is_some() {
        let mut gpus = Vec::new();
        for g in r.tables(t, "gpu") {
            r.check_keys(
                &g,
                &[
                    "model",
                    "count",
                    "arch",
                    "compute_capability",
                    "memory_gib",
                    "driver_branch",
                    "persistence",
                    "ecc",
                    "pcie_gen",
                    "pcie_width",
                ],
            );
            let model = r.string(&g, "model", true);
            let count = r.integer(&g, "count", false, 1, 64).unwrap_or(1) as u32;
            let arch = if g.get("arch").is_some() {
                enum_value(r, &g, "arch", GpuArch::ALL)
            } else {
                r.error(Kind::MissingField, g.span.clone(), format!("missing required field `arch` in [{}]", g.path))
                    .field(g.child("arch"))
                    .help("add `arch = \"pascal\"` (the GPU's architecture: pascal, volta, turing, ampere, ada, hopper, ...)");
                None
            };
            let cc = r.string(&g, "compute_capability", true);
            let mem = r.integer(&g, "memory_gib", true, 1, 1 << 16);
            // NVIDIA's branches have been three digits since R100; four leaves room.
            let driver_branch = r
                .integer(&g, "driver_branch", false, 100, 9999)
                .map(|n| n as u32);
            let persistence = r.boolean(&g, "persistence");
            let ecc = r.boolean(&g, "ecc");
            let pcie_gen = r.integer(&g, "pcie_gen", false, 1, 7).map(|n| n as u32);
            let pcie_width = r
                .integer(&g, "pcie_width", false, 1, 32)
                .map(|n| n as u32)
                .filter(|w| {
                    if PCIE_WIDTHS.contains(w) {
                        return true;
                    }
                    let span = r
                        .spans
                        .get(&g.child("pcie_width"))
                        .unwrap_or(g.span.clone());
                    r.error(
                        Kind::InvalidValue,
                        span,
                        format!("`{}` must be a PCIe link width", g.child("pcie_width")),
                    )
                    .field(g.child("pcie_width"))
                    .value(w.to_string())
                    .help(format!(
                        "use one of {} (lanes, as nvidia-smi's max_link_width says: 16x is 16)",
                        PCIE_WIDTHS
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    false
                });
            if let (Some(cc), Some(arch)) = (&cc, arch) {
                let span = r
                    .spans
                    .get(&g.child("compute_capability"))
                    .unwrap_or(g.span.clone());
                match parse_capability(cc) {
                    None => {
                        r.error(
                            Kind::InvalidValue,
                            span,
                            "compute capability must be MAJOR.MINOR",
                        )
                        .field(g.child("compute_capability"))
                        .value(format!("{cc:?}"))
                        .help("write it as NVIDIA does, e.g. \"6.1\" for a Tesla P4");
                    }
                    Some((major, _)) if !arch.capability_majors().contains(&major) => {
                        r.error(Kind::InvalidValue, span, format!("compute capability {cc} does not belong to the {} architecture", arch.as_str()))
                            .field(g.child("compute_capability"))
                            .value(format!("{cc:?}"))
                            .help(format!("a {} GPU has compute capability {}.x; fix `arch` or `compute_capability`", arch.as_str(), arch.capability_majors()[0]));
                    }
                    _ => {}
                }
            }
            if let (Some(model), Some(arch), Some(cc), Some(mem)) = (model, arch, cc, mem) {
                gpus.push(Gpu {
                    model,
                    count,
                    arch,
                    compute_capability: cc,
                    memory_gib: mem as u32,
                    driver_branch,
                    persistence,
                    ecc,
                    pcie_gen,
                    pcie_width,
                });
            }
        }
        spec.gpus = Some(gpus);
    }
    spec
}

pub fn parse_capability(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    if a.is_empty() || b.is_empty() || a.len() > 2 || b.len() > 2 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Where a profile was declared, for diagnostics about it.
#[derive(Debug, Clone)]
pub struct Declared {
    pub spec: ProfileSpec,
    pub origin: String,
    pub source: Arc<SourceFile>,
    pub span: Range<usize>,
    pub extends_span: Option<Range<usize>>,
    pub path: String,
}

/// All known profiles by name; later declarations replace earlier ones.
#[derive(Debug, Default, Clone)]
pub struct ProfileSet {
    declared: BTreeMap<String, Declared>,
    resolved: BTreeMap<String, Result<Arc<Profile>, ()>>,
}

impl ProfileSet {
    /// The built-in profiles only.
    pub fn builtin() -> (ProfileSet, Diagnostics) {
        let mut set = ProfileSet::default();
        let mut diags = Diagnostics::default();
        for (name, text) in BUILTIN_PROFILES {
            let src = SourceFile::new(format!("<built-in>/profiles/{name}.toml"), *text);
            diags.extend(set.add_file(name, src, "built-in"));
        }
        (set, diags)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.declared.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.declared.contains_key(name)
    }

    /// Adds every `*.toml` in `dir`; a file's stem is its profile name.
    pub fn add_dir(&mut self, dir: &Path) -> Diagnostics {
        let mut diags = Diagnostics::default();
        let shown = dir.display().to_string();
        let entries = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                diags.push(
                    Diagnostic::file(
                        Kind::Io,
                        &shown,
                        format!("cannot read profile directory: {e}"),
                    )
                    .help("check `profile_dir` in [cluster]; it is relative to the topology file"),
                );
                return diags;
            }
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        paths.sort();
        for p in paths {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match crate::load::read_source(&p) {
                Ok(src) => {
                    let origin = p.display().to_string();
                    diags.extend(self.add_file(&name, src, &origin));
                }
                Err(d) => diags.push(d),
            }
        }
        diags
    }

    pub fn add_file(&mut self, name: &str, src: Arc<SourceFile>, origin: &str) -> Diagnostics {
        let mut r = Reader::new(src.clone());
        if let Some(doc) = crate::load::parse_toml(&mut r, &src.text) {
            let t = r.root(&doc);
            let spec = read_profile_spec(&mut r, &t);
            let extends_span = r.spans.get("extends");
            self.declared.insert(
                name.to_string(),
                Declared {
                    spec,
                    origin: origin.to_string(),
                    source: src,
                    span: 0..0,
                    extends_span,
                    path: String::new(),
                },
            );
        }
        self.resolved.clear();
        r.diags
    }

    pub fn add_declared(&mut self, name: &str, d: Declared) {
        self.declared.insert(name.to_string(), d);
        self.resolved.clear();
    }

    /// Resolves `name` through its `extends` chain. Problems are reported once, at the profile
    /// that has them; `Err(())` then means "already reported".
    pub fn resolve(&mut self, name: &str, diags: &mut Diagnostics) -> Result<Arc<Profile>, ()> {
        if let Some(r) = self.resolved.get(name) {
            return r.clone();
        }
        let result = self.resolve_uncached(name, diags);
        self.resolved.insert(name.to_string(), result.clone());
        result
    }

    fn resolve_uncached(
        &mut self,
        name: &str,
        diags: &mut Diagnostics,
    ) -> Result<Arc<Profile>, ()> {
        let mut chain: Vec<String> = vec![name.to_string()];
        let mut merged = self.declared.get(name).ok_or(())?.spec.clone();
        let mut merged_lists = (merged.disks.take(), merged.nics.take(), merged.gpus.take());
        let mut cur = name.to_string();
        loop {
            let decl = &self.declared[&cur];
            let Some(parent) = decl.spec.extends.clone() else {
                break;
            };
            let span = decl.extends_span.clone().unwrap_or(decl.span.clone());
            if chain.contains(&parent) {
                chain.push(parent.clone());
                diags.push(
                    Diagnostic::at(
                        Kind::ProfileCycle,
                        &decl.source,
                        span,
                        format!(
                            "profile `{cur}` extends itself through {}",
                            chain.join(" -> ")
                        ),
                    )
                    .field(format!("{}extends", prefix(&decl.path)))
                    .value(format!("{parent:?}"))
                    .help("remove `extends` from one profile in the cycle"),
                );
                return Err(());
            }
            let Some(pdecl) = self.declared.get(&parent) else {
                let names: Vec<&str> = self.names().collect();
                let help = match did_you_mean(&parent, names.iter().copied()) {
                    Some(m) => format!("did you mean \"{m}\"?"),
                    None => format!("known profiles: {}", names.join(", ")),
                };
                diags.push(
                    Diagnostic::at(
                        Kind::UnknownProfile,
                        &decl.source,
                        span,
                        format!("profile `{cur}` extends unknown profile `{parent}`"),
                    )
                    .field(format!("{}extends", prefix(&decl.path)))
                    .value(format!("{parent:?}"))
                    .help(help),
                );
                return Err(());
            };
            let p = &pdecl.spec;
            merged.description = merged.description.or(p.description.clone());
            merged.site = merged.site.or(p.site.clone());
            let c = &mut merged.cpu;
            c.model = c.model.take().or(p.cpu.model.clone());
            c.vendor = c.vendor.or(p.cpu.vendor);
            c.microarch = c.microarch.take().or(p.cpu.microarch.clone());
            c.sockets = c.sockets.or(p.cpu.sockets);
            c.cores = c.cores.or(p.cpu.cores);
            c.threads = c.threads.or(p.cpu.threads);
            merged.memory.gib = merged.memory.gib.or(p.memory.gib);
            if merged_lists.0.is_none() {
                merged_lists.0 = p.disks.clone();
            }
            if merged_lists.1.is_none() {
                merged_lists.1 = p.nics.clone();
            }
            if merged_lists.2.is_none() {
                merged_lists.2 = p.gpus.clone();
            }
            chain.push(parent.clone());
            cur = parent;
        }
        let decl = &self.declared[name];
        let mut missing = Vec::new();
        let c = &merged.cpu;
        for (field, absent) in [
            ("cpu.model", c.model.is_none()),
            ("cpu.sockets", c.sockets.is_none()),
            ("cpu.cores", c.cores.is_none()),
            ("cpu.threads", c.threads.is_none()),
            ("memory.gib", merged.memory.gib.is_none()),
        ] {
            if absent {
                missing.push(field);
            }
        }
        if !missing.is_empty() {
            diags.push(
                Diagnostic::at(Kind::MissingField, &decl.source, decl.span.start..decl.span.start + 1, format!("profile `{name}` does not say {}", missing.join(", ")))
                    .field(format!("{}{}", prefix(&decl.path), missing[0]))
                    .help("add the missing fields, or `extends = \"c220g5\"` (another profile) to inherit them"),
            );
            return Err(());
        }
        let model = c.model.clone().unwrap_or_default();
        let vendor = c.vendor.unwrap_or_else(|| {
            let m = model.to_lowercase();
            if m.contains("intel") {
                CpuVendor::Intel
            } else if m.contains("amd") {
                CpuVendor::Amd
            } else {
                CpuVendor::Other
            }
        });
        Ok(Arc::new(Profile {
            name: name.to_string(),
            description: merged.description,
            site: merged.site,
            extends: chain[1..].to_vec(),
            cpu: Cpu {
                model,
                vendor,
                microarch: c.microarch.clone(),
                sockets: c.sockets.unwrap_or(1),
                cores: c.cores.unwrap_or(1),
                threads: c.threads.unwrap_or(1),
            },
            memory_gib: merged.memory.gib.unwrap_or(0),
            disks: merged_lists.0.unwrap_or_default(),
            nics: merged_lists.1.unwrap_or_default(),
            gpus: merged_lists.2.unwrap_or_default(),
            origin: decl.origin.clone(),
        }))
    }
}

fn prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_resolve() {
        let (mut set, diags) = ProfileSet::builtin();
        assert!(diags.is_empty(), "{}", diags.render(false, 10));
        let names: Vec<String> = set.names().map(String::from).collect();
        for want in ["c220g5", "c240g5", "c220g1", "c220g2", "c4130", "d7525"] {
            assert!(names.iter().any(|n| n == want), "missing built-in {want}");
        }
        let mut d = Diagnostics::default();
        for n in &names {
            set.resolve(n, &mut d)
                .unwrap_or_else(|_| panic!("{n}: {}", d.render(false, 5)));
        }
        let g5 = set.resolve("c220g5", &mut d).unwrap();
        assert!(!g5.has_gpu(), "a c220g5 has no GPU");
        assert_eq!(
            (g5.cpu.sockets, g5.cpu.cores, g5.cpu.threads, g5.memory_gib),
            (2, 20, 40, 192)
        );
        assert_eq!(g5.experiment_nic_gbps(), Some(10));
        let g240 = set.resolve("c240g5", &mut d).unwrap();
        assert_eq!(g240.gpu_count(), 1);
        assert_eq!(g240.gpus[0].arch, GpuArch::Pascal);
        assert_eq!(g240.cpu, g5.cpu, "c240g5 inherits the c220g5 box");
        assert_eq!(g240.extends, vec!["c220g5".to_string()]);
        let c4130 = set.resolve("c4130", &mut d).unwrap();
        assert_eq!(c4130.gpu_count(), 4);
        let d7525 = set.resolve("d7525", &mut d).unwrap();
        assert_eq!(d7525.cpu.vendor, CpuVendor::Amd);
        assert_eq!(d7525.gpus[0].compute_capability, "8.0");
    }

    #[test]
    fn gpu_expectations() {
        let (mut set, _) = ProfileSet::builtin();
        let mut d = Diagnostics::default();
        let g = &set.resolve("c4130", &mut d).unwrap().gpus[0];
        assert_eq!(
            (
                g.driver_branch,
                g.persistence,
                g.ecc,
                g.pcie_gen,
                g.pcie_width
            ),
            (Some(580), Some(true), Some(true), Some(3), Some(16))
        );
        let g = &set.resolve("d7525", &mut d).unwrap().gpus[0];
        assert_eq!(
            (g.driver_branch, g.persistence, g.pcie_gen),
            (None, Some(true), Some(4))
        );
        // An entry without them expects nothing.
        let src = SourceFile::new(
            "p4.toml",
            "extends = \"c220g5\"\n[[gpu]]\nmodel = \"Tesla P4\"\narch = \"pascal\"\n\
             compute_capability = \"6.1\"\nmemory_gib = 8\n",
        );
        assert!(set.add_file("p4", src, "p4.toml").is_empty());
        let g = &set.resolve("p4", &mut d).unwrap().gpus[0];
        assert_eq!(
            (
                g.driver_branch,
                g.persistence,
                g.ecc,
                g.pcie_gen,
                g.pcie_width
            ),
            (None, None, None, None, None)
        );
    }

    #[test]
    fn bad_gpu_expectations_say_file_line_and_field() {
        let text = "extends = \"c220g5\"\n[[gpu]]\nmodel = \"Tesla P4\"\narch = \"pascal\"\n\
                    compute_capability = \"6.1\"\nmemory_gib = 8\n\
                    driver_branch = \"550\"\npersistence = \"yes\"\necc = 1\n\
                    pcie_gen = 9\npcie_width = 3\n";
        let (mut set, _) = ProfileSet::builtin();
        let diags = set.add_file("bad", SourceFile::new("bad.toml", text), "bad.toml");
        let got: Vec<(Kind, usize, String)> = diags
            .iter()
            .map(|d| (d.kind, d.line, d.field.clone().unwrap_or_default()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::WrongType, 7, "gpu[0].driver_branch".to_string()),
                (Kind::WrongType, 8, "gpu[0].persistence".to_string()),
                (Kind::WrongType, 9, "gpu[0].ecc".to_string()),
                (Kind::InvalidValue, 10, "gpu[0].pcie_gen".to_string()),
                (Kind::InvalidValue, 11, "gpu[0].pcie_width".to_string()),
            ],
            "{}",
            diags.render(false, 10)
        );
        assert!(
            diags
                .iter()
                .all(|d| d.file == "bad.toml" && d.help.is_some())
        );
        let w = diags.iter().last().unwrap();
        assert_eq!(w.value.as_deref(), Some("3"));
        assert!(
            w.help
                .as_deref()
                .unwrap()
                .contains("1, 2, 4, 8, 12, 16, 32")
        );
        // A branch that is not one: out of range.
        let text = "extends = \"c220g5\"\n[[gpu]]\nmodel = \"Tesla P4\"\narch = \"pascal\"\n\
                    compute_capability = \"6.1\"\nmemory_gib = 8\ndriver_branch = 5\n";
        let diags = set.add_file("bad", SourceFile::new("bad.toml", text), "bad.toml");
        let d = diags.iter().next().unwrap();
        assert_eq!((d.kind, d.line), (Kind::InvalidValue, 7));
        assert!(d.message.contains("between 100 and 9999"), "{}", d.message);
    }

    #[test]
    fn capability_parsing() {
        assert_eq!(parse_capability("6.1"), Some((6, 1)));
        assert_eq!(parse_capability("12.0"), Some((12, 0)));
        assert_eq!(parse_capability("6"), None);
        assert_eq!(parse_capability("6.x"), None);
    }
}
