//! The topology file as written: plain data that serialises back to the same TOML. Checks that
//! span several fields (duplicates, profiles, roles) live in `validate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diag::Kind;
use crate::profile::{ProfileSpec, read_profile_spec};
use crate::read::{Reader, Table, int_value, show, type_name};
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

pub const DEFAULT_CONFIRM_TIMEOUT_S: u64 = 120;
pub const DEFAULT_SSH_PORT: u16 = 22;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopologyFile {
    pub cluster: ClusterSpec,
    #[serde(default, skip_serializing_if = "DefaultsSpec::is_empty")]
    pub defaults: DefaultsSpec,
    #[serde(
        rename = "network",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub networks: BTreeMap<String, NetworkSpec>,
    #[serde(
        rename = "profile",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub profiles: BTreeMap<String, ProfileSpec>,
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSpec>,
    #[serde(default, skip_serializing_if = "TargetsSpec::is_empty")]
    pub targets: TargetsSpec,
    /// User checks for `edgectl verify`: WASI modules the agents run sandboxed.
    #[serde(rename = "check", default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSpec>,
    /// Files uploaded to the nodes over SSH by `apply`, never through the Nix store.
    #[serde(rename = "secret", default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretSpec>,
}

/// A `[[secret]]` as written: where its bytes come from on the controller (`file` or
/// `command`, exactly one), and where and how `apply` puts them on the nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretSpec {
    pub name: String,
    /// A file relative to the topology file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An argv run on the controller (in the topology's directory); its stdout is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The absolute path on the node (under /run/keys/, /var/lib/ or /etc/).
    pub dest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Octal, as a string ("0400").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Selector terms as `--on` takes them (names, globs, `@tag`); default: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// "before" (default) or "after" activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub name: String,
    /// A WASI module (`.wasm`, or `.wat` text), relative to the topology file.
    pub wasm: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Seconds the module may run before it is stopped (default 30, at most
    /// [`MAX_CHECK_TIMEOUT_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<f64>,
}

/// The longest a `[[check]]` may ask to run.
pub const MAX_CHECK_TIMEOUT_S: f64 = 600.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    /// Flake reference for nixpkgs, e.g. "github:NixOS/nixpkgs/nixos-25.11".
    pub nixpkgs: String,
    /// Flake reference for edgectl itself: the generated flake's `edgectl` input, whose
    /// package runs as the node agent. Default: the source this edgectl was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edgectl_flake: Option<String>,
    /// The login user on every node (CloudLab: your username); root is reached through sudo.
    pub ssh_user: String,
    /// The private key to log in with, relative to this file (default: ssh-agent, then
    /// ~/.ssh/id_*); `--identity` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confirm_timeout_s: Option<u64>,
    /// A directory of extra `*.toml` hardware profiles, relative to this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<String>,
    /// Where the nodes are (e.g. "wisc"); informational, used by CloudLab export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// When the experiment that holds the nodes ends (RFC 3339), if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// SSH public keys that may log in as `ssh_user` on every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DefaultsSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl DefaultsSpec {
    fn is_empty(&self) -> bool {
        *self == DefaultsSpec::default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// e.g. "10.10.1.0/24"
    pub subnet: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    /// SSH address of the node's control interface (DNS name or IP).
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Either a full list ("wasm") or changes to the defaults ("+cuda", "-wasm").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The control network's public address, when known (CloudLab `<host ipv4>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lan: Vec<LanSpec>,
    /// The whole boot disk by a stable name (GRUB goes into its first partition), when not
    /// recorded by `edgectl install --until facts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<String>,
    /// The root file system's device by a stable name, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device: Option<String>,
    /// The root device's file system type (`ext4` on CloudLab's images), likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_fs: Option<String>,
    /// The login user's uid on the node before NixOS (CloudLab's portal gives one per user,
    /// 20001 and up), kept so the user's files stay theirs; likewise recorded by install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LanSpec {
    /// The `[network.NAME]` this interface is on; inferred from the address when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Address with prefix length, e.g. "10.10.1.2/24".
    pub address: String,
    /// 12 hex digits, with or without colons.
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetsSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wasm_cold_start_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unikernel_boot_ms: Option<f64>,
    /// p99 of a Ray actor call from the head, per node (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_actor_p99_ms: Option<f64>,
    /// Least scaling efficiency of a batch of Ray tasks on every node against the head alone
    /// (a fraction of linear, in (0, 1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_scaling_min: Option<f64>,
}

