//! Checks across fields and the resolved, typed cluster that later stages use.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::Serialize;

use crate::diag::{DiagMut, Diagnostic, Kind, did_you_mean};
use crate::net::{Ipv4Cidr, Mac, is_host, is_nixos_hostname, is_simple_name, is_username};
use crate::profile::{Profile, ProfileSet};
use crate::read::Reader;
use crate::topology::{
    DEFAULT_CONFIRM_TIMEOUT_S, DEFAULT_SSH_PORT, LanSpec, NodeSpec, SecretSpec, TargetsSpec,
    TopologyFile,
};

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub enum $name { $(#[serde(rename = $s)] $variant),* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $s),* } }
            pub fn from_name(s: &str) -> Option<Self> { match s { $($s => Some($name::$variant),)* _ => None } }
            pub fn names() -> impl Iterator<Item = &'static str> { Self::ALL.iter().map(|x| x.as_str()) }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

named_enum!(
    /// What a node does in the cluster.
    Role { RayHead => "ray-head", RayWorker => "ray-worker", ZenohRouter => "zenoh-router" }
);

named_enum!(
    /// What gets installed and configured on a node.
    Feature {
        Cuda => "cuda",
        NetTuning => "net-tuning",
        Wasm => "wasm",
        Unikernel => "unikernel",
        Zenoh => "zenoh",
        Ray => "ray",
        Agent => "agent",
    }
);

impl Role {
    /// The feature a role cannot work without.
    pub fn needs(self) -> Feature {
        match self {
            Role::RayHead | Role::RayWorker => Feature::Ray,
            Role::ZenohRouter => Feature::Zenoh,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Cidr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    /// True when no `[network.NAME]` declared it and it was inferred from addresses.
    pub implicit: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interface {
    pub network: String,
    pub address: Ipv4Cidr,
    pub mac: Mac,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub profile: Arc<Profile>,
    pub roles: BTreeSet<Role>,
    pub features: BTreeSet<Feature>,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_ip: Option<IpAddr>,
    pub interfaces: Vec<Interface>,
    /// The boot disk and root file system: from the topology's `boot_disk`/`root_device`, and
    /// replaced by what `edgectl install` found (recorded in the state) before rendering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_disk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_device: Option<String>,
    /// Its file system (topology `root_fs`, or what install found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_fs: Option<String>,
    /// The login user's uid from before NixOS (topology `login_uid`, or what install found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// The machine facts `edgectl install` recorded (`hardware/<node>.toml`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware: Option<crate::hardware::Hardware>,
}

impl Node {
    pub fn has(&self, f: Feature) -> bool {
        self.features.contains(&f)
    }
    pub fn is(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }
}

/// A validated cluster: every reference resolved, every value typed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub nixpkgs: String,
    /// The `edgectl` input of the generated flake; `None`: the source this binary was built from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edgectl_flake: Option<String>,
    pub ssh_user: String,
    /// The login key, as written (relative to the topology file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_identity: Option<String>,
    pub confirm_timeout_s: u64,
    pub state_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub ssh_keys: Vec<String>,
    pub networks: Vec<Network>,
    pub nodes: Vec<Node>,
    pub targets: TargetsSpec,
    /// Never rendered: secrets reach the nodes over SSH only, not through the flake, its
    /// `topology.json` or the Nix store.
    #[serde(skip)]
    pub secrets: Vec<Secret>,
}

named_enum!(
    /// When `apply` uploads a secret: before the new system is activated, or once the node
    /// has confirmed it.
    SecretWhen { Before => "before", After => "after" }
);

/// Where a secret's bytes come from, on the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file, as written (relative to the topology file).
    File(String),
    /// An argv whose standard output is the secret.
    Command(Vec<String>),
}

/// A validated `[[secret]]`: its shape only (the source is read by `plan` and `apply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub source: SecretSource,
    /// Absolute, under one of [`SECRET_DIRS`].
    pub dest: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// The nodes it goes to, in topology order.
    pub nodes: Vec<String>,
    pub when: SecretWhen,
}

/// Where a secret may be written on a node.
pub const SECRET_DIRS: &[&str] = &["/run/keys/", "/var/lib/", "/etc/"];
/// A secret's mode when none is given.
pub const DEFAULT_SECRET_MODE: u32 = 0o400;

impl Cluster {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn ray_head(&self) -> Option<&Node> {
        self.nodes.iter().find(|n| n.is(Role::RayHead))
    }
    /// Every CUDA capability in the cluster's GPUs, sorted and unique.
    pub fn cuda_capabilities(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|n| n.has(Feature::Cuda))
            .flat_map(|n| n.profile.gpus.iter().map(|g| g.compute_capability.as_str()))
            .collect();
        set.into_iter().map(String::from).collect()
    }
}

/// The NixOS release a `nixpkgs` flake ref points at ("...nixos-25.11" gives "25.11").
pub fn release_of(nixpkgs: &str) -> Option<String> {
    let tail = nixpkgs.rsplit(['/', '-']).next()?;
    let (a, b) = tail.split_once('.')?;
    (a.len() == 2 && b.len() == 2 && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()))
        .then(|| tail.to_string())
}

/// Fallback `system.stateVersion` when neither the file nor the nixpkgs ref says.
pub const DEFAULT_STATE_VERSION: &str = "25.11";

struct V<'a> {
    r: &'a mut Reader,
}

impl V<'_> {
    /// Reports at the span recorded for `path`, or its nearest recorded parent.
    fn err(&mut self, kind: Kind, path: &str, msg: impl Into<String>) -> DiagMut<'_> {
        let mut p = path;
        let span = loop {
            if let Some(s) = self.r.spans.get(p) {
                break s;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => break 0..0,
            }
        };
        self.r.error(kind, span, msg).field(path.to_string())
    }

    fn line_of(&self, path: &str) -> usize {
        self.r
            .spans
            .get(path)
            .map(|s| self.r.src.line_col(s.start).0)
            .unwrap_or(0)
    }
}

fn suggest(word: &str, names: impl Iterator<Item = &'static str>) -> String {
    let names: Vec<&str> = names.collect();
    match did_you_mean(word, names.iter().copied()) {
        Some(m) => format!("did you mean \"{m}\"?"),
        None => format!("use one of: {}", names.join(", ")),
    }
}

