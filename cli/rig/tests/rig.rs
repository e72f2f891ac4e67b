//! The rig itself: nodes, private /nix, deploy of the fixture system, faults, teardown, and the
//! `--nixos` nodes' firewall and noexec /var.
//! Every test skips with a printed reason where the rig cannot run (not root, tools missing).

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use edgectl_rig::{NIX_CONFIG, Rig, RigOptions, build_fixture_toplevel, reap, tool};
use serde_json::Value;

fn skip() -> bool {
    !edgectl_rig::ready()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_owned()
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

fn netns_names() -> String {
    text(
        &Command::new(tool("ip").unwrap())
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
}

fn link_exists(name: &str) -> bool {
    Command::new(tool("ip").unwrap())
        .args(["link", "show", name])
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A flake as `edgectl generate` writes it: from the real binary when it has been built,
/// otherwise a hand-written one of the same shape (flake.nix calling nixosSystem with
/// `[ self.nixosModules.default ./hosts/<node>.nix ]`).
fn generated_flake(dir: &Path) -> (PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bin = std::env::var_os("EDGECTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/debug/edgectl"));
    let out = dir.join("gen");
    if bin.is_file() {
        let o = Command::new(&bin)
            .arg("generate")
            .arg(root.join("examples/edge-lab.toml"))
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        ok(&o, "edgectl generate");
        return (out, "worker1".into());
    }
    eprintln!(
        "note: {} not built; using a hand-written flake of the generated shape",
        bin.display()
    );
    fs::create_dir_all(out.join("hosts")).unwrap();
    fs::write(
        out.join("flake.nix"),
        r#"{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { self, nixpkgs }: let
    system = "x86_64-linux";
    host = file: nixpkgs.lib.nixosSystem { inherit system; modules = [self.nixosModules.default file]; };
  in {
    # Deliberately missing: the fixture must never evaluate it.
    nixosModules.default = import ./modules;
    nixosConfigurations.worker1 = host (./hosts + "/worker1.nix");
  };
}
"#,
    )
    .unwrap();
    fs::write(
        out.join("hosts/worker1.nix"),
        "{...}: {\n  edge.node = {\n    name = \"worker1\";\n    roles = [];\n  };\n}\n",
    )
    .unwrap();
    (out, "worker1".into())
}

/// ssh to node i trusting only `known` as its host key.
fn ssh_pinned(rig: &Rig, i: usize, known: &str) -> Output {
    let kh = rig.dir.join(format!("pinned-{i}"));
    fs::write(&kh, format!("{} {known}\n", rig.node(i).ip)).unwrap();
    rig.ssh_command()
        .args(["-o", "StrictHostKeyChecking=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", kh.display()))
        .args([&rig.node(i).ip.to_string(), "true"])
        .output()
        .unwrap()
}

#[test]
fn three_nodes_deploy_and_faults() {
    if skip() {
        return;
    }
    let t = Instant::now();
    let rig = Rig::up(3).expect("rig up");
    eprintln!("up(3): {:?}", t.elapsed());

    for i in 0..3 {
        let name = &rig.node(i).name;
        assert_eq!(ok(&rig.ssh(i, "hostname"), "ssh"), *name);
        // The node's Nix settings arrive through sshd's SetEnv.
        let conf = ok(&rig.ssh(i, "nix show-config"), "nix show-config");
        assert!(
            conf.contains("experimental-features = flakes nix-command"),
            "{conf}"
        );
        assert!(conf.lines().any(|l| l.trim() == "substituters ="), "{conf}");
    }

    // /nix is private per node.
    ok(&rig.ssh(0, "echo n1 > /nix/rig-probe"), "write probe");
    assert!(!rig.ssh(1, "test -e /nix/rig-probe").status.success());
    assert!(rig.node(0).nix_dir.join("rig-probe").is_file());
    assert!(!Path::new("/nix/rig-probe").exists());
    assert_eq!(
        ok(&rig.exec_in(0, &["cat", "/nix/rig-probe"]), "exec_in"),
        "n1"
    );
    assert_eq!(ok(&rig.exec_in(1, &["hostname"]), "exec_in"), "n2");

    // Build the fixture system of a generated host, copy it to n1 and activate it.
    let tmp = tempfile::tempdir().unwrap();
    let (flake, host) = generated_flake(tmp.path());
    let t = Instant::now();
    let top = build_fixture_toplevel(&flake, &host).expect("build");
    eprintln!("build: {:?}", t.elapsed());
    let t = Instant::now();
    ok(&rig.nix_copy_to(0, &[&top]), "nix copy");
    eprintln!("nix copy: {:?}", t.elapsed());
    assert!(
        !rig.ssh(1, &format!("test -e {top}")).status.success(),
        "closure leaked to n2"
    );
    let closure = ok(&rig.ssh(0, &format!("nix-store -qR {top}")), "closure");
    assert!(closure.lines().count() >= 2, "{closure}");
    let t = Instant::now();
    ok(
        &rig.ssh(0, &format!("{top}/bin/switch-to-configuration switch")),
        "switch",
    );
    eprintln!("activation: {:?}", t.elapsed());
    let state = rig.node(0).nix_dir.join("var/edgectl-test");
    let acts = fs::read_to_string(state.join("activations")).unwrap();
    let line: Vec<&str> = acts.lines().last().unwrap().split(' ').collect();
    assert_eq!(line[..2], ["switch", top.as_str()], "{acts}");
    assert!(line[2].parse::<u64>().is_ok(), "{acts}");
    assert_eq!(
        fs::read_to_string(state.join("current")).unwrap().trim(),
        top
    );
    let edge: Value =
        serde_json::from_str(&ok(&rig.ssh(0, &format!("cat {top}/edge.json")), "json")).unwrap();
    assert_eq!(edge["edge"]["node"]["name"], "worker1");

    // Behaviour `fail`: exit 1, recorded with a FAILED marker, `current` unchanged.
    ok(
        &rig.ssh(0, "echo fail > /nix/var/edgectl-test/behaviour"),
        "set behaviour",
    );
    let o = rig.ssh(0, &format!("{top}/bin/switch-to-configuration test"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let acts = fs::read_to_string(state.join("activations")).unwrap();
    assert!(acts.lines().last().unwrap().ends_with(" FAILED"), "{acts}");

    // Behaviour `cut-network`: the activation succeeds, then the node is cut off. It is run
    // through exec_in so the test does not wait for ssh to notice the dead connection.
    fs::write(state.join("behaviour"), "cut-network\n").unwrap();
    let o = rig.exec_in(
        0,
        &[&format!("{top}/bin/switch-to-configuration"), "switch"],
    );
    ok(&o, "cut-network switch");
    assert!(!rig.reachable(0, Duration::from_millis(300)));
    assert!(
        !state.join("behaviour").exists(),
        "a behaviour applies to one activation"
    );
    ok(
        &rig.exec_in(0, &["ip", "link", "set", "eth0", "up"]),
        "eth0 up",
    );
    assert!(rig.wait_reachable(0, Duration::from_secs(5)));
    ok(&rig.ssh(0, "true"), "ssh after eth0 up");

    // Partition from the root namespace side.
    rig.link_down(1);
    assert!(!rig.reachable(1, Duration::from_millis(300)));
    rig.link_up(1);
    assert!(rig.wait_reachable(1, Duration::from_secs(5)));
    // Node-to-node traffic goes over the bridge.
    let cfg = rig.ssh_config.display().to_string();
    assert_eq!(
        ok(
            &rig.exec_in(0, &["ssh", "-F", &cfg, "n2", "hostname"]),
            "ssh n1 -> n2"
        ),
        "n2"
    );

    // sshd restarts keep the host key; set_host_key replaces it.
    let key = rig.node(2).host_key_pub.clone();
    ok(&ssh_pinned(&rig, 2, &key), "pinned ssh");
    rig.kill_sshd(2);
    assert!(!rig.reachable(2, Duration::from_millis(300)));
    assert_eq!(
        ok(&rig.exec_in(2, &["hostname"]), "exec_in without sshd"),
        "n3"
    );
    rig.start_sshd(2);
    ok(&ssh_pinned(&rig, 2, &key), "pinned ssh after restart");
    rig.set_host_key(2);
    let new = rig.host_key(2);
    assert_ne!(new, key);
    assert_eq!(ssh_pinned(&rig, 2, &key).status.code(), Some(255));
    ok(&ssh_pinned(&rig, 2, &new), "ssh with the new key");

    // A process left running in a node dies with the rig.
    ok(
        &rig.ssh(1, "nohup sleep 600 >/dev/null 2>&1 &"),
        "background job",
    );
    let namespaces: Vec<String> = rig.nodes.iter().map(|n| n.ns.clone()).collect();
    let (bridge, dir) = (rig.bridge.clone(), rig.dir.clone());
    let t = Instant::now();
    drop(rig);
    eprintln!("down(3): {:?}", t.elapsed());
    let left = netns_names();
    for ns in &namespaces {
        assert!(!left.contains(ns.as_str()), "{ns} still in {left}");
    }
    assert!(!link_exists(&bridge));
    assert!(!dir.exists());
}

#[test]
fn concurrent_rigs_are_separate() {
    if skip() {
        return;
    }
    let rigs: Vec<Rig> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2).map(|_| s.spawn(|| Rig::up(1))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().expect("rig up"))
            .collect()
    });
    assert_ne!(rigs[0].subnet, rigs[1].subnet);
    assert_ne!(rigs[0].bridge, rigs[1].bridge);
    for r in &rigs {
        assert!(r.bridge.len() <= 15 && r.node(0).veth.len() <= 15);
        assert_eq!(ok(&r.ssh(0, "hostname"), "ssh"), "n1");
        ok(&r.ssh(0, "echo x > /nix/mine"), "write");
    }
    assert_ne!(rigs[0].node(0).nix_dir, rigs[1].node(0).nix_dir);
    let names: Vec<String> = rigs.iter().map(|r| r.node(0).ns.clone()).collect();
    for r in rigs {
        r.down();
    }
    let left = netns_names();
    assert!(names.iter().all(|n| !left.contains(n.as_str())), "{left}");
}

