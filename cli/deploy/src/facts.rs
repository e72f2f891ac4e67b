//! Phase 1 of `edgectl install`: what an Ubuntu node is, read from the outputs of a few
//! read-only commands (live over SSH, or recorded files for tests). Pure functions, so every
//! layout (SSD boot disk, NVMe, boot disk second in order, already NixOS) is tested offline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The read-only commands phase 1 runs, by the name of the file a recording keeps them in.
pub const COMMANDS: &[(&str, &[&str])] = &[
    ("os-release", &["cat", "/etc/os-release"]),
    ("uname-m", &["uname", "-m"]),
    ("meminfo", &["cat", "/proc/meminfo"]),
    ("df-root", &["df", "-B1", "--output=avail", "/"]),
    (
        "lsblk.json",
        &[
            "lsblk",
            "--json",
            "-b",
            "-o",
            "NAME,PATH,TYPE,SIZE,ROTA,MOUNTPOINT,PKNAME",
        ],
    ),
    ("findmnt-root", &["findmnt", "-n", "-o", "SOURCE,UUID", "/"]),
    (
        "disk-links",
        &[
            "sh",
            "-c",
            "find /dev/disk/by-id /dev/disk/by-path -maxdepth 1 -type l -printf '%p %l\\n' 2>/dev/null; true",
        ],
    ),
    ("ip-route.json", &["ip", "-j", "route", "show", "default"]),
    ("ip-addr.json", &["ip", "-j", "addr"]),
    ("machine-id", &["cat", "/etc/machine-id"]),
    // Run as the login user (facts need no root): its uid.
    ("login-uid", &["id", "-u"]),
    (
        "boot-mode",
        &[
            "sh",
            "-c",
            "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi",
        ],
    ),
    ("root-fstype", &["findmnt", "-n", "-o", "FSTYPE", "/"]),
    ("disk-modules", &["sh", "-c", DISK_MODULES]),
    // The login user's primary group, name then number: kept with its uid.
    ("login-group", &["sh", "-c", "id -gn; id -g"]),
];

const DISK_MODULES: &str = include_str!("sh/disk_modules.sh");

/// Drivers that are always built into a NixOS kernel (the PCIe port bus cannot be a module),
/// so a root disk behind them needs nothing from the initrd for them.
const ALWAYS_BUILT_IN: &[&str] = &["pcieport", "portdrv"];

/// Outputs of [`COMMANDS`] that phase 1 read only later: recordings made before may lack them
/// (none reads as a BIOS boot, no machine id to check, no login uid to keep).
pub const ADDED_LATER: &[&str] = &[
    "machine-id",
    "login-uid",
    "boot-mode",
    "root-fstype",
    "disk-modules",
    "login-group",
];

/// File systems the installed system can mount `/` from (NIXOS_LUSTRATE keeps the existing one).
pub const ROOT_FS_TYPES: &[&str] = &["ext4", "ext3", "xfs", "btrfs"];

/// The least free space on `/` phase 1 accepts; the real need, the system's closure plus
/// [`ROOM_MARGIN`], is checked once the system is built.
pub const MIN_FREE: u64 = 2 << 30;

/// Room left on `/` beyond the closure (the first boot's logs, a generation or two more).
pub const ROOM_MARGIN: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPlan {
    /// The disk that holds `/`, by stable name.
    pub disk: String,
    /// Where GRUB goes: the boot disk's FIRST partition (Emulab chain-loads its boot sector).
    pub grub_device: String,
    /// The existing root file system, kept by NIXOS_LUSTRATE.
    pub root_device: String,
    pub rotational: bool,
    pub size_bytes: u64,
    /// The boot disk's kernel name when the facts were read (`sda`); it can change between
    /// boots, so it is only used to match other outputs of the same read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub os_id: String,
    pub os_version: String,
    pub arch: String,
    pub mem_kib: u64,
    pub free_root_bytes: u64,
    pub boot: BootPlan,
    pub control_interface: String,
    pub control_dhcp: bool,
    /// Experiment interfaces: MAC (as in the topology, normalised) -> kernel name.
    pub experiment: BTreeMap<String, String>,
    /// How the node booted: `bios` (the only mode install supports) or `uefi`.
    #[serde(default = "bios")]
    pub boot_mode: String,
    /// `/etc/machine-id` when the facts were read: with the root's UUID, which node the
    /// install's record belongs to (a reloaded node has new ones).
    #[serde(default)]
    pub machine_id: String,
    /// The login user's uid (none for root), kept on NixOS (see `edge.cloudlab.loginUid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    /// The login user's primary group (name, gid), kept with its uid; none for root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_group: Option<(String, u32)>,
    /// The file system `/` is on (empty: recorded before edgectl read it).
    #[serde(default)]
    pub root_fs: String,
    /// The kernel modules between the root disk and the bus (`sd_mod`, `ahci`): the initrd
    /// needs each. Empty: recorded before edgectl read them.
    #[serde(default)]
    pub root_disk_modules: Vec<String>,
}