/// Checks `file` and builds the typed cluster. Every problem is reported into `r.diags`;
/// returns `None` when there was any.
pub fn validate(file: &TopologyFile, r: &mut Reader, profiles: &mut ProfileSet) -> Option<Cluster> {
    let before = r.diags.len();
    let mut ck = Check {
        v: V { r },
        file,
        profiles,
        networks: Networks::default(),
        default_features: None,
        // Sized once: growing tables of thousands of nodes rehashes them several times.
        names: HashMap::with_capacity(file.nodes.len()),
        hosts: HashMap::with_capacity(file.nodes.len()),
        macs: HashMap::with_capacity(file.nodes.len()),
        addrs: HashMap::new(),
    };
    ck.check_cluster_table();
    ck.check_ssh_keys();
    ck.check_has_nodes();
    ck.declare_networks();
    ck.read_defaults();

    let mut nodes: Vec<Node> = Vec::with_capacity(file.nodes.len());
    let mut node_ok = true;
    for (i, n) in file.nodes.iter().enumerate() {
        match ck.check_node(i, n) {
            Some(node) => nodes.push(node),
            None => node_ok = false,
        }
    }

    // Cluster-wide role rules.
    ck.check_ray_heads();
    ck.check_zenoh_router(&nodes);
    let secrets = ck.check_secrets();

    if ck.v.r.diags.len() > before || !node_ok {
        return None;
    }
    Some(ck.into_cluster(nodes, secrets))
}

/// What the steps of [`validate`] share: where to report, the inputs, the networks, and what
/// earlier nodes used (names, hosts, MACs and addresses must be unique across nodes).
struct Check<'a, 'f> {
    v: V<'a>,
    file: &'f TopologyFile,
    profiles: &'a mut ProfileSet,
    /// The declared networks, then those inferred from node addresses.
    networks: Networks,
    /// The `[defaults]` feature set; `None` when it had an error.
    default_features: Option<BTreeSet<Feature>>,
    /// Lowercased node name to the first node's index. Values here are node indices, not
    /// names or labels, so that checking a node allocates nothing for them.
    names: HashMap<Cow<'f, str>, usize>,
    hosts: HashMap<(&'f str, u16), usize>,
    macs: HashMap<Mac, usize>,
    /// Network name, then address, to the node that has it.
    addrs: HashMap<String, HashMap<Ipv4Addr, usize>>,
}

/// The cluster's networks, with what each node's interfaces look up in them indexed: with a
/// subnet per node, every node adds an implicit network, and scanning them all for each node
/// made checking quadratic.
#[derive(Default)]
struct Networks {
    list: Vec<Network>,
    /// A name to the first network with it.
    by_name: HashMap<String, usize>,
    /// A subnet (prefix length, network address) to the first network with it.
    by_subnet: HashMap<(u8, u32), usize>,
    /// The prefix lengths of `by_subnet`: an address is looked up once for each.
    prefixes: BTreeSet<u8>,
    /// How many of `list` are implicit.
    implicit: usize,
}

impl Networks {
    fn push(&mut self, net: Network) {
        let k = self.list.len();
        let subnet = net.subnet.network();
        self.by_name.entry(net.name.clone()).or_insert(k);
        self.by_subnet
            .entry((subnet.prefix, u32::from(subnet.addr)))
            .or_insert(k);
        self.prefixes.insert(subnet.prefix);
        self.implicit += usize::from(net.implicit);
        self.list.push(net);
    }

    /// The first network named `name`.
    fn named(&self, name: &str) -> Option<&Network> {
        self.by_name.get(name).map(|&k| &self.list[k])
    }

    /// The first network whose subnet holds `a`.
    fn containing(&self, a: Ipv4Addr) -> Option<&Network> {
        self.prefixes
            .iter()
            .filter_map(|&prefix| {
                let net = Ipv4Cidr { addr: a, prefix }.network();
                self.by_subnet.get(&(prefix, u32::from(net.addr)))
            })
            .min()
            .map(|&k| &self.list[k])
    }
}

/// The parts of a node's checks that later checks of the same node need.
struct NodeCtx<'n> {
    /// The node's index in the file.
    i: usize,
    np: NodePath,
    label: NodeLabel<'n>,
    n: &'n NodeSpec,
}

impl NodeCtx<'_> {
    /// Where the node's profile came from: there a conflict with the profile is reported
    /// when no feature entry is to blame.
    fn profile_path(&self) -> String {
        if self.n.profile.is_some() {
            format!("{}.profile", self.np)
        } else {
            "defaults.profile".to_string()
        }
    }
}

/// `node[i]`: the path every field of node `i` is reported under. Paths and labels are
/// written out only for a report, not for each of thousands of valid nodes.
#[derive(Clone, Copy)]
struct NodePath(usize);

impl std::fmt::Display for NodePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node[{}]", self.0)
    }
}

/// `node[i].lan[j]`, written out only for a report.
#[derive(Clone, Copy)]
struct LanPath(NodePath, usize);

impl std::fmt::Display for LanPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.lan[{}]", self.0, self.1)
    }
}

/// How messages name node `i`: by its name, or as `node[i]` when it has none.
#[derive(Clone, Copy)]
struct NodeLabel<'n>(usize, &'n NodeSpec);

impl std::fmt::Display for NodeLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1.name.is_empty() {
            NodePath(self.0).fmt(f)
        } else {
            write!(f, "node `{}`", self.1.name)
        }
    }
}

