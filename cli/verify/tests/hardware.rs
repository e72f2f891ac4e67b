//! The hardware checks on recorded facts (`tests/facts/`, see its README for where each
//! recording comes from) against the built-in profiles: the same verdicts on every machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgectl_agent::facts::{self, Facts};
use edgectl_agent::gpu;
use edgectl_model::profile::CpuVendor;
use edgectl_model::{Diagnostics, Profile, ProfileSet};
use edgectl_verify::checks::{self, Check, Verdict, compare_cpu, parse_cpu_name};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/facts")
}

fn profile(name: &str) -> Arc<Profile> {
    let (mut set, diags) = ProfileSet::builtin();
    assert!(diags.is_empty(), "{}", diags.render(false, 5));
    let mut d = Diagnostics::default();
    set.resolve(name, &mut d)
        .unwrap_or_else(|_| panic!("profile {name}: {}", d.render(false, 5)))
}

/// Builds a sysfs tree under `root` from `sysfs.txt` lines (`PATH:VALUE`, `PATH -> TARGET`).
fn materialize(sysfs: &str, root: &Path) {
    for line in sysfs.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rel = |p: &str| root.join(p.strip_prefix("/sys/").expect("a /sys path"));
        if let Some((path, target)) = line.split_once(" -> ") {
            let p = rel(path);
            if path.ends_with("/device") {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(target, &p).unwrap();
            }
        } else {
            let (path, value) = line.split_once(':').expect("PATH:VALUE");
            let p = rel(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("{value}\n")).unwrap();
        }
    }
}

/// The agent's `nvidia-smi -q -x` recording of a machine (`NAME-*.xml`, see the README there),
/// with its device query, as `gather` would combine them.
fn gpu_details(name: &str) -> Vec<gpu::GpuDetail> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/nvidia-smi");
    let mut xml: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}-")) && f.ends_with(".xml")
        })
        .collect();
    assert!(xml.len() <= 1, "{name}: more than one recording: {xml:?}");
    let Some(xml) = xml.pop() else {
        return Vec::new();
    };
    let mut d = gpu::parse_nvidia_smi_xml(&std::fs::read_to_string(&xml).unwrap()).unwrap();
    let q = std::fs::read_to_string(xml.with_extension("query.csv")).unwrap();
    gpu::apply_device_query(&mut d, &gpu::parse_device_query(&q).unwrap()).unwrap();
    d
}

/// A machine's facts from its recordings, through the agent's parsers and collectors.
fn machine(name: &str) -> Facts {
    let dir = corpus().join("machines").join(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let cpu = facts::parse_lscpu_json(&read("lscpu.json").expect("lscpu.json"))
        .unwrap_or_else(|| panic!("{name}: lscpu.json does not parse"));
    let sys = tempfile::tempdir().unwrap();
    materialize(&read("sysfs.txt").expect("sysfs.txt"), sys.path());
    let ethtool = |iface: &str| std::fs::read_to_string(dir.join("ethtool").join(iface)).ok();
    let (gpus, gpu_note) = match read("nvidia-smi.csv") {
        Some(t) => (facts::parse_nvidia_smi(&t).unwrap(), None),
        None => (Vec::new(), Some("nvidia-smi not found".to_string())),
    };
    Facts {
        hostname: name.into(),
        cpu,
        memory_bytes: facts::parse_meminfo(&read("meminfo").expect("meminfo")),
        disks: facts::disks_at(sys.path()),
        nics: facts::nics_at(sys.path(), &ethtool).into_values().collect(),
        gpus,
        gpu_note,
        gpu_details: gpu_details(name),
        ..Default::default()
    }
}

fn run(machine_facts: &Facts, profile_name: &str) -> Vec<Check> {
    checks::hardware_checks("n1", &profile(profile_name), machine_facts)
}

/// Whether a check judges an expectation of a `[[gpu]]` entry against `nvidia-smi -q -x`.
fn gpu_detail(name: &str) -> bool {
    name.starts_with("gpu ")
        && [
            " driver branch",
            " persistence mode",
            " ecc",
            " pcie gen",
            " pcie width",
        ]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The checks that failed, by name, with their reasons; every one of them must have a reason
/// and both values, and every check is hardware. Only a GPU detail check may skip (the node has
/// no GPU of its model), and then says why.
fn fails(cs: &[Check]) -> BTreeMap<String, String> {
    for c in cs {
        assert_eq!(c.category, "hardware", "{c:?}");
        assert!(!c.expected.is_empty(), "{c:?}");
        match c.verdict {
            Verdict::Fail => assert!(c.reason.as_ref().is_some_and(|r| !r.is_empty()), "{c:?}"),
            Verdict::Skip => assert!(
                gpu_detail(&c.name) && c.reason.as_ref().is_some_and(|r| !r.is_empty()),
                "{c:?}"
            ),
            Verdict::Pass => assert!(c.reason.is_none(), "{c:?}"),
        }
    }
    cs.iter()
        .filter(|c| c.verdict == Verdict::Fail)
        .map(|c| (c.name.clone(), c.reason.clone().unwrap()))
        .collect()
}

fn names(cs: &[Check]) -> Vec<&str> {
    cs.iter().map(|c| c.name.as_str()).collect()
}

fn get<'a>(cs: &'a [Check], name: &str) -> &'a Check {
    cs.iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {:?}", names(cs)))
}

