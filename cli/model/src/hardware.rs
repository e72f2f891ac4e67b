//! A node's machine facts, kept with the topology: `hardware/<node>.toml` beside the topology
//! file. `edgectl install` writes it from what it read on the node (phase 1); `generate`,
//! `plan` and `apply` read it from any checkout, so a teammate's clone builds the same boot
//! chain. It belongs in git with the topology.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostics, Kind};
use crate::read::Reader;
use crate::source::SourceFile;

/// The folder beside the topology that holds one file per node.
pub const DIR: &str = "hardware";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// The whole boot disk, by a stable name.
    pub boot_disk: String,
    /// Its first partition, where GRUB goes (Emulab chain-loads its boot sector).
    pub grub_device: String,
    /// The root file system, by UUID.
    pub root_device: String,
    pub root_fs: String,
    /// Kernel modules between the root disk and the bus: the initrd must carry each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub root_disk_modules: Vec<String>,
    pub boot_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_gid: Option<u32>,
    /// Which machine these facts came from (its `/etc/machine-id` before the install).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine_id: String,
}

const KEYS: &[&str] = &[
    "boot_disk",
    "grub_device",
    "root_device",
    "root_fs",
    "root_disk_modules",
    "boot_mode",
    "login_uid",
    "login_group",
    "login_gid",
    "machine_id",
];

pub fn path_for(topology_dir: &Path, node: &str) -> PathBuf {
    topology_dir.join(DIR).join(format!("{node}.toml"))
}

fn device_ok(d: &str) -> bool {
    d.starts_with("/dev/")
        && d.len() > 5
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.:+@".contains(c))
}

fn word_ok(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 64
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The nodes that have a `hardware/<node>.toml` beside the topology (none without the folder).
pub fn recorded(topology_dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(topology_dir.join(DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".toml").map(String::from)
        })
        .collect()
}

/// Reads `hardware/<node>.toml` when it exists; problems come back as diagnostics that name
/// the file, line and key.
pub fn read(topology_dir: &Path, node: &str) -> Result<Option<Hardware>, Diagnostics> {
    let path = path_for(topology_dir, node);
    if !path.exists() {
        return Ok(None);
    }
    let src = crate::load::read_source(&path).map_err(|d| Diagnostics(vec![d]))?;
    parse(src).map(Some)
}

pub fn parse(src: Arc<SourceFile>) -> Result<Hardware, Diagnostics> {
    let mut r = Reader::new(src.clone());
    let Some(doc) = crate::load::parse_toml(&mut r, &src.text) else {
        return Err(r.diags);
    };
    let t = r.root(&doc);
    r.check_keys(&t, KEYS);
    let fix =
        "record it again with `edgectl install TOPOLOGY --on NODE --until facts`, or correct it";
    let device = |r: &mut Reader, key: &str| {
        let v = r.string(&t, key, true).unwrap_or_default();
        if !v.is_empty() && !device_ok(&v) {
            let span = t.get(key).map(|s| s.span()).unwrap_or(0..0);
            r.error(
                Kind::InvalidValue,
                span,
                format!("`{key}` must be a device path such as /dev/disk/by-id/..."),
            )
            .field(key)
            .value(format!("{v:?}"))
            .help(fix);
        }
        v
    };
    let boot_disk = device(&mut r, "boot_disk");
    let grub_device = device(&mut r, "grub_device");
    let root_device = device(&mut r, "root_device");
    let word = |r: &mut Reader, key: &str, v: Option<String>| -> Option<String> {
        let v = v?;
        if word_ok(&v) {
            return Some(v);
        }
        let span = t.get(key).map(|s| s.span()).unwrap_or(0..0);
        r.error(
            Kind::InvalidValue,
            span,
            format!("`{key}` must be a plain name (letters, digits, `_`, `-`, `.`)"),
        )
        .field(key)
        .value(format!("{v:?}"))
        .help(fix);
        None
    };
    let fs = r.string(&t, "root_fs", true);
    let root_fs = word(&mut r, "root_fs", fs).unwrap_or_default();
    let mode = r.string(&t, "boot_mode", true);
    let boot_mode = word(&mut r, "boot_mode", mode).unwrap_or_default();
    if !boot_mode.is_empty() && boot_mode != "bios" {
        let span = t.get("boot_mode").map(|s| s.span()).unwrap_or(0..0);
        r.error(
            Kind::InvalidValue,
            span,
            "the node booted through UEFI; install and the CloudLab boot chain support BIOS only",
        )
        .field("boot_mode")
        .value(format!("{boot_mode:?}"))
        .help("use a node type that boots through BIOS");
    }
    let mut root_disk_modules = Vec::new();
    for m in r.strings(&t, "root_disk_modules").unwrap_or_default() {
        if let Some(m) = word(&mut r, "root_disk_modules", Some(m)) {
            root_disk_modules.push(m);
        }
    }
    let group = r.string(&t, "login_group", false);
    let login_group = word(&mut r, "login_group", group);
    let id = word_ok;
    let machine_id = r.string(&t, "machine_id", false).unwrap_or_default();
    if !machine_id.is_empty() && !id(&machine_id) {
        let span = t.get("machine_id").map(|s| s.span()).unwrap_or(0..0);
        r.error(Kind::InvalidValue, span, "`machine_id` must be hexadecimal")
            .field("machine_id")
            .help(fix);
    }
    let h = Hardware {
        boot_disk,
        grub_device,
        root_device,
        root_fs,
        root_disk_modules,
        boot_mode,
        login_uid: r
            .integer(&t, "login_uid", false, 1, 4_294_967_294)
            .map(|n| n as u32),
        login_group,
        login_gid: r
            .integer(&t, "login_gid", false, 1, 4_294_967_294)
            .map(|n| n as u32),
        machine_id,
    };
    if h.login_group.is_some() != h.login_gid.is_some() {
        let span = t
            .get("login_group")
            .or(t.get("login_gid"))
            .map(|s| s.span())
            .unwrap_or(0..0);
        r.error(
            Kind::InvalidValue,
            span,
            "`login_group` and `login_gid` go together",
        )
        .field("login_group")
        .help("set both (the login user's primary group and its number) or neither");
    }
    if r.diags.is_empty() {
        Ok(h)
    } else {
        Err(r.diags)
    }
}