impl<'f> Check<'_, 'f> {
    /// The `[cluster]` table's own values, each checked on its own.
    fn check_cluster_table(&mut self) {
        let c = &self.file.cluster;
        if !c.name.is_empty() && !is_simple_name(&c.name) {
            self.v
                .err(
                    Kind::InvalidValue,
                    "cluster.name",
                    "cluster name may use only letters, digits, `-` and `_` (at most 63)",
                )
                .value(format!("{:?}", c.name))
                .help("rename it, e.g. \"edge-lab\"");
        }
        if !c.nixpkgs.is_empty() && !is_flake_ref(&c.nixpkgs) {
            self.v
                .err(
                    Kind::InvalidValue,
                    "cluster.nixpkgs",
                    "`nixpkgs` must be a flake reference",
                )
                .value(format!("{:?}", c.nixpkgs))
                .help("write e.g. \"github:NixOS/nixpkgs/nixos-25.11\"");
        }
        if let Some(r) = &c.edgectl_flake
            && !is_flake_ref(r)
        {
            self.v.err(
                Kind::InvalidValue,
                "cluster.edgectl_flake",
                "`edgectl_flake` must be a flake reference",
            )
            .value(format!("{r:?}"))
            .help("write e.g. \"path:/home/you/edgectl\" or \"github:OWNER/edgectl\", or remove it to use the edgectl you run");
        }
        if !c.ssh_user.is_empty() && !is_username(&c.ssh_user) {
            self.v
                .err(
                    Kind::InvalidValue,
                    "cluster.ssh_user",
                    "not a valid Linux user name",
                )
                .value(format!("{:?}", c.ssh_user))
                .help("use your CloudLab user name: lowercase letters, digits, `_` and `-`");
        }
        if let Some(sv) = &c.state_version
            && release_of(&format!("nixos-{sv}")).as_deref() != Some(sv.as_str())
        {
            self.v
                .err(
                    Kind::InvalidValue,
                    "cluster.state_version",
                    "`state_version` must look like \"25.11\"",
                )
                .value(format!("{sv:?}"))
                .help("use the NixOS release the nodes were first installed with, e.g. \"25.11\"");
        }
    }

    fn check_ssh_keys(&mut self) {
        for (i, k) in self.file.cluster.ssh_keys.iter().enumerate() {
            if k.contains('\n')
                || k.split_whitespace().count() < 2
                || !k.starts_with(|ch: char| ch.is_ascii_alphanumeric())
            {
                self.v.err(Kind::InvalidValue, &format!("cluster.ssh_keys[{i}]"), "not a single-line SSH public key")
                    .value(k.clone())
                    .help("paste the one line of your `~/.ssh/id_ed25519.pub` (\"ssh-ed25519 AAAA... you@host\")");
            } else if let Err(why) = crate::sshkey::check(k) {
                self.v.err(Kind::InvalidValue, &format!("cluster.ssh_keys[{i}]"), format!("not a usable SSH public key: {why}"))
                    .value(k.clone())
                    .help("sshd ignores such a key, and the nodes would lock you out: paste the whole line of your `~/.ssh/id_ed25519.pub`");
            }
        }
    }

    fn check_has_nodes(&mut self) {
        if self.file.nodes.is_empty() {
            let v = &mut self.v;
            v.r.diags.push(
                Diagnostic::at(
                    Kind::NoNodes,
                    &v.r.src.clone(),
                    0..0,
                    "the topology has no nodes",
                )
                .field("node")
                .help("add at least one [[node]] with name, host and profile"),
            );
        }
    }

    /// Networks declared up front.
    fn declare_networks(&mut self) {
        for (name, n) in &self.file.networks {
            let path = format!("network.{name}");
            if !is_simple_name(name) {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &path,
                        "network names may use only letters, digits, `-` and `_`",
                    )
                    .value(format!("{name:?}"))
                    .help("rename it, e.g. [network.lan0]");
            }
            match Ipv4Cidr::parse(&n.subnet) {
                Err(e) => {
                    self.v
                        .err(
                            Kind::InvalidAddress,
                            &format!("{path}.subnet"),
                            format!("bad subnet: {e}"),
                        )
                        .value(format!("{:?}", n.subnet))
                        .help("write the subnet as NETWORK/PREFIX, e.g. \"10.10.1.0/24\"");
                }
                Ok(s) if s.network() != s => {
                    self.v
                        .err(
                            Kind::InvalidAddress,
                            &format!("{path}.subnet"),
                            format!("subnet has host bits set; the network is {}", s.network()),
                        )
                        .value(format!("{:?}", n.subnet))
                        .help(format!("write \"{}\"", s.network()));
                }
                Ok(s) => {
                    if let Some(o) = self.networks.list.iter().find(|o| o.subnet.overlaps(&s)) {
                        let other = o.name.clone();
                        self.v
                            .err(
                                Kind::InvalidValue,
                                &format!("{path}.subnet"),
                                format!("subnet overlaps network `{other}` ({})", o.subnet),
                            )
                            .value(format!("{:?}", n.subnet))
                            .help("give each LAN its own subnet");
                    }
                    self.networks.push(Network {
                        name: name.clone(),
                        subnet: s,
                        vlan: n.vlan,
                        implicit: false,
                    });
                }
            }
        }
    }

    /// Defaults: the feature set every node starts from, and the default profile (checked
    /// here once, not for every node that uses it).
    fn read_defaults(&mut self) {
        let defaults = &self.file.defaults;
        self.default_features = match &defaults.features {
            None => Some(BTreeSet::new()),
            Some(list) => parse_features(
                &mut self.v,
                list,
                &"defaults.features",
                &BTreeSet::new(),
                true,
            ),
        };
        if let Some(p) = &defaults.profile
            && !self.profiles.contains(p)
        {
            unknown_profile(&mut self.v, "defaults.profile", p, self.profiles);
        }
    }

    /// Checks node `i` and builds it; `None` when its profile or features could not be worked
    /// out (the other checks report without stopping the node).
    fn check_node(&mut self, i: usize, n: &'f NodeSpec) -> Option<Node> {
        let node = NodeCtx {
            i,
            np: NodePath(i),
            label: NodeLabel(i, n),
            n,
        };

        self.check_node_name(&node);
        let port = n
            .port
            .or(self.file.defaults.port)
            .unwrap_or(DEFAULT_SSH_PORT);
        self.check_node_host(&node, port);
        let user = self.node_user(&node);
        self.check_device_paths(&node);
        let control_ip = self.node_control_ip(&node);
        let profile = self.node_profile(&node);
        let roles = self.node_roles(&node);
        let features = self.node_features(&node, &roles);
        if let (Some(fs), Some(p)) = (&features, &profile) {
            self.check_cuda_has_gpu(&node, fs, p);
        }
        self.check_tags(&node);
        let interfaces = self.node_interfaces(&node);

        Some(Node {
            name: n.name.clone(),
            host: n.host.clone(),
            port,
            user,
            profile: profile?,
            roles,
            features: features?,
            tags: n.tags.clone(),
            control_ip,
            interfaces,
            boot_disk: n.boot_disk.clone(),
            root_device: n.root_device.clone(),
            root_fs: n.root_fs.clone(),
            login_uid: n.login_uid,
            hardware: None,
        })
    }

    /// A valid NixOS host name, unique across nodes even ignoring case.
    fn check_node_name(&mut self, node: &NodeCtx<'f>) {
        let (i, np, n) = (node.i, &node.np, node.n);
        if n.name.is_empty() {
            return;
        }
        if !is_nixos_hostname(&n.name) {
            let hint = if n.name.contains('.') {
                format!(
                    "NixOS host names have no dots: use \"{}\" and keep the full name in `host`",
                    n.name.split('.').next().unwrap_or("node")
                )
            } else {
                "use letters, digits, `-` and `_`, starting and ending with a letter or digit (at most 63)".to_string()
            };
            self.v
                .err(
                    Kind::InvalidHostname,
                    &format!("{np}.name"),
                    "node name is not a valid NixOS host name",
                )
                .value(format!("{:?}", n.name))
                .help(hint);
        }
        // Names that differ only in case are one name to DNS (the agent's certificate is
        // `<node>.node.edgectl`) and to a case-insensitive controller disk (macOS), where
        // each node's keys live in a folder named after it.
        let key = if n.name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(n.name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(n.name.as_str())
        };
        if let Some(&first) = self.names.get(&key) {
            let other = &self.file.nodes[first].name;
            let line = self.v.line_of(&format!("node[{first}].name"));
            let msg = if *other == n.name {
                format!("node name `{}` is already used on line {line}", n.name)
            } else {
                format!(
                    "node name `{}` differs from `{other}` (line {line}) only in case, which DNS and some file systems do not tell apart",
                    n.name
                )
            };
            self.v
                .err(Kind::DuplicateName, &format!("{np}.name"), msg)
                .value(format!("{:?}", n.name))
                .help("give every node a unique name");
        } else {
            self.names.insert(key, i);
        }
    }

    /// A DNS name or IP address, and no other node at the same address and port.
    fn check_node_host(&mut self, node: &NodeCtx<'f>, port: u16) {
        let (i, np, n) = (node.i, &node.np, node.n);
        if n.host.is_empty() {
            return;
        }
        if !is_host(&n.host) {
            self.v.err(Kind::InvalidHostname, &format!("{np}.host"), "`host` is neither a DNS name nor an IP address")
                .value(format!("{:?}", n.host))
                .help("write the node's SSH address, e.g. \"c220g5-110231.wisc.cloudlab.us\" or \"128.105.144.10\"");
        } else if let Some(&first) = self.hosts.get(&(n.host.as_str(), port)) {
            let line = self.v.line_of(&format!("node[{first}].host"));
            self.v
                .err(
                    Kind::DuplicateHost,
                    &format!("{np}.host"),
                    format!(
                        "host {}:{port} is already used by the node on line {line}",
                        n.host
                    ),
                )
                .value(format!("{:?}", n.host))
                .help("each node needs its own SSH address (or a different `port`)");
        } else {
            self.hosts.insert((&n.host, port), i);
        }
    }

    /// The node's SSH user: its own `user`, checked, or the cluster's.
    fn node_user(&mut self, node: &NodeCtx<'f>) -> String {
        let (np, n) = (&node.np, node.n);
        let user = n
            .user
            .clone()
            .unwrap_or_else(|| self.file.cluster.ssh_user.clone());
        if n.user.is_some() && !is_username(&user) {
            self.v
                .err(
                    Kind::InvalidValue,
                    &format!("{np}.user"),
                    "not a valid Linux user name",
                )
                .value(format!("{user:?}"))
                .help("use lowercase letters, digits, `_` and `-`");
        }
        user
    }

    /// `boot_disk` and `root_device`, where set, must be plain device paths.
    fn check_device_paths(&mut self, node: &NodeCtx<'f>) {
        let (np, n) = (&node.np, node.n);
        for (key, value) in [("boot_disk", &n.boot_disk), ("root_device", &n.root_device)] {
            if let Some(d) = value
                && (!d.starts_with("/dev/")
                    || d.len() < 6
                    || d.chars().any(|c| {
                        c.is_whitespace() || c.is_control() || c == '"' || c == '$' || c == '\\'
                    }))
            {
                self.v.err(Kind::InvalidValue, &format!("{np}.{key}"), format!("`{key}` must be a device path such as /dev/disk/by-id/..."))
                    .value(format!("{d:?}"))
                    .help("use the stable name `edgectl install --until facts` prints, or remove the key and let install record it");
            }
        }
        if let Some(fs) = &n.root_fs
            && !["ext4", "ext3", "xfs", "btrfs"].contains(&fs.as_str())
        {
            self.v
                .err(
                    Kind::InvalidValue,
                    &format!("{np}.root_fs"),
                    "`root_fs` must be ext4, ext3, xfs or btrfs",
                )
                .value(format!("{fs:?}"))
                .help("write the file system of root_device (CloudLab's images use ext4)");
        }
    }

    fn node_control_ip(&mut self, node: &NodeCtx<'f>) -> Option<IpAddr> {
        let (np, n) = (&node.np, node.n);
        match &n.control_ip {
            None => None,
            Some(s) => match s.parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    self.v.err(Kind::InvalidAddress, &format!("{np}.control_ip"), "`control_ip` is not an IP address")
                        .value(format!("{s:?}"))
                        .help("write the node's public control address, e.g. \"128.105.145.194\", or remove it");
                    None
                }
            },
        }
    }

    /// Profile: the node's or the default one, resolved.
    fn node_profile(&mut self, node: &NodeCtx<'f>) -> Option<Arc<Profile>> {
        let (np, label, n) = (&node.np, &node.label, node.n);
        match n.profile.as_ref().or(self.file.defaults.profile.as_ref()) {
            None => {
                self.v
                    .err(
                        Kind::MissingField,
                        &np.to_string(),
                        format!("{label} has no hardware profile"),
                    )
                    .help("add `profile = \"c220g5\"` to the node, or to [defaults]");
                None
            }
            Some(p) if !self.profiles.contains(p) => {
                // An unknown default profile was reported once, by `read_defaults`.
                if n.profile.is_some() {
                    unknown_profile(&mut self.v, &node.profile_path(), p, self.profiles);
                }
                None
            }
            Some(p) => self.profiles.resolve(p, &mut self.v.r.diags).ok(),
        }
    }

    /// Roles, by name; unknown ones are reported and left out.
    fn node_roles(&mut self, node: &NodeCtx<'f>) -> BTreeSet<Role> {
        let (np, n) = (&node.np, node.n);
        let mut roles = BTreeSet::new();
        for (j, role) in n.roles.iter().enumerate() {
            match Role::from_name(role) {
                Some(x) => {
                    roles.insert(x);
                }
                None => {
                    let help = suggest(role, Role::names());
                    self.v
                        .err(
                            Kind::UnknownRole,
                            &format!("{np}.roles[{j}]"),
                            format!("unknown role `{role}`"),
                        )
                        .value(format!("{role:?}"))
                        .help(help);
                }
            }
        }
        roles
    }

    /// Features: the node's list modifies or replaces the defaults; roles add what they need.
    fn node_features(
        &mut self,
        node: &NodeCtx<'f>,
        roles: &BTreeSet<Role>,
    ) -> Option<BTreeSet<Feature>> {
        let (np, label, n) = (&node.np, &node.label, node.n);
        let mut features = self.default_features.as_ref().and_then(|d| {
            parse_features(
                &mut self.v,
                &n.features,
                &format_args!("{np}.features"),
                d,
                false,
            )
        });
        if let Some(fs) = &mut features {
            for role in roles {
                let need = role.needs();
                if n.features
                    .iter()
                    .any(|f| f.strip_prefix('-') == Some(need.as_str()))
                {
                    let j = n
                        .features
                        .iter()
                        .position(|f| f.strip_prefix('-') == Some(need.as_str()))
                        .unwrap_or(0);
                    self.v.err(Kind::FeatureConflict, &format!("{np}.features[{j}]"), format!("{label} has role `{role}` but removes feature `{need}`, which the role needs"))
                        .value(format!("\"-{need}\""))
                        .help(format!("remove \"-{need}\", or drop the role `{role}`"));
                }
                fs.insert(need);
            }
        }
        features
    }

    /// `cuda` needs a GPU: reported at the entry that enabled it, else at the profile.
    fn check_cuda_has_gpu(
        &mut self,
        node: &NodeCtx<'f>,
        features: &BTreeSet<Feature>,
        p: &Profile,
    ) {
        let (np, label, n) = (&node.np, &node.label, node.n);
        if !features.contains(&Feature::Cuda) || p.has_gpu() {
            return;
        }
        let at = n
            .features
            .iter()
            .position(|f| f.trim_start_matches('+') == "cuda")
            .map(|j| format!("{np}.features[{j}]"))
            .or_else(|| {
                let d = self.file.defaults.features.as_ref()?;
                d.iter()
                    .position(|f| f == "cuda")
                    .map(|j| format!("defaults.features[{j}]"))
            })
            .unwrap_or_else(|| node.profile_path());
        let gpu_profiles: Vec<&str> = Vec::from_iter(["c240g5", "c4130", "d7525"]);
        self.v.err(Kind::CudaWithoutGpu, &at, format!("{label} enables `cuda` but its profile `{}` has no GPU", p.name))
                .value("\"cuda\"")
                .help(format!(
                    "use a profile with a GPU ({}), declare one that `extends = \"{}\"` with a [[gpu]], or remove cuda from this node",
                    gpu_profiles.join(", "),
                    p.name
                ));
    }

    fn check_tags(&mut self, node: &NodeCtx<'f>) {
        let (np, n) = (&node.np, node.n);
        for (j, tag) in n.tags.iter().enumerate() {
            if !is_simple_name(tag) {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{np}.tags[{j}]"),
                        "tags may use only letters, digits, `-` and `_`",
                    )
                    .value(format!("{tag:?}"))
                    .help("tags are used in selectors such as `--on @gpu`; rename it");
            }
        }
    }

    /// Experiment-LAN interfaces. One without a valid MAC is checked but not kept (edgectl
    /// finds the NIC on the node by its MAC).
    fn node_interfaces(&mut self, node: &NodeCtx<'f>) -> Vec<Interface> {
        let (np, n) = (&node.np, node.n);
        let mut interfaces = Vec::new();
        for (j, l) in n.lan.iter().enumerate() {
            let lp = LanPath(*np, j);
            let mac = self.lan_mac(lp, node.i, l);
            let addr = self.lan_address(lp, l);
            let Some(addr) = addr else { continue };
            let Some(net_name) = self.lan_network(lp, l, addr) else {
                continue;
            };
            self.check_unique_address(lp, node.i, l, &net_name, addr);
            let vlan = l
                .vlan
                .or_else(|| self.networks.named(&net_name).and_then(|x| x.vlan));
            if let Some(mac) = mac {
                interfaces.push(Interface {
                    network: net_name,
                    address: addr,
                    mac,
                    vlan,
                });
            }
        }
        interfaces
    }

    /// The interface's MAC, parsed and unique across the cluster; `None` when empty or bad.
    fn lan_mac(&mut self, lp: LanPath, i: usize, l: &LanSpec) -> Option<Mac> {
        if l.mac.is_empty() {
            return None;
        }
        match Mac::parse(&l.mac) {
            Ok(m) => {
                if let Some(&first) = self.macs.get(&m) {
                    let other = NodeLabel(first, &self.file.nodes[first]).to_string();
                    self.v.err(Kind::DuplicateMac, &format!("{lp}.mac"), format!("MAC {m} is already used by {other}"))
                        .value(format!("{:?}", l.mac))
                        .help("every interface has its own MAC; copy it from `ip link` or the CloudLab manifest");
                } else {
                    self.macs.insert(m, i);
                }
                Some(m)
            }
            Err(e) => {
                self.v
                    .err(
                        Kind::InvalidMac,
                        &format!("{lp}.mac"),
                        format!("bad MAC address: {e}"),
                    )
                    .value(format!("{:?}", l.mac))
                    .help("write 12 hex digits, e.g. \"90e2ba24d115\" or \"90:e2:ba:24:d1:15\"");
                None
            }
        }
    }

    /// The interface's address with its prefix, a host address; `None` when empty or bad.
    fn lan_address(&mut self, lp: LanPath, l: &LanSpec) -> Option<Ipv4Cidr> {
        if l.address.is_empty() {
            return None;
        }
        match Ipv4Cidr::parse(&l.address) {
            Ok(a) if a.is_network_address() || a.is_broadcast_address() => {
                let which = if a.is_network_address() {
                    "network"
                } else {
                    "broadcast"
                };
                self.v
                    .err(
                        Kind::AddressOutsidePrefix,
                        &format!("{lp}.address"),
                        format!(
                            "{} is the {which} address of {}, not a host address",
                            a.addr,
                            a.network()
                        ),
                    )
                    .value(format!("{:?}", l.address))
                    .help(format!(
                        "pick a host address inside {}, e.g. {}",
                        a.network(),
                        Ipv4Addr::from(u32::from(a.network().addr) + 1)
                    ));
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                self.v
                    .err(
                        Kind::InvalidAddress,
                        &format!("{lp}.address"),
                        format!("bad address: {e}"),
                    )
                    .value(format!("{:?}", l.address))
                    .help("write the address with its prefix length, e.g. \"10.10.1.2/24\"");
                None
            }
        }
    }

    /// The network the interface is on: the one it names, which must hold its address, or the
    /// one whose subnet holds it, or a new implicit `lanN`. `None` after reporting why not.
    fn lan_network(&mut self, lp: LanPath, l: &LanSpec, addr: Ipv4Cidr) -> Option<String> {
        match &l.network {
            Some(name) => match self.networks.named(name) {
                None => {
                    let known: Vec<&str> =
                        self.networks.list.iter().map(|x| x.name.as_str()).collect();
                    let help = match did_you_mean(name, known.iter().copied()) {
                        Some(m) => format!("did you mean \"{m}\"?"),
                        None if known.is_empty() => format!(
                            "declare it: [network.{name}] subnet = \"{}\"",
                            addr.network()
                        ),
                        None => format!("declared networks: {}", known.join(", ")),
                    };
                    self.v
                        .err(
                            Kind::UnknownNetwork,
                            &format!("{lp}.network"),
                            format!("unknown network `{name}`"),
                        )
                        .value(format!("{name:?}"))
                        .help(help);
                    None
                }
                Some(net)
                    if !net.subnet.contains(addr.addr) || net.subnet.prefix != addr.prefix =>
                {
                    self.v
                        .err(
                            Kind::AddressOutsidePrefix,
                            &format!("{lp}.address"),
                            format!("{addr} is not inside network `{name}` ({})", net.subnet),
                        )
                        .value(format!("{:?}", l.address))
                        .help(format!(
                            "use an address in {} with prefix /{}",
                            net.subnet, net.subnet.prefix
                        ));
                    None
                }
                Some(net) => Some(net.name.clone()),
            },
            None => match self.networks.containing(addr.addr) {
                Some(net) if net.subnet.prefix != addr.prefix => {
                    let (nn, ns) = (net.name.clone(), net.subnet);
                    self.v
                        .err(
                            Kind::AddressOutsidePrefix,
                            &format!("{lp}.address"),
                            format!(
                                "{addr} has prefix /{} but its network `{nn}` is {ns}",
                                addr.prefix
                            ),
                        )
                        .value(format!("{:?}", l.address))
                        .help(format!("write \"{}/{}\"", addr.addr, ns.prefix));
                    None
                }
                Some(net) => Some(net.name.clone()),
                None => {
                    let name = format!("lan{}", self.networks.implicit);
                    self.networks.push(Network {
                        name: name.clone(),
                        subnet: addr.network(),
                        vlan: l.vlan,
                        implicit: true,
                    });
                    Some(name)
                }
            },
        }
    }

    /// No two interfaces on one network may share an address.
    fn check_unique_address(
        &mut self,
        lp: LanPath,
        i: usize,
        l: &LanSpec,
        net_name: &str,
        addr: Ipv4Cidr,
    ) {
        let first = self
            .addrs
            .get(net_name)
            .and_then(|m| m.get(&addr.addr))
            .copied();
        if let Some(first) = first {
            let other = NodeLabel(first, &self.file.nodes[first]).to_string();
            self.v
                .err(
                    Kind::DuplicateAddress,
                    &format!("{lp}.address"),
                    format!(
                        "address {} is already used by {other} on network `{net_name}`",
                        addr.addr
                    ),
                )
                .value(format!("{:?}", l.address))
                .help("give every interface on a LAN its own address");
        } else if let Some(m) = self.addrs.get_mut(net_name) {
            m.insert(addr.addr, i);
        } else {
            self.addrs
                .insert(net_name.to_string(), HashMap::from([(addr.addr, i)]));
        }
    }

    /// A Ray cluster has one head: every `ray-head` after the first is reported, and workers
    /// with no head at all.
    fn check_ray_heads(&mut self) {
        let file = self.file;
        let heads: Vec<usize> = file
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.roles.iter().any(|r| r == "ray-head"))
            .map(|(i, _)| i)
            .collect();
        if heads.len() > 1 {
            let first = file.nodes[heads[0]].name.clone();
            for &i in &heads[1..] {
                let j = file.nodes[i]
                    .roles
                    .iter()
                    .position(|r| r == "ray-head")
                    .unwrap_or(0);
                self.v
                    .err(
                        Kind::RayTwoHeads,
                        &format!("node[{i}].roles[{j}]"),
                        format!("a second Ray head: `{first}` is already the head"),
                    )
                    .value("\"ray-head\"")
                    .help("a Ray cluster has exactly one head; make this node a \"ray-worker\"");
            }
        }
        if heads.is_empty() {
            let wants_ray = file.nodes.iter().enumerate().find_map(|(i, n)| {
                n.roles
                    .iter()
                    .position(|r| r == "ray-worker")
                    .map(|j| format!("node[{i}].roles[{j}]"))
            });
            if let Some(at) = wants_ray {
                self.v
                    .err(Kind::RayNoHead, &at, "Ray workers but no Ray head")
                    .value("\"ray-worker\"")
                    .help("give exactly one node the role \"ray-head\"");
            }
        }
    }

    /// Zenoh peers need a router: reported where `zenoh` was enabled for the first node built
    /// (one whose profile and features resolved).
    fn check_zenoh_router(&mut self, nodes: &[Node]) {
        let file = self.file;
        let has_router = file
            .nodes
            .iter()
            .any(|n| n.roles.iter().any(|r| r == "zenoh-router"));
        if has_router {
            return;
        }
        let zenoh_at = nodes
            .iter()
            .zip(0..)
            .find(|(n, _)| n.has(Feature::Zenoh))
            .map(|(n, _)| {
                let i = file
                    .nodes
                    .iter()
                    .position(|f| f.name == n.name)
                    .unwrap_or(0);
                file.nodes[i]
                    .features
                    .iter()
                    .position(|f| f.trim_start_matches('+') == "zenoh")
                    .map(|j| format!("node[{i}].features[{j}]"))
                    .or_else(|| {
                        file.defaults
                            .features
                            .as_ref()?
                            .iter()
                            .position(|f| f == "zenoh")
                            .map(|j| format!("defaults.features[{j}]"))
                    })
                    .unwrap_or(format!("node[{i}]"))
            });
        if let Some(at) = zenoh_at {
            self.v
                .err(
                    Kind::ZenohNoRouter,
                    &at,
                    "`zenoh` is enabled but no node has the role \"zenoh-router\"",
                )
                .value("\"zenoh\"")
                .help(
                    "give at least one node the role \"zenoh-router\" (peers connect to routers)",
                );
        }
    }

    /// The typed cluster, once every check passed.
    fn into_cluster(self, nodes: Vec<Node>, secrets: Vec<Secret>) -> Cluster {
        let c = &self.file.cluster;
        let state_version = c
            .state_version
            .clone()
            .or_else(|| release_of(&c.nixpkgs))
            .unwrap_or_else(|| DEFAULT_STATE_VERSION.to_string());
        Cluster {
            name: c.name.clone(),
            nixpkgs: c.nixpkgs.clone(),
            edgectl_flake: c.edgectl_flake.clone(),
            ssh_user: c.ssh_user.clone(),
            ssh_identity: c.ssh_identity.clone(),
            confirm_timeout_s: c.confirm_timeout_s.unwrap_or(DEFAULT_CONFIRM_TIMEOUT_S),
            state_version,
            site: c.site.clone(),
            expires: c.expires.clone(),
            ssh_keys: c.ssh_keys.clone(),
            networks: self.networks.list,
            nodes,
            targets: self.file.targets.clone(),
            secrets,
        }
    }

    /// Every `[[secret]]`, checked for shape: a simple unique name, exactly one source, a
    /// destination in an allowed place, owner, group, mode, nodes and `when`. Whether the
    /// source can be read is `plan`'s and `apply`'s question (it may be created later).
    fn check_secrets(&mut self) -> Vec<Secret> {
        let file = self.file;
        let mut out = Vec::new();
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, s) in file.secrets.iter().enumerate() {
            let sp = format!("secret[{i}]");
            if !s.name.is_empty() {
                if !is_simple_name(&s.name) {
                    self.v
                        .err(
                            Kind::InvalidValue,
                            &format!("{sp}.name"),
                            "secret names may use only letters, digits, `-` and `_` (at most 63)",
                        )
                        .value(format!("{:?}", s.name))
                        .help("rename it, e.g. \"ray-token\"");
                } else if let Some(&first) = names.get(s.name.as_str()) {
                    let line = self.v.line_of(&format!("secret[{first}].name"));
                    self.v
                        .err(
                            Kind::DuplicateName,
                            &format!("{sp}.name"),
                            format!("secret name `{}` is already used on line {line}", s.name),
                        )
                        .value(format!("{:?}", s.name))
                        .help("give every [[secret]] its own name");
                } else {
                    names.insert(&s.name, i);
                }
            }
            let source = self.secret_source(&sp, s);
            let dest_ok = self.check_secret_dest(&sp, s);
            let owner = self.secret_account(&sp, "owner", s.owner.as_deref());
            let group = self.secret_account(&sp, "group", s.group.as_deref());
            let mode = self.secret_mode(&sp, s);
            let nodes = self.secret_nodes(&sp, s);
            let when = match s.when.as_deref() {
                None => Some(SecretWhen::Before),
                Some(w) => SecretWhen::from_name(w).or_else(|| {
                    self.v
                        .err(
                            Kind::InvalidValue,
                            &format!("{sp}.when"),
                            "`when` must be \"before\" or \"after\" (activation)",
                        )
                        .value(format!("{w:?}"))
                        .help(format!(
                            "{}; \"before\" uploads it before the new system starts, \"after\" once the node confirmed it",
                            suggest(w, SecretWhen::names())
                        ));
                    None
                }),
            };
            if let (
                Some(source),
                true,
                Some(owner),
                Some(group),
                Some(mode),
                Some(nodes),
                Some(when),
            ) = (source, dest_ok, owner, group, mode, nodes, when)
            {
                out.push((
                    i,
                    Secret {
                        name: s.name.clone(),
                        source,
                        dest: s.dest.clone(),
                        owner,
                        group,
                        mode,
                        nodes,
                        when,
                    },
                ));
            }
        }
        self.check_secret_dests_unique(&out);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Exactly one of `file` and `command`, neither of them empty.
    fn secret_source(&mut self, sp: &str, s: &SecretSpec) -> Option<SecretSource> {
        match (&s.file, &s.command) {
            (Some(_), Some(_)) => {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{sp}.command"),
                        "a secret has either `file` or `command`, not both",
                    )
                    .help("keep the one its bytes should come from, and remove the other");
                None
            }
            (None, None) => {
                self.v
                    .err(
                        Kind::MissingField,
                        sp,
                        format!("secret `{}` has no source", s.name),
                    )
                    .help("add `file = \"secrets/token\"` (relative to the topology file) or `command = [\"pass\", \"show\", \"token\"]` (its output is the secret)");
                None
            }
            (Some(f), None) if f.is_empty() || f.contains('\0') => {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{sp}.file"),
                        "`file` must name a file",
                    )
                    .value(format!("{f:?}"))
                    .help("write the path of the file that holds the secret, relative to the topology file");
                None
            }
            (Some(f), None) => Some(SecretSource::File(f.clone())),
            (None, Some(c)) if c.first().is_none_or(|p| p.is_empty()) => {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{sp}.command"),
                        "`command` must name a program",
                    )
                    .value(format!("{c:?}"))
                    .help("write the program and its arguments as a list, e.g. [\"pass\", \"show\", \"token\"]; it runs on this machine, not through a shell");
                None
            }
            (None, Some(c)) => Some(SecretSource::Command(c.clone())),
        }
    }

    /// An absolute path in one of [`SECRET_DIRS`], with no `.`, `..` or empty parts.
    fn check_secret_dest(&mut self, sp: &str, s: &SecretSpec) -> bool {
        let d = &s.dest;
        if d.is_empty() {
            return false; // reported as missing
        }
        let why = secret_dest_problem(d);
        if let Some(why) = why {
            self.v
                .err(
                    Kind::InvalidValue,
                    &format!("{sp}.dest"),
                    format!("secret destination {why}"),
                )
                .value(format!("{d:?}"))
                .help(format!(
                    "write an absolute file path under {}, e.g. \"/run/keys/{}\"; secrets never go into the Nix store",
                    SECRET_DIRS.join(", "),
                    if s.name.is_empty() { "token" } else { &s.name }
                ));
            return false;
        }
        true
    }

    /// `owner` or `group`: a user or group name, or a number; default root.
    fn secret_account(&mut self, sp: &str, key: &str, v: Option<&str>) -> Option<String> {
        let Some(v) = v else {
            return Some("root".into());
        };
        let numeric = !v.is_empty() && v.len() <= 10 && v.bytes().all(|c| c.is_ascii_digit());
        if numeric || is_username(v) {
            return Some(v.to_string());
        }
        self.v
            .err(
                Kind::InvalidValue,
                &format!("{sp}.{key}"),
                format!("`{key}` is neither a {} name nor a number", if key == "owner" { "user" } else { "group" }),
            )
            .value(format!("{v:?}"))
            .help(format!(
                "use lowercase letters, digits, `_` and `-` (e.g. \"{}\"), a numeric id, or remove it for root",
                if key == "owner" { "ray" } else { "keys" }
            ));
        None
    }

    /// `mode`: three or four octal digits as a string, no set-id or sticky bits; default 0400.
    fn secret_mode(&mut self, sp: &str, s: &SecretSpec) -> Option<u32> {
        let Some(m) = &s.mode else {
            return Some(DEFAULT_SECRET_MODE);
        };
        match parse_mode(m) {
            Some(x) => Some(x),
            None => {
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{sp}.mode"),
                        "`mode` must be an octal file mode such as \"0400\" (no set-id or sticky bits)",
                    )
                    .value(format!("{m:?}"))
                    .help("write it as a string of octal digits: \"0400\" (owner reads), \"0440\" (and the group)");
                None
            }
        }
    }

    /// `nodes`: selector terms, each of which must pick a node; default every node.
    fn secret_nodes(&mut self, sp: &str, s: &SecretSpec) -> Option<Vec<String>> {
        let all = &self.file.nodes;
        let Some(terms) = &s.nodes else {
            return Some(all.iter().map(|n| n.name.clone()).collect());
        };
        if terms.is_empty() {
            self.v
                .err(
                    Kind::InvalidValue,
                    &format!("{sp}.nodes"),
                    format!("secret `{}` goes to no node", s.name),
                )
                .value("[]")
                .help("name nodes, globs such as \"worker*\" or tags such as \"@gpu\", or remove `nodes` to upload it to every node");
            return None;
        }
        let mut ok = true;
        let mut picked = vec![false; all.len()];
        for (j, t) in terms.iter().enumerate() {
            let mut hit = false;
            for (k, n) in all.iter().enumerate() {
                if crate::select::matches(t, &n.name, &n.tags) {
                    picked[k] = true;
                    hit = true;
                }
            }
            if !hit {
                ok = false;
                let names: Vec<&str> = all.iter().map(|n| n.name.as_str()).collect();
                self.v
                    .err(
                        Kind::InvalidValue,
                        &format!("{sp}.nodes[{j}]"),
                        format!("selector `{t}` matches no node"),
                    )
                    .value(format!("{t:?}"))
                    .help(format!(
                        "use node names, globs such as \"worker*\" or tags such as \"@gpu\" (nodes: {})",
                        names.join(", ")
                    ));
            }
        }
        ok.then(|| {
            all.iter()
                .zip(picked)
                .filter(|(_, p)| *p)
                .map(|(n, _)| n.name.clone())
                .collect()
        })
    }

    /// Two secrets may share a destination only on different nodes.
    fn check_secret_dests_unique(&mut self, secrets: &[(usize, Secret)]) {
        for (a, (i, s)) in secrets.iter().enumerate() {
            let Some((_, other)) = secrets[..a]
                .iter()
                .find(|(_, o)| o.dest == s.dest && o.nodes.iter().any(|n| s.nodes.contains(n)))
            else {
                continue;
            };
            let both: Vec<&str> = s
                .nodes
                .iter()
                .filter(|n| other.nodes.contains(n))
                .map(String::as_str)
                .collect();
            self.v
                .err(
                    Kind::InvalidValue,
                    &format!("secret[{i}].dest"),
                    format!(
                        "secrets `{}` and `{}` would both be written to {} on {}",
                        other.name,
                        s.name,
                        s.dest,
                        both.join(", ")
                    ),
                )
                .value(format!("{:?}", s.dest))
                .help("give each secret its own destination, or send them to different nodes");
        }
    }
}