impl TargetsSpec {
    fn is_empty(&self) -> bool {
        *self == TargetsSpec::default()
    }
}

pub const TOP_KEYS: &[&str] = &[
    "cluster", "defaults", "network", "profile", "node", "targets", "check", "secret",
];
pub const CHECK_KEYS: &[&str] = &["name", "wasm", "args", "timeout_s"];
pub const SECRET_KEYS: &[&str] = &[
    "name", "file", "command", "dest", "owner", "group", "mode", "nodes", "when",
];
pub const CLUSTER_KEYS: &[&str] = &[
    "name",
    "nixpkgs",
    "edgectl_flake",
    "ssh_user",
    "ssh_identity",
    "confirm_timeout_s",
    "profile_dir",
    "state_version",
    "site",
    "expires",
    "ssh_keys",
];
pub const DEFAULTS_KEYS: &[&str] = &["profile", "features", "port"];
pub const NODE_KEYS: &[&str] = &[
    "name",
    "host",
    "port",
    "user",
    "profile",
    "roles",
    "features",
    "tags",
    "control_ip",
    "lan",
    "boot_disk",
    "root_device",
    "root_fs",
    "login_uid",
];
pub const LAN_KEYS: &[&str] = &["network", "address", "mac", "vlan"];
pub const TARGET_KEYS: &[&str] = &[
    "latency_p99_ms",
    "wasm_cold_start_ms",
    "unikernel_boot_ms",
    "ray_actor_p99_ms",
    "ray_scaling_min",
];

/// Reads the document tree into a `TopologyFile`. Fields with type errors are skipped (and
/// reported), so a file with errors still yields as much as can be checked further.
pub fn read_topology(r: &mut Reader, root: &Table<'_, '_>) -> Option<TopologyFile> {
    read_topology_with(r, root, None)
}

/// [`read_topology`] of a whole document, which it consumes. The nodes are most of a large
/// file's tree: each node's part is freed as soon as it has been read, while it is still in
/// cache, rather than all of it afterwards, when a tree larger than the cache has to be
/// fetched from memory again just to be freed.
pub fn read_document(r: &mut Reader, mut doc: Spanned<DeTable<'_>>) -> Option<TopologyFile> {
    let node_items = match doc.get_mut().get_mut("node").map(Spanned::get_mut) {
        Some(DeValue::Array(items)) => Some(std::mem::replace(items, DeArray::new())),
        _ => None,
    };
    let root = r.root(&doc);
    read_topology_with(r, &root, node_items)
}