fn assert_fails(cs: &[Check], want: &[(&str, &str)]) {
    let got = fails(cs);
    let got_names: Vec<&str> = got.keys().map(String::as_str).collect();
    let mut want_names: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    want_names.sort();
    assert_eq!(got_names, want_names, "{got:#?}");
    for (n, reason) in want {
        assert!(
            got[*n].contains(reason),
            "{n}: reason {:?} should say {reason:?}",
            got[*n]
        );
    }
}

/// (vendor_id, model name, expected "vendor | family | number") from cpu-models.txt.
fn cpu_corpus() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(corpus().join("cpu-models.txt")).unwrap();
    let mut out = Vec::new();
    for rec in text.split("\n\n") {
        let cpuinfo: String = rec
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let Some(expect) = rec.lines().find_map(|l| l.strip_prefix("# expect: ")) else {
            continue;
        };
        assert!(
            rec.lines().any(|l| l.starts_with("# source: ")),
            "a record without a source: {rec}"
        );
        let c = facts::parse_cpuinfo(&cpuinfo);
        assert!(!c.model.is_empty() && !c.vendor_id.is_empty(), "{rec}");
        out.push((c.vendor_id, c.model, expect.to_string()));
    }
    out
}

#[test]
fn cpu_brand_strings_parse_as_recorded() {
    let all = cpu_corpus();
    assert!(all.len() >= 20, "{} records", all.len());
    for (_, model, expect) in &all {
        let c = parse_cpu_name(model);
        let vendor = match c.vendor {
            CpuVendor::Intel => "intel",
            CpuVendor::Amd => "amd",
            CpuVendor::Other => "other",
        };
        let got = format!(
            "{vendor} | {} | {}",
            c.family,
            c.number.as_deref().unwrap_or("-")
        );
        assert_eq!(&got, expect, "{model}");
    }
}

#[test]
fn every_cpu_matches_only_itself_and_generic_names_match_nothing() {
    let all = cpu_corpus();
    let mut generic = 0;
    for (i, (_, expected, _)) in all.iter().enumerate() {
        let e = parse_cpu_name(expected);
        for (j, (vendor_id, actual, _)) in all.iter().enumerate() {
            let r = compare_cpu(expected, e.vendor, actual, vendor_id);
            if parse_cpu_name(actual).number.is_none() {
                let why = r.expect_err(actual);
                assert!(
                    why.starts_with("model not reported by this machine"),
                    "{actual}: {why}"
                );
            } else if i == j {
                assert_eq!(r, Ok(()), "{expected} against itself");
            } else {
                assert!(r.is_err(), "{actual:?} passed as {expected:?}");
            }
        }
        if e.number.is_none() {
            generic += 1;
        }
    }
    assert!(generic >= 7, "the corpus keeps its generic VM names");
}

