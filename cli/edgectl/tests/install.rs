//! `edgectl install` on the rig: nodes stand in for Ubuntu machines, each with a PRIVATE /etc
//! (so nothing touches this machine's /etc). Phase 1 reads recorded facts of a c220g5 layout
//! (the logic is tested on more layouts in cli/deploy/tests/facts.rs); phases 2 to 4 run for
//! real against the test closure; the reboot is replaced by the node's sshd answering again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edgectl_rig::{Rig, RigOptions};

const LAYOUT: &str = "c220g5-ssd-boot";
const WWN: &str = "/dev/disk/by-id/wwn-0x55cd2e414d9a1234";

struct Lab {
    rig: Rig,
    dir: tempfile::TempDir,
    /// The stand-in nixpkgs the systems are built with.
    nixpkgs: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.rig.nodes.len() {
            let _ = std::fs::remove_file(self.boot_sector(i));
        }
    }
}

fn lab(n: usize) -> Option<Lab> {
    if !edgectl_rig::ready() {
        return None;
    }
    let rig = Rig::up_with(
        n,
        RigOptions {
            private_etc: true,
            ..Default::default()
        },
    )
    .expect("rig comes up");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cluster.toml"),
        edgectl_rig::topology_toml(&rig, &["wasm"], 30),
    )
    .unwrap();
    // Recorded facts per node: the c220g5 layout, with this node's experiment MAC.
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/tests/facts")
        .join(LAYOUT);
    for (i, n) in rig.nodes.iter().enumerate() {
        let d = dir.path().join("facts").join(&n.name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            let mut text = std::fs::read_to_string(e.path())
                .unwrap()
                .replace("90:e2:ba:24:d1:15", &edgectl_rig::lan_mac(i));
            if e.file_name() == "disk-links" {
                // Partition 1 by a name that exists here: the stand-in's grub-install writes
                // a boot sector into it, and install checks that one is there.
                text = text
                    .lines()
                    .filter(|l| !l.ends_with("../../sda1"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
                    + &format!("{} ../../sda1\n", boot_sector_path(dir.path(), &n.name));
            }
            std::fs::write(d.join(e.file_name()), text).unwrap();
        }
        // The node itself claims to be Ubuntu too (its private /etc).
        // os-release is a symlink into /usr/lib: replace the link, never write through it.
        let os = n.etc_root.as_ref().unwrap().join("os-release");
        let _ = std::fs::remove_file(&os);
        std::fs::write(os, "ID=ubuntu\nVERSION_ID=\"22.04\"\n").unwrap();
    }
    Some(Lab {
        rig,
        dir,
        nixpkgs: edgectl_rig::fixture_nixpkgs(),
    })
}

/// The stand-in for a node's partition 1: a file under /dev/shm, one per lab and node.
fn boot_sector_path(dir: &Path, node: &str) -> String {
    let tag = dir.file_name().unwrap().to_string_lossy().replace('.', "");
    format!("/dev/shm/edgerig-{tag}-{node}-part1")
}

impl Lab {
    fn boot_sector(&self, i: usize) -> String {
        boot_sector_path(self.dir.path(), &self.rig.node(i).name)
    }

    fn run(&self, extra: &[&str]) -> Output {
        self.run_with(extra, true)
    }

    fn run_with(&self, extra: &[&str], recorded: bool) -> Output {
        let nodes: Vec<&str> = self.rig.nodes.iter().map(|n| n.name.as_str()).collect();
        let facts = self.dir.path().join("facts");
        let mut c = Command::new(env!("CARGO_BIN_EXE_edgectl"));
        c.arg("install")
            .arg(self.dir.path().join("cluster.toml"))
            .args([
                "--on",
                &nodes.join(","),
                "--json",
                "--identity",
                self.rig.key.to_str().unwrap(),
            ])
            .args([
                "--override-input",
                "nixpkgs",
                &format!("path:{}", self.nixpkgs.display()),
            ]);
        if recorded {
            c.args(["--facts-from", facts.to_str().unwrap()]);
        }
        c.args(extra)
            .args(["--reboot-command", "true"])
            .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
            .output()
            .unwrap()
    }
    fn etc(&self, i: usize) -> PathBuf {
        self.rig.node(i).etc_root.clone().unwrap()
    }
    fn profile(&self, i: usize) -> Option<String> {
        let o = self
            .rig
            .exec_in(i, &["readlink", "-f", "/nix/var/nix/profiles/system"]);
        let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
        s.starts_with("/nix/store/").then_some(s)
    }
}

fn report(o: &Output) -> serde_json::Value {
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"dry_run\"") || l.contains("\"nodes\""))
        .unwrap_or_else(|| panic!("no report:\n{out}\n{}", String::from_utf8_lossy(&o.stderr)));
    serde_json::from_str(line).unwrap()
}