impl NodeFacts {
    /// What goes into `hardware/<node>.toml` beside the topology.
    pub fn hardware(&self) -> edgectl_model::hardware::Hardware {
        edgectl_model::hardware::Hardware {
            boot_disk: self.boot.disk.clone(),
            grub_device: self.boot.grub_device.clone(),
            root_device: self.boot.root_device.clone(),
            // Recorded before edgectl read it: CloudLab's images are all ext4.
            root_fs: if self.root_fs.is_empty() {
                "ext4".into()
            } else {
                self.root_fs.clone()
            },
            root_disk_modules: self.root_disk_modules.clone(),
            boot_mode: self.boot_mode.clone(),
            login_uid: self.login_uid,
            login_group: self.login_group.as_ref().map(|g| g.0.clone()),
            login_gid: self.login_group.as_ref().map(|g| g.1),
            machine_id: self.machine_id.clone(),
        }
    }
}

/// The modules of the drivers under `disk` (a kernel name such as `sda`), from what
/// `disk_modules.sh` printed: one line per block device, its name first.
pub fn disk_modules(text: &str, disk: &str) -> Vec<String> {
    let mut mods: Vec<String> = Vec::new();
    for m in text
        .lines()
        .map(|l| l.split_whitespace())
        .find_map(|mut w| (w.next() == Some(disk)).then_some(w))
        .into_iter()
        .flatten()
    {
        let m = m.replace('-', "_");
        let plain = !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain && !ALWAYS_BUILT_IN.contains(&m.as_str()) && !mods.contains(&m) {
            mods.push(m);
        }
    }
    mods
}

/// `id -gn; id -g`: the group's name and number, for a user other than root.
fn login_group(text: &str) -> Option<(String, u32)> {
    let mut l = text.lines().map(str::trim);
    let (name, gid) = (l.next()?, l.next()?.parse::<u32>().ok()?);
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    (plain && gid != 0).then(|| (name.to_string(), gid))
}

fn bios() -> String {
    "bios".into()
}

fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

fn num(v: &serde_json::Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn flag(v: &serde_json::Value) -> bool {
    v.as_bool()
        .unwrap_or_else(|| v.as_str() == Some("1") || v.as_u64() == Some(1))
}

struct Dev {
    name: String,
    path: String,
    kind: String,
    size: u64,
    rota: bool,
    mount: Option<String>,
    parent: Option<String>,
}

fn flatten(v: &serde_json::Value, parent: Option<&str>, out: &mut Vec<Dev>) {
    for d in v.as_array().into_iter().flatten() {
        let name = d["name"].as_str().unwrap_or_default().to_string();
        out.push(Dev {
            path: d["path"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| format!("/dev/{name}")),
            kind: d["type"].as_str().unwrap_or_default().to_string(),
            size: num(&d["size"]).unwrap_or(0),
            rota: flag(&d["rota"]),
            mount: d["mountpoint"].as_str().map(String::from),
            parent: d["pkname"]
                .as_str()
                .map(String::from)
                .or(parent.map(String::from)),
            name: name.clone(),
        });
        flatten(&d["children"], Some(&name), out);
    }
}

/// The stable names of each kernel device (`sda`, `sda1`), from `find ... -printf '%p %l'`.
fn links(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        if let Some((link, target)) = l.trim().split_once(' ') {
            let dev = target.rsplit('/').next().unwrap_or(target).to_string();
            m.entry(dev).or_default().push(link.to_string());
        }
    }
    for v in m.values_mut() {
        // World-wide names first, then bus ids, then paths: the most stable name wins.
        v.sort_by_key(|l| {
            let rank = if l.contains("/by-id/wwn-") {
                0
            } else if l.contains("/by-id/nvme-eui") {
                1
            } else if l.contains("/by-id/") && !l.contains("/by-id/nvme-nvme.") {
                2
            } else if l.contains("/by-id/") {
                3
            } else {
                4
            };
            (rank, l.clone())
        });
    }
    m
}