#[test]
fn recorded_machine_cpuinfo_and_lscpu_agree() {
    // Both were recorded on the same machine: the two parsers must tell the same story.
    let dir = corpus().join("machines/vm-amd-epyc");
    let from_proc = facts::parse_cpuinfo(&std::fs::read_to_string(dir.join("cpuinfo")).unwrap());
    let from_lscpu =
        facts::parse_lscpu_json(&std::fs::read_to_string(dir.join("lscpu.json")).unwrap()).unwrap();
    assert_eq!(from_proc, from_lscpu);
    assert_eq!(
        (from_proc.model.as_str(), from_proc.vendor_id.as_str()),
        ("AMD EPYC", "AuthenticAMD")
    );
    assert_eq!(
        (from_proc.sockets, from_proc.cores, from_proc.threads),
        (1, 2, 2)
    );
    let f = machine("vm-amd-epyc");
    // Loop and zram devices are not disks; the virtio disk says it is rotational.
    assert_eq!(f.disks.len(), 1, "{:?}", f.disks);
    assert_eq!(
        (f.disks[0].name.as_str(), f.disks[0].kind()),
        ("vda", "hdd")
    );
    assert_eq!(f.disks[0].size_bytes, 536870912 * 512);
    let eth0 = f.nics.iter().find(|n| n.name == "eth0").unwrap();
    assert!(eth0.physical);
    assert_eq!(eth0.driver.as_deref(), Some("virtio_net"));
    assert_eq!((eth0.speed_mbps, eth0.supported_mbps), (None, None));
    let ifb0 = f.nics.iter().find(|n| n.name == "ifb0").unwrap();
    assert!(!ifb0.physical && ifb0.driver.is_none());
    assert_eq!(f.memory_bytes, 24683656 * 1024);
}

#[test]
fn every_machine_passes_its_own_profile() {
    for (m, p, want) in [
        (
            "c220g5",
            "c220g5",
            &[
                "cpu model",
                "cpu sockets",
                "cpu cores",
                "cpu threads",
                "memory",
                "disk 480 GB ssd",
                "disk 1000 GB hdd",
                "nic 10 Gb/s ixgbe",
                "nic 1 Gb/s igb",
            ][..],
        ),
        (
            "c240g5",
            "c240g5",
            &[
                "gpu Tesla P100-PCIE-12GB",
                "gpu Tesla P100-PCIE-12GB driver branch",
                "gpu Tesla P100-PCIE-12GB persistence mode",
                "gpu Tesla P100-PCIE-12GB ecc",
                "gpu Tesla P100-PCIE-12GB pcie gen",
                "gpu Tesla P100-PCIE-12GB pcie width",
            ][..],
        ),
        (
            "c220g1",
            "c220g1",
            &["disk 1200 GB hdd", "disk 480 GB ssd"][..],
        ),
        (
            "c4130",
            "c4130",
            &[
                "disk 960 GB ssd",
                "gpu Tesla V100-SXM2-16GB",
                "gpu Tesla V100-SXM2-16GB driver branch",
                "gpu Tesla V100-SXM2-16GB pcie width",
            ][..],
        ),
        (
            "d7525",
            "d7525",
            &[
                "disk 1600 GB nvme",
                "disk 480 GB ssd",
                "nic 25 Gb/s bnxt_en",
                "nic 100 Gb/s mlx5_core",
                "gpu NVIDIA A30",
                "gpu NVIDIA A30 persistence mode",
                "gpu NVIDIA A30 ecc",
                "gpu NVIDIA A30 pcie gen",
                "gpu NVIDIA A30 pcie width",
            ][..],
        ),
        (
            "c6525-100g",
            "c6525-100g",
            &["nic 100 Gb/s mlx5_core", "nic 25 Gb/s mlx5_core"][..],
        ),
        (
            "m510",
            "m510",
            &["disk 256 GB nvme", "nic 10 Gb/s mlx4_core"][..],
        ),
    ] {
        let cs = run(&machine(m), p);
        assert_fails(&cs, &[]);
        assert!(
            cs.iter().all(|c| c.verdict == Verdict::Pass),
            "{m}: {cs:#?}"
        );
        for n in want {
            assert!(names(&cs).contains(n), "{m}: no {n:?} in {:?}", names(&cs));
        }
    }
    // Entries of one size and kind (or speed and driver) are one check, with their counts summed.
    let cs = run(&machine("d7525"), "d7525");
    assert_eq!(
        get(&cs, "disk 480 GB ssd").expected.split('x').next(),
        Some("2")
    );
    assert_eq!(
        cs.iter().filter(|c| c.name.starts_with("disk ")).count(),
        2,
        "{:?}",
        names(&cs)
    );
    let cs = run(&machine("m510"), "m510");
    assert!(
        get(&cs, "nic 10 Gb/s mlx4_core")
            .expected
            .starts_with("2x 10000 Mb/s")
    );
}

