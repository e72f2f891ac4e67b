//! modules/cloudlab/way-back.sh, the init that GRUB's "way back" entry runs from Ubuntu's
//! initramfs, on a copy of a lustrated root: NixOS goes aside, Ubuntu's tree comes back.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../modules/cloudlab/way-back.sh")
}

fn run(root: &Path) -> std::process::Output {
    Command::new("bash")
        .arg(script())
        .env("EDGECTL_WAY_BACK_ROOT", root)
        .output()
        .unwrap()
}

fn write(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[test]
fn a_lustrated_root_gets_ubuntu_back_and_keeps_nixos_aside() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    // What NixOS's stage 1 leaves: /nix and /boot in place, the rest of Ubuntu in /old-root,
    // and NixOS's own top level beside them.
    write(&r.join("nix/store/x-system/init"), "nixos");
    write(&r.join("boot/vmlinuz"), "ubuntu kernel");
    write(&r.join("old-root/etc/os-release"), "ID=ubuntu\n");
    write(
        &r.join("old-root/etc/NIXOS_LUSTRATE"),
        "etc/ssh/ssh_host_ed25519_key\n",
    );
    write(&r.join("old-root/etc/NIXOS"), "");
    write(&r.join("old-root/usr/sbin/init"), "systemd");
    write(&r.join("old-root/.hidden"), "kept");
    std::os::unix::fs::symlink("usr/sbin", r.join("old-root/sbin")).unwrap();
    write(&r.join("etc/NIXOS"), "");
    write(&r.join("etc/ssh/ssh_host_ed25519_key"), "key");
    write(&r.join("var/log/boot"), "nixos log");
    let o = run(r);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/os-release")).unwrap(),
        "ID=ubuntu\n"
    );
    assert!(r.join("sbin/init").exists(), "the usr-merge link came back");
    assert!(r.join(".hidden").exists());
    assert!(!r.join("old-root").exists());
    assert!(!r.join("etc/NIXOS").exists() && !r.join("etc/NIXOS_LUSTRATE").exists());
    // NixOS's tree is kept, to look at; /nix and /boot stay where they were.
    let aside = r.join("nixos.edgectl-way-back");
    assert!(aside.join("etc/NIXOS").exists());
    assert!(aside.join("var/log/boot").exists());
    assert!(r.join("nix/store/x-system/init").exists());
    assert!(r.join("boot/vmlinuz").exists());
}

#[test]
fn a_root_never_lustrated_only_loses_the_nixos_marks() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(&r.join("etc/os-release"), "ID=ubuntu\n");
    write(&r.join("etc/NIXOS"), "");
    write(&r.join("etc/NIXOS_LUSTRATE"), "etc/ssh\n");
    let o = run(r);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("never got as far as lustration"));
    assert!(r.join("etc/os-release").exists());
    assert!(!r.join("etc/NIXOS").exists() && !r.join("etc/NIXOS_LUSTRATE").exists());
    assert!(!r.join("nixos.edgectl-way-back").exists());
}