/// Starts `edgectl-rig up N` and reads the JSON it prints.
fn spawn_binary(n: usize) -> (Child, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgectl-rig"))
        .args(["up", &n.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut json = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        json += &line;
        if line == "}" {
            break;
        }
    }
    let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    (child, v)
}

fn ssh_json(v: &Value, node: usize) -> Output {
    Command::new(tool("ssh").unwrap())
        .arg("-F")
        .arg(v["ssh_config"].as_str().unwrap())
        .arg(v["nodes"][node]["ip"].as_str().unwrap())
        .arg("hostname")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn binary_tears_down_on_sigterm() {
    if skip() {
        return;
    }
    let (mut child, v) = spawn_binary(2);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(v["nodes"][1]["port"], 22);
    assert!(
        v["nodes"][0]["host_key_pub"]
            .as_str()
            .unwrap()
            .starts_with("ssh-ed25519 ")
    );
    assert_eq!(ok(&ssh_json(&v, 1), "ssh"), "n2");
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let left = netns_names();
    assert!(
        !left.contains(v["nodes"][0]["ns"].as_str().unwrap()),
        "{left}"
    );
    assert!(!Path::new(v["dir"].as_str().unwrap()).exists());
}

#[test]
fn reap_removes_rig_of_killed_process() {
    if skip() {
        return;
    }
    let (mut child, v) = spawn_binary(1);
    assert_eq!(ok(&ssh_json(&v, 0), "ssh"), "n1");
    child.kill().unwrap();
    child.wait().unwrap();
    let ns = v["nodes"][0]["ns"].as_str().unwrap();
    // Another test's `up` may reap it first (so no check that it is still there); what
    // matters is that it is gone afterwards.
    let removed = reap();
    eprintln!("reaped: {removed:?}");
    assert!(!netns_names().contains(ns));
    assert!(!link_exists(v["bridge"].as_str().unwrap()));
    assert!(!Path::new(v["dir"].as_str().unwrap()).exists());
}

/// The fixture alone (needs only nix): edge.json, the switch script, two paths, the payload.
#[test]
fn fixture_builds_with_payload() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        // Debian's nix-bin runs without a daemon: only root can write /nix/store.
        Err("building the fixture needs root (Debian's nix-bin has no daemon)".to_string())
    };
    if edgectl_testkit::require("nix", root).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(
        d.join("flake.nix"),
        r#"{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { self, nixpkgs }: {
    nixosConfigurations.big = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ (throw "must not be evaluated") ({...}: { edge.node.name = "big"; edge.test.payloadMiB = 1; }) ];
    };
  };
}
"#,
    )
    .unwrap();
    let top = build_fixture_toplevel(d, "big").expect("build");
    assert!(top.ends_with("-nixos-system-big-test-fixture"), "{top}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(format!("{top}/edge.json")).unwrap()).unwrap();
    assert_eq!(json["edge"]["test"]["payloadMiB"], 1);
    let payload = fs::metadata(format!("{top}/etc/payload")).unwrap();
    assert_eq!(payload.len(), 1 << 20);
    let q = Command::new(tool("nix-store").unwrap())
        .env("NIX_CONFIG", NIX_CONFIG)
        .args(["-qR", &top])
        .output()
        .unwrap();
    // The system, its etc, the payload that every node's closure shares, and the marker the
    // payload refers to (first in any export stream).
    let paths = ok(&q, "nix-store -qR");
    assert_eq!(paths.lines().count(), 4, "{paths}");
    for name in ["-edge-payload-1mib", "-edge-payload-marker"] {
        assert!(paths.lines().any(|p| p.ends_with(name)), "{name}: {paths}");
    }
    // An unknown goal is refused without touching any state.
    let o = Command::new(format!("{top}/bin/switch-to-configuration"))
        .arg("bogus")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
}