#[test]
fn both_values_are_in_every_check() {
    let cs = run(&machine("c220g5"), "c220g5");
    let cpu = get(&cs, "cpu model");
    assert_eq!(cpu.expected, "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz");
    assert_eq!(cpu.actual, "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz");
    let mem = get(&cs, "memory");
    assert_eq!(mem.expected, "192 GiB (MemTotal 92-100% of it)");
    assert_eq!(mem.actual, "187.43 GiB MemTotal (97.6%)");
    let d = get(&cs, "disk 480 GB ssd");
    assert_eq!(d.actual, "sda 480.1 GB ssd");
    let x520 = get(&cs, "nic 10 Gb/s ixgbe");
    assert_eq!(x520.expected, "2x 10000 Mb/s (ixgbe)");
    // The idle port counts through the link modes it supports, and says so.
    assert_eq!(
        x520.actual,
        "enp94s0f0 ixgbe 10000 Mb/s, enp94s0f1 ixgbe link down, supports 10000 Mb/s"
    );
    assert_eq!(get(&cs, "nic 1 Gb/s igb").actual, "eno1 igb 1000 Mb/s");
    let cs = run(&machine("c240g5"), "c240g5");
    assert_eq!(
        get(&cs, "gpu Tesla P100-PCIE-12GB").actual,
        "Tesla P100-PCIE-12GB 12288 MiB cc 6.0"
    );
    let cs = run(&machine("c4130"), "c4130");
    let pcie = get(&cs, "gpu Tesla V100-SXM2-16GB pcie gen");
    assert_eq!(
        (pcie.expected.as_str(), pcie.actual.as_str()),
        ("gen 3 (the link's maximum)", "gen 3 (all 4)")
    );
    let branch = get(&cs, "gpu Tesla V100-SXM2-16GB driver branch");
    assert_eq!(
        (branch.expected.as_str(), branch.actual.as_str()),
        ("580", "580 (580.119.02) (all 4)")
    );
    // The d7525 profile writes no driver branch (the A30's follows the topology's nixpkgs).
    let cs = run(&machine("d7525"), "d7525");
    assert!(!names(&cs).contains(&"gpu NVIDIA A30 driver branch"));
}

#[test]
fn a_vm_shaped_like_the_node_fails_where_it_differs() {
    let cs = run(&machine("vm-skylake"), "c220g5");
    assert_fails(
        &cs,
        &[
            ("cpu model", "model not reported by this machine"),
            ("disk 480 GB ssd", "vda 480.1 GB hdd"),
            ("disk 1000 GB hdd", "found 0 of 1"),
            // A virtio NIC that claims 10 Gb/s is not an X520.
            ("nic 10 Gb/s ixgbe", "ens3 virtio_net 10000 Mb/s"),
            ("nic 1 Gb/s igb", "found 0 of 1"),
        ],
    );
    let cpu = get(&cs, "cpu model");
    assert_eq!(cpu.actual, "Intel Xeon Processor (Skylake, IBRS)");
    assert_eq!(cpu.expected, "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz");
}

#[test]
fn the_recorded_machine_passes_no_cloudlab_profile() {
    let f = machine("vm-amd-epyc");
    for p in [
        "c220g1",
        "c220g2",
        "c220g5",
        "c240g5",
        "c4130",
        "c6525-100g",
        "d7525",
        "m510",
    ] {
        let cs = run(&f, p);
        let got = fails(&cs);
        // Only a socket count can agree (this machine has one socket, as m510 and c6525-100g).
        let one_socket = profile(p).cpu.sockets == 1;
        assert_eq!(!got.contains_key("cpu sockets"), one_socket, "{p}");
        // (A GPU's expectations skip: there is no GPU to judge them on.)
        let judged = cs.iter().filter(|c| c.verdict != Verdict::Skip).count();
        assert_eq!(
            got.len() + usize::from(one_socket),
            judged,
            "{p}: something passed: {cs:#?}"
        );
        assert!(
            got["cpu model"].starts_with("model not reported by this machine"),
            "{p}: {}",
            got["cpu model"]
        );
    }
}

