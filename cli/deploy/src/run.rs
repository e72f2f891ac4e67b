//! Run preparation, shared by every command: load and validate the topology once, work out
//! the state directory once, select the nodes, evaluate and build their systems, and say how
//! to reach each node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgectl_model::{Cluster, Diagnostics, LoadOptions, Loaded};
use serde_json::Value;

use crate::activate::Goal;
use crate::event::{Phase, Sender, step};
use crate::host::SshTarget;
use crate::install_state::InstallState;
use crate::nixcmd::{self, NixArgs};
use crate::state::State;

#[derive(Debug, Clone)]
pub struct Options {
    pub on: Option<String>,
    pub parallel: usize,
    pub goal: Goal,
    pub confirm_timeout: Option<u64>,
    pub identity: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub nix: NixArgs,
    pub load: LoadOptions,
    /// Upload each closure once and spread it over the cluster LAN (see `fanout`).
    pub fanout: crate::fanout::Fanout,
    /// Where the systems are built: here, or each on its node from its derivations.
    pub build_on: BuildOn,
}

/// Where `plan` and `apply` build the systems.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BuildOn {
    /// Build here and copy the closures (fanned out or direct).
    #[default]
    Controller,
    /// Evaluate here, copy only the derivations, and let each node build its own system,
    /// substituting from the binary caches it reaches: on a testbed, the nodes' datacenter
    /// link is far faster than a laptop's uplink.
    Nodes,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            on: None,
            parallel: 8,
            goal: Goal::Switch,
            confirm_timeout: None,
            identity: None,
            connect_timeout: Duration::from_secs(10),
            nix: NixArgs::default(),
            load: LoadOptions::default(),
            fanout: crate::fanout::Fanout::Auto,
            build_on: BuildOn::Controller,
        }
    }
}

/// Why a command could not run at all (a node's own failure is its [`NodeResult`] instead).
///
/// [`NodeResult`]: crate::report::NodeResult
#[derive(Debug)]
pub enum EngineError {
    /// The topology is invalid: every problem, with file, line and a fix.
    Invalid(Diagnostics),
    /// The controller's Nix could not evaluate or build the systems.
    Nix(crate::nixcmd::NixError),
    /// Anything else, worded to say what to do about it.
    Failed(String),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Invalid(d) => write!(
                f,
                "the topology has {} problem(s); run `edgectl check` on it to see each with its fix",
                d.0.len()
            ),
            EngineError::Nix(e) => e.fmt(f),
            EngineError::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EngineError::Nix(e) => Some(e),
            _ => None,
        }
    }
}

impl From<crate::nixcmd::NixError> for EngineError {
    fn from(e: crate::nixcmd::NixError) -> Self {
        EngineError::Nix(e)
    }
}

impl From<crate::state::StateError> for EngineError {
    fn from(e: crate::state::StateError) -> Self {
        EngineError::Failed(e.to_string())
    }
}

impl From<String> for EngineError {
    fn from(s: String) -> Self {
        EngineError::Failed(s)
    }
}

/// A stable 64-bit FNV-1a, so saved plans can be compared across runs and builds.
pub(crate) fn fnv(bytes: impl IntoIterator<Item = u8>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// One command's inputs, worked out once and passed down: the topology loaded (with the facts
/// `install` recorded), its state directory (created, private), and the selected nodes.
#[derive(Debug, Clone)]
pub struct Run {
    pub topology: PathBuf,
    pub loaded: Loaded,
    pub state_dir: PathBuf,
    pub selected: Vec<String>,
}

impl Run {
    pub fn load(topology: &Path, load: &LoadOptions, on: Option<&str>) -> Result<Run, EngineError> {
        let loaded = edgectl_model::load(topology, load).map_err(EngineError::Invalid)?;
        let selected = crate::select::select(&loaded.cluster, on)?;
        let state_dir = crate::state::dir_for(topology);
        crate::state::ensure(&state_dir)?;
        let mut run = Run {
            topology: topology.to_path_buf(),
            loaded,
            state_dir,
            selected,
        };
        run.merge_install_facts();
        Ok(run)
    }

    /// Facts that `edgectl install` recorded (boot disk, root file system) shape the system;
    /// `install` calls this again once it has found them.
    pub fn merge_install_facts(&mut self) {
        for n in &mut self.loaded.cluster.nodes {
            // The same facts as hardware/<node>.toml (which load read): install writes both.
            if let Some(f) = InstallState::load(&self.state_dir, &n.name).facts {
                f.hardware().apply(n);
            }
        }
    }

    /// The key to log in with: `--identity` when given, else the topology's `ssh_identity`
    /// (relative to the topology file), else None (ssh-agent, then ~/.ssh/id_*).
    pub fn identity(&self, flag: Option<&Path>) -> Option<PathBuf> {
        flag.map(Path::to_path_buf).or_else(|| {
            self.loaded
                .cluster
                .ssh_identity
                .as_ref()
                .map(|rel| self.topology.parent().unwrap_or(Path::new(".")).join(rel))
        })
    }

    /// The same run on other nodes of the cluster.
    pub fn on(&self, nodes: Vec<String>) -> Run {
        Run {
            selected: nodes,
            ..self.clone()
        }
    }
}

pub(crate) struct Prepared {
    pub(crate) loaded: Loaded,
    pub(crate) state_dir: PathBuf,
    pub(crate) selected: Vec<String>,
    pub(crate) systems: BTreeMap<String, String>,
    /// With `--build-on nodes`: each selected node's system derivation (else empty).
    pub(crate) derivations: BTreeMap<String, String>,
    pub(crate) contexts: BTreeMap<String, Value>,
    pub(crate) topology_hash: String,
}

/// Renders the run's flake into its state directory and, with `build`, builds the selected
/// systems; refuses first a node whose boot facts are unknown.
pub(crate) fn prepare(
    run: Run,
    opts: &Options,
    tx: &Sender,
    build: bool,
) -> Result<Prepared, EngineError> {
    let Run {
        topology,
        loaded,
        state_dir,
        selected,
    } = run;
    boot_facts_known(&loaded, &selected, &topology)?;
    let files = edgectl_render::render(&loaded.cluster).map_err(|e| e.to_string())?;
    let topology_hash = fnv(files.iter().flat_map(|(k, v)| k.bytes().chain(v.bytes())));
    let flake = state_dir.join("flake");
    edgectl_render::write::write_dir(&flake, &files, true).map_err(|e| e.to_string())?;
    let contexts = loaded
        .cluster
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                edgectl_render::host::context(&loaded.cluster, n),
            )
        })
        .collect();
    let mut p = Prepared {
        loaded,
        state_dir,
        selected,
        systems: BTreeMap::new(),
        derivations: BTreeMap::new(),
        contexts,
        topology_hash,
    };
    if build {
        (p.systems, p.derivations) = build_systems(&p, opts, tx)?;
    }
    Ok(p)
}

