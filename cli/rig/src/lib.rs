//! Multi-host test rig for edgectl's deploy tests.
//!
//! Every node is a network namespace joined to a per-rig bridge, with its own `sshd` running in a
//! private mount + UTS namespace where an (initially empty) host directory is bind-mounted over
//! `/nix`. `/run` (a fresh tmpfs) and `/var` (a per-node directory) are private too, as on a
//! real machine: a node never sees the host's systemd, and its agent's files never collide with
//! another node's. `/etc` is the host's unless [`RigOptions::private_etc`]; `/tmp` is shared.
//!
//! Each node has a default route (via the rig's bridge address, so the control interface is
//! `eth0` as on a CloudLab node) and an experiment interface `eth1` on a second bridge, carrying
//! the MAC that [`topology_toml`] declares for its LAN, so that install's MAC matching runs.
//!
//! Several rigs can exist at once (threads of one test binary, or separate processes): each gets a
//! unique tag derived from the pid and a counter, and its own `10.233.<k>.0/24` claimed through a
//! registry file under `/run/edgectl-rig/`. A rig is torn down by `Drop`; rigs of processes that
//! died without running it are reaped by the next [`Rig::up`] (or `edgectl-rig reap`).
//!
//! See `/work/shared/docs/TEST-RIG.md` (sections 2-4) for the measured recipe this follows.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

pub mod nfdelay;

/// The `NIX_CONFIG` every Nix call of a test should use (TEST-RIG section 2): without
/// `substituters =` each build waits seconds retrying the unreachable public cache.
pub const NIX_CONFIG: &str = "substituters =\nsandbox = false\nbuild-users-group =\nexperimental-features = nix-command flakes";

const REGISTRY_DIR: &str = "/run/edgectl-rig";
const NS_PREFIX: &str = "edgerig-";
const DIR_PREFIX: &str = "edgectl-rig-";
const IF_PREFIX: &str = "er";
const MAX_NODES: usize = 99;
/// How long `up`/`start_sshd` wait for an sshd banner before giving up.
const SSHD_DEADLINE: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `Ok` when this machine can run a rig; otherwise the reason, for a test to print before skipping.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the test rig needs root (network namespaces, bind mounts)".into());
    }
    let missing: Vec<&str> = [
        "ip",
        "sshd",
        "ssh",
        "ssh-keygen",
        "nix-store",
        "nsenter",
        "unshare",
    ]
    .into_iter()
    .filter(|t| tool(t).is_none())
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "the test rig needs {} (Debian: apt-get install iproute2 openssh-server openssh-client nix-bin util-linux)",
            missing.join(", ")
        ));
    }
    // Root inside an unprivileged container has no CAP_NET_ADMIN / CAP_SYS_ADMIN; find out now
    // rather than half-way through `up`.
    let probe = Command::new(tool("unshare").unwrap())
        .args(["--net", "--mount", "true"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if !probe.status.success() {
        return Err(format!(
            "cannot create namespaces: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(())
}

/// Whether a test may use a rig here: `true`, or a recorded skip (a failure where
/// `EDGECTL_REQUIRE` names `rig`), through [`edgectl_testkit::require`].
pub fn ready() -> bool {
    edgectl_testkit::require("rig", available()).is_some()
}

/// Absolute path of a system tool. sbin is searched even when it is not in PATH, because `cargo
/// test` is often run with a user PATH.
pub fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn tool_or(name: &str) -> PathBuf {
    tool(name).unwrap_or_else(|| PathBuf::from(name))
}

/// The MAC [`topology_toml`] declares for node `i`'s LAN, and the rig gives its `eth1`.
pub fn lan_mac(i: usize) -> String {
    format!("02:aa:bb:cc:{:02x}:{:02x}", (i + 1) >> 8, (i + 1) & 0xff)
}

/// An edgectl topology whose nodes are this rig's nodes (root login with the rig's key; the
/// first node is the Zenoh router), for deploy tests and benchmarks. The rig's one bridge is
/// also the nodes' "experiment LAN", so each node's LAN address is its rig address.
/// Its `edgectl` input is [`fixture_edgectl`] (no agent in the systems).
pub fn topology_toml(rig: &Rig, features: &[&str], confirm_timeout_s: u64) -> String {
    topology_toml_with(rig, features, confirm_timeout_s, &fixture_edgectl())
}

/// [`topology_toml`] with another flake as the generated flake's `edgectl` input (e.g. an
/// [`agent_fixture`], whose systems run the agent).
pub fn topology_toml_with(
    rig: &Rig,
    features: &[&str],
    confirm_timeout_s: u64,
    edgectl_flake: &Path,
) -> String {
    let key = std::fs::read_to_string(rig.key.with_extension("pub")).unwrap_or_default();
    let feats: Vec<String> = features.iter().map(|f| format!("{f:?}")).collect();
    let mut t = format!(
        "[cluster]\nname = \"rig\"\nnixpkgs = \"github:NixOS/nixpkgs/nixos-25.11\"\nedgectl_flake = \"path:{}\"\nssh_user = \"root\"\nconfirm_timeout_s = {confirm_timeout_s}\nssh_keys = [{:?}]\n\n[defaults]\nprofile = \"c220g5\"\nfeatures = [{}]\n\n",
        edgectl_flake.display(),
        key.trim(),
        feats.join(", ")
    );
    for (i, n) in rig.nodes.iter().enumerate() {
        let roles = if i == 0 { "[\"zenoh-router\"]" } else { "[]" };
        t.push_str(&format!(
            "[[node]]\nname = {:?}\nhost = \"{}\"\nroles = {roles}\ntags = [\"{}\"]\nlan = {{ address = \"{}/24\", mac = \"{}\" }}\nboot_disk = \"/dev/disk/by-id/edgerig-{}\"\nroot_device = \"/dev/disk/by-uuid/00000000-0000-4000-8000-0000000000{:02x}\"\nroot_fs = \"ext4\"\n\n",
            n.name,
            n.ip,
            if i == 0 { "first" } else { "rest" },
            n.ip,
            lan_mac(i).replace(':', ""),
            n.name,
            i + 1
        ));
    }
    t
}

/// The fixture flake that stands in for nixpkgs in deploy tests (see fixtures/test-nixpkgs/README.md).
pub fn fixture_nixpkgs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-nixpkgs")
}

/// SIGINT, SIGTERM and SIGHUP, blocked so that whoever holds a rig can wait for one and tear
/// the rig down: block them before anything is created, so none can kill the holder between
/// `up` and the wait. std resets the mask in the children it spawns.
pub struct Signals(libc::sigset_t);

impl Signals {
    pub fn block() -> Signals {
        // SAFETY: sigset_t is plain data initialised by sigemptyset before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Signals(set)
        }
    }

    /// Waits for one of them; returns its number.
    pub fn wait(&self) -> i32 {
        let mut sig = 0;
        // SAFETY: the set is initialised and its signals are blocked in this thread.
        unsafe { libc::sigwait(&self.0, &mut sig) };
        sig
    }
}

/// A topology for `edgectl lab`: [`topology_toml_with`], but self-contained: nixpkgs is the test
/// fixture itself (no `--override-input` needed) and the login key is `ssh_identity`, a path
/// relative to the topology file.
pub fn lab_topology_toml(
    rig: &Rig,
    features: &[&str],
    edgectl_flake: &Path,
    ssh_identity: &str,
) -> String {
    let t = topology_toml_with(rig, features, 30, edgectl_flake);
    t.replacen("name = \"rig\"\n", "name = \"lab\"\n", 1)
        .replacen(
        "nixpkgs = \"github:NixOS/nixpkgs/nixos-25.11\"\n",
        &format!(
            "# The test fixture that stands in for nixpkgs: these nodes run stand-in systems, not NixOS.\nnixpkgs = \"path:{}\"\nstate_version = \"25.11\"\n",
            fixture_nixpkgs().display()
        ),
        1,
    )
    .replacen(
        "ssh_user = \"root\"\n",
        &format!("ssh_user = \"root\"\nssh_identity = {ssh_identity:?}\n"),
        1,
    )
}

/// The fixture flake that stands in for edgectl's own flake (the generated flakes' `edgectl`
/// input) in deploy tests: no package, so the systems run no agent.
pub fn fixture_edgectl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/test-edgectl")
}

/// Writes into `dir` a fixture flake whose `packages.x86_64-linux.edgectl` is the binary `bin`
/// (stripped, to keep the closure small), so that the fixture's systems
/// run it as their node agent, and returns `dir`.
pub fn agent_fixture(dir: &Path, bin: &Path) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let dest = dir.join("edgectl");
    let _ = fs::remove_file(&dest);
    let stripped = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&dest)
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(bin, &dest).map_err(|e| format!("copy {}: {e}", bin.display()))?;
    }
    fs::write(dir.join("flake.nix"), AGENT_FIXTURE)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