/// Why `d` is no place for a secret, or `None` when it is one.
pub fn secret_dest_problem(d: &str) -> Option<String> {
    if !d.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if d.chars().any(char::is_control) {
        return Some("has a control character in it".into());
    }
    let parts: Vec<&str> = d[1..].split('/').collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Some("may not contain `.` or `..`".into());
    }
    if parts.iter().any(|p| p.is_empty()) {
        return Some("may not have empty parts (`//`) or end with `/`".into());
    }
    if d.starts_with("/nix/") {
        return Some("is in /nix: the Nix store is world-readable".into());
    }
    if d.starts_with("/etc/static/") {
        return Some("is under /etc/static, which NixOS links into the Nix store".into());
    }
    if !SECRET_DIRS.iter().any(|p| d.starts_with(p)) {
        return Some(format!("must be under {}", SECRET_DIRS.join(", ")));
    }
    None
}

/// "0400", "400", "0640" and so on: permission bits only.
pub fn parse_mode(m: &str) -> Option<u32> {
    let digits = match m.len() {
        3 => m,
        4 => m.strip_prefix('0')?,
        _ => return None,
    };
    if !digits.bytes().all(|c| (b'0'..=b'7').contains(&c)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

fn unknown_profile(v: &mut V<'_>, path: &str, p: &str, profiles: &ProfileSet) {
    let names: Vec<&str> = profiles.names().collect();
    let help = match did_you_mean(p, names.iter().copied()) {
        Some(m) => format!("did you mean \"{m}\"?"),
        None => format!(
            "known profiles: {}; or declare [profile.{p}] (or a file {p}.toml in `profile_dir`)",
            names.join(", ")
        ),
    };
    v.err(
        Kind::UnknownProfile,
        path,
        format!("unknown hardware profile `{p}`"),
    )
    .value(format!("{p:?}"))
    .help(help);
}

/// Reads a feature list. `+x`/`-x` entries change `base`; plain entries replace it. In
/// `defaults` only plain entries make sense.
fn parse_features(
    v: &mut V<'_>,
    list: &[String],
    path: &dyn std::fmt::Display,
    base: &BTreeSet<Feature>,
    is_defaults: bool,
) -> Option<BTreeSet<Feature>> {
    let mut ok = true;
    let modifiers = list.iter().filter(|f| f.starts_with(['+', '-'])).count();
    if modifiers != 0 && (modifiers != list.len() || is_defaults) {
        let j = if is_defaults {
            list.iter()
                .position(|f| f.starts_with(['+', '-']))
                .unwrap_or(0)
        } else {
            list.iter()
                .position(|f| !f.starts_with(['+', '-']))
                .unwrap_or(0)
        };
        let help = if is_defaults {
            "[defaults] lists features plainly (\"wasm\"); `+`/`-` belong in a node's list"
                .to_string()
        } else {
            "either list every feature plainly (replacing the defaults) or only changes such as \"+cuda\", \"-wasm\"".to_string()
        };
        v.err(
            Kind::InvalidValue,
            &format!("{path}[{j}]"),
            "features mix plain names with `+`/`-` changes",
        )
        .value(format!("{:?}", list[j]))
        .help(help);
        return None;
    }
    let mut out = if modifiers == 0 && !list.is_empty() {
        BTreeSet::new()
    } else {
        base.clone()
    };
    for (j, f) in list.iter().enumerate() {
        let (op, name) = match f.strip_prefix('+') {
            Some(n) => ('+', n),
            None => match f.strip_prefix('-') {
                Some(n) => ('-', n),
                None => ('=', f.as_str()),
            },
        };
        match Feature::from_name(name) {
            Some(feat) => {
                if op == '-' {
                    out.remove(&feat);
                } else {
                    out.insert(feat);
                }
            }
            None => {
                ok = false;
                let help = suggest(name, Feature::names());
                v.err(
                    Kind::UnknownFeature,
                    &format!("{path}[{j}]"),
                    format!("unknown feature `{name}`"),
                )
                .value(format!("{f:?}"))
                .help(help);
            }
        }
    }
    ok.then_some(out)
}

fn is_flake_ref(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'-' || c == b'.')
        && !rest.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_graphic() && c != b'"' && c != b'\\' && c != b'\'' && c != b'`' && c != b'$'
        })
}

