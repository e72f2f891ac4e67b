//! Unikernel boot time, measured on the node: the agent writes its own built-in unikernel image
//! (generated here, byte by byte: nothing is downloaded, and the image is part of the agent's
//! binary and so of the system closure), boots it under KVM with qemu's `microvm` machine, and
//! times each boot from qemu's launch to the first byte of the image's line on the serial
//! port, read through a pipe on qemu's stdout with a monotonic clock.
//!
//! The image is a 32-bit ELF with a Xen `PHYS32_ENTRY` note (the PVH boot ABI), which qemu
//! loads directly with `-kernel`: it starts in flat 32-bit protected mode, writes
//! [`MARKER`] to the 16550 UART at 0x3f8 (waiting for the transmitter each byte, as a real
//! driver does), and then powers off through qemu's `isa-debug-exit` port ([`EXIT_PORT`]),
//! which ends qemu at once (status 1: `(0 << 1) | 1`); should that port be missing it halts
//! with interrupts off, and the agent kills qemu. (A triple fault with `-no-reboot` would need
//! no device, but nested KVM reports it as an internal error and leaves qemu paused.)

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::facts;
use crate::proto::percentile;

/// What the image writes to the serial port.
pub const MARKER: &str = "edgectl unikernel: booted\n";
/// The qemu program the agent runs (qemu_kvm on NixOS, qemu-system-x86 on Debian).
pub const QEMU: &str = "qemu-system-x86_64";
/// Boots per measurement.
pub const RUNS: u32 = 5;
/// The most boots one request may ask for.
pub const MAX_RUNS: u32 = 50;
/// How long one boot may take to print its line (qemu's start included) before it is killed.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long qemu may take to exit after the line (the image powers off at once).
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The machine qemu runs: microvm with its serial port and nothing the image does not use (no
/// PIT, PIC, RTC, second IOAPIC, PCIe or option ROMs; no ACPI tables, which alone cost qemu
/// some 30 ms to build); its firmware (qboot) hands over to the PVH entry through fw_cfg.
pub const MACHINE: &str =
    "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off,pcie=off,ioapic2=off";

/// The I/O port of qemu's `isa-debug-exit` device, which the image writes to power off.
pub const EXIT_PORT: u16 = 0xf4;
/// Where the image is loaded (physical = virtual: paging is off at the PVH entry).
const LOAD_ADDR: u32 = 0x0010_0000;
/// ELF32 header and program header sizes.
const EHDR: usize = 52;
const PHDR: usize = 32;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note whose descriptor is the 32-bit PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// One measurement: `runs` boots, each timed from qemu's launch to the first byte of
/// [`MARKER`] on the serial port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnikernelBoot {
    /// Each boot's time in milliseconds, in the order they ran.
    pub samples_ms: Vec<f64>,
    /// Nearest-rank median of the samples.
    pub p50_ms: f64,
    pub max_ms: f64,
    /// The qemu binary that ran, and its machine option.
    pub qemu: String,
    pub machine: String,
    /// The image's size in bytes.
    pub image_bytes: u64,
}