fn nixos_opts() -> RigOptions {
    RigOptions {
        nixos: true,
        ..Default::default()
    }
}

/// Runs `f` on a thread that has joined node i's network namespace: sockets it opens belong to
/// the node (and stay there when returned).
fn in_net<T: Send>(rig: &Rig, i: usize, f: impl FnOnce() -> T + Send) -> T {
    let ns = fs::File::open(format!("/run/netns/{}", rig.node(i).ns)).expect("node netns");
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: a namespace fd we own; CLONE_NEWNET matches its type. Only this thread moves.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// A TCP listener on node i, port `port` (never accepting: the kernel completes handshakes).
fn listen_tcp(rig: &Rig, i: usize, port: u16) -> TcpListener {
    in_net(rig, i, || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind tcp")
    })
}

/// A UDP socket on node i, port `port`.
fn listen_udp(rig: &Rig, i: usize, port: u16) -> UdpSocket {
    let s = in_net(rig, i, || {
        UdpSocket::bind(("0.0.0.0", port)).expect("bind udp")
    });
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    s
}

/// Whether a TCP connection from node `from` to node `to`'s rig address and `port` is accepted
/// (a dropped SYN times out).
fn tcp_open(rig: &Rig, from: usize, to: usize, port: u16) -> bool {
    let addr = SocketAddr::from((rig.node(to).ip, port));
    in_net(rig, from, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(700)).is_ok()
    })
}