/// Where GRUB and `/` go, from `lsblk --json`, `findmnt -o SOURCE,UUID /` and the stable links.
pub fn boot_plan(lsblk: &str, findmnt: &str, disk_links: &str) -> Result<BootPlan, String> {
    let v: serde_json::Value =
        serde_json::from_str(lsblk).map_err(|e| format!("lsblk --json: {e}"))?;
    let mut devs = Vec::new();
    flatten(&v["blockdevices"], None, &mut devs);
    // findmnt lists every mount stacked on /; the last one is the one in effect.
    let mut f = findmnt
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .split_whitespace();
    // A bind mount of a subfolder shows as `/dev/vda[/sub/dir]`: the device is what counts.
    let source = f
        .next()
        .ok_or("findmnt printed no source for /")?
        .split('[')
        .next()
        .unwrap_or_default()
        .to_string();
    let uuid = f.next().map(String::from);
    let root = devs
        .iter()
        .find(|d| d.path == source)
        .or_else(|| devs.iter().find(|d| d.mount.as_deref() == Some("/")))
        .ok_or_else(|| format!("/ is on {source}, which lsblk does not list"))?;
    if root.kind != "part" {
        return Err(format!(
            "/ is on {} ({}), not on a partition: the Emulab boot loader chain-loads the first partition's boot sector, so this layout cannot boot NixOS; use a standard CloudLab Ubuntu image",
            root.path, root.kind
        ));
    }
    let disk_name = root
        .parent
        .clone()
        .ok_or_else(|| format!("cannot tell which disk holds {}", root.path))?;
    let disk = devs
        .iter()
        // A disk, or a loop device backed by an image file, as on a test machine.
        .find(|d| d.name == disk_name && (d.kind == "disk" || d.kind == "loop"))
        .ok_or_else(|| format!("disk {disk_name} not in lsblk output"))?;
    let mut parts: Vec<&Dev> = devs
        .iter()
        .filter(|d| d.kind == "part" && d.parent.as_deref() == Some(&disk_name))
        .collect();
    parts.sort_by_key(|p| {
        p.name
            .trim_start_matches(&disk_name)
            .trim_start_matches('p')
            .parse::<u32>()
            .unwrap_or(u32::MAX)
    });
    let first = parts
        .first()
        .ok_or_else(|| format!("disk {} has no partitions", disk.path))?;
    if first.name != root.name {
        return Err(format!(
            "/ is on {}, not on the boot disk's first partition {}: Emulab chain-loads partition 1's boot sector, where GRUB would go, while NIXOS_LUSTRATE turns the partition that holds / into NixOS; use a standard CloudLab Ubuntu image, where / is partition 1",
            root.path, first.path
        ));
    }
    let l = links(disk_links);
    let stable = |dev: &str| l.get(dev).and_then(|v| v.first()).cloned();
    let disk_stable = stable(&disk.name).ok_or_else(|| {
        format!("{} has no /dev/disk/by-id or by-path name; refusing to guess a GRUB device from a kernel name that can change between boots", disk.path)
    })?;
    let grub_device = stable(&first.name).unwrap_or_else(|| format!("{disk_stable}-part1"));
    let root_device = match uuid {
        Some(u) if !u.is_empty() => format!("/dev/disk/by-uuid/{u}"),
        _ => stable(&root.name).unwrap_or_else(|| root.path.clone()),
    };
    Ok(BootPlan {
        disk: disk_stable,
        grub_device,
        root_device,
        rotational: disk.rota,
        size_bytes: disk.size,
        kernel_name: disk.name.clone(),
    })
}

fn normalise_mac(m: &str) -> String {
    m.chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_lowercase()
}