/// Groups of nodes by network, for views that list LAN members.
pub fn members(cluster: &Cluster) -> BTreeMap<&str, Vec<(&Node, &Interface)>> {
    let mut m: BTreeMap<&str, Vec<(&Node, &Interface)>> = BTreeMap::new();
    for n in &cluster.nodes {
        for i in &n.interfaces {
            m.entry(i.network.as_str()).or_default().push((n, i));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(
            release_of("github:NixOS/nixpkgs/nixos-25.11").as_deref(),
            Some("25.11")
        );
        assert_eq!(release_of("github:NixOS/nixpkgs/nixos-unstable"), None);
        assert_eq!(release_of("github:NixOS/nixpkgs"), None);
    }

    #[test]
    fn secret_destinations() {
        for ok in [
            "/run/keys/token",
            "/var/lib/ray/token",
            "/etc/ssh/ssh_host_ed25519_key",
        ] {
            assert_eq!(secret_dest_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("run/keys/x", "absolute"),
            ("/run/keys/../../etc/shadow2", "`..`"),
            ("/var/lib/./x", "`..`"),
            ("/nix/store/abc-token", "Nix store"),
            ("/etc/static/token", "Nix store"),
            ("/tmp/token", "must be under"),
            ("/root/.ssh/id", "must be under"),
            ("/run/keys", "must be under"),
            ("/run/keys/", "empty parts"),
            ("/var/lib//x", "empty parts"),
            ("/run/keys/a\nb", "control"),
        ] {
            let p = secret_dest_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains(why), "{bad}: {p}");
        }
    }

    #[test]
    fn secret_modes() {
        assert_eq!(parse_mode("0400"), Some(0o400));
        assert_eq!(parse_mode("640"), Some(0o640));
        assert_eq!(parse_mode("0777"), Some(0o777));
        for bad in ["4755", "0800", "04", "rw-r--r--", "", "00400", "0o400"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }

    #[test]
    fn flake_refs() {
        assert!(is_flake_ref("github:NixOS/nixpkgs/nixos-25.11"));
        assert!(is_flake_ref("path:/tmp/x"));
        assert!(!is_flake_ref("nixos-25.11"));
        assert!(!is_flake_ref("github:x\"; rm -rf /"));
    }
}