fn explain(o: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn install_runs_every_phase_and_apply_continues_from_there() {
    let Some(l) = lab(2) else { return };
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let r = report(&o);
    for (i, n) in r["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["ok"], true, "{n}");
        assert_eq!(
            n["done"],
            serde_json::json!(["facts", "nix", "copy", "switch", "reboot"])
        );
        let sys = l.profile(i).expect("system profile set");
        assert!(l.etc(i).join("NIXOS").exists(), "/etc/NIXOS on node {i}");
        assert!(
            !l.rig.node(i).nix_dir.join("var/edgectl/lock").exists(),
            "install frees the node lock"
        );
        let lustrate = std::fs::read_to_string(l.etc(i).join("NIXOS_LUSTRATE")).unwrap();
        assert!(
            lustrate.contains("etc/ssh/ssh_host_ed25519_key"),
            "host keys are kept: {lustrate}"
        );
        let acts =
            std::fs::read_to_string(l.rig.node(i).nix_dir.join("var/edgectl-test/activations"))
                .unwrap();
        assert!(
            acts.contains(&format!("boot {sys}")),
            "boot activation of {sys}: {acts}"
        );
        // The system was built for the boot disk phase 1 found, by stable name.
        let edge: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                l.rig
                    .node(i)
                    .nix_dir
                    .join(sys.trim_start_matches("/nix/"))
                    .join("edge.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(edge["edge"]["cloudlab"]["bootDisk"], WWN, "{edge}");
        assert_eq!(
            edge["edge"]["cloudlab"]["rootDevice"],
            "/dev/disk/by-uuid/5f1c1a5e-1111-4c3b-9d2e-aaaaaaaaaaaa"
        );
        assert_eq!(
            edge["edge"]["cloudlab"]["rootDiskModules"],
            serde_json::json!(["sd_mod", "ahci"])
        );
        // The detached switch ran grub-install, and install found GRUB in the boot sector.
        let sector = std::fs::read(l.boot_sector(i)).expect("boot sector written");
        assert!(String::from_utf8_lossy(&sector).contains("GRUB"));
        // The node keeps a copy of its machine facts where lustration does not reach.
        let name = &l.rig.node(i).name;
        let copy = std::fs::read_to_string(l.rig.node(i).nix_dir.join("var/edgectl/hardware.toml"))
            .unwrap();
        assert!(copy.contains(WWN), "{copy}");
        assert_eq!(
            copy,
            std::fs::read_to_string(l.dir.path().join(format!("hardware/{name}.toml"))).unwrap(),
            "the node's copy is the repository's file"
        );
    }
    // A fresh clone (the topology and hardware/, no .edgectl/) generates the same boot chain.
    let clone = tempfile::tempdir().unwrap();
    std::fs::copy(
        l.dir.path().join("cluster.toml"),
        clone.path().join("cluster.toml"),
    )
    .unwrap();
    std::fs::create_dir(clone.path().join("hardware")).unwrap();
    for e in std::fs::read_dir(l.dir.path().join("hardware")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), clone.path().join("hardware").join(e.file_name())).unwrap();
    }
    let out = clone.path().join("flake");
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("generate")
        .arg(clone.path().join("cluster.toml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let name = &l.rig.node(0).name;
    let hw = std::fs::read_to_string(out.join(format!("hosts/{name}-hardware.nix"))).unwrap();
    assert!(hw.contains(&format!("bootDisk = \"{WWN}\";")), "{hw}");
    assert!(
        hw.contains("rootDiskModules = [\"sd_mod\" \"ahci\"];"),
        "{hw}"
    );
    let host = std::fs::read_to_string(out.join(format!("hosts/{name}.nix"))).unwrap();
    assert!(
        host.contains(&format!("imports = [(./. + \"/{name}-hardware.nix\")];")),
        "{host}"
    );
    // This machine's own /etc was never touched.
    assert!(!Path::new("/etc/NIXOS_LUSTRATE").exists());
    // apply continues from the installed state: nothing to change.
    let o = Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(["plan"])
        .arg(l.dir.path().join("cluster.toml"))
        .args(["--identity", l.rig.key.to_str().unwrap()])
        .args([
            "--override-input",
            "nixpkgs",
            &format!("path:{}", edgectl_rig::fixture_nixpkgs().display()),
        ])
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "plan after install: {}",
        explain(&o)
    );
    // A second install has nothing left to do.
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert!(
        report(&o)["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["resumed_from"].is_null())
    );
}

/// The installed NixOS accepts only `cluster.ssh_keys`: an install that logs in with another
/// key is refused after facts and before anything on the node changes (no lustrate file, no
/// new profile), with what to do.
#[test]
fn a_login_key_the_installed_system_would_refuse_stops_the_install_before_any_change() {
    let Some(l) = lab(1) else { return };
    let topo = l.dir.path().join("cluster.toml");
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0aBQ1jvQ4h0iTqfCbbuD7cmvQ5D0cqnq1a3v8bYQ3p someone-else";
    let ours = std::fs::read_to_string(l.rig.key.with_extension("pub")).unwrap();
    let text = std::fs::read_to_string(&topo)
        .unwrap()
        .replace(&format!("{:?}", ours.trim()), &format!("{other:?}"));
    assert!(
        !text.contains(ours.trim()),
        "the rig key is gone from ssh_keys"
    );
    std::fs::write(&topo, text).unwrap();
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("is not in cluster.ssh_keys"), "{all}");
    assert!(
        !l.etc(0).join("NIXOS_LUSTRATE").exists(),
        "lustrate file written"
    );
    assert_eq!(l.profile(0), None, "a system profile was set");
}

/// A built system that would not carry out NIXOS_LUSTRATE (systemd in stage 1) is refused
/// after the build, before anything is copied to the node or changed there.
#[test]
fn a_system_with_systemd_in_stage_1_is_refused_before_the_node_changes() {
    let Some(mut l) = lab(1) else { return };
    let copy = l.dir.path().join("nixpkgs");
    std::fs::create_dir(&copy).unwrap();
    for f in ["flake.nix", "README.md"] {
        std::fs::copy(edgectl_rig::fixture_nixpkgs().join(f), copy.join(f)).unwrap();
    }
    std::fs::write(copy.join("test-stage1"), "systemd\n").unwrap();
    l.nixpkgs = copy;
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let n = &report(&o)["nodes"][0];
    assert_eq!(n["done"], serde_json::json!(["facts"]), "{n}");
    let why = n["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("systemd in stage 1") && why.contains("357878"),
        "{n}"
    );
    assert!(!l.etc(0).join("NIXOS_LUSTRATE").exists());
    assert_eq!(l.profile(0), None, "a system profile was set");
    assert!(!Path::new(&l.boot_sector(0)).exists(), "GRUB was installed");
}

/// The switch runs detached: the node's SSH sessions end part way through it (the stand-in's
/// `drop-ssh`), install opens a new one, follows the status file, and the install completes.
#[test]
fn a_connection_dropped_during_the_switch_does_not_stop_it() {
    let Some(l) = lab(1) else { return };
    let state = l.rig.node(0).nix_dir.join("var/edgectl-test");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("behaviour"), "drop-ssh").unwrap();
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let n = &report(&o)["nodes"][0];
    assert_eq!(
        n["done"],
        serde_json::json!(["facts", "nix", "copy", "switch", "reboot"]),
        "{n}"
    );
    assert!(!state.join("behaviour").exists(), "the behaviour ran");
    let status = std::fs::read_to_string(
        l.rig
            .node(0)
            .nix_dir
            .join("var/edgectl/install-switch/status"),
    )
    .unwrap();
    assert_eq!(status.trim(), "ok");
}