const AGENT_FIXTURE: &str = r#"# TEST FIXTURE written by edgectl_rig::agent_fixture -- NOT edgectl's flake: its package is
# the edgectl binary beside this file, a generic Linux build that runs on the rig's nodes.
{
  outputs = {self}: {
    packages.x86_64-linux.edgectl = builtins.derivation {
      name = "edgectl-test-agent";
      system = "x86_64-linux";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      src = ./edgectl;
      args = ["-c" "mkdir -p $out/bin && cp $src $out/bin/edgectl && chmod 555 $out/bin/edgectl"];
    };
  };
}
"#;

/// Builds `nixosConfigurations.<node>.config.system.build.toplevel` of the flake in `flake_dir`
/// with nixpkgs and edgectl replaced by the test fixtures (so no agent), and returns its store
/// path.
pub fn build_fixture_toplevel(flake_dir: &Path, node: &str) -> Result<String, String> {
    // path: URLs because a generated flake inside a git work tree would otherwise only see
    // git-added files.
    let attr = format!(
        "path:{}#nixosConfigurations.{node}.config.system.build.toplevel",
        flake_dir.display()
    );
    let out = Command::new(tool_or("nix"))
        .env("NIX_CONFIG", NIX_CONFIG)
        .args([
            "build",
            "--no-link",
            "--json",
            &attr,
            "--override-input",
            "nixpkgs",
        ])
        .arg(format!("path:{}", fixture_nixpkgs().display()))
        .args(["--override-input", "edgectl"])
        .arg(format!("path:{}", fixture_edgectl().display()))
        .arg("--no-write-lock-file")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run nix: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nix build {attr} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Nix 2.8 has no --print-out-paths.
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("nix build printed no JSON ({e})"))?;
    v[0]["outputs"]["out"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("no out path in {v}"))
}

/// One node of a [`Rig`].
#[derive(Debug)]
pub struct RigNode {
    /// "n1", "n2", ...; also its UTS host name and an ssh_config host alias.
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Host directory bind-mounted over `/nix` inside the node.
    pub nix_dir: PathBuf,
    /// `ssh-ed25519 AAAA...` (no comment) of the host key the node had at `up`; see
    /// [`Rig::host_key`] for the current one.
    pub host_key_pub: String,
    /// The node's veth end in the root namespace (attached to the bridge).
    pub veth: String,
    /// The root-side end of the node's experiment interface `eth1` (on the LAN bridge).
    pub lan_veth: String,
    /// Per-node state directory on the host (sshd config and log, host key, nix.conf).
    pub dir: PathBuf,
    pub sshd_config: PathBuf,
    pub host_key: PathBuf,
    /// A `sleep` that owns the node's mount+UTS namespaces, so they survive sshd restarts and
    /// `exec_in` works while sshd is down.
    holder: Mutex<Option<Child>>,
    sshd: Mutex<Option<Child>>,
    /// With `RigOptions::private_etc`: the host directory seen as `/etc` inside the node.
    pub etc_root: Option<PathBuf>,
    /// Made with [`RigOptions::nixos`]: NixOS's firewall and a `noexec` `/var` (see there).
    pub nixos: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RigOptions {
    /// Give each node its own copy of `/etc` (see [`RigNode::etc_root`]).
    pub private_etc: bool,
    /// Nodes that look like NixOS wherever edgectl takes a NixOS-only path: `/etc/os-release`
    /// says `ID=nixos` (implies `private_etc`), `/run/systemd/system` exists, and the
    /// `systemd-run` on the login PATH (`/run/current-system/sw/bin`, as on NixOS) starts
    /// transient units the way NixOS does: detached, with a PATH that holds only systemd's
    /// own tools (see `cli/rig/nixos/`).
    ///
    /// Its network namespace runs NixOS's default-deny firewall: incoming packets are dropped
    /// unless they are loopback, ESTABLISHED/RELATED, ICMP echo requests or TCP 22 (sshd), or
    /// an allow rule admits them. [`NIXOS_FIREWALL`] on the node (what the test fixture's
    /// activation runs with its system's `firewall.rules`, from modules/lib's `firewallFor`)
    /// or [`Rig::set_firewall`] replaces the allow rules. And its `/var` is mounted `noexec`,
    /// where `edgectl verify` uploads its agent (`/var/lib/edgectl-agent`): a generic Linux
    /// binary cannot run from there, as none can on NixOS, which has no
    /// `/lib64/ld-linux-x86-64.so.2`.
    pub nixos: bool,
}

/// The rig's stand-ins for NixOS's systemd tools, installed into `--nixos` nodes' `/run`.
const NIXOS_SYSTEMD_RUN: &str = include_str!("../nixos/systemd-run");
const NIXOS_JOURNALCTL: &str = include_str!("../nixos/journalctl");
const NIXOS_FIREWALL_SH: &str = include_str!("../nixos/edgerig-firewall");
/// Where a `--nixos` node has the rig's model of NixOS's firewall (`cli/rig/nixos/edgerig-firewall`):
/// `NIXOS_FIREWALL FILE` makes FILE's rules (`PROTO PORTS [INTERFACE]` lines) the node's allow
/// rules, `--base` drops them all, `--show` prints them.
pub const NIXOS_FIREWALL: &str = "/run/edgerig-firewall/edgerig-firewall";
/// The login PATH of a `--nixos` node: NixOS's system profile first.
const NIXOS_PATH: &str =
    "/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running rig; dropping it tears everything down.
#[derive(Debug)]
pub struct Rig {
    /// Unique tag of this rig (`<pid hex>x<counter hex>`), part of every name it creates.
    pub id: String,
    pub dir: PathBuf,
    pub nodes: Vec<RigNode>,
    pub ssh_config: PathBuf,
    /// Private key that logs in as root on every node.
    pub key: PathBuf,
    pub bridge: String,
    /// The bridge of the nodes' experiment interfaces (`eth1`), which carry no address.
    pub lan_bridge: String,
    pub controller_ip: Ipv4Addr,
    /// k of this rig's 10.233.k.0/24.
    pub subnet: u8,
    registry: PathBuf,
    namespaces: Vec<String>,
}

impl Rig {
    /// Brings up `n` nodes and waits until each sshd answers.
    pub fn up(n: usize) -> Result<Rig, String> {
        Rig::up_with(n, RigOptions::default())
    }