/// Whether a datagram from node `from` reaches `sock` (on node `to`, port `port`).
fn udp_open(rig: &Rig, from: usize, to: usize, port: u16, sock: &UdpSocket) -> bool {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let msg = format!(
        "probe {}",
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let addr = SocketAddr::from((rig.node(to).ip, port));
    in_net(rig, from, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(msg.as_bytes(), addr).unwrap();
    });
    let mut buf = [0u8; 64];
    // Drop what an earlier probe left; only this probe's datagram counts.
    while let Ok(n) = sock.recv(&mut buf) {
        if &buf[..n] == msg.as_bytes() {
            return true;
        }
    }
    false
}

fn allow_rules(rig: &Rig, i: usize) -> String {
    ok(
        &rig.exec_in(i, &["iptables", "-w", "-S", "edgerig-allow"]),
        "iptables -S",
    )
}

/// A `--nixos` node drops what its configuration does not open (sshd and ICMP echo aside);
/// the firewall tool replaces the allow rules atomically and idempotently, per interface too.
#[test]
fn nixos_nodes_run_a_default_deny_firewall() {
    if skip() {
        return;
    }
    let rig = Rig::up_with(2, nixos_opts()).expect("rig up");
    let (tcp, udp) = (18080, 18081);
    let _l = listen_tcp(&rig, 1, tcp);
    let u = listen_udp(&rig, 1, udp);

    // A fresh node: sshd answers (from the controller and from a peer), nothing else does.
    ok(&rig.ssh(1, "true"), "ssh");
    let cfg = rig.ssh_config.display().to_string();
    assert_eq!(
        ok(
            &rig.exec_in(0, &["ssh", "-F", &cfg, "n2", "hostname"]),
            "ssh n1 -> n2"
        ),
        "n2"
    );
    assert!(!tcp_open(&rig, 0, 1, tcp), "TCP open before any rule");
    assert!(!udp_open(&rig, 0, 1, udp, &u), "UDP open before any rule");
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from((rig.node(1).ip, tcp)),
            Duration::from_millis(500)
        )
        .is_err(),
        "open to the controller"
    );
    // Replies to what the node itself opens get back in (ESTABLISHED).
    assert!(tcp_open(&rig, 1, 0, 22), "n2 -> n1:22");
    assert_eq!(allow_rules(&rig, 1), "-N edgerig-allow");

    // A rule for another interface opens nothing on eth0.
    rig.set_firewall(1, &format!("tcp {tcp} eth1\nudp {udp} eth1\n"))
        .expect("set firewall");
    assert!(!tcp_open(&rig, 0, 1, tcp));
    assert!(!udp_open(&rig, 0, 1, udp, &u));

    let rules = format!("# what firewallFor opens\n\ntcp {tcp}\nudp {udp} eth0\n");
    rig.set_firewall(1, &rules).expect("set firewall");
    assert!(tcp_open(&rig, 0, 1, tcp), "TCP closed after its rule");
    assert!(udp_open(&rig, 0, 1, udp, &u), "UDP closed after its rule");
    let once = allow_rules(&rig, 1);
    rig.set_firewall(1, &rules).expect("set firewall again");
    assert_eq!(allow_rules(&rig, 1), once, "applying twice changes nothing");
    assert_eq!(once.lines().count(), 3, "{once}");
    assert_eq!(
        ok(
            &rig.exec_in(1, &[edgectl_rig::NIXOS_FIREWALL, "--show"]),
            "--show"
        ),
        format!("tcp {tcp}\nudp {udp} eth0")
    );
    ok(&rig.ssh(1, "true"), "ssh with rules");

    // An invalid file is refused whole: the rules in force stay.
    for bad in [
        "tcp 70000\n",
        "sctp 5\n",
        "tcp 9-1\n",
        "tcp 5 eth0 x\n",
        "udp 5 e;th\n",
    ] {
        let e = rig
            .set_firewall(1, &format!("tcp 1\n{bad}"))
            .expect_err(bad);
        assert!(e.contains("line 2"), "{bad}: {e}");
    }
    assert_eq!(allow_rules(&rig, 1), once);

    // Rules replace, never add: a range opens TCP, and UDP is closed again.
    rig.set_firewall(1, &format!("tcp {}-{} eth0\n", tcp - 5, tcp + 5))
        .expect("set firewall");
    assert!(tcp_open(&rig, 0, 1, tcp));
    assert!(!udp_open(&rig, 0, 1, udp, &u));
    rig.set_firewall(1, "").expect("no rules");
    assert!(!tcp_open(&rig, 0, 1, tcp));
    ok(&rig.ssh(1, "true"), "ssh without rules");
    // Node 0 was never opened.
    let _l0 = listen_tcp(&rig, 0, tcp);
    assert!(!tcp_open(&rig, 1, 0, tcp));
}