#[test]
fn the_wrong_c220g5_write_up_is_not_a_c220g5() {
    let f = machine("gold6136-p4");
    let cs = run(&f, "c220g5");
    assert_fails(
        &cs,
        &[
            ("cpu model", "family differs"),
            ("cpu cores", "expected exactly 20, found 24"),
            ("cpu threads", "expected exactly 40, found 48"),
            ("memory", "outside 92-100%"),
            ("nic 10 Gb/s ixgbe", "found 0 of 2"),
        ],
    );
    let cs = run(&f, "c240g5");
    assert!(fails(&cs)["gpu Tesla P100-PCIE-12GB"].contains("Tesla P4 7680 MiB"));
}

#[test]
fn sibling_types_tell_apart() {
    // c220g5 has no GPU; a c240g5 profile on it fails for that alone.
    assert_fails(
        &run(&machine("c220g5"), "c240g5"),
        &[(
            "gpu Tesla P100-PCIE-12GB",
            "no GPUs reported (nvidia-smi not found)",
        )],
    );
    // A GPU the profile does not list is not checked.
    assert_fails(&run(&machine("c240g5"), "c220g5"), &[]);
    // Older Xeons, less memory, 1.2 TB disks where the profile has 1 TB.
    assert_fails(
        &run(&machine("c220g1"), "c220g5"),
        &[
            ("cpu model", "family differs"),
            ("cpu cores", "found 16"),
            ("cpu threads", "found 32"),
            ("memory", "65.5% of 192 GiB"),
            ("disk 1000 GB hdd", "sda 1200.2 GB hdd"),
        ],
    );
    // EPYC 7302 (two sockets) and 7402P (one) machines against each other's profiles.
    assert_fails(
        &run(&machine("d7525"), "c6525-100g"),
        &[
            ("cpu model", "expected 7402p, got 7302"),
            ("cpu sockets", "expected exactly 1, found 2"),
            ("cpu cores", "found 32"),
            ("cpu threads", "found 64"),
            ("memory", "196."),
            // d7525's 25G ports are Broadcom: they do not count as ConnectX-5.
            ("nic 25 Gb/s mlx5_core", "found 0 of 2"),
        ],
    );
    assert_fails(
        &run(&machine("c6525-100g"), "d7525"),
        &[
            ("cpu model", "expected 7302, got 7402p"),
            ("cpu sockets", "found 1"),
            ("cpu cores", "found 24"),
            ("cpu threads", "found 48"),
            ("memory", "49."),
            ("disk 1600 GB nvme", "found 0 of 1"),
            ("nic 25 Gb/s bnxt_en", "found 0 of 2"),
            ("nic 100 Gb/s mlx5_core", "found 1 of 2"),
            ("gpu NVIDIA A30", "no GPUs reported"),
        ],
    );
}

