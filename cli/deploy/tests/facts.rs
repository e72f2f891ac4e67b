//! Phase 1 of `edgectl install` on recorded command outputs (tests/facts/<layout>/): the right
//! GRUB device by stable name, or a clear refusal.

use std::collections::BTreeMap;
use std::path::Path;

use edgectl_deploy::facts::{COMMANDS, node_facts};

fn recorded(layout: &str) -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/facts")
        .join(layout);
    COMMANDS
        .iter()
        .map(|(name, _)| {
            (
                name.to_string(),
                std::fs::read_to_string(dir.join(name)).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn c220g5_ssd_boot_disk_first_partition_by_wwn() {
    let f = node_facts(&recorded("c220g5-ssd-boot"), &["90e2ba24d115".into()]).unwrap();
    assert_eq!(f.boot.disk, "/dev/disk/by-id/wwn-0x55cd2e414d9a1234");
    assert_eq!(
        f.boot.grub_device,
        "/dev/disk/by-id/wwn-0x55cd2e414d9a1234-part1"
    );
    assert_eq!(
        f.boot.root_device,
        "/dev/disk/by-uuid/5f1c1a5e-1111-4c3b-9d2e-aaaaaaaaaaaa"
    );
    assert!(!f.boot.rotational, "the SSD boots, not the HDD");
    assert_eq!(f.control_interface, "eno1");
    assert!(f.control_dhcp);
    assert_eq!(
        f.experiment.get("90e2ba24d115").map(String::as_str),
        Some("enp94s0f0")
    );
    assert_eq!(
        (f.os_id.as_str(), f.os_version.as_str(), f.arch.as_str()),
        ("ubuntu", "22.04", "x86_64")
    );
    assert_eq!(f.mem_kib, 196583452);
    assert_eq!(f.login_uid, Some(20001), "the portal's uid, kept on NixOS");
}

#[test]
fn nvme_boot_disk_uses_its_partition_1_and_eui() {
    let f = node_facts(&recorded("nvme-boot"), &["0c:42:a1:dd:ee:01".into()]).unwrap();
    assert_eq!(
        f.boot.disk,
        "/dev/disk/by-id/nvme-eui.33395830526004560025384100000001"
    );
    assert_eq!(
        f.boot.grub_device,
        "/dev/disk/by-id/nvme-eui.33395830526004560025384100000001-part1"
    );
    assert_eq!(f.control_interface, "eno33np0");
}

#[test]
fn boot_disk_second_in_order_is_found_from_the_root_mount() {
    let f = node_facts(&recorded("boot-disk-second"), &["90e2ba24d117".into()]).unwrap();
    assert_eq!(
        f.boot.grub_device, "/dev/disk/by-id/ata-INTEL_SSDSC2BB480G4_BTWL5678-part1",
        "never sda guessed"
    );
}

#[test]
fn refusals_are_clear() {
    let e = node_facts(&recorded("already-nixos"), &[]).unwrap_err();
    assert!(e.contains("already NixOS, use `edgectl apply`"), "{e}");
    let e = node_facts(&recorded("whole-disk-root"), &[]).unwrap_err();
    assert!(e.contains("not on a partition"), "{e}");
    let e = node_facts(&recorded("no-stable-names"), &["90e2ba24d119".into()]).unwrap_err();
    assert!(e.contains("refusing to guess"), "{e}");
    let e = node_facts(&recorded("static-control"), &["90e2ba24d115".into()]).unwrap_err();
    assert!(e.contains("eno1 has a static address"), "{e}");
    let e = node_facts(&recorded("uefi-boot"), &["90e2ba24d115".into()]).unwrap_err();
    assert!(e.contains("booted through uefi"), "{e}");
    let e = node_facts(&recorded("root-on-partition-2"), &["90e2ba24d115".into()]).unwrap_err();
    assert!(
        e.contains("/ is on /dev/sda2, not on the boot disk's first partition /dev/sda1"),
        "{e}"
    );
    let e = node_facts(&recorded("c220g5-ssd-boot"), &["90e2ba000000".into()]).unwrap_err();
    assert!(e.contains("no interface with MAC"), "{e}");
    let e = node_facts(&recorded("c220g5-ssd-boot"), &["ac1f6b2d0010".into()]).unwrap_err();
    assert!(e.contains("control interface"), "{e}");
}

/// A root file system mounted over another (as on a test machine that mounts an image on /):
/// findmnt lists both, the last is in effect, and a loop device can hold the partition.
#[test]
fn the_topmost_root_mount_on_a_loop_device_counts() {
    let lsblk = r#"{"blockdevices":[
      {"name":"vda","path":"/dev/vda","type":"disk","size":274877906944,"rota":true,"mountpoint":"/","pkname":null},
      {"name":"loop3","path":"/dev/loop3","type":"loop","size":209715200,"rota":true,"mountpoint":null,"pkname":null,
       "children":[{"name":"loop3p1","path":"/dev/loop3p1","type":"part","size":104857600,"rota":true,"mountpoint":"/","pkname":"loop3"}]}]}"#;
    let findmnt = "/dev/vda     \n/dev/loop3p1 bdefb1c7-391b-4f94-b91b-bf819e7cd70c\n";
    let links = "/dev/disk/by-id/edgectl-test-disk ../../loop3\n/dev/disk/by-id/edgectl-test-disk-part1 ../../loop3p1\n";
    let b = edgectl_deploy::facts::boot_plan(lsblk, findmnt, links).unwrap();
    assert_eq!(b.disk, "/dev/disk/by-id/edgectl-test-disk");
    assert_eq!(b.grub_device, "/dev/disk/by-id/edgectl-test-disk-part1");
    assert_eq!(
        b.root_device,
        "/dev/disk/by-uuid/bdefb1c7-391b-4f94-b91b-bf819e7cd70c"
    );
    // A root that is a bind of a subfolder names its device with the folder in brackets.
    let e =
        edgectl_deploy::facts::boot_plan(lsblk, "/dev/vda[/var/tmp/root]\n", links).unwrap_err();
    assert!(e.contains("not on a partition"), "{e}");
    // The same machine without the image: / is the whole disk, and that is refused.
    let e = edgectl_deploy::facts::boot_plan(lsblk, "/dev/vda\n", links).unwrap_err();
    assert!(e.contains("not on a partition"), "{e}");
}

#[test]
fn the_root_disks_drivers_file_system_and_login_group_are_read() {
    let f = node_facts(&recorded("c220g5-ssd-boot"), &["90e2ba24d115".into()]).unwrap();
    assert_eq!(f.root_disk_modules, ["sd_mod", "ahci"]);
    assert_eq!(f.root_fs, "ext4");
    assert_eq!(f.login_group, Some(("edgelab-PG0".into(), 10194)));
    // The boot disk is sdb here: its own line counts, and the PCIe port driver (never a
    // module) is left out.
    let f = node_facts(&recorded("boot-disk-second"), &["90e2ba24d117".into()]).unwrap();
    assert_eq!(f.root_disk_modules, ["sd_mod", "mpt3sas"]);
    let f = node_facts(&recorded("nvme-boot"), &["0c:42:a1:dd:ee:01".into()]).unwrap();
    assert_eq!(f.root_disk_modules, ["nvme"]);
}

#[test]
fn a_root_file_system_nixos_would_not_mount_is_refused() {
    let mut out = recorded("c220g5-ssd-boot");
    out.insert("root-fstype".into(), "zfs\n".into());
    let e = node_facts(&out, &["90e2ba24d115".into()]).unwrap_err();
    assert!(e.contains("/ is on a zfs file system"), "{e}");
}

#[test]
fn odd_driver_and_group_output_is_kept_out() {
    use edgectl_deploy::facts::disk_modules;
    assert_eq!(
        disk_modules("sda sd_mod a$(b) ahci\n", "sda"),
        ["sd_mod", "ahci"]
    );
    assert!(disk_modules("sdb sd_mod\n", "sda").is_empty());
    let mut out = recorded("c220g5-ssd-boot");
    out.insert("login-group".into(), "bad name\n12\n".into());
    let f = node_facts(&out, &["90e2ba24d115".into()]).unwrap();
    assert_eq!(f.login_group, None);
}
