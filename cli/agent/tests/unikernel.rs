//! The built-in unikernel image booted for real: this machine's `qemu-system-x86_64` under KVM,
//! through the function the agent answers `unikernel-boot` with, and through the agent itself
//! over QUIC. Without qemu or /dev/kvm these tests are skipped, and say why (through
//! `edgectl_testkit::require`, prerequisites `qemu` and `kvm`).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgectl_agent::pki::CONTROLLER;
use edgectl_agent::proto::{Request, Response};
use edgectl_agent::unikernel::{self, MARKER, QEMU, UnikernelBoot};
use edgectl_agent::{client, facts, tls};

/// One boot at a time: the tests that write stand-in programs must not have one of them
/// open for writing while another test forks (its exec would fail, "text file busy"), and
/// boots measured side by side would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// qemu and a usable /dev/kvm, or a recorded skip.
fn kvm_and_qemu() -> Option<PathBuf> {
    edgectl_testkit::require("kvm", unikernel::kvm_ready(Path::new("/dev/kvm")))?;
    edgectl_testkit::require(
        "qemu",
        facts::which(QEMU).ok_or_else(|| {
            format!(
                "{QEMU} is not installed (Debian: qemu-system-x86; scripts/setup.sh installs it)"
            )
        }),
    )
}

fn assert_measured(b: &UnikernelBoot, runs: usize) {
    assert_eq!(b.samples_ms.len(), runs, "{b:?}");
    for x in &b.samples_ms {
        assert!(x.is_finite() && *x > 0.0, "{b:?}");
    }
    assert_eq!(
        unikernel::stats(&b.samples_ms),
        (b.p50_ms, b.max_ms),
        "{b:?}"
    );
    assert!(b.p50_ms <= b.max_ms, "{b:?}");
    assert_eq!(b.image_bytes, unikernel::image().len() as u64);
    assert_eq!(b.machine, unikernel::MACHINE);
}

fn print(what: &str, b: &UnikernelBoot) {
    let samples: Vec<String> = b.samples_ms.iter().map(|x| format!("{x:.1}")).collect();
    eprintln!(
        "{what}: p50 {:.1} ms, max {:.1} ms over {} boots [{}] ({} {})",
        b.p50_ms,
        b.max_ms,
        b.samples_ms.len(),
        samples.join(", "),
        b.qemu,
        b.machine
    );
}

#[test]
fn the_built_in_image_boots_under_kvm_and_is_timed() {
    let Some(qemu) = kvm_and_qemu() else { return };
    let _one = serial();
    // What the agent runs: qemu found on PATH, /dev/kvm, RUNS boots.
    let b = unikernel::measure(unikernel::RUNS).unwrap_or_else(|e| panic!("{e}"));
    assert_measured(&b, unikernel::RUNS as usize);
    assert_eq!(Path::new(&b.qemu), qemu);
    print("unikernel boot", &b);
    // One boot on its own: the image's line arrived (or this is an error), and the image
    // file is gone again afterwards.
    let before = leftover_images();
    let one = unikernel::measure_with(&qemu, Path::new("/dev/kvm"), 1, unikernel::BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_measured(&one, 1);
    assert_eq!(leftover_images(), before, "the image file stays behind");
}

/// The agent's image files in the temporary directory.
fn leftover_images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().is_some_and(|n| {
                        n.to_string_lossy()
                            .starts_with(&format!("edgectl-unikernel-{}-", std::process::id()))
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn the_agent_answers_with_boot_times() {
    if kvm_and_qemu().is_none() {
        return;
    }
    let _one = serial();
    let a = common::start(Duration::from_secs(120));
    // The agent's keys and state live there until the end of the test.
    let _state = &a.dir;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctrl = a.pki.identity(CONTROLLER).unwrap();
    let b = rt.block_on(async {
        let ep = client::endpoint(tls::client(&a.pki.ca_pem, Some(&ctrl)).unwrap()).unwrap();
        let mut conn = None;
        for _ in 0..100 {
            if let Ok(c) =
                client::connect(&ep, None, a.addr, "n1", Duration::from_millis(200)).await
            {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let conn = conn.expect("the agent answers");
        let r = client::request(
            &conn,
            &Request::UnikernelBoot { runs: 3 },
            Duration::from_secs(120),
        )
        .await;
        let _ = client::request(&conn, &Request::Shutdown, Duration::from_secs(5)).await;
        r
    });
    match b {
        Ok(Response::UnikernelBoot(b)) => {
            assert_measured(&b, 3);
            print("through the agent", &b);
        }
        other => panic!("unexpected answer: {other:?}"),
    }
    let _ = a.thread.join();
}

/// A stand-in for qemu, for the ways a boot goes wrong that this machine's real qemu does not.
fn program(dir: &Path, name: &str, script: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn a_boot_that_cannot_happen_says_why() {
    let _one = serial();
    let d = tempfile::tempdir().unwrap();
    let t = Duration::from_secs(5);
    // No KVM device: that, by name.
    let e =
        unikernel::measure_with(Path::new("/bin/true"), &d.path().join("kvm"), 1, t).unwrap_err();
    assert!(
        e.starts_with(&format!("no {}/kvm on this node", d.path().display())),
        "{e}"
    );
    // A device that does not open read-write.
    let ro = d.path().join("kvm-ro");
    std::fs::write(&ro, "").unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o400)).unwrap();
    if std::fs::OpenOptions::new().write(true).open(&ro).is_err() {
        let e = unikernel::measure_with(Path::new("/bin/true"), &ro, 1, t).unwrap_err();
        assert!(e.contains("cannot be opened read-write"), "{e}");
    }
    // From here on a plain file stands in for /dev/kvm (it opens read-write); the stand-ins
    // below never open it.
    let rw = d.path().join("kvm-rw");
    std::fs::write(&rw, "").unwrap();
    let kvm = rw.as_path();
    let e = unikernel::measure_with(&d.path().join(QEMU), kvm, 1, t).unwrap_err();
    assert!(e.contains(QEMU) && e.contains("not found"), "{e}");

    // qemu refuses (as it does without KVM access): its status and its words.
    let refuses = program(
        d.path(),
        "refuses",
        "echo 'qemu-system-x86_64: failed to initialize kvm: Permission denied' >&2; exit 1",
    );
    let e = unikernel::measure_with(&refuses, kvm, 3, t).unwrap_err();
    assert!(
        e.starts_with("boot 1 of 3: qemu ended without the image's serial line"),
        "{e}"
    );
    assert!(
        e.contains("exit status: 1") && e.contains("Permission denied"),
        "{e}"
    );

    // Output that is not the image's line, then silence: the limit ends it, and qemu (with
    // what it started) is killed.
    let hangs = program(d.path(), "hangs", "printf 'SeaBIOS\\n'; sleep 600 & wait");
    let e = unikernel::measure_with(&hangs, kvm, 1, Duration::from_millis(500)).unwrap_err();
    assert!(
        e.contains("no serial line from the image within 0.5 s"),
        "{e}"
    );
    assert!(e.contains("SeaBIOS"), "{e}");

    // Firmware output first: the time is the image's line's, not the first byte's.
    let late = program(
        d.path(),
        "late",
        &format!(
            "printf 'firmware\\n'; sleep 0.3; printf '{}'",
            MARKER.replace('\n', "\\n")
        ),
    );
    let b = unikernel::measure_with(&late, kvm, 2, t).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(b.samples_ms.len(), 2);
    assert!(b.p50_ms >= 300.0, "{b:?}");
}