/// All facts, from the outputs of `COMMANDS` by name. `macs` are the node's experiment MACs.
pub fn node_facts(out: &BTreeMap<String, String>, macs: &[String]) -> Result<NodeFacts, String> {
    let get = |k: &str| out.get(k).map(String::as_str).unwrap_or_default();
    let os = kv(get("os-release"));
    let os_id = os.get("ID").cloned().unwrap_or_default();
    if os_id == "nixos" {
        return Err("already NixOS, use `edgectl apply`".into());
    }
    if os_id != "ubuntu" {
        return Err(format!(
            "expected Ubuntu (a CloudLab UBUNTU22/24-64-STD image), found {:?}",
            os.get("PRETTY_NAME").cloned().unwrap_or(os_id)
        ));
    }
    let arch = get("uname-m").trim().to_string();
    if arch != "x86_64" {
        return Err(format!(
            "architecture {arch} is not supported (x86_64 only)"
        ));
    }
    let mem_kib = get("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let free_root_bytes = get("df-root")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next()
        .unwrap_or(0);
    if free_root_bytes < MIN_FREE {
        return Err(format!(
            "only {} MiB free on /; installing needs at least {} MiB",
            free_root_bytes >> 20,
            MIN_FREE >> 20
        ));
    }
    let boot = boot_plan(get("lsblk.json"), get("findmnt-root"), get("disk-links"))?;
    // A recording without the file predates the check: such nodes booted through BIOS.
    let boot_mode = match get("boot-mode").trim() {
        "" => bios(),
        m => m.to_string(),
    };
    if boot_mode != "bios" {
        return Err(format!(
            "the node booted through {boot_mode}: install writes GRUB for BIOS into partition 1's boot sector, which Emulab's PXE-booted loader chain-loads and a {boot_mode} boot never reads; use a node type that boots through BIOS"
        ));
    }
    // Like findmnt-root: the last of the mounts stacked on / is the one in effect.
    let root_fs = get("root-fstype")
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string();
    if !root_fs.is_empty() && !ROOT_FS_TYPES.contains(&root_fs.as_str()) {
        return Err(format!(
            "/ is on a {root_fs} file system; the installed NixOS keeps it as its root and mounts {} only; use a standard CloudLab Ubuntu image (ext4)",
            ROOT_FS_TYPES.join(", ")
        ));
    }
    let root_disk_modules = disk_modules(get("disk-modules"), &boot.kernel_name);
    let route: serde_json::Value =
        serde_json::from_str(get("ip-route.json")).map_err(|e| format!("ip -j route: {e}"))?;
    let control_interface = route
        .as_array()
        .and_then(|a| a.iter().find_map(|r| r["dev"].as_str()))
        .ok_or("no default route: cannot tell the control interface")?
        .to_string();
    let addrs: serde_json::Value =
        serde_json::from_str(get("ip-addr.json")).map_err(|e| format!("ip -j addr: {e}"))?;
    let ifaces = addrs.as_array().cloned().unwrap_or_default();
    let control_dhcp = ifaces
        .iter()
        .find(|i| i["ifname"] == control_interface.as_str())
        .map(|i| {
            i["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["family"] == "inet" && a["dynamic"].as_bool() == Some(true))
        })
        .unwrap_or(false);
    if !control_dhcp {
        return Err(format!(
            "the control interface {control_interface} has a static address, but the installed NixOS configures the control network by DHCP (as CloudLab's is), so the node could come up without the address edgectl and the portal reach it by; use a node whose control network is on DHCP"
        ));
    }
    let mut experiment = BTreeMap::new();
    for m in macs {
        let want = normalise_mac(m);
        let found = ifaces
            .iter()
            .find(|i| i["address"].as_str().map(normalise_mac).as_deref() == Some(want.as_str()));
        match found.and_then(|i| i["ifname"].as_str()) {
            Some(name) if name == control_interface => {
                return Err(format!(
                    "MAC {m} is the control interface {name}; the topology's lan entry must name an experiment interface"
                ));
            }
            Some(name) => {
                experiment.insert(want, name.to_string());
            }
            None => {
                return Err(format!(
                    "no interface with MAC {m} (from the topology's lan entries) on this node"
                ));
            }
        }
    }
    Ok(NodeFacts {
        os_id,
        os_version: os.get("VERSION_ID").cloned().unwrap_or_default(),
        arch,
        mem_kib,
        free_root_bytes,
        boot,
        control_interface,
        control_dhcp,
        experiment,
        boot_mode,
        machine_id: get("machine-id").trim().to_string(),
        login_uid: get("login-uid").trim().parse().ok().filter(|u| *u != 0),
        login_group: login_group(get("login-group")),
        root_fs,
        root_disk_modules,
    })
}

/// What a resumed install reads first, to tell whether its record is still this node's:
/// `sh -c PROBE`, printing the machine id, the root's UUID and the OS id, a line each.
pub const IDENTITY_PROBE: &str = include_str!("sh/identity_probe.sh");

/// Why the node is no longer the one `facts` describe (reloaded, or another experiment's node
/// under the same name), from what [`IDENTITY_PROBE`] printed; `installed`: the record says
/// it has rebooted into NixOS (which has a machine id of its own).
pub fn not_the_recorded_node(facts: &NodeFacts, probe: &str, installed: bool) -> Option<String> {
    let mut lines = probe.lines().map(str::trim);
    let (machine_id, uuid, os) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    if installed {
        return (os != "nixos")
            .then(|| format!("it was installed, but runs {os:?} now (reloaded from the portal?)"));
    }
    if !facts.machine_id.is_empty() && machine_id != facts.machine_id {
        return Some(format!(
            "its machine id is {machine_id:?}, not the recorded {:?} (reloaded, or a new experiment's node of the same name)",
            facts.machine_id
        ));
    }
    let recorded_uuid = facts.boot.root_device.strip_prefix("/dev/disk/by-uuid/");
    if let Some(r) = recorded_uuid
        && !uuid.is_empty()
        && uuid != r
    {
        return Some(format!(
            "its root file system is {uuid}, not the recorded {r} (reloaded?)"
        ));
    }
    None
}
