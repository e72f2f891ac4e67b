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
    let e = node_facts(&recorded("c220g5-ssd-boot"), &["90e2ba000000".into()]).unwrap_err();
    assert!(e.contains("no interface with MAC"), "{e}");
    let e = node_facts(&recorded("c220g5-ssd-boot"), &["ac1f6b2d0010".into()]).unwrap_err();
    assert!(e.contains("control interface"), "{e}");
}
