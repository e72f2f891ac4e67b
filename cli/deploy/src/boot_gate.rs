//! Install's gate on the built system, before anything is copied or changed on the node: will
//! it boot this machine? edgectl's cloudlab module writes a manifest into the toplevel
//! (`edgectl/`: the initrd's kernel modules, the kind of stage 1, the GRUB devices and the root
//! device); the node's facts say what the machine needs. A mismatch found only at the reboot
//! is a node that hangs in stage 1, or one whose `/etc` is half Ubuntu's.

use std::collections::BTreeSet;
use std::path::Path;

use crate::facts::NodeFacts;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub initrd_modules: BTreeSet<String>,
    /// Modules built into the system's kernel (`modules.builtin`), found without the initrd.
    pub built_in: BTreeSet<String>,
    /// `scripted` or `systemd`.
    pub stage1: String,
    pub grub_devices: Vec<String>,
    pub root_device: String,
}

/// Module names as the kernel compares them: `-` and `_` are the same.
fn module_name(m: &str) -> String {
    m.trim().replace('-', "_")
}

fn lines(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
}

/// Reads the manifest of `system` (a toplevel in this machine's store).
pub fn read_manifest(system: &Path) -> Result<Manifest, String> {
    let dir = system.join("edgectl");
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| {
            format!(
                "the built system {} has no boot manifest ({}: {e}): it was not built with edgectl's cloudlab module, so nothing can tell whether it boots this node",
                system.display(),
                dir.join(name).display()
            )
        })
    };
    let mut built_in = BTreeSet::new();
    if let Ok(versions) = std::fs::read_dir(system.join("kernel-modules/lib/modules")) {
        for v in versions.flatten() {
            if let Ok(text) = std::fs::read_to_string(v.path().join("modules.builtin")) {
                built_in.extend(text.lines().filter_map(|l| {
                    let file = l.trim().rsplit('/').next()?;
                    Some(module_name(file.split(".ko").next()?))
                }));
            }
        }
    }
    Ok(Manifest {
        initrd_modules: lines(&read("initrd-modules")?)
            .map(|m| module_name(&m))
            .collect(),
        built_in,
        stage1: read("stage1")?.trim().to_string(),
        grub_devices: lines(&read("grub-devices")?).collect(),
        root_device: read("root-device")?.trim().to_string(),
    })
}

/// Why `m` would not boot the machine `f` describes; empty when nothing is in the way.
pub fn refusals(f: &NodeFacts, m: &Manifest) -> Vec<String> {
    let mut why = Vec::new();
    if m.stage1 != "scripted" {
        why.push(format!(
            "the built system runs {} in stage 1 (boot.initrd.systemd.enable), which does not carry out NIXOS_LUSTRATE (nixpkgs issue 357878): the first boot would keep Ubuntu's /etc beside NixOS's. Leave boot.initrd.systemd.enable unset (edgectl's module turns it off) for the install",
            m.stage1
        ));
    }
    let missing: Vec<&str> = f
        .root_disk_modules
        .iter()
        .map(String::as_str)
        .filter(|x| {
            let x = module_name(x);
            !m.initrd_modules.contains(&x) && !m.built_in.contains(&x)
        })
        .collect();
    if !missing.is_empty() {
        why.push(format!(
            "the root disk is reached through {}, which the built system's initrd does not carry and its kernel does not have built in: stage 1 would not find /. Keep hardware/<node>.toml (it adds them), or add them to boot.initrd.availableKernelModules",
            missing.join(", ")
        ));
    }
    if !m.grub_devices.contains(&f.boot.grub_device) {
        why.push(format!(
            "the built system installs GRUB to {}, but this node's first partition, whose boot sector Emulab chain-loads, is {}",
            if m.grub_devices.is_empty() {
                "nothing".to_string()
            } else {
                m.grub_devices.join(", ")
            },
            f.boot.grub_device
        ));
    }
    if m.root_device != f.boot.root_device {
        why.push(format!(
            "the built system mounts / from {}, but this node's root file system is {}",
            m.root_device, f.boot.root_device
        ));
    }
    why
}

/// The gate's verdict for `system` on the machine `f` describes.
pub fn check(f: &NodeFacts, system: &Path) -> Result<(), String> {
    let m = read_manifest(system)?;
    let why = refusals(f, &m);
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "refusing to install a system that would not boot this node: {}",
            why.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::BootPlan;

    fn facts() -> NodeFacts {
        NodeFacts {
            os_id: "ubuntu".into(),
            os_version: "22.04".into(),
            arch: "x86_64".into(),
            mem_kib: 1 << 20,
            free_root_bytes: 10 << 30,
            boot: BootPlan {
                disk: "/dev/disk/by-id/wwn-1".into(),
                grub_device: "/dev/disk/by-id/wwn-1-part1".into(),
                root_device: "/dev/disk/by-uuid/u1".into(),
                rotational: false,
                size_bytes: 1 << 40,
                kernel_name: "sda".into(),
            },
            control_interface: "eno1".into(),
            control_dhcp: true,
            experiment: Default::default(),
            boot_mode: "bios".into(),
            machine_id: "m".into(),
            login_uid: None,
            login_group: None,
            root_fs: "ext4".into(),
            root_disk_modules: vec!["sd_mod".into(), "megaraid_sas".into()],
        }
    }

    /// A toplevel with a manifest, as the module writes it.
    fn system(initrd: &str, stage1: &str, grub: &str, root: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("edgectl");
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("initrd-modules"), initrd).unwrap();
        std::fs::write(m.join("stage1"), stage1).unwrap();
        std::fs::write(m.join("grub-devices"), grub).unwrap();
        std::fs::write(m.join("root-device"), root).unwrap();
        d
    }

    fn good() -> tempfile::TempDir {
        system(
            "ahci\nsd_mod\nmegaraid_sas\n",
            "scripted\n",
            "/dev/disk/by-id/wwn-1-part1\n",
            "/dev/disk/by-uuid/u1\n",
        )
    }

    #[test]
    fn a_system_built_for_this_machine_passes() {
        assert_eq!(check(&facts(), good().path()), Ok(()));
    }

    #[test]
    fn each_mismatch_is_named() {
        let f = facts();
        let s = system(
            "ahci\nsd-mod\n",
            "systemd\n",
            "/dev/sda\n",
            "/dev/disk/by-label/nixos\n",
        );
        let e = check(&f, s.path()).unwrap_err();
        for want in [
            "systemd in stage 1",
            "357878",
            "through megaraid_sas,",
            "installs GRUB to /dev/sda",
            "mounts / from /dev/disk/by-label/nixos",
        ] {
            assert!(e.contains(want), "{want:?} not in {e}");
        }
        // `sd-mod` in the initrd is sd_mod.
        assert!(!e.contains("sd_mod"), "{e}");
    }

    #[test]
    fn a_driver_built_into_the_kernel_needs_no_initrd_module() {
        let s = system(
            "ahci\nsd_mod\n",
            "scripted\n",
            "/dev/disk/by-id/wwn-1-part1\n",
            "/dev/disk/by-uuid/u1\n",
        );
        let k = s.path().join("kernel-modules/lib/modules/6.12.1");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(
            k.join("modules.builtin"),
            "kernel/drivers/scsi/megaraid/megaraid_sas.ko\n",
        )
        .unwrap();
        assert_eq!(check(&facts(), s.path()), Ok(()));
    }

    #[test]
    fn a_system_without_a_manifest_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = check(&facts(), d.path()).unwrap_err();
        assert!(e.contains("no boot manifest"), "{e}");
    }
}