/// What `edgectl verify` would upload to /var/lib/edgectl-agent cannot run on a `--nixos` node
/// (its /var is noexec, standing in for NixOS's missing FHS loader); on a plain node it runs.
/// Plain nodes have no firewall.
#[test]
fn a_binary_in_var_runs_only_on_plain_nodes() {
    if skip() {
        return;
    }
    let nixos = Rig::up_with(1, nixos_opts()).expect("rig up --nixos");
    let plain = Rig::up(1).expect("rig up");
    let run = "mkdir -p /var/lib/edgectl-agent && cp /bin/true /var/lib/edgectl-agent/edgectl && \
               /var/lib/edgectl-agent/edgectl && echo ran";
    let o = nixos.ssh(0, run);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("Permission denied"),
        "{}",
        text(&o.stderr)
    );
    assert!(
        nixos
            .node(0)
            .dir
            .join("var/lib/edgectl-agent/edgectl")
            .is_file()
    );
    assert_eq!(ok(&plain.ssh(0, run), "run from /var"), "ran");

    // A plain node accepts everything and has neither firewall tool nor rules.
    let _l = listen_tcp(&plain, 0, 18080);
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from((plain.node(0).ip, 18080)),
            Duration::from_millis(700)
        )
        .is_ok()
    );
    let rules = ok(
        &plain.exec_in(0, &["iptables", "-w", "-S", "INPUT"]),
        "iptables",
    );
    assert_eq!(rules, "-P INPUT ACCEPT");
    assert!(
        !plain
            .ssh(0, &format!("test -e {}", edgectl_rig::NIXOS_FIREWALL))
            .status
            .success()
    );
    assert!(plain.set_firewall(0, "tcp 1\n").is_err());
}