/// The file's text: a header that says what it is, then the facts.
pub fn render(h: &Hardware, node: &str) -> String {
    let body = toml::to_string(h).unwrap_or_default();
    format!(
        "# Machine facts of node {node}, read by `edgectl install` (phase 1) from the node itself.\n\
         # Keep this file in git with the topology: `generate`, `plan` and `apply` build the\n\
         # node's boot chain from it, from any checkout. Read it again with\n\
         # `edgectl install TOPOLOGY --on {node} --until facts` after the node is reloaded.\n{body}"
    )
}

/// Writes `hardware/<node>.toml` whole or not at all (a temporary file, then a rename).
pub fn write(topology_dir: &Path, node: &str, h: &Hardware) -> std::io::Result<PathBuf> {
    let path = path_for(topology_dir, node);
    let dir = topology_dir.join(DIR);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{node}.toml.{}.tmp", std::process::id()));
    std::fs::write(&tmp, render(h, node))?;
    std::fs::rename(&tmp, &path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(path)
}

impl Hardware {
    /// Puts these facts into `n`: they replace the topology's `boot_disk`, `root_device` and
    /// `root_fs` (read on the machine beats written by hand); the topology's `login_uid` stays,
    /// as the user asked for it.
    pub fn apply(self, n: &mut crate::Node) {
        n.boot_disk = Some(self.boot_disk.clone());
        n.root_device = Some(self.root_device.clone());
        n.root_fs = Some(self.root_fs.clone());
        n.login_uid = n.login_uid.or(self.login_uid);
        n.hardware = Some(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hardware {
        Hardware {
            boot_disk: "/dev/disk/by-id/wwn-0x55cd2e414d9a1234".into(),
            grub_device: "/dev/disk/by-id/wwn-0x55cd2e414d9a1234-part1".into(),
            root_device: "/dev/disk/by-uuid/5f1c1a5e-1111-4c3b-9d2e-aaaaaaaaaaaa".into(),
            root_fs: "ext4".into(),
            root_disk_modules: vec!["sd_mod".into(), "ahci".into()],
            boot_mode: "bios".into(),
            login_uid: Some(20001),
            login_group: Some("edgelab-PG0".into()),
            login_gid: Some(10194),
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "head", &sample()).unwrap();
        assert_eq!(p, d.path().join("hardware/head.toml"));
        assert_eq!(read(d.path(), "head").unwrap(), Some(sample()));
        assert_eq!(read(d.path(), "worker1").unwrap(), None);
        // Nothing half-written is left beside it.
        let names: Vec<_> = std::fs::read_dir(d.path().join("hardware"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["head.toml"]);
    }

    #[test]
    fn bad_values_name_the_file_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "head", &sample()).unwrap();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"bios\"", "\"uefi\"")
            .replace("\"ext4\"", "\"ext4; rm -rf /\"")
            .replace("root_device = \"/dev/", "root_device = \"dev/");
        std::fs::write(&p, text).unwrap();
        let e = read(d.path(), "head").unwrap_err().render(false, 100);
        for want in ["boot_mode", "root_fs", "root_device", "head.toml:"] {
            assert!(e.contains(want), "{want} not in {e}");
        }
    }

    #[test]
    fn a_missing_key_or_an_unknown_one_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("hardware")).unwrap();
        std::fs::write(
            d.path().join("hardware/head.toml"),
            "boot_disk = \"/dev/sda\"\nrootdevice = \"/dev/sda1\"\n",
        )
        .unwrap();
        let e = read(d.path(), "head").unwrap_err().render(false, 100);
        assert!(e.contains("rootdevice"), "{e}");
        assert!(e.contains("grub_device"), "{e}");
    }
}