    /// Like `up`, with options (a private `/etc` per node, for tests that change it).
    pub fn up_with(n: usize, opts: RigOptions) -> Result<Rig, String> {
        available()?;
        if n == 0 || n > MAX_NODES {
            return Err(format!("a rig has 1..={MAX_NODES} nodes, not {n}"));
        }
        if opts.nixos && tool("iptables-restore").is_none() {
            return Err(
                "--nixos nodes need iptables for their firewall (Debian: apt-get install iptables)"
                    .into(),
            );
        }
        for r in reap() {
            eprintln!("edgectl-rig: reaped stale {r}");
        }
        fs::create_dir_all("/run/sshd").map_err(|e| format!("mkdir /run/sshd: {e}"))?;
        fs::create_dir_all("/nix").map_err(|e| format!("mkdir /nix: {e}"))?;
        fs::create_dir_all(REGISTRY_DIR).map_err(|e| format!("mkdir {REGISTRY_DIR}: {e}"))?;

        let pid = std::process::id();
        let ctr = COUNTER.fetch_add(1, Ordering::Relaxed) % 0x1000;
        let id = format!("{pid:x}x{ctr:x}");
        let bridge = format!("{IF_PREFIX}{id}b");
        let namespaces: Vec<String> = (1..=n).map(|i| format!("{NS_PREFIX}{id}-n{i}")).collect();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{id}"));
        let (subnet, registry) = claim_subnet(&id, &bridge, &namespaces, &dir)?;

        // From here on every error return drops `rig`, which removes what was created so far.
        let mut rig = Rig {
            id: id.clone(),
            ssh_config: dir.join("ssh_config"),
            key: dir.join("keys/id_ed25519"),
            dir,
            nodes: Vec::new(),
            lan_bridge: lan_bridge_of(&bridge),
            bridge,
            controller_ip: Ipv4Addr::new(10, 233, subnet, 1),
            subnet,
            registry,
            namespaces,
        };
        let _ = fs::remove_dir_all(&rig.dir);
        fs::create_dir_all(rig.dir.join("keys")).map_err(|e| format!("mkdir: {e}"))?;
        keygen(&rig.key, "edgectl-rig-controller")?;
        fs::copy(
            rig.key.with_extension("pub"),
            rig.dir.join("keys/authorized_keys"),
        )
        .map_err(|e| format!("authorized_keys: {e}"))?;

        ip(&["link", "add", &rig.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", rig.controller_ip),
            "dev",
            &rig.bridge,
        ])?;
        ip(&["link", "set", &rig.bridge, "up"])?;
        ip(&["link", "add", &rig.lan_bridge, "type", "bridge"])?;
        ip(&["link", "set", &rig.lan_bridge, "up"])?;

        for i in 0..n {
            let node = rig.create_node(i, &opts)?;
            rig.nodes.push(node);
            if opts.nixos {
                rig.firewall_base(i)?;
            }
        }
        rig.write_ssh_config()?;
        for i in 0..n {
            rig.spawn_sshd(i)?;
        }
        let deadline = Instant::now() + SSHD_DEADLINE;
        for i in 0..n {
            rig.wait_banner(i, deadline)?;
        }
        Ok(rig)
    }