fn u16le(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn u32le(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The instructions, with the message at image offset `msg_off` (the image is loaded at
/// [`LOAD_ADDR`]).
fn code(msg_off: u32) -> Vec<u8> {
    let at = |off: u32| (LOAD_ADDR + off).to_le_bytes();
    let mut c = Vec::new();
    // entry: flat 32-bit protected mode, interrupts off, paging off (the PVH ABI).
    c.push(0xfc); // cld
    c.push(0xbe); // mov esi, msg
    c.extend_from_slice(&at(msg_off));
    let next = c.len();
    c.push(0xac); // next: lodsb
    c.extend_from_slice(&[0x84, 0xc0]); // test al, al
    c.extend_from_slice(&[0x74, 0x00]); // jz done (patched below)
    let jz_done = c.len() - 1;
    c.extend_from_slice(&[0x88, 0xc3]); // mov bl, al
    c.push(0xba); // mov edx, 0x3fd (line status register)
    c.extend_from_slice(&0x3fdu32.to_le_bytes());
    let wait = c.len();
    c.push(0xec); // wait: in al, dx
    c.extend_from_slice(&[0xa8, 0x20]); // test al, 0x20 (transmitter holding register empty)
    c.push(0x74); // jz wait
    c.push(rel8(c.len() + 1, wait));
    c.push(0xba); // mov edx, 0x3f8 (transmitter holding register)
    c.extend_from_slice(&0x3f8u32.to_le_bytes());
    c.extend_from_slice(&[0x88, 0xd8]); // mov al, bl
    c.push(0xee); // out dx, al
    c.push(0xeb); // jmp next
    c.push(rel8(c.len() + 1, next));
    let done = c.len();
    c[jz_done] = rel8(jz_done + 1, done);
    // done: power off through isa-debug-exit.
    c.push(0xba); // mov edx, EXIT_PORT
    c.extend_from_slice(&u32::from(EXIT_PORT).to_le_bytes());
    c.extend_from_slice(&[0x31, 0xc0]); // xor eax, eax
    c.push(0xee); // out dx, al
    let halt = c.len();
    c.extend_from_slice(&[0xfa, 0xf4]); // halt: cli; hlt
    c.push(0xeb); // jmp halt
    c.push(rel8(c.len() + 1, halt));
    c
}

/// The rel8 displacement of a jump whose next instruction is at `from` to `to` (both within
/// a few bytes: the code above is tiny).
fn rel8(from: usize, to: usize) -> u8 {
    let d = to as i64 - from as i64;
    debug_assert!((-128..=127).contains(&d));
    (d as i8) as u8
}

/// The built-in unikernel image: the same bytes on every machine and every build.
pub fn image() -> Vec<u8> {
    let phoff = EHDR;
    let note_off = phoff + 2 * PHDR;
    // The note: namesz, descsz, type, "Xen\0", the entry point (4-byte aligned throughout).
    let note_len = 12 + 4 + 4;
    let msg_off = note_off + note_len;
    let code_off = (msg_off + MARKER.len() + 1).next_multiple_of(16);
    let code = code(msg_off as u32);
    let total = code_off + code.len();
    let entry = LOAD_ADDR + code_off as u32;

    let mut v = Vec::with_capacity(total);
    // ELF header: 32-bit, little endian, version 1, System V ABI, an executable for i386.
    v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    v.extend_from_slice(&[0; 8]);
    u16le(&mut v, 2); // e_type: ET_EXEC
    u16le(&mut v, 3); // e_machine: EM_386
    u32le(&mut v, 1); // e_version
    u32le(&mut v, entry); // e_entry
    u32le(&mut v, phoff as u32); // e_phoff
    u32le(&mut v, 0); // e_shoff: no sections
    u32le(&mut v, 0); // e_flags
    u16le(&mut v, EHDR as u16); // e_ehsize
    u16le(&mut v, PHDR as u16); // e_phentsize
    u16le(&mut v, 2); // e_phnum
    u16le(&mut v, 40); // e_shentsize
    u16le(&mut v, 0); // e_shnum
    u16le(&mut v, 0); // e_shstrndx
    debug_assert_eq!(v.len(), EHDR);
    // PT_LOAD: the whole file, read and execute, at LOAD_ADDR.
    for x in [
        1,
        0,
        LOAD_ADDR,
        LOAD_ADDR,
        total as u32,
        total as u32,
        5,
        0x1000,
    ] {
        u32le(&mut v, x);
    }
    // PT_NOTE: the Xen note.
    for x in [
        4,
        note_off as u32,
        LOAD_ADDR + note_off as u32,
        LOAD_ADDR + note_off as u32,
        note_len as u32,
        note_len as u32,
        4,
        4,
    ] {
        u32le(&mut v, x);
    }
    debug_assert_eq!(v.len(), note_off);
    u32le(&mut v, 4); // n_namesz
    u32le(&mut v, 4); // n_descsz
    u32le(&mut v, XEN_ELFNOTE_PHYS32_ENTRY); // n_type
    v.extend_from_slice(b"Xen\0");
    u32le(&mut v, entry);
    v.extend_from_slice(MARKER.as_bytes());
    v.push(0);
    v.resize(code_off, 0);
    v.extend_from_slice(&code);
    debug_assert_eq!(v.len(), total);
    v
}

/// p50 (nearest rank) and max of boot times in milliseconds; (0, 0) for none.
pub fn stats(samples_ms: &[f64]) -> (f64, f64) {
    let mut s: Vec<f64> = samples_ms
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    s.sort_by(f64::total_cmp);
    (percentile(&s, 50.0), s.last().copied().unwrap_or(0.0))
}

/// qemu's arguments for one boot of `image`.
pub fn qemu_args(image: &Path) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = [
        "-M",
        MACHINE,
        "-accel",
        "kvm",
        // The host's CPU, less IA32_ARCH_CAPABILITIES: qemu 7.2 under nested KVM aborts
        // setting that MSR ("failed to set MSR 0x10a"); the image reads no MSR at all.
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "32",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]
    .iter()
    .map(Into::into)
    .collect();
    a.push("-device".into());
    a.push(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=4").into());
    a.push("-kernel".into());
    a.push(image.as_os_str().to_owned());
    a
}

/// The image in a file of its own, removed again when dropped.
struct ImageFile(PathBuf);

impl ImageFile {
    fn write(bytes: &[u8]) -> Result<ImageFile, String> {
        let dir = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = String::new();
        for attempt in 0..16u32 {
            let p = dir.join(format!(
                "edgectl-unikernel-{}-{nanos:x}-{attempt}.elf",
                std::process::id()
            ));
            // create_new: never through a link someone left there.
            let opened = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p);
            match opened {
                Ok(mut f) => {
                    let file = ImageFile(p);
                    f.write_all(bytes)
                        .map_err(|e| format!("write {}: {e}", file.0.display()))?;
                    return Ok(file);
                }
                Err(e) => last = format!("{}: {e}", p.display()),
            }
        }
        Err(format!("cannot write the unikernel image: {last}"))
    }
}

impl Drop for ImageFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Whether `kvm` (normally `/dev/kvm`) is there and opens read-write, or why not.
pub fn kvm_ready(kvm: &Path) -> Result<(), String> {
    if !kvm.exists() {
        return Err(format!(
            "no {} on this node: KVM is not available (no virtualization extensions, or the kvm module is not loaded)",
            kvm.display()
        ));
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .map(drop)
        .map_err(|e| format!("{} cannot be opened read-write: {e}", kvm.display()))
}

/// The measurement the agent makes: [`QEMU`] from PATH (or where NixOS keeps it), `/dev/kvm`,
/// `runs` boots of [`image`].
pub fn measure(runs: u32) -> Result<UnikernelBoot, String> {
    let kvm = Path::new("/dev/kvm");
    kvm_ready(kvm)?;
    let qemu = facts::which(QEMU).ok_or_else(|| {
        format!("{QEMU} is not on PATH (the unikernel feature installs qemu_kvm)")
    })?;
    measure_with(&qemu, kvm, runs, BOOT_TIMEOUT)
}

/// [`measure`] with a given qemu, KVM device and per-boot limit.
pub fn measure_with(
    qemu: &Path,
    kvm: &Path,
    runs: u32,
    timeout: Duration,
) -> Result<UnikernelBoot, String> {
    kvm_ready(kvm)?;
    if !qemu.is_file() {
        return Err(format!("{} not found", qemu.display()));
    }
    let runs = runs.clamp(1, MAX_RUNS);
    let bytes = image();
    let file = ImageFile::write(&bytes)?;
    let mut samples = Vec::with_capacity(runs as usize);
    for i in 0..runs {
        let t = boot_once(qemu, &file.0, timeout)
            .map_err(|e| format!("boot {} of {runs}: {e}", i + 1))?;
        samples.push(t.as_secs_f64() * 1000.0);
    }
    let (p50_ms, max_ms) = stats(&samples);
    Ok(UnikernelBoot {
        samples_ms: samples,
        p50_ms,
        max_ms,
        qemu: qemu.display().to_string(),
        machine: MACHINE.into(),
        image_bytes: bytes.len() as u64,
    })
}

/// What the stdout reader saw: a chunk and when its read returned, or the end.
enum Seen {
    Chunk(Vec<u8>, Instant),
    End,
}

/// One boot: launches qemu and returns the time from just before the launch to the read that
/// brought the first byte of [`MARKER`]; qemu is then waited for (it exits on the image's
/// power-off) and killed if it does not.
pub fn boot_once(qemu: &Path, image: &Path, timeout: Duration) -> Result<Duration, String> {
    let mut cmd = Command::new(qemu);
    cmd.args(qemu_args(image))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: whatever it leaves behind is killed with it.
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        if let Some(mut o) = out {
            loop {
                match o.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx
                            .send(Seen::Chunk(buf[..n].to_vec(), Instant::now()))
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
        let _ = tx.send(Seen::End);
    });
    let err = child.stderr.take();
    let err_reader = std::thread::spawn(move || read_capped(err, 16 << 10));
    // The serial output and, per read, where it ended and when.
    let mut got: Vec<u8> = Vec::new();
    let mut reads: Vec<(usize, Instant)> = Vec::new();
    let deadline = t0 + timeout;
    let result = loop {
        if let Some(pos) = find(&got, MARKER.as_bytes()) {
            let at = reads
                .iter()
                .find(|(end, _)| *end > pos)
                .map(|(_, t)| *t)
                .unwrap_or(t0);
            break Ok(at.saturating_duration_since(t0));
        }
        // Output that is not the image's (a firmware's) is kept for the error, within reason.
        if got.len() > 64 << 10 {
            break Err("64 KiB of serial output without the image's line".to_string());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Seen::Chunk(c, at)) => {
                got.extend_from_slice(&c);
                reads.push((got.len(), at));
            }
            Ok(Seen::End) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err("qemu ended without the image's serial line".to_string());
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(format!(
                    "no serial line from the image within {:.1} s",
                    timeout.as_secs_f64()
                ));
            }
        }
    };
    // qemu exits by itself on the image's power-off; a qemu that does not is killed, with
    // anything it started.
    let end = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if result.is_ok() && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill has no memory effects; -pid is the group qemu leads.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.kill();
                break child.wait().ok();
            }
        }
    };
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    result.map_err(|e| {
        let mut m = e;
        if let Some(s) = status.filter(|s| !s.success()) {
            m.push_str(&format!(" ({s})"));
        }
        let said: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(4)
            .collect();
        if !said.is_empty() {
            m.push_str(&format!(": {}", said.join(" | ")));
        }
        let output = String::from_utf8_lossy(&got);
        if !output.trim().is_empty() {
            m.push_str(&format!(
                "; serial: {:?}",
                output.chars().take(200).collect::<String>()
            ));
        }
        m
    })
}