#[test]
fn what_is_missing_or_wrong_on_a_real_node_fails() {
    let c220g5 = machine("c220g5");

    // One 16 GB DIMM of twelve gone: 176 GiB installed, MemTotal about 171.8 GiB.
    let mut f = c220g5.clone();
    f.memory_bytes = 180_150_000 * 1024;
    assert_fails(&run(&f, "c220g5"), &[("memory", "outside 92-100%")]);
    // More memory than the profile is not the profile either.
    f.memory_bytes = 251 << 30;
    assert_fails(&run(&f, "c220g5"), &[("memory", "130.7% of 192 GiB")]);
    f.memory_bytes = 0;
    assert_fails(&run(&f, "c220g5"), &[("memory", "MemTotal not reported")]);

    // The HDD is gone: the SSD does not stand in for it.
    let mut f = c220g5.clone();
    f.disks.retain(|d| d.name != "sdb");
    assert_fails(
        &run(&f, "c220g5"),
        &[("disk 1000 GB hdd", "this machine has: sda 480.1 GB ssd")],
    );
    // 480 GB passes from 470.4 to 494.4 GB: a 500 GB SSD (+4.2%) is not a 480 GB one.
    for (bytes, ok) in [
        (500_107_862_016u64, false),
        (470_000_000_000, false),
        (471_000_000_000, true),
        (494_000_000_000, true),
    ] {
        let mut f = c220g5.clone();
        f.disks
            .iter_mut()
            .find(|d| d.name == "sda")
            .unwrap()
            .size_bytes = bytes;
        let v = get(&run(&f, "c220g5"), "disk 480 GB ssd").verdict;
        assert_eq!(v == Verdict::Pass, ok, "{bytes} bytes");
    }
    // An NVMe device is not a SATA SSD.
    let mut f = c220g5.clone();
    f.disks.iter_mut().find(|d| d.name == "sda").unwrap().name = "nvme0n1".into();
    assert_fails(
        &run(&f, "c220g5"),
        &[("disk 480 GB ssd", "nvme0n1 480.1 GB nvme")],
    );

    // Without ethtool the idle X520 port cannot be told from nothing.
    let mut f = c220g5.clone();
    for n in &mut f.nics {
        n.supported_mbps = None;
    }
    assert_fails(
        &run(&f, "c220g5"),
        &[(
            "nic 10 Gb/s ixgbe",
            "found 1 of 2 ports driven by ixgbe at 10000 Mb/s",
        )],
    );
    // An X520 port linked at 1 Gb/s does not count as 10 Gb/s, nor as the igb control port.
    let mut f = c220g5.clone();
    f.nics
        .iter_mut()
        .find(|n| n.name == "enp94s0f0")
        .unwrap()
        .speed_mbps = Some(1000);
    assert_fails(
        &run(&f, "c220g5"),
        &[("nic 10 Gb/s ixgbe", "enp94s0f0 ixgbe 1000 Mb/s")],
    );
    // A virtual interface never counts, whatever it reports.
    let mut f = c220g5.clone();
    f.nics.retain(|n| n.name != "eno1" && n.name != "eno2");
    let docker = f.nics.iter_mut().find(|n| n.name == "docker0").unwrap();
    docker.speed_mbps = Some(1000);
    docker.driver = Some("igb".into());
    assert_fails(&run(&f, "c220g5"), &[("nic 1 Gb/s igb", "found 0 of 1")]);

    // Two 480 GB entries need two disks: one SSD does not count twice.
    let mut f = machine("d7525");
    f.disks.retain(|d| d.name != "sdb");
    assert_fails(&run(&f, "d7525"), &[("disk 480 GB ssd", "found 1 of 2")]);

    // GPUs: count, memory, name and compute capability.
    let mut f = machine("c4130");
    f.gpus.pop();
    assert_fails(
        &run(&f, "c4130"),
        &[("gpu Tesla V100-SXM2-16GB", "found 3 of 4")],
    );
    let mut f = machine("c240g5");
    f.gpus[0].model = "Tesla P100-PCIE-16GB".into();
    f.gpus[0].memory_mib = 16280;
    assert_fails(
        &run(&f, "c240g5"),
        &[("gpu Tesla P100-PCIE-12GB", "found 0 of 1")],
    );
    let mut f = machine("c240g5");
    f.gpus[0].memory_mib = 8192;
    assert_fails(
        &run(&f, "c240g5"),
        &[("gpu Tesla P100-PCIE-12GB", "90-102% of 12 GiB")],
    );
    let mut f = machine("c240g5");
    f.gpus[0].compute_capability = "7.0".into();
    assert_fails(
        &run(&f, "c240g5"),
        &[("gpu Tesla P100-PCIE-12GB", "cc 6.0")],
    );
    // The driver may hold back a little (some drivers report an A30 as 24258 MiB).
    let mut f = machine("d7525");
    f.gpus[0].memory_mib = 24258;
    assert_fails(&run(&f, "d7525"), &[]);
}