/// `node_items`: the items of the `node` array, taken out of `root` (which keeps an empty one).
fn read_topology_with(
    r: &mut Reader,
    root: &Table<'_, '_>,
    node_items: Option<DeArray<'_>>,
) -> Option<TopologyFile> {
    r.check_keys(root, TOP_KEYS);
    let cluster = match root.get("cluster") {
        Some(v) => r.table(v, "cluster".into()),
        None => {
            r.error(Kind::MissingField, 0..0, "missing required table [cluster]")
                .field("cluster")
                .help("add [cluster] with name, nixpkgs and ssh_user; see examples/edge-lab.toml");
            None
        }
    };
    let cluster = cluster.map(|c| {
        r.check_keys(&c, CLUSTER_KEYS);
        ClusterSpec {
            name: r.string(&c, "name", true).unwrap_or_default(),
            nixpkgs: r.string(&c, "nixpkgs", true).unwrap_or_default(),
            edgectl_flake: r.string(&c, "edgectl_flake", false),
            ssh_user: r.string(&c, "ssh_user", true).unwrap_or_default(),
            ssh_identity: r.string(&c, "ssh_identity", false),
            confirm_timeout_s: r
                .integer(&c, "confirm_timeout_s", false, 5, 3600)
                .map(|n| n as u64),
            profile_dir: r.string(&c, "profile_dir", false),
            state_version: r.string(&c, "state_version", false),
            site: r.string(&c, "site", false),
            expires: r.string(&c, "expires", false),
            ssh_keys: r.strings(&c, "ssh_keys").unwrap_or_default(),
        }
    });

    let mut defaults = DefaultsSpec::default();
    if let Some(d) = r.opt_table(root, "defaults") {
        r.check_keys(&d, DEFAULTS_KEYS);
        defaults.profile = r.string(&d, "profile", false);
        defaults.features = r.strings(&d, "features");
        defaults.port = r.integer(&d, "port", false, 1, 65535).map(|n| n as u16);
    }

    let mut networks = BTreeMap::new();
    if let Some(nt) = r.opt_table(root, "network") {
        for (k, v) in nt.entries.iter() {
            let name = k.get_ref().to_string();
            let Some(t) = r.table(v, format!("network.{name}")) else {
                continue;
            };
            r.check_keys(&t, &["subnet", "vlan"]);
            let subnet = r.string(&t, "subnet", true);
            let vlan = r.integer(&t, "vlan", false, 1, 4094).map(|n| n as u16);
            if let Some(subnet) = subnet {
                networks.insert(name, NetworkSpec { subnet, vlan });
            }
        }
    }

    let mut profiles = BTreeMap::new();
    if let Some(pt) = r.opt_table(root, "profile") {
        for (k, v) in pt.entries.iter() {
            let name = k.get_ref().to_string();
            if let Some(t) = r.table(v, format!("profile.{name}")) {
                profiles.insert(name, read_profile_spec(r, &t));
            }
        }
    }

    let mut nodes = Vec::new();
    match root.get("node") {
        None => {}
        Some(v) if !matches!(v.get_ref(), DeValue::Array(_)) => {
            r.error(
                Kind::WrongType,
                v.span(),
                format!(
                    "`node` must be an array of tables ([[node]]), found {}",
                    type_name(v.get_ref())
                ),
            )
            .field("node")
            .help("write each node as a [[node]] table (double brackets)");
        }
        Some(_) => match node_items {
            None => {
                for t in r.tables(root, "node") {
                    nodes.push(read_node(r, &t));
                }
            }
            Some(items) => {
                // What `r.tables` records and reports, in the same order: every item first,
                // then each node.
                let paths: Vec<Option<String>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| r.table(item, root.item("node", i)).map(|t| t.path))
                    .collect();
                nodes.reserve_exact(items.len());
                for (item, path) in items.into_iter().zip(paths) {
                    if let (Some(path), DeValue::Table(entries)) = (path, item.get_ref()) {
                        let t = Table {
                            entries,
                            span: item.span(),
                            path,
                        };
                        nodes.push(read_node(r, &t));
                    }
                }
            }
        },
    }

    let mut targets = TargetsSpec::default();
    if let Some(t) = r.opt_table(root, "targets") {
        r.check_keys(&t, TARGET_KEYS);
        targets.latency_p99_ms = target(r, &t, "latency_p99_ms");
        targets.wasm_cold_start_ms = target(r, &t, "wasm_cold_start_ms");
        targets.unikernel_boot_ms = target(r, &t, "unikernel_boot_ms");
        targets.ray_actor_p99_ms = target(r, &t, "ray_actor_p99_ms");
        targets.ray_scaling_min = fraction_target(r, &t, "ray_scaling_min");
    }

    let mut checks = Vec::new();
    for t in r.tables(root, "check") {
        r.check_keys(&t, CHECK_KEYS);
        let timeout_s = match r.number(&t, "timeout_s", false) {
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_CHECK_TIMEOUT_S => Some(s),
            Some(_) => {
                if let Some(v) = t.get("timeout_s") {
                    r.error(
                        Kind::InvalidValue,
                        v.span(),
                        format!(
                            "`timeout_s` must be more than 0 and at most {MAX_CHECK_TIMEOUT_S} seconds"
                        ),
                    )
                    .field(t.child("timeout_s"))
                    .value(show(v.get_ref()));
                }
                None
            }
            None => None,
        };
        checks.push(CheckSpec {
            name: r.string(&t, "name", true).unwrap_or_default(),
            wasm: r.string(&t, "wasm", true).unwrap_or_default(),
            args: r.strings(&t, "args").unwrap_or_default(),
            timeout_s,
        });
    }

    let secrets = r
        .tables(root, "secret")
        .into_iter()
        .map(|t| {
            r.check_keys(&t, SECRET_KEYS);
            SecretSpec {
                name: r.string(&t, "name", true).unwrap_or_default(),
                file: r.string(&t, "file", false),
                command: r.strings(&t, "command"),
                dest: r.string(&t, "dest", true).unwrap_or_default(),
                owner: r.string(&t, "owner", false),
                group: r.string(&t, "group", false),
                mode: r.string(&t, "mode", false),
                nodes: r.strings(&t, "nodes"),
                when: r.string(&t, "when", false),
            }
        })
        .collect();

    Some(TopologyFile {
        cluster: cluster?,
        defaults,
        networks,
        profiles,
        nodes,
        targets,
        checks,
        secrets,
    })
}