/// Activating a fixture system on a `--nixos` node loads the firewall that modules/lib's
/// `firewallFor` computes for its host file (the generated flake's copy of modules/lib), and a
/// reboot loads the booted system's again.
#[test]
fn nixos_activation_loads_the_configured_firewall() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let flake = tmp.path().join("gen");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../modules"),
        &flake.join("modules"),
    );
    fs::create_dir_all(flake.join("hosts")).unwrap();
    fs::write(
        flake.join("flake.nix"),
        r#"{
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
  outputs = { self, nixpkgs }: {
    nixosModules.default = import ./modules;
    nixosConfigurations.n2 = nixpkgs.lib.nixosSystem {
      system = "x86_64-linux";
      modules = [ self.nixosModules.default (./hosts + "/n2.nix") ];
    };
  };
}
"#,
    )
    .unwrap();
    fs::write(
        flake.join("hosts/n2.nix"),
        r#"{...}: {
  edge.node = { name = "n2"; roles = []; };
  edge.agent.enable = true;
  edge.zenoh = { enable = true; router = false; connect = []; interfaces = [ "eth0" ]; };
  edge.ray = { enable = true; role = "worker"; headAddress = "10.0.0.1"; interfaces = [ "eth1" ]; };
}
"#,
    )
    .unwrap();
    let top = build_fixture_toplevel(&flake, "n2").expect("build");
    let fw: Value =
        serde_json::from_str(&fs::read_to_string(format!("{top}/firewall.json")).unwrap()).unwrap();
    assert_eq!(fw["tcp"], serde_json::json!([22, 7448]), "{fw}");
    assert_eq!(fw["udp"], serde_json::json!([7443]), "{fw}");
    assert_eq!(
        fw["interfaces"]["eth0"]["tcp"],
        serde_json::json!([7447]),
        "{fw}"
    );
    assert!(
        fw["interfaces"]["eth1"]["tcp"]
            .as_array()
            .unwrap()
            .contains(&6380.into()),
        "{fw}"
    );
    let rules = fs::read_to_string(format!("{top}/firewall.rules")).unwrap();
    assert!(
        rules.lines().any(|l| l == "tcp 10002-19999 eth1"),
        "{rules}"
    );

    let rig = Rig::up_with(2, nixos_opts()).expect("rig up");
    let _agent_probe = listen_tcp(&rig, 1, 7448);
    let agent = listen_udp(&rig, 1, 7443);
    let _zenoh = listen_tcp(&rig, 1, 7447);
    let _ray = listen_tcp(&rig, 1, 6380);
    assert!(!udp_open(&rig, 0, 1, 7443, &agent));
    assert!(!tcp_open(&rig, 0, 1, 7448));

    ok(&rig.nix_copy_to(1, &[&top]), "nix copy");
    ok(
        &rig.ssh(1, &format!("{top}/bin/switch-to-configuration test")),
        "switch",
    );
    let check = |when: &str| {
        assert!(udp_open(&rig, 0, 1, 7443, &agent), "{when}: agent (UDP)");
        assert!(tcp_open(&rig, 0, 1, 7448), "{when}: probe (TCP)");
        assert!(tcp_open(&rig, 0, 1, 7447), "{when}: zenoh on eth0");
        assert!(
            !tcp_open(&rig, 0, 1, 6380),
            "{when}: ray is open on eth1 only"
        );
        assert_eq!(
            ok(
                &rig.exec_in(1, &[edgectl_rig::NIXOS_FIREWALL, "--show"]),
                "--show"
            ),
            rules.trim_end(),
            "{when}"
        );
    };
    check("after switch");
    // A reboot starts from the base again and loads the booted system's firewall: what was
    // opened by hand is closed.
    ok(
        &rig.ssh(1, &format!("{top}/bin/switch-to-configuration switch")),
        "switch",
    );
    let _extra = listen_tcp(&rig, 1, 18080);
    rig.set_firewall(1, &format!("{rules}tcp 18080\n"))
        .expect("set firewall");
    assert!(tcp_open(&rig, 0, 1, 18080));
    rig.reboot(1, Duration::from_millis(100));
    assert!(!tcp_open(&rig, 0, 1, 18080), "open after a reboot");
    check("after reboot");
    drop(rig);

    // On a plain node the same system activates, and no firewall appears.
    let plain = Rig::up(1).expect("rig up");
    ok(&plain.nix_copy_to(0, &[&top]), "nix copy");
    ok(
        &plain.ssh(0, &format!("{top}/bin/switch-to-configuration switch")),
        "switch on a plain node",
    );
    assert_eq!(
        ok(
            &plain.exec_in(0, &["iptables", "-w", "-S", "INPUT"]),
            "iptables"
        ),
        "-P INPUT ACCEPT"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