/// grub-install that leaves no GRUB in partition 1's boot sector fails the switch, and the
/// node is not rebooted into a machine that boots nothing.
#[test]
fn a_boot_sector_without_grub_fails_the_switch_and_nothing_reboots() {
    let Some(l) = lab(1) else { return };
    let state = l.rig.node(0).nix_dir.join("var/edgectl-test");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("behaviour"), "no-bootloader").unwrap();
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let n = &report(&o)["nodes"][0];
    assert_eq!(
        n["done"],
        serde_json::json!(["facts", "nix", "copy"]),
        "{n}"
    );
    assert!(
        n["message"]
            .as_str()
            .unwrap_or_default()
            .contains("does not hold GRUB"),
        "{n}"
    );
}

#[test]
fn dry_run_prints_every_command_and_changes_nothing() {
    let Some(l) = lab(1) else { return };
    let o = l.run(&["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let r = report(&o);
    let cmds: Vec<String> = r["nodes"][0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let all = cmds.join("\n");
    for want in [
        "nix-store --version",
        "nix copy --to",
        "NIXOS_LUSTRATE",
        "switch-to-configuration",
        "NIXOS_INSTALL_BOOTLOADER=1",
        &l.boot_sector(0),
        "edgectl-reboot true",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(l.profile(0).is_none(), "no system profile");
    assert!(!l.etc(0).join("NIXOS").exists() && !l.etc(0).join("NIXOS_LUSTRATE").exists());
}

#[test]
fn an_interrupted_install_resumes_and_a_changed_host_key_fails_the_reboot_check() {
    let Some(l) = lab(1) else { return };
    let o = l.run(&["--until", "copy"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(
        report(&o)["nodes"][0]["done"],
        serde_json::json!(["facts", "nix", "copy"])
    );
    assert!(l.profile(0).is_none(), "stopped before the switch");
    let o = l.run(&["--until", "switch"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    assert_eq!(
        report(&o)["nodes"][0]["resumed_from"],
        "switch",
        "resumes from the phase that had not completed"
    );
    assert!(l.profile(0).is_some());
    // "Reboot" with a new host key: phase 4 must refuse.
    l.rig.set_host_key(0);
    let o = l.run(&[]);
    assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
    let msg = report(&o)["nodes"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("host key changed"), "{msg}");
}

/// A topology changed after `--until copy` (here: one more feature, so another system) must
/// not reboot into the closure copied before: the rerun copies the new system again, says so,
/// and records it.
#[test]
fn a_topology_changed_after_the_copy_is_copied_again() {
    let Some(l) = lab(1) else { return };
    let o = l.run(&["--until", "copy"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let record = || -> serde_json::Value {
        let p = l.dir.path().join(".edgectl/install/n1.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let first = record()["system"].as_str().unwrap().to_string();
    let topo = l.dir.path().join("cluster.toml");
    let text = std::fs::read_to_string(&topo).unwrap().replacen(
        "features = [\"wasm\"]",
        "features = [\"wasm\", \"net-tuning\"]",
        1,
    );
    std::fs::write(&topo, text).unwrap();
    let o = l.run(&["--until", "copy"]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let second = record()["system"].as_str().unwrap().to_string();
    assert_ne!(first, second, "the topology change makes another system");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("the topology changed since"),
        "the copy is redone with a warning:\n{out}"
    );
    assert_eq!(
        report(&o)["nodes"][0]["done"],
        serde_json::json!(["facts", "nix", "copy"])
    );
    // The new system is on the node.
    let o = l.rig.exec_in(
        0,
        &[
            "test",
            "-e",
            &format!("{second}/bin/switch-to-configuration"),
        ],
    );
    assert!(o.status.success(), "{second} is not on the node");
}

/// What live phase 1 must say of this machine, worked out from its layout independently of
/// edgectl: the refusal it must name, or `None` for an accept.
fn predicted_refusal() -> Option<&'static str> {
    let sh = |c: &str| {
        let o = Command::new("sh").args(["-c", c]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // In the order phase 1 checks.
    let free: u64 = sh("df -B1 --output=avail / | tail -n 1")
        .trim()
        .parse()
        .unwrap();
    if free < edgectl_deploy::facts::MIN_FREE {
        return Some("free on /");
    }
    let source = sh("findmnt -n -o SOURCE / | tail -n 1");
    let source = source.trim().split('[').next().unwrap_or_default();
    let kind = sh(&format!(
        "lsblk -n -o TYPE {source} 2>/dev/null | head -n 1"
    ));
    if kind.trim() != "part" {
        return Some("not on a partition");
    }
    let parent = sh(&format!("lsblk -n -o PKNAME {source}"));
    let stable = sh(&format!(
        "find /dev/disk/by-id /dev/disk/by-path -maxdepth 1 -type l -lname '*/{}' 2>/dev/null",
        parent.trim()
    ));
    if stable.trim().is_empty() {
        return Some("refusing to guess");
    }
    // Partition 1 of the disk that holds /, as lsblk lists them in order.
    let first = sh(&format!(
        "lsblk -ln -o NAME,TYPE /dev/{} | awk '$2 == \"part\" {{ print $1; exit }}'",
        parent.trim()
    ));
    if format!("/dev/{}", first.trim()) != source {
        return Some("not on the boot disk's first partition");
    }
    if Path::new("/sys/firmware/efi").exists() {
        return Some("booted through uefi");
    }
    // The node's control interface is its veth, with a static address.
    Some("has a static address")
}

/// A loop device with an MBR and one ext4 partition, detached again on drop.
struct LoopDisk {
    dev: String,
    part: String,
}

impl LoopDisk {
    fn new(dir: &Path) -> LoopDisk {
        let img = dir.join("disk.img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(256 << 20).unwrap();
        // One Linux partition from sector 2048 over 128 MiB: the entry at 446, the signature at 510.
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&(128u32 * 2048).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        std::os::unix::fs::FileExt::write_all_at(&f, &mbr, 0).unwrap();
        let o = Command::new("losetup")
            .args(["--find", "--show", "--partscan"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {}", explain(&o));
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let disk = LoopDisk {
            part: format!("{dev}p1"),
            dev,
        };
        // Without udev the kernel's partition scan may not run: partx adds it by ioctl.
        let _ = Command::new("partx").args(["-a", &disk.dev]).output();
        for _ in 0..100 {
            if Path::new(&disk.part).exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", &disk.part])
            .output()
            .unwrap();
        assert!(o.status.success(), "mkfs: {}", explain(&o));
        disk
    }

    fn uuid(&self) -> String {
        let o = Command::new("blkid")
            .args(["-s", "UUID", "-o", "value", &self.part])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
    }
}

/// Whether loop devices can be made here (root, /dev/loop-control, util-linux, e2fsprogs).
fn loop_devices() -> Result<(), String> {
    if !Path::new("/dev/loop-control").exists() {
        return Err("/dev/loop-control is absent".into());
    }
    for t in ["losetup", "partx", "mkfs.ext4", "blkid"] {
        edgectl_testkit::tool(t)?;
    }
    Ok(())
}

#[test]
fn live_facts_read_the_node_and_refuse_or_accept_clearly() {
    let Some(l) = lab(1) else { return };
    // Phase 1 for real over SSH, read-only: this machine's own disks decide the outcome.
    let o = l.run_with(&["--dry-run"], false);
    let node = &report(&o)["nodes"][0];
    match predicted_refusal() {
        None => {
            assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
            assert_eq!(node["done"], serde_json::json!(["facts"]), "{node}");
        }
        Some(why) => {
            assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
            let msg = node["message"].as_str().unwrap();
            assert!(
                msg.contains(why),
                "expected a refusal naming {why:?}: {msg}"
            );
        }
    }
    assert!(
        l.profile(0).is_none() && !l.etc(0).join("NIXOS").exists(),
        "a dry run changes nothing"
    );
    let _ = std::fs::remove_file(l.dir.path().join(".edgectl/install/n1.json"));

    // The accept path on any machine: inside the node, / is an ext4 partition of a loop
    // device whose stable names udev would have made.
    if edgectl_testkit::require("loop", loop_devices()).is_none() {
        return;
    }
    let disk = LoopDisk::new(l.dir.path());
    let made_dev_disk = !Path::new("/dev/disk").exists();
    if made_dev_disk {
        // Only a mount point: the node mounts its own tmpfs there.
        std::fs::create_dir("/dev/disk").unwrap();
    }
    let name = disk.dev.trim_start_matches("/dev/");
    // The control address gets a lease lifetime, as DHCP gives one (the veth's is static,
    // which phase 1 refuses: the installed system configures the control network by DHCP).
    let setup = format!(
        "mount -t tmpfs edgerig-dev-disk /dev/disk && mkdir /dev/disk/by-id && \
         ln -s ../../{name} /dev/disk/by-id/edgectl-test-disk && \
         ln -s ../../{name}p1 /dev/disk/by-id/edgectl-test-disk-part1 && mount {} / && \
         a=$(ip -o -4 addr show dev eth0 | awk '{{print $4; exit}}') && \
         ip addr change \"$a\" dev eth0 valid_lft 86400 preferred_lft 86400",
        disk.part
    );
    let o = l.rig.exec_in(0, &["sh", "-c", &setup]);
    let o2 = l.run_with(&["--dry-run"], false);
    // Run again over real SSH: the record's node is asked who it is (machine id, root UUID,
    // OS) and is still it; then, with another machine id (as after a reload), it is not, and
    // phase 1 runs again.
    let o3 = l.run_with(&["--dry-run"], false);
    let machine_id = l.etc(0).join("machine-id");
    let _ = std::fs::remove_file(&machine_id);
    std::fs::write(&machine_id, "0123456789abcdef0123456789abcdef\n").unwrap();
    let o4 = l.run_with(&["--dry-run"], false);
    drop(l.rig.exec_in(0, &["umount", "/"]));
    if made_dev_disk {
        let _ = std::fs::remove_dir("/dev/disk");
    }
    assert!(o.status.success(), "node setup: {}", explain(&o));
    let free: u64 = String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "df -B1 --output=avail / | tail -n 1"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    if free < edgectl_deploy::facts::MIN_FREE || Path::new("/sys/firmware/efi").exists() {
        // Refused for this machine's free space or its UEFI boot, which the node shares.
        assert_eq!(o2.status.code(), Some(3), "{}", explain(&o2));
        return;
    }
    assert_eq!(o2.status.code(), Some(0), "{}", explain(&o2));
    assert_eq!(
        report(&o2)["nodes"][0]["done"],
        serde_json::json!(["facts"])
    );
    assert_eq!(o3.status.code(), Some(0), "{}", explain(&o3));
    assert_eq!(
        report(&o3)["nodes"][0]["resumed_from"],
        "nix",
        "{}",
        explain(&o3)
    );
    let refit = "the install record no longer fits this node";
    assert!(
        !String::from_utf8_lossy(&o3.stdout).contains(refit),
        "{}",
        explain(&o3)
    );
    assert_eq!(o4.status.code(), Some(0), "{}", explain(&o4));
    assert_eq!(
        report(&o4)["nodes"][0]["resumed_from"],
        "facts",
        "{}",
        explain(&o4)
    );
    let out4 = String::from_utf8_lossy(&o4.stdout);
    assert!(
        out4.contains(refit) && out4.contains("machine id is"),
        "{out4}"
    );
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(l.dir.path().join(".edgectl/install/n1.json")).unwrap(),
    )
    .unwrap();
    let f = &saved["facts"];
    assert_eq!(
        f["boot"]["disk"], "/dev/disk/by-id/edgectl-test-disk",
        "{f}"
    );
    assert_eq!(
        f["boot"]["grub_device"],
        "/dev/disk/by-id/edgectl-test-disk-part1"
    );
    assert_eq!(
        f["boot"]["root_device"],
        format!("/dev/disk/by-uuid/{}", disk.uuid())
    );
    // The rig's default route and LAN MAC make the control and experiment interfaces real.
    assert_eq!(f["control_interface"], "eth0");
    assert_eq!(
        f["experiment"][edgectl_rig::lan_mac(0).replace(':', "")],
        "eth1",
        "{f}"
    );
}

/// A Nix that lives in the store, as one from the Nix installer does: this machine's `nix`
/// binary (its libraries are on every rig node) added with `nix-store --add`.
fn store_nix(dir: &Path) -> String {
    let d = dir.join("edgectl-test-nix");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    let nix = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|p| p.join("nix"))
        .find(|p| p.is_file())
        .expect("nix on PATH")
        .canonicalize()
        .unwrap();
    std::fs::copy(nix, d.join("bin/nix")).unwrap();
    for l in ["nix-store", "nix-env"] {
        std::os::unix::fs::symlink("nix", d.join("bin").join(l)).unwrap();
    }
    let o = Command::new("nix-store")
        .arg("--add")
        .arg(&d)
        .env("NIX_CONFIG", edgectl_rig::NIX_CONFIG)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_node_without_nix_gets_the_controllers() {
    let Some(l) = lab(1) else { return };
    // The node stands in for Ubuntu 20.04: no Nix, and no nix-bin to install. Only its own
    // mount namespace sees these mounts.
    for m in [
        vec!["mount", "--bind", "/bin/false", "/usr/bin/nix"],
        vec!["mount", "--bind", "/bin/false", "/usr/bin/apt-get"],
        vec!["mount", "-t", "tmpfs", "tmpfs", "/usr/local/bin"],
    ] {
        let o = l.rig.exec_in(0, &m);
        assert!(o.status.success(), "{m:?}: {}", explain(&o));
    }
    let nix = store_nix(l.dir.path());

    // This machine's own Nix is Debian's, outside the store: nothing to ship, and the node
    // fails its Nix phase saying how to fix it.
    let own = edgectl_deploy::nodenix::controller_nix(None);
    if own.is_err() {
        let o = l.run(&["--until", "nix"]);
        assert_eq!(o.status.code(), Some(3), "{}", explain(&o));
        let msg = report(&o)["nodes"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("no usable Nix") && msg.contains("--nix-from"),
            "{msg}"
        );
    } else {
        eprintln!("this machine's Nix lives in the store: the refusal is not exercised");
    }

    // With --nix-from the node gets that Nix, registered in its store, and the install goes
    // on from the Nix phase through the copy.
    let o = l.run(&["--until", "copy", "--nix-from", &nix]);
    assert_eq!(o.status.code(), Some(0), "{}", explain(&o));
    let node = &report(&o)["nodes"][0];
    assert_eq!(
        node["done"],
        serde_json::json!(["facts", "nix", "copy"]),
        "{node}"
    );
    let said = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["phase"] == "nix" && e["state"] == "ok")
        .and_then(|e| e["message"].as_str().map(String::from))
        .unwrap_or_default();
    assert!(said.contains(&format!("(from {nix})")), "{said}");
    let link = l.rig.exec_in(0, &["readlink", "/usr/local/bin/nix-store"]);
    assert_eq!(
        String::from_utf8_lossy(&link.stdout).trim(),
        format!("{nix}/bin/nix-store")
    );
    let store = format!("{nix}/bin/nix-store");
    let valid = l.rig.exec_in(0, &[&store, "--check-validity", &nix]);
    assert!(valid.status.success(), "{}", explain(&valid));
}