    fn create_node(&self, i: usize, opts: &RigOptions) -> Result<RigNode, String> {
        let name = format!("n{}", i + 1);
        let ns = self.namespaces[i].clone();
        let ip_addr = Ipv4Addr::new(10, 233, self.subnet, 11 + i as u8);
        let veth = veth_of(&ns).unwrap();
        let lan_veth = lan_veth_of(&ns).unwrap();
        debug_assert!(veth.len() <= 15 && lan_veth.len() <= 15 && self.bridge.len() <= 15);
        let dir = self.dir.join(&name);
        let nix_dir = dir.join("nix");
        let etc = dir.join("etc");
        fs::create_dir_all(&nix_dir).map_err(|e| format!("mkdir: {e}"))?;
        fs::create_dir_all(etc.join("nix")).map_err(|e| format!("mkdir: {e}"))?;
        let host_key = etc.join("ssh_host_ed25519_key");
        keygen(&host_key, &name)?;
        let host_key_pub = read_pub(&host_key)?;

        // A HOME of its own keeps the host root's dotfiles out of the node: Debian's bash sources
        // ~/.bashrc for every ssh command, and a slow one (pyenv init here) costs 150 ms each.
        let home = dir.join("home");
        fs::create_dir_all(&home).map_err(|e| format!("mkdir: {e}"))?;
        // Newlines cannot be written in an sshd_config SetEnv value, so the node's Nix settings
        // come from a nix.conf outside its /nix (keeping that empty) via NIX_CONF_DIR.
        fs::write(etc.join("nix/nix.conf"), format!("{NIX_CONFIG}\n"))
            .map_err(|e| format!("nix.conf: {e}"))?;
        let sshd_config = etc.join("sshd_config");
        let cfg = format!(
            "ListenAddress {ip_addr}\n\
             Port 22\n\
             HostKey {hk}\n\
             PidFile {d}/sshd.pid\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             UseDNS no\n\
             PrintMotd no\n\
             PrintLastLog no\n\
             MaxStartups 100\n\
             MaxSessions 100\n\
             AuthorizedKeysFile {ak} %h/.ssh/authorized_keys\n\
             Subsystem sftp internal-sftp\n\
             Match User root\n\
             \x20 AuthorizedKeysFile {ak} {home}/.ssh/authorized_keys\n\
             \x20 SetEnv HOME={home} NIX_CONF_DIR={nc} NIX_CONFIG=\"experimental-features = nix-command flakes\"{path}\n\
             Match all\n\
             \x20 SetEnv NIX_CONF_DIR={nc} NIX_CONFIG=\"experimental-features = nix-command flakes\"{path}\n",
            hk = host_key.display(),
            d = dir.display(),
            ak = self.dir.join("keys/authorized_keys").display(),
            nc = etc.join("nix").display(),
            home = home.display(),
            path = if opts.nixos {
                format!(" PATH={NIXOS_PATH}")
            } else {
                String::new()
            },
        );
        fs::write(&sshd_config, cfg).map_err(|e| format!("sshd_config: {e}"))?;

        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // The control network's gateway, as on a CloudLab node: install reads the control
        // interface off the default route.
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &self.controller_ip.to_string(),
            "dev",
            "eth0",
        ])?;
        ip(&[
            "link", "add", &lan_veth, "type", "veth", "peer", "name", "eth1", "netns", &ns,
        ])?;
        ip(&["link", "set", &lan_veth, "master", &self.lan_bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", "eth1", "address", &lan_mac(i)])?;
        ip(&["-n", &ns, "link", "set", "eth1", "up"])?;
        // The node's own /var, laid out as a fresh system's.
        let var = dir.join("var");
        for d in ["lib", "log", "cache", "tmp"] {
            fs::create_dir_all(var.join(d)).map_err(|e| format!("mkdir var/{d}: {e}"))?;
        }
        fs::set_permissions(var.join("tmp"), fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod var/tmp: {e}"))?;
        for (l, t) in [("run", "/run"), ("lock", "/run/lock")] {
            std::os::unix::fs::symlink(t, var.join(l)).map_err(|e| format!("var/{l}: {e}"))?;
        }

        // A private /etc is a copy of the host's, bind-mounted over /etc inside the node, so a
        // test may rewrite it (os-release, NIXOS_LUSTRATE) without touching the real machine.
        let etc_root = if opts.private_etc || opts.nixos {
            let root = dir.join("etc-root");
            let o = Command::new("cp")
                .args(["-a", "/etc"])
                .arg(&root)
                .output()
                .map_err(|e| format!("cp /etc: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "cp -a /etc: {}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            // The node knows its own name, as a real machine's /etc/hosts says it (sudo asks).
            let hosts = fs::read_to_string(root.join("hosts")).unwrap_or_default();
            fs::write(root.join("hosts"), format!("{hosts}127.0.1.1 {name}\n"))
                .map_err(|e| format!("hosts: {e}"))?;
            if opts.nixos {
                // A symlink into /usr/lib on Debian: replace the link, never write through it.
                let os = root.join("os-release");
                let _ = fs::remove_file(&os);
                fs::write(
                    &os,
                    "NAME=NixOS\nID=nixos\nVERSION_ID=\"25.11\"\nPRETTY_NAME=\"NixOS 25.11 (edgectl test rig)\"\n",
                )
                .map_err(|e| format!("os-release: {e}"))?;
            }
            Some(root)
        } else {
            None
        };
        let boot_id = dir.join("boot_id");
        fs::write(&boot_id, new_boot_id()).map_err(|e| format!("boot_id: {e}"))?;
        // What the node's fresh /run starts with: nothing, or NixOS's systemd markers and tools.
        let run_seed = dir.join("run-seed");
        fs::create_dir_all(&run_seed).map_err(|e| format!("mkdir: {e}"))?;
        if opts.nixos {
            for (d, f, text) in [
                ("current-system/sw/bin", "systemd-run", NIXOS_SYSTEMD_RUN),
                ("current-system/sw/bin", "journalctl", NIXOS_JOURNALCTL),
                ("edgerig-systemd/bin", "journalctl", NIXOS_JOURNALCTL),
                ("edgerig-firewall", "edgerig-firewall", NIXOS_FIREWALL_SH),
            ] {
                let d = run_seed.join(d);
                fs::create_dir_all(&d).map_err(|e| format!("mkdir: {e}"))?;
                fs::write(d.join(f), text).map_err(|e| format!("{f}: {e}"))?;
                fs::set_permissions(d.join(f), fs::Permissions::from_mode(0o755))
                    .map_err(|e| format!("chmod {f}: {e}"))?;
            }
            fs::create_dir_all(run_seed.join("systemd/system"))
                .map_err(|e| format!("mkdir: {e}"))?;
        }
        let log = open_log(&dir.join("holder.log"))?;
        let mut holder = Command::new(tool_or("ip"))
            .args(["netns", "exec", &ns])
            .arg(tool_or("unshare"))
            .args([
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "/bin/sh",
                "-c",
            ])
            .arg(concat!(
                "hostname \"$1\" && mount --bind \"$2\" /nix && { [ -z \"$3\" ] || mount --bind \"$3\" /etc; } && ",
                // A fresh /run, as after boot: the host's systemd, sockets and pid files stay
                // out of sight. sshd needs its privilege-separation directory there.
                "mount -t tmpfs -o mode=0755,nosuid,nodev edgerig-run /run && cp -a \"$5/.\" /run/ && mkdir -p /run/sshd /run/lock && ",
                // Its own boot id, so a simulated reboot can give it a new one. In a
                // systemd-nspawn container boot_id is itself a mount of a deleted file, which
                // cannot be mounted over: this private namespace drops that mount first.
                // A NixOS node's /var is noexec (RigOptions::nixos).
                "mount --bind \"$4\" /var && { [ -z \"$7\" ] || mount -o remount,bind,noexec /var; } && { mount --bind \"$6\" /proc/sys/kernel/random/boot_id 2>/dev/null || ",
                "{ umount /proc/sys/kernel/random/boot_id && mount --bind \"$6\" /proc/sys/kernel/random/boot_id; }; } && ",
                "echo ready && exec sleep infinity"
            ))
            .arg("sh")
            .arg(&name)
            .arg(&nix_dir)
            .arg(etc_root.as_deref().map(|p| p.as_os_str()).unwrap_or_default())
            .arg(&var)
            .arg(&run_seed)
            .arg(&boot_id)
            .arg(if opts.nixos { "noexec" } else { "" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn node holder: {e}"))?;
        // Whoever enters the namespaces (sshd, exec_in) must find /nix already mounted.
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let _ = holder.wait();
            return Err(format!(
                "node {name}: namespace setup failed: {}",
                fs::read_to_string(dir.join("holder.log")).unwrap_or_default()
            ));
        }
        Ok(RigNode {
            name,
            ns,
            ip: ip_addr,
            port: 22,
            nix_dir,
            host_key_pub,
            veth,
            lan_veth,
            dir,
            sshd_config,
            host_key,
            holder: Mutex::new(Some(holder)),
            sshd: Mutex::new(None),
            etc_root,
            nixos: opts.nixos,
        })
    }

    fn write_ssh_config(&self) -> Result<(), String> {
        let mut s = String::new();
        for n in &self.nodes {
            s += &format!("Host {}\n  HostName {}\n", n.name, n.ip);
        }
        // curve25519 first: OpenSSH 9.2's default sntrup761 kex costs the client ~130 ms of CPU
        // per connection here, which dominated every ssh call of a test.
        s += &format!(
            "Host *\n  User root\n  Port 22\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  \
             GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n  \
             KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,\
             sntrup761x25519-sha512@openssh.com\n  \
             ConnectTimeout 5\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n  \
             ControlMaster no\n  ControlPath none\n",
            self.key.display()
        );
        fs::write(&self.ssh_config, s).map_err(|e| format!("ssh_config: {e}"))
    }

    fn holder_pid(&self, i: usize) -> u32 {
        self.nodes[i]
            .holder
            .lock()
            .unwrap()
            .as_ref()
            .map(Child::id)
            .expect("node namespaces are gone")
    }

    fn spawn_sshd(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let mut slot = node.sshd.lock().unwrap();
        if slot.is_some() {
            return Ok(());
        }
        let log = open_log(&node.dir.join("sshd.log"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        // nsenter execs sshd itself (no fork without --pid), so the child is the listener.
        let child = self
            .nsenter(i)
            .arg(tool_or("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(&node.sshd_config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn sshd: {e}"))?;
        *slot = Some(child);
        Ok(())
    }

    fn wait_banner(&self, i: usize, deadline: Instant) -> Result<(), String> {
        loop {
            if self.reachable(i, Duration::from_millis(300)) {
                return Ok(());
            }
            let exited = self.nodes[i]
                .sshd
                .lock()
                .unwrap()
                .as_mut()
                .map(|c| matches!(c.try_wait(), Ok(Some(_))))
                .unwrap_or(true);
            if exited || Instant::now() > deadline {
                return Err(format!(
                    "sshd of {} did not come up: {}",
                    self.nodes[i].name,
                    fs::read_to_string(self.nodes[i].dir.join("sshd.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lets `public_key` log in as root on every node (what a node's NixOS configuration
    /// would do for edgectl's cluster key).
    pub fn authorize(&self, public_key: &str) -> Result<(), String> {
        use std::io::Write as _;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("keys/authorized_keys"))
            .map_err(|e| format!("authorized_keys: {e}"))?;
        writeln!(f, "{}", public_key.trim()).map_err(|e| format!("authorized_keys: {e}"))
    }

    pub fn node(&self, i: usize) -> &RigNode {
        &self.nodes[i]
    }

    /// Whether node i's sshd sends its banner within `timeout` (from the root namespace).
    pub fn reachable(&self, i: usize, timeout: Duration) -> bool {
        let n = &self.nodes[i];
        let addr = SocketAddr::from((n.ip, n.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
    }

    /// Polls [`Rig::reachable`] until it holds or `timeout` passes.
    pub fn wait_reachable(&self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reachable(i, Duration::from_millis(200)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ssh` command preconfigured for this rig (add more options, then the host and command).
    pub fn ssh_command(&self) -> Command {
        let mut c = Command::new(tool_or("ssh"));
        c.arg("-F").arg(&self.ssh_config).stdin(Stdio::null());
        c
    }

    /// Runs `cmd` on node i through OpenSSH with this rig's ssh_config.
    pub fn ssh(&self, i: usize, cmd: &str) -> Output {
        let n = &self.nodes[i];
        self.ssh_command()
            .args(["-p", &n.port.to_string(), &n.ip.to_string(), cmd])
            .output()
            .expect("cannot run ssh")
    }

    /// Value for `NIX_SSHOPTS` so that `nix copy --to ssh://root@<ip>` uses this rig's key.
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.ssh_config.display())
    }

    /// `nix copy --to ssh://root@<node ip> <paths>` (legacy serve protocol: no signatures needed).
    pub fn nix_copy_to(&self, i: usize, paths: &[&str]) -> Output {
        Command::new(tool_or("nix"))
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("NIX_SSHOPTS", self.nix_sshopts())
            .args(["copy", "--to", &format!("ssh://root@{}", self.nodes[i].ip)])
            .args(paths)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run nix")
    }

    /// `nsenter` into node i's network, mount and UTS namespaces (its holder process's).
    fn nsenter(&self, i: usize) -> Command {
        let mut c = Command::new(tool_or("nsenter"));
        c.args([
            "-t",
            &self.holder_pid(i).to_string(),
            "-n",
            "-m",
            "-u",
            "--",
        ]);
        c
    }

    /// Runs `argv` inside node i's network, mount and UTS namespaces (so it sees the node's
    /// private /nix), whether or not its sshd is running.
    pub fn exec_in(&self, i: usize, argv: &[&str]) -> Output {
        self.nsenter(i)
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run nsenter")
    }

    /// Starts `argv` inside node i's network, mount and UTS namespaces and leaves it running
    /// (a server a test needs on the node), its output going to `log`; the caller ends it.
    pub fn spawn_in(&self, i: usize, argv: &[&str], log: &Path) -> std::io::Result<Child> {
        let out = fs::File::create(log)?;
        self.nsenter(i)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
    }

    /// Stops node i's sshd listener (open sessions stay, like Debian's ssh.service KillMode=process).
    pub fn kill_sshd(&self, i: usize) {
        if let Some(mut c) = self.nodes[i].sshd.lock().unwrap().take() {
            // SAFETY: plain kill(2) on a child we still own (not yet waited for).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts node i's sshd again (same host key unless `set_host_key` changed it) and waits for it.
    pub fn start_sshd(&self, i: usize) {
        self.spawn_sshd(i).expect("start sshd");
        self.wait_banner(i, Instant::now() + SSHD_DEADLINE)
            .expect("sshd restart");
    }

    /// Gives node i a new host key and restarts its sshd with it.
    pub fn set_host_key(&self, i: usize) {
        let n = &self.nodes[i];
        self.kill_sshd(i);
        let _ = fs::remove_file(&n.host_key);
        let _ = fs::remove_file(n.host_key.with_extension("pub"));
        keygen(&n.host_key, &n.name).expect("ssh-keygen");
        self.start_sshd(i);
    }

    /// Node i's current host public key (`ssh-ed25519 AAAA...`).
    pub fn host_key(&self, i: usize) -> String {
        read_pub(&self.nodes[i].host_key).expect("host key")
    }

    /// A known_hosts line that pins node i's current host key.
    pub fn known_hosts_line(&self, i: usize) -> String {
        format!("{} {}", self.nodes[i].ip, self.host_key(i))
    }

    /// Takes node i's link down from the root namespace side (the node keeps its address).
    pub fn link_down(&self, i: usize) {
        ip(&["link", "set", &self.nodes[i].veth, "down"]).expect("link down");
    }

    pub fn link_up(&self, i: usize) {
        ip(&["link", "set", &self.nodes[i].veth, "up"]).expect("link up");
    }

    /// Limits what the controller sends into the rig to `rate` (tc's units, e.g. `100mbit`): a
    /// token bucket on the bridge's controller side, so node-to-node traffic, bridged past it,
    /// stays unlimited (a slow uplink to a fast cluster LAN).
    pub fn throttle_controller(&self, rate: &str) -> Result<(), String> {
        let o = Command::new("tc")
            .args([
                "qdisc",
                "replace",
                "dev",
                &self.bridge,
                "root",
                "tbf",
                "rate",
            ])
            .arg(rate)
            .args(["burst", "256kbit", "latency", "400ms"])
            .output()
            .map_err(|e| format!("cannot run tc: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tc tbf {rate} on {}: {}",
                self.bridge,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// Bytes the controller has sent into the rig so far (the bridge's own transmit counter,
    /// SSH and TCP included).
    pub fn controller_tx_bytes(&self) -> u64 {
        fs::read_to_string(format!(
            "/sys/class/net/{}/statistics/tx_bytes",
            self.bridge
        ))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }

    /// CPU time of everything node i's sshd ran: its listener's own and its waited-for
    /// descendants' (each session, and every command a session waited for), from /proc, once
    /// the sessions still ending are gone (up to 5 s). A background job a script left to the
    /// init process is not counted.
    pub fn sshd_cpu(&self, i: usize) -> Option<Duration> {
        let pid = self.nodes[i].sshd.lock().unwrap().as_ref()?.id();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until
            && fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .is_ok_and(|c| !c.trim().is_empty())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command's closing parenthesis: state is field 3, utime 14 ... cstime 17.
        let rest = stat.rsplit_once(") ")?.1;
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(4)
            .filter_map(|x| x.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (f.len() == 4).then(|| Duration::from_secs_f64(f.iter().sum::<u64>() as f64 / hz))
    }

    /// JSON description (what `edgectl-rig up` prints).
    pub fn describe(&self) -> Value {
        json!({
            "id": self.id,
            "dir": self.dir,
            "bridge": self.bridge,
            "controller_ip": self.controller_ip.to_string(),
            "subnet": format!("10.233.{}.0/24", self.subnet),
            "ssh_config": self.ssh_config,
            "key": self.key,
            "nix_sshopts": self.nix_sshopts(),
            "nodes": self.nodes.iter().map(|n| json!({
                "name": n.name,
                "ns": n.ns,
                "ip": n.ip.to_string(),
                "port": n.port,
                "nix_dir": n.nix_dir,
                "host_key_pub": n.host_key_pub,
                "veth": n.veth,
                "nixos": n.nixos,
            })).collect::<Vec<_>>(),
        })
    }

    /// Adds a login user to every node (which needs [`RigOptions::private_etc`]) that reaches
    /// root only through `sudo -n`, as CloudLab's users do: its own home (the rig's key in its
    /// `authorized_keys`), uid/gid 20001 like CloudLab's first user, and a NOPASSWD sudoers entry.
    pub fn add_sudo_user(&self, user: &str) -> Result<(), String> {
        let key = fs::read_to_string(self.key.with_extension("pub"))
            .map_err(|e| format!("rig key: {e}"))?;
        for n in &self.nodes {
            let etc = n
                .etc_root
                .as_ref()
                .ok_or("add_sudo_user needs nodes with a private /etc")?;
            let home = n.dir.join(format!("home-{user}"));
            fs::create_dir_all(home.join(".ssh")).map_err(|e| format!("mkdir: {e}"))?;
            fs::write(home.join(".ssh/authorized_keys"), &key)
                .map_err(|e| format!("authorized_keys: {e}"))?;
            let append = |f: &str, line: String| -> Result<(), String> {
                let mut h = fs::OpenOptions::new()
                    .append(true)
                    .open(etc.join(f))
                    .map_err(|e| format!("{f}: {e}"))?;
                writeln!(h, "{line}").map_err(|e| format!("{f}: {e}"))
            };
            append(
                "passwd",
                format!("{user}:x:20001:20001:{user}:{}:/bin/bash", home.display()),
            )?;
            append("group", format!("{user}:x:20001:"))?;
            append("shadow", format!("{user}:*:19000:0:99999:7:::"))?;
            let sudoers = etc.join("sudoers.d");
            fs::create_dir_all(&sudoers).map_err(|e| format!("mkdir: {e}"))?;
            let f = sudoers.join(format!("edgerig-{user}"));
            fs::write(&f, format!("{user} ALL=(ALL) NOPASSWD: ALL\n"))
                .map_err(|e| format!("sudoers: {e}"))?;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o440))
                .map_err(|e| format!("sudoers: {e}"))?;
            let o = Command::new("chown")
                .args(["-R", "20001:20001"])
                .arg(&home)
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !o.status.success() {
                return Err(format!("chown: {}", String::from_utf8_lossy(&o.stderr)));
            }
        }
        Ok(())
    }

    /// Reboots node i as far as edgectl can tell: every process of the node dies (sshd and
    /// its sessions, activations, agents), its /run starts empty again, it gets a new boot id,
    /// the test fixture's running system becomes its boot default (what booting does), and
    /// sshd answers again after `down`. /nix and /var survive, like disks. A `--nixos` node's
    /// firewall starts again from its base and loads the booted system's `firewall.rules`.
    pub fn reboot(&self, i: usize, down: Duration) {
        self.kill_sshd(i);
        let holder = self.holder_pid(i) as i32;
        for _ in 0..50 {
            let pids: Vec<i32> = ip_out(&["netns", "pids", &self.nodes[i].ns])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|&p| p != holder)
                .collect();
            if pids.is_empty() {
                break;
            }
            for p in pids {
                // SAFETY: plain kill(2); at worst the pid is already gone.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seed = self.nodes[i].dir.join("run-seed");
        let o = self.exec_in(
            i,
            &[
                "sh",
                "-c",
                "umount -l /run && mount -t tmpfs -o mode=0755,nosuid,nodev edgerig-run /run && \
                 cp -a \"$1/.\" /run/ && mkdir -p /run/sshd /run/lock && \
                 t=/nix/var/edgectl-test; if [ -f $t/boot ]; then cp $t/boot $t/current; fi && \
                 if [ -x \"$2\" ]; then \"$2\" --base && if [ -f $t/current ]; then \
                 s=$(cat $t/current); if [ -f \"$s/firewall.rules\" ]; then \"$2\" \"$s/firewall.rules\"; fi; fi; fi",
                "edgerig-reboot",
                seed.to_str().unwrap_or_default(),
                NIXOS_FIREWALL,
            ],
        );
        assert!(
            o.status.success(),
            "reboot of {}: {}",
            self.nodes[i].name,
            String::from_utf8_lossy(&o.stderr)
        );
        fs::write(self.nodes[i].dir.join("boot_id"), new_boot_id()).expect("new boot id");
        std::thread::sleep(down);
        self.start_sshd(i);
        self.wait_banner(i, Instant::now() + SSHD_DEADLINE)
            .expect("sshd answers after the reboot");
    }

    /// Leaves on node i the lock that a running apply of another controller holds there, with
    /// a fresh heartbeat; [`Rig::age_apply_lock`] makes it look abandoned.
    pub fn hold_apply_lock(&self, i: usize, owner: &str) {
        let lock = self.nodes[i].nix_dir.join("var/edgectl/lock");
        fs::create_dir_all(&lock).expect("lock folder");
        fs::write(lock.join("owner"), format!("{owner}\n")).expect("lock owner");
        fs::write(lock.join("heartbeat"), "").expect("lock heartbeat");
    }

    /// Makes node i's apply lock look as if nobody had refreshed it for `minutes`.
    pub fn age_apply_lock(&self, i: usize, minutes: u32) {
        let lock = self.nodes[i].nix_dir.join("var/edgectl/lock");
        let o = Command::new("touch")
            .args(["-d", &format!("{minutes} minutes ago")])
            .arg(lock.join("heartbeat"))
            .arg(&lock)
            .output()
            .expect("touch");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// The node's boot id, as its processes read it.
    pub fn boot_id(&self, i: usize) -> String {
        fs::read_to_string(self.nodes[i].dir.join("boot_id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Installs a `--nixos` node's base firewall (default deny; see [`RigOptions::nixos`]),
    /// dropping every allow rule.
    fn firewall_base(&self, i: usize) -> Result<(), String> {
        let o = self.exec_in(i, &[NIXOS_FIREWALL, "--base"]);
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "firewall of {}: {}",
                self.nodes[i].name,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// Makes `rules` (lines `PROTO PORTS [INTERFACE]`, the format of [`NIXOS_FIREWALL`]) the
    /// allow rules of `--nixos` node i's firewall, replacing those it had, as activating a
    /// system with that firewall would. An invalid rule changes nothing and is an error.
    pub fn set_firewall(&self, i: usize, rules: &str) -> Result<(), String> {
        if !self.nodes[i].nixos {
            return Err(format!(
                "{} has no firewall: it is not a --nixos node",
                self.nodes[i].name
            ));
        }
        let o = self.exec_in(
            i,
            &[
                "sh",
                "-c",
                "printf '%s' \"$2\" > /run/edgerig-firewall/set.rules && exec \"$1\" /run/edgerig-firewall/set.rules",
                "edgerig-set-firewall",
                NIXOS_FIREWALL,
                rules,
            ],
        );
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "firewall of {}: {}",
                self.nodes[i].name,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }

    /// Tears the rig down now (the same as dropping it).
    pub fn down(self) {}

    fn teardown(&mut self) {
        // Our own children first, so they are waited for and leave no zombies behind.
        for n in &self.nodes {
            for slot in [&n.sshd, &n.holder] {
                if let Some(mut c) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        teardown_named(&self.namespaces, &self.bridge, &self.dir);
        let _ = fs::remove_file(&self.registry);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Claims a free 10.233.k.0/24 by creating its registry file, which also records what the rig
/// will create so that a reaper can remove it if this process dies.
fn claim_subnet(
    id: &str,
    bridge: &str,
    namespaces: &[String],
    dir: &Path,
) -> Result<(u8, PathBuf), String> {
    let addrs = ip_out(&["-o", "-4", "addr", "show"]).unwrap_or_default();
    let pid = std::process::id();
    // k = 0 is left to the hand-run recipe in TEST-RIG (edgebr0, 10.233.0.0/24).
    for k in 1..=254u8 {
        if addrs.contains(&format!("inet 10.233.{k}.")) {
            continue;
        }
        let path = Path::new(REGISTRY_DIR).join(format!("net-{k}.json"));
        let Ok(mut f) = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        else {
            continue;
        };
        let entry = json!({
            "pid": pid,
            "start": start_time(pid),
            "id": id,
            "subnet": k,
            "bridge": bridge,
            "namespaces": namespaces,
            "dir": dir,
        });
        f.write_all(entry.to_string().as_bytes())
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        return Ok((k, path));
    }
    Err("no free subnet in 10.233.1-254.0/24 (run `edgectl-rig reap`?)".into())
}

/// Removes rigs whose owning process is gone: first those in the registry, then any leftover
/// namespace, bridge or directory whose name carries a dead pid. Returns what it removed.
pub fn reap() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(rd) = fs::read_dir(REGISTRY_DIR) {
        for e in rd.flatten() {
            let path = e.path();
            let Ok(text) = fs::read_to_string(&path) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(&text) else {
                // Created but not yet written by a live `up`, unless it is old.
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .is_some_and(|age| age > Duration::from_secs(60));
                if old {
                    let _ = fs::remove_file(&path);
                }
                continue;
            };
            let pid = v["pid"].as_u64().unwrap_or(0) as u32;
            let start = v["start"].as_u64();
            let alive = pid != 0 && start_time(pid).is_some() && start_time(pid) == start;
            if alive {
                continue;
            }
            let nss: Vec<String> = v["namespaces"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let bridge = v["bridge"].as_str().unwrap_or("");
            let dir = v["dir"].as_str().unwrap_or("");
            teardown_named(&nss, bridge, Path::new(dir));
            let _ = fs::remove_file(&path);
            removed.push(format!(
                "rig {} (pid {pid}, 10.233.{}.0/24)",
                v["id"].as_str().unwrap_or("?"),
                v["subnet"]
            ));
        }
    }
    for ns in netns_list() {
        if let Some(pid) = ns.strip_prefix(NS_PREFIX).and_then(tag_pid)
            && !pid_alive(pid)
        {
            teardown_named(std::slice::from_ref(&ns), "", Path::new(""));
            removed.push(format!("netns {ns}"));
        }
    }
    for br in ip_out(&["-o", "link", "show", "type", "bridge"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|s| s.split('@').next().unwrap_or(s).to_owned())
    {
        if let Some(pid) = br
            .strip_prefix(IF_PREFIX)
            .and_then(|r| r.strip_suffix('b').or_else(|| r.strip_suffix('e')))
            .and_then(tag_pid)
            && !pid_alive(pid)
        {
            let _ = ip(&["link", "del", &br]);
            removed.push(format!("bridge {br}"));
        }
    }
    if let Ok(rd) = fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(tag_pid)
                && !pid_alive(pid)
            {
                let _ = fs::remove_dir_all(e.path());
                removed.push(format!("dir {}", e.path().display()));
            }
        }
    }
    removed
}

/// Root-side veth name of a node namespace `edgerig-<tag>-n<i>`.
fn veth_of(ns: &str) -> Option<String> {
    let (tag, i) = ns.strip_prefix(NS_PREFIX)?.rsplit_once("-n")?;
    Some(format!("{IF_PREFIX}{tag}v{i}"))
}

/// A fresh random boot id, in the kernel's format.
fn new_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap_or_else(|_| format!("{:032x}", std::process::id()))
        .trim()
        .to_string()
        + "\n"
}

/// Root-side name of node `edgerig-<tag>-n<i>`'s experiment interface.
fn lan_veth_of(ns: &str) -> Option<String> {
    let (tag, i) = ns.strip_prefix(NS_PREFIX)?.rsplit_once("-n")?;
    Some(format!("{IF_PREFIX}{tag}w{i}"))
}

/// The experiment LAN's bridge beside a rig's bridge `er<tag>b`.
fn lan_bridge_of(bridge: &str) -> String {
    format!("{}e", bridge.strip_suffix('b').unwrap_or(bridge))
}

/// The owner pid of a tag `<pid hex>x<counter hex>...`.
fn tag_pid(tag: &str) -> Option<u32> {
    let (pid, rest) = tag.split_once('x')?;
    rest.starts_with(|c: char| c.is_ascii_hexdigit())
        .then(|| u32::from_str_radix(pid, 16).ok())
        .flatten()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Process start time (clock ticks since boot), to tell a live owner from a reused pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22; the command name (field 2) may contain spaces, so count from its closing ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn netns_list() -> Vec<String> {
    ip_out(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Kills every process in the namespaces, deletes them (which also deletes their veth pairs),
/// the bridge and the directory. Missing pieces are fine: this also cleans half-built rigs.
fn teardown_named(namespaces: &[String], bridge: &str, dir: &Path) {
    let existing = netns_list();
    for ns in namespaces.iter().filter(|ns| existing.contains(ns)) {
        // Deleting the root-side veth removes the pair now; via `netns del` alone the kernel
        // removes it asynchronously, and it lingers for a moment after teardown.
        for veth in [veth_of(ns), lan_veth_of(ns)].into_iter().flatten() {
            let _ = Command::new(tool_or("ip"))
                .args(["link", "del", &veth])
                .stderr(Stdio::null())
                .status();
        }
        // Covers sshd sessions, nix-store --serve and anything tests started in the node.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pids: Vec<i32> = ip_out(&["netns", "pids", ns])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for p in pids {
                // SAFETY: plain kill(2); at worst the pid is already gone.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = ip(&["netns", "del", ns]);
    }
    if !bridge.is_empty() {
        for br in [bridge.to_string(), lan_bridge_of(bridge)] {
            let _ = Command::new(tool_or("ip"))
                .args(["link", "del", &br])
                .stderr(Stdio::null())
                .status();
        }
    }
    if !dir.as_os_str().is_empty() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    ip_out(args).map(drop)
}

fn ip_out(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool_or("ip"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn keygen(path: &Path, comment: &str) -> Result<(), String> {
    let out = Command::new(tool_or("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `<type> <base64>` of a key's .pub file, without the comment.
fn read_pub(private: &Path) -> Result<String, String> {
    let text = fs::read_to_string(private.with_extension("pub"))
        .map_err(|e| format!("read {}.pub: {e}", private.display()))?;
    Ok(text
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

fn open_log(path: &Path) -> Result<fs::File, String> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

/// A running [`Rig::impair`]; dropping it ends the helper (it also ends by itself).
pub struct Impairment {
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Impairment {
    /// Ends the helper now and reports how it went.
    pub fn finish(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("nfdelay thread panicked".into()))
            })
            .unwrap_or(Ok(()))
    }
}

impl Drop for Impairment {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Rig {
    /// Delays node i's outgoing packets by `delay_ms` and drops `loss_pct` percent of them, for
    /// `secs` seconds: an iptables NFQUEUE rule in the node (with `--queue-bypass`, so traffic
    /// flows once the helper ends) and the [`nfdelay`] loop in a thread that joined the node's
    /// network namespace. The rule stays; the namespace goes with the rig.
    pub fn impair(
        &self,
        i: usize,
        delay_ms: f64,
        loss_pct: f64,
        secs: f64,
    ) -> Result<Impairment, String> {
        let o = self.exec_in(
            i,
            &[
                "iptables",
                "-A",
                "OUTPUT",
                "-o",
                "eth0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                "0",
                "--queue-bypass",
            ],
        );
        if !o.status.success() {
            return Err(format!(
                "iptables in {}: {}",
                self.nodes[i].name,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let netns = fs::File::open(format!("/proc/{}/ns/net", self.holder_pid(i)))
            .map_err(|e| format!("open node netns: {e}"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // setns moves only this thread: the NFQUEUE socket it opens belongs to the node.
            // SAFETY: a valid namespace fd we own; CLONE_NEWNET matches its type.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = format!("setns: {}", std::io::Error::last_os_error());
                let _ = tx.send(Err(e.clone()));
                return Err(e);
            }
            let tx2 = tx.clone();
            let r = nfdelay::run(
                0,
                Duration::from_secs_f64(delay_ms / 1000.0),
                loss_pct,
                Duration::from_secs_f64(secs),
                &stop2,
                move || {
                    let _ = tx2.send(Ok(()));
                },
            );
            if let Err(e) = &r {
                let _ = tx.send(Err(e.clone()));
            }
            r
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Impairment {
                thread: Some(thread),
                stop,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("nfdelay did not start".into()),
        }
    }
}