/// Node -> system path, and node -> derivation when the nodes build.
pub(crate) type Built = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Evaluates and builds the selected hosts' systems from the flake `prepare` wrote; with
/// `--build-on nodes`, evaluates only (the derivations, and the paths they will produce).
pub(crate) fn build_systems(
    p: &Prepared,
    opts: &Options,
    tx: &Sender,
) -> Result<Built, EngineError> {
    let flake = p.state_dir.join("flake");
    let n = p.selected.len();
    let built = match opts.build_on {
        BuildOn::Controller => step(
            tx,
            "",
            Phase::Evaluate,
            format!("evaluating and building {n} host(s)"),
            || {
                nixcmd::build_toplevels(&flake, &p.selected, &opts.nix).map(|s| {
                    let done = format!("built {} system(s)", s.len());
                    ((s, BTreeMap::new()), done)
                })
            },
        )?,
        BuildOn::Nodes => step(
            tx,
            "",
            Phase::Evaluate,
            format!("evaluating {n} host(s); each node builds its own"),
            || {
                nixcmd::instantiate_toplevels(&flake, &p.selected, &opts.nix).map(|m| {
                    let done = format!("{} derivation(s) to build on the nodes", m.len());
                    let systems = m.iter().map(|(k, v)| (k.clone(), v.out.clone())).collect();
                    let drvs = m.into_iter().map(|(k, v)| (k, v.drv)).collect();
                    ((systems, drvs), done)
                })
            },
        )?,
    };
    Ok(built)
}

pub(crate) fn target_for(
    c: &Cluster,
    node: &str,
    st: &State,
    opts: &Options,
    state_dir: &Path,
) -> SshTarget {
    let n = c.node(node).expect("selected nodes exist");
    ssh_target(
        n,
        st,
        opts.identity.as_deref(),
        opts.connect_timeout,
        state_dir,
    )
}

/// How to reach `n` over SSH: its address, user and key, and the host key pinned in `st`
/// (with the known_hosts file OpenSSH gets from the state directory).
pub fn ssh_target(
    n: &edgectl_model::Node,
    st: &State,
    identity: Option<&Path>,
    connect_timeout: std::time::Duration,
    state_dir: &Path,
) -> SshTarget {
    SshTarget {
        node: n.name.clone(),
        host: n.host.clone(),
        port: n.port,
        user: n.user.clone(),
        identity: identity.map(Path::to_path_buf),
        connect_timeout,
        pinned: st.nodes.get(&n.name).and_then(|s| s.host_key.clone()),
        known_hosts: state_dir.join("known_hosts").join(&n.name),
    }
}

/// Every node boots through CloudLab's chain loader from a disk and root file system that
/// only the machine can tell: without them the system would guess (`/dev/sda`), switch fine,
/// and never come back from its next reboot. So plan and apply refuse, before building or
/// connecting, and say how to learn them.
pub(crate) fn boot_facts_known(
    loaded: &Loaded,
    selected: &[String],
    topology: &Path,
) -> Result<(), EngineError> {
    let unknown: Vec<&str> = loaded
        .cluster
        .nodes
        .iter()
        .filter(|n| selected.contains(&n.name))
        .filter(|n| n.boot_disk.is_none() || n.root_device.is_none() || n.root_fs.is_none())
        .map(|n| n.name.as_str())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(EngineError::Failed(format!(
        "{}: the boot disk and root device of {} are unknown, so the built system could not boot again after its next reboot. Record them with `edgectl install {} --on {} --until facts` (read-only; it writes hardware/<node>.toml beside the topology, to keep in git), or set `boot_disk`, `root_device` (stable /dev/disk/by-* names) and `root_fs` in each [[node]]",
        topology.display(),
        unknown.join(", "),
        topology.display(),
        unknown.join(",")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_fnv1a_64() {
        // The published FNV-1a 64-bit test vectors (Fowler, Noll and Vo's test suite).
        assert_eq!(fnv(*b""), "cbf29ce484222325");
        assert_eq!(fnv(*b"a"), "af63dc4c8601ec8c");
        assert_eq!(fnv(*b"foobar"), "85944171f73967e8");
        assert_eq!(fnv(*b"chongo was here!\n"), "46810940eff5f915");
    }
}