fn read_node(r: &mut Reader, t: &Table<'_, '_>) -> NodeSpec {
    r.check_keys(t, NODE_KEYS);
    let lan = r
        .tables(t, "lan")
        .into_iter()
        .map(|l| {
            r.check_keys(&l, LAN_KEYS);
            LanSpec {
                network: r.string(&l, "network", false),
                address: r.string(&l, "address", true).unwrap_or_default(),
                mac: r.string(&l, "mac", true).unwrap_or_default(),
                vlan: r.integer(&l, "vlan", false, 1, 4094).map(|n| n as u16),
            }
        })
        .collect();
    NodeSpec {
        name: r.string(t, "name", true).unwrap_or_default(),
        host: r.string(t, "host", true).unwrap_or_default(),
        port: r.integer(t, "port", false, 1, 65535).map(|n| n as u16),
        user: r.string(t, "user", false),
        profile: r.string(t, "profile", false),
        roles: r.strings(t, "roles").unwrap_or_default(),
        features: r.strings(t, "features").unwrap_or_default(),
        tags: r.strings(t, "tags").unwrap_or_default(),
        control_ip: r.string(t, "control_ip", false),
        lan,
        boot_disk: r.string(t, "boot_disk", false),
        root_device: r.string(t, "root_device", false),
        root_fs: r.string(t, "root_fs", false),
        login_uid: r
            .integer(t, "login_uid", false, 1, 4_294_967_294)
            .map(|n| n as u32),
    }
}

/// A TOML integer or float as a number; None for anything else.
fn number_of(v: &toml::de::DeValue<'_>) -> Option<f64> {
    match v {
        toml::de::DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok(),
        toml::de::DeValue::Integer(_) => int_value(v).map(|n| n as f64),
        _ => None,
    }
}

/// A target must be a positive, finite number of milliseconds.
fn target(r: &mut Reader, t: &Table<'_, '_>, key: &str) -> Option<f64> {
    let v = t.get(key)?;
    let path = t.child(key);
    r.spans.insert(path.clone(), v.span());
    let n = number_of(v.get_ref());
    match n {
        Some(x) if x.is_finite() && x > 0.0 => Some(x),
        Some(_) => {
            r.error(
                Kind::InvalidTarget,
                v.span(),
                format!("target `{key}` must be a positive number of milliseconds"),
            )
            .field(path)
            .value(show(v.get_ref()))
            .help(format!("write e.g. `{key} = 5.0`"));
            None
        }
        None => {
            r.error(
                Kind::InvalidTarget,
                v.span(),
                format!(
                    "target `{key}` must be a number, found {}",
                    type_name(v.get_ref())
                ),
            )
            .field(path)
            .value(show(v.get_ref()))
            .help(format!(
                "write a bare number of milliseconds, e.g. `{key} = 5.0` (no quotes, no unit)"
            ));
            None
        }
    }
}

/// A target that is a share of the ideal: a number more than 0 and at most 1.
fn fraction_target(r: &mut Reader, t: &Table<'_, '_>, key: &str) -> Option<f64> {
    let v = t.get(key)?;
    let path = t.child(key);
    r.spans.insert(path.clone(), v.span());
    let n = number_of(v.get_ref());
    let why = match n {
        Some(x) if x.is_finite() && x > 0.0 && x <= 1.0 => return Some(x),
        Some(_) => {
            format!("target `{key}` must be a fraction of the ideal, more than 0 and at most 1")
        }
        None => format!(
            "target `{key}` must be a number, found {}",
            type_name(v.get_ref())
        ),
    };
    r.error(Kind::InvalidTarget, v.span(), why)
        .field(path)
        .value(show(v.get_ref()))
        .help(format!(
            "write a bare fraction of linear scaling, e.g. `{key} = 0.8` (80%; no quotes, no %)"
        ));
    None
}

impl TopologyFile {
    /// TOML text that reads back to an equal `TopologyFile`.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
}