/// What `nvidia-smi -q -x` says against the profiles' GPU expectations, on the recorded
/// machines and on changed copies of them.
#[test]
fn gpu_details_against_the_profiles() {
    let c4130 = machine("c4130");
    assert_eq!(c4130.gpu_details.len(), 4);
    // One GPU's persistence daemon gone, another's ECC turned off, a third on a degraded link.
    let mut f = c4130.clone();
    f.gpu_details[1].persistence_mode = Some(false);
    f.gpu_details[2].ecc_mode = Some(false);
    f.gpu_details[3].pcie_width_max = Some(8);
    f.gpu_details[3].pcie_width = Some(8);
    assert_fails(
        &run(&f, "c4130"),
        &[
            (
                "gpu Tesla V100-SXM2-16GB persistence mode",
                "1 of 4 GPUs differ: GPU 1 (00000000:06:00.0) has disabled",
            ),
            (
                "gpu Tesla V100-SXM2-16GB ecc",
                "GPU 2 (00000000:84:00.0) has disabled",
            ),
            (
                "gpu Tesla V100-SXM2-16GB pcie width",
                "GPU 3 (00000000:86:00.0) has x8",
            ),
        ],
    );
    // A node still on Ubuntu's 535 driver is not what edgectl deploys.
    let mut f = c4130.clone();
    for d in &mut f.gpu_details {
        d.driver_version = "535.183.01".into();
        d.driver_branch = gpu::driver_branch(&d.driver_version);
    }
    assert_fails(
        &run(&f, "c4130"),
        &[(
            "gpu Tesla V100-SXM2-16GB driver branch",
            "4 of 4 GPUs differ",
        )],
    );
    // Idle links below their maximum pass.
    let mut f = machine("d7525");
    f.gpu_details[0].pcie_gen = Some(1);
    let cs = run(&f, "d7525");
    assert_fails(&cs, &[]);
    assert_eq!(
        get(&cs, "gpu NVIDIA A30 pcie gen").actual,
        "gen 4, now gen 1"
    );
    // nvidia-smi -q -x failed where the plain query worked: every expectation fails with why.
    let mut f = machine("c240g5");
    f.gpu_details.clear();
    f.gpu_details_note = Some("nvidia-smi -q -x did not answer within 15 s".into());
    let cs = run(&f, "c240g5");
    let want: Vec<(String, &str)> = [
        "driver branch",
        "persistence mode",
        "ecc",
        "pcie gen",
        "pcie width",
    ]
    .iter()
    .map(|w| (format!("gpu Tesla P100-PCIE-12GB {w}"), "did not answer"))
    .collect();
    let want: Vec<(&str, &str)> = want.iter().map(|(n, r)| (n.as_str(), *r)).collect();
    assert_fails(&cs, &want);
    // No GPU: the model check fails, its expectations skip.
    let cs = run(&machine("c220g5"), "c240g5");
    assert_eq!(
        cs.iter().filter(|c| c.verdict == Verdict::Skip).count(),
        5,
        "{cs:#?}"
    );
    // A P100 node on the c4130 profile: the V100 checks fail, its expectations skip.
    let cs = run(&machine("c240g5"), "c4130");
    assert_eq!(
        get(&cs, "gpu Tesla V100-SXM2-16GB ecc").verdict,
        Verdict::Skip
    );
    // Facts round-trip through the agent's JSON with their details.
    let json = serde_json::to_string(&c4130).unwrap();
    let back: Facts = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c4130);
}

#[test]
fn ethtool_and_sysfs_parsers() {
    let x520 = std::fs::read_to_string(corpus().join("machines/c220g5/ethtool/enp94s0f1")).unwrap();
    let e = facts::parse_ethtool(&x520);
    assert_eq!(
        (e.speed_mbps, e.supported_max_mbps, e.link_detected),
        (None, Some(10000), Some(false))
    );
    // Link modes that continue on the next lines count too.
    let i350 = std::fs::read_to_string(corpus().join("machines/c220g5/ethtool/eno2")).unwrap();
    assert_eq!(facts::parse_ethtool(&i350).supported_max_mbps, Some(1000));
    let up = "Settings for ens1f0np0:\n\tSupported link modes:   1000baseKX/Full\n\t                        10000baseKR/Full\n\t                        25000baseCR/Full\n\t                        100000baseCR4/Full\n\tSpeed: 100000Mb/s\n\tLink detected: yes\n";
    let e = facts::parse_ethtool(up);
    assert_eq!(
        (e.speed_mbps, e.supported_max_mbps, e.link_detected),
        (Some(100000), Some(100000), Some(true))
    );
    assert_eq!(
        facts::parse_ethtool("Supported link modes:   Not reported\n").supported_max_mbps,
        None
    );
    for (s, want) in [
        ("10000\n", Some(10000)),
        ("-1", None),
        ("4294967295", None),
        ("65535", None),
        ("0", None),
        ("", None),
        ("fast", None),
    ] {
        assert_eq!(facts::parse_sysfs_speed(s), want, "{s:?}");
    }
    assert_eq!(
        facts::driver_from_link(Path::new("../../../../bus/pci/drivers/ixgbe")).as_deref(),
        Some("ixgbe")
    );
    assert_eq!(facts::driver_from_link(Path::new("/")), None);
}