/// All of `r` read (so that the writer never blocks on a full pipe), its first `cap` bytes kept.
fn read_capped(r: Option<impl Read>, cap: usize) -> String {
    let mut kept = Vec::new();
    if let Some(mut r) = r {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len()).min(n);
                    kept.extend_from_slice(&buf[..room]);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
    }

    #[test]
    fn the_image_is_a_pvh_elf() {
        let b = image();
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!((b[4], b[5], b[6]), (1, 1, 1), "ELF32, little endian, v1");
        assert_eq!(u16_at(&b, 16), 2, "ET_EXEC");
        assert_eq!(u16_at(&b, 18), 3, "EM_386");
        assert_eq!(u16_at(&b, 40), 52);
        assert_eq!(u16_at(&b, 42), 32);
        let entry = u32_at(&b, 24);
        let phoff = u32_at(&b, 28) as usize;
        let phnum = u16_at(&b, 44) as usize;
        assert_eq!(phnum, 2);
        let mut load = None;
        let mut pvh_entry = None;
        for i in 0..phnum {
            let p = phoff + i * 32;
            let f = |k: usize| u32_at(&b, p + 4 * k);
            match f(0) {
                1 => {
                    // Loaded whole, at LOAD_ADDR, physical = virtual.
                    assert_eq!((f(1), f(2), f(3)), (0, LOAD_ADDR, LOAD_ADDR));
                    assert_eq!((f(4) as usize, f(5) as usize), (b.len(), b.len()));
                    assert_eq!(f(6) & 1, 1, "executable");
                    load = Some((f(2), f(2) + f(5)));
                }
                4 => {
                    let n = f(1) as usize;
                    assert_eq!(n % 4, 0);
                    assert_eq!(f(7), 4, "note alignment");
                    assert_eq!(f(4), 20);
                    assert_eq!(u32_at(&b, n), 4, "namesz");
                    assert_eq!(u32_at(&b, n + 4), 4, "descsz");
                    assert_eq!(u32_at(&b, n + 8), XEN_ELFNOTE_PHYS32_ENTRY);
                    assert_eq!(&b[n + 12..n + 16], b"Xen\0");
                    pvh_entry = Some(u32_at(&b, n + 16));
                }
                t => panic!("unexpected segment type {t}"),
            }
        }
        let (lo, hi) = load.expect("a PT_LOAD");
        let pvh = pvh_entry.expect("the Xen PHYS32_ENTRY note");
        assert_eq!(pvh, entry);
        assert!(lo <= pvh && pvh < hi);
        // The entry starts with cld; mov esi, MARKER's address.
        let at = (pvh - LOAD_ADDR) as usize;
        assert_eq!(&b[at..at + 2], &[0xfc, 0xbe]);
        let msg = (u32_at(&b, at + 2) - LOAD_ADDR) as usize;
        assert_eq!(
            &b[msg..msg + MARKER.len() + 1],
            format!("{MARKER}\0").as_bytes()
        );
        // It powers off through isa-debug-exit: mov edx, EXIT_PORT; xor eax, eax; out dx, al.
        assert!(find(&b, &[0xba, 0xf4, 0, 0, 0, 0x31, 0xc0, 0xee]).is_some());
        // No multiboot magic: qemu would take it for a multiboot kernel instead.
        assert!(find(&b, &0x1bad_b002u32.to_le_bytes()).is_none());
    }

    #[test]
    fn the_image_is_the_same_bytes_everywhere() {
        let b = image();
        assert_eq!(b, image());
        let digest: String = ring::digest::digest(&ring::digest::SHA256, &b)
            .as_ref()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect();
        // Any change to the image shows here: update the digest with it, on purpose.
        assert_eq!(
            (b.len(), digest.as_str()),
            (
                221,
                "c5ea38a436b59d63ce0ba3cbef0c553b82a02f1fdb9b45903c86ce36069fecec"
            )
        );
    }

    #[test]
    fn jumps_land_on_their_labels() {
        assert_eq!(rel8(10, 5), 0xfb);
        assert_eq!(rel8(5, 10), 5);
    }

    #[test]
    fn p50_and_max() {
        assert_eq!(stats(&[30.0, 10.0, 20.0, 50.0, 40.0]), (30.0, 50.0));
        assert_eq!(stats(&[7.0]), (7.0, 7.0));
        assert_eq!(stats(&[2.0, 1.0]), (1.0, 2.0));
        assert_eq!(stats(&[]), (0.0, 0.0));
        assert_eq!(stats(&[f64::NAN, 3.0]), (3.0, 3.0));
    }
}