#[test]
fn parsers_survive_garbage() {
    let mut inputs: Vec<String> = vec![
        String::new(),
        "\0\0\0".into(),
        "((((".into(),
        "))))".into(),
        "@@@".into(),
        "model name : ((Intel)) Xeon ( @ ".into(),
        "processor : x\nphysical id : \ncore id : \ncpu cores : -1\n".into(),
        "MemTotal: 99999999999999999999999 kB".into(),
        "MemTotal:".into(),
        "{\"lscpu\": 5}".into(),
        "{\"lscpu\": [{\"field\": 1, \"data\": null, \"children\": {}}]}".into(),
        "{\"lscpu\": [{\"field\": \"CPU(s):\", \"data\": \"4294967296\"}]}".into(),
        "{\"lscpu\": [{\"field\": \"CPU(s):\", \"data\": \"8\"}, {\"field\": \"Socket(s):\", \"data\": \"4294967295\"}, {\"field\": \"Core(s) per socket:\", \"data\": \"4294967295\"}]}".into(),
        "Supported link modes: 99999999999999999999999baseT/Full base baseT\nSpeed: -5Mb/s".into(),
        "ü 13th gen core core cores 2nd rd th v v1 xx 9xx 0 2.5+ version".into(),
        "Intel(R) Xeon(R) CPU E5-2630 v".into(),
        "Ω™®(™)".into(),
        "Tesla, P4, , ,".into(),
    ];
    // Every prefix of every recording, cut at any character.
    for f in [
        "cpu-models.txt",
        "machines/c220g5/lscpu.json",
        "machines/c220g5/ethtool/eno2",
    ] {
        let t = std::fs::read_to_string(corpus().join(f)).unwrap();
        for (i, _) in t.char_indices().step_by(7) {
            inputs.push(t[..i].to_string());
        }
    }
    for s in &inputs {
        let _ = facts::parse_cpuinfo(s);
        let _ = facts::parse_meminfo(s);
        let _ = facts::parse_lscpu_json(s);
        let _ = facts::parse_ethtool(s);
        let _ = facts::parse_sysfs_speed(s);
        let _ = facts::parse_nvidia_smi(s);
        let _ = gpu::parse_nvidia_smi_xml(s);
        let _ = gpu::parse_device_query(s);
        let _ = facts::parse_ip_addr(s);
        let c = parse_cpu_name(s);
        let _ = c.to_string();
        let _ = compare_cpu(s, CpuVendor::Other, s, s);
        let _ = checks::same_gpu(s, s);
    }
    // Empty facts against every profile: all fail (a GPU's expectations skip, with no GPU to
    // judge them on), none panics.
    for p in ["c220g5", "c240g5", "c4130", "d7525", "c6525-100g", "m510"] {
        let cs = run(&Facts::default(), p);
        let judged = cs.iter().filter(|c| c.verdict != Verdict::Skip).count();
        assert_eq!(fails(&cs).len(), judged, "{p}");
    }
}

#[test]
fn facts_from_older_agents_still_read() {
    // An agent from before vendor_id, supported_mbps and gpu_details existed.
    let old = r#"{"hostname":"n1","cpu":{"model":"AMD EPYC 7302 16-Core Processor","sockets":2,"cores":32,"threads":64},
        "memory_bytes":270054412288,"disks":[{"name":"nvme0n1","size_bytes":1600321314816,"rotational":false}],
        "nics":[{"name":"ens1f0np0","speed_mbps":100000,"driver":"mlx5_core","physical":true}],
        "gpus":[],"kernel":"6.6","sysctl":{},"modules":[],"units":{},"kvm_present":false,"kvm_usable":false,"tools":{}}"#;
    let f: Facts = serde_json::from_str(old).unwrap();
    assert_eq!(f.cpu.vendor_id, "");
    assert_eq!(f.nics[0].supported_mbps, None);
    assert!(f.gpu_details.is_empty() && f.gpu_details_note.is_none());
    // Without vendor_id, the vendor comes from the brand string.
    assert_eq!(get(&run(&f, "d7525"), "cpu model").verdict, Verdict::Pass);
    // And what a new agent writes reads back the same.
    let again: Facts =
        serde_json::from_str(&serde_json::to_string(&machine("c220g5")).unwrap()).unwrap();
    assert_eq!(again, machine("c220g5"));
}
