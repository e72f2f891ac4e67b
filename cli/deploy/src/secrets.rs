//! `[[secret]]`s on the deploy side, below `plan` and `apply`: each one's bytes are read once
//! on the controller (a file, or a command's standard output), stand in plans only as their
//! SHA-256, and reach the nodes over SSH only: never in argv, the flake or the Nix store.
//!
//! Writing one on a node ([`upload`]): its directory is made if missing (root, 0755), the
//! bytes go to a temporary file beside it with the secret's mode ([`Host::upload`], itself a
//! temporary file and a rename), that file gets the secret's owner and group, and a rename puts
//! it in place. The destination thus only ever holds the old secret or the new one with its
//! final owner and mode.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgectl_model::{Cluster, Secret, SecretSource, SecretWhen};

use crate::event::{Phase, Sender, step};
use crate::host::{Host, argv};
use crate::report::{NodePlan, Plan, SecretChange, SecretPlan};

/// The most a secret may hold: keys and tokens, not data sets.
pub const MAX_SECRET_BYTES: usize = 16 << 20;
/// How long a secret's `command` may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

const SECRET_DIR: &str = include_str!("sh/secret_dir.sh");
const SECRET_PLACE: &str = include_str!("sh/secret_place.sh");
const SECRET_STATE: &str = include_str!("sh/secret_state.sh");

/// Beside the destination while it is written (and [`Host::upload`]'s own temporary name).
pub const TEMP_SUFFIX: &str = ".edgectl-secret";

/// One secret read on the controller: where and how it goes, and its bytes. Its `Debug` never
/// shows the bytes.
pub struct Material {
    pub name: String,
    pub dest: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    pub when: SecretWhen,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("name", &self.name)
            .field("dest", &self.dest)
            .field("owner", &self.owner)
            .field("group", &self.group)
            .field("mode", &format_args!("{:04o}", self.mode))
            .field("when", &self.when)
            .field("sha256", &self.sha256)
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .finish()
    }
}

impl Material {
    /// A secret with these bytes (the digest is worked out here).
    pub fn new(s: &Secret, bytes: Vec<u8>) -> Material {
        Material {
            name: s.name.clone(),
            dest: s.dest.clone(),
            owner: s.owner.clone(),
            group: s.group.clone(),
            mode: s.mode,
            when: s.when,
            sha256: sha256_hex(&bytes),
            bytes,
        }
    }
}

/// The secrets of a run's selected nodes, each read once, by node in topology order.
#[derive(Debug, Default, Clone)]
pub struct Secrets {
    by_node: BTreeMap<String, Vec<Arc<Material>>>,
}

impl Secrets {
    /// Reads every secret that goes to a selected node (sources of the others are not
    /// touched). The first that cannot be read is the error, naming the secret and its file
    /// or command: nothing has been done on any node yet.
    pub fn read(c: &Cluster, topology: &Path, selected: &[String]) -> Result<Secrets, String> {
        let base = topology.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let mut by_node: BTreeMap<String, Vec<Arc<Material>>> = BTreeMap::new();
        for s in &c.secrets {
            if !s.nodes.iter().any(|n| selected.contains(n)) {
                continue;
            }
            let m = Arc::new(Material::new(s, read_source(s, base)?));
            for n in s.nodes.iter().filter(|n| selected.contains(n)) {
                by_node.entry(n.clone()).or_default().push(m.clone());
            }
        }
        Ok(Secrets { by_node })
    }

    /// From secrets already read (tests).
    pub fn from_nodes(by_node: BTreeMap<String, Vec<Arc<Material>>>) -> Secrets {
        Secrets { by_node }
    }

    /// The node's secrets, in topology order.
    pub fn for_node(&self, node: &str) -> &[Arc<Material>] {
        self.by_node
            .get(node)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }

    /// A saved plan is applied only with the secrets it showed: the same names on each of its
    /// nodes, with the same digests.
    pub fn check_plan(&self, plan: &Plan, selected: &[String]) -> Result<(), String> {
        for np in plan.nodes.iter().filter(|n| selected.contains(&n.node)) {
            let now = self.for_node(&np.node);
            let same = now.len() == np.secrets.len()
                && now.iter().all(|m| {
                    np.secrets
                        .iter()
                        .any(|p| p.name == m.name && p.sha256 == m.sha256)
                });
            if !same {
                let was: Vec<&str> = np.secrets.iter().map(|p| p.name.as_str()).collect();
                let changed: Vec<&str> = now
                    .iter()
                    .filter(|m| {
                        !np.secrets
                            .iter()
                            .any(|p| p.name == m.name && p.sha256 == m.sha256)
                    })
                    .map(|m| m.name.as_str())
                    .chain(
                        was.iter()
                            .copied()
                            .filter(|w| !now.iter().any(|m| m.name == *w)),
                    )
                    .collect();
                return Err(format!(
                    "the secrets of {} changed since this plan was made ({}); run `edgectl plan` again",
                    np.node,
                    changed.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret's bytes: its file (relative to the topology's directory), or what its command
/// prints (run in that directory, no shell, stdin empty, at most [`COMMAND_TIMEOUT`]).
fn read_source(s: &Secret, base: &Path) -> Result<Vec<u8>, String> {
    let bytes = match &s.source {
        SecretSource::File(f) => {
            let p = base.join(f);
            std::fs::read(&p).map_err(|e| {
                format!(
                    "secret `{}`: cannot read its file {}: {e} (`file` is relative to the topology file)",
                    s.name,
                    p.display()
                )
            })?
        }
        SecretSource::Command(c) => {
            let out = run_command(c, base, COMMAND_TIMEOUT)
                .map_err(|e| format!("secret `{}`: its command `{}` {e}", s.name, c.join(" ")))?;
            if out.is_empty() {
                return Err(format!(
                    "secret `{}`: its command `{}` printed nothing; a secret's command prints the secret on its standard output",
                    s.name,
                    c.join(" ")
                ));
            }
            out
        }
    };
    if bytes.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "secret `{}` holds {} bytes, more than the {} MiB a secret may hold",
            s.name,
            bytes.len(),
            MAX_SECRET_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// Runs argv in `dir` and returns its standard output; an error (worded to follow "its
/// command `...`") when it cannot start, fails, or outlives `limit`.
fn run_command(c: &[String], dir: &Path, limit: Duration) -> Result<Vec<u8>, String> {
    let (prog, args) = c.split_first().ok_or("is empty")?;
    let mut child = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|x| Box::new(x) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|x| Box::new(x) as Box<dyn Read + Send>),
    );
    let end = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("did not finish within {} s", limit.as_secs()));
            }
            Err(e) => return Err(format!("cannot be waited for: {e}")),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&stderr);
        let text = text.trim();
        let tail: String = text
            .chars()
            .rev()
            .take(400)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(match status.code() {
            Some(code) => format!("exited with status {code}: {tail}"),
            None => format!("was killed by a signal: {tail}"),
        });
    }
    Ok(stdout)
}

/// Whether a goal writes secrets: those that activate (or make bootable) a system. `push`
/// copies closures only; `dry-activate` and `build` change nothing.
pub fn goal_uploads(goal: crate::activate::Goal) -> bool {
    use crate::activate::Goal;
    matches!(goal, Goal::Switch | Goal::Boot | Goal::Test)
}

/// Writes one secret on the node (see the module's documentation).
pub fn upload(h: &dyn Host, m: &Material) -> Result<(), String> {
    let dir = Path::new(&m.dest)
        .parent()
        .and_then(Path::to_str)
        .ok_or("its destination has no directory")?;
    let tmp = format!("{}{TEMP_SUFFIX}", m.dest);
    node_script(h, SECRET_DIR, "edgectl-secret-dir", &[dir])?;
    h.upload(&tmp, &m.bytes, m.mode)
        .map_err(|e| e.to_string())?;
    node_script(
        h,
        SECRET_PLACE,
        "edgectl-secret-place",
        &[&tmp, &m.dest, &m.owner, &m.group],
    )
}

/// Runs `sh -c SCRIPT NAME ARGS...` as root; an error says how it failed.
fn node_script(h: &dyn Host, script: &str, name: &str, args: &[&str]) -> Result<(), String> {
    let mut a = argv(["sh", "-c", script, name]);
    a.extend(args.iter().map(|s| s.to_string()));
    let o = h.run(&a, true).map_err(|e| e.to_string())?;
    if o.ok() {
        Ok(())
    } else {
        Err(format!("exit {}: {}", o.status, o.stderr.trim()))
    }
}

/// Writes the node's secrets of one `when` (`None`: all of them), in topology order, as one
/// `secrets` step; the first that fails stops it, named in the error. No step when there is
/// nothing to write.
pub fn deliver(
    h: &dyn Host,
    node: &str,
    list: &[Arc<Material>],
    when: Option<SecretWhen>,
    tx: &Sender,
) -> Result<(), String> {
    let chosen: Vec<&Material> = list
        .iter()
        .map(Arc::as_ref)
        .filter(|m| when.is_none_or(|w| m.when == w))
        .collect();
    if chosen.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = chosen.iter().map(|m| m.name.as_str()).collect();
    let what = match when {
        Some(w) => format!("writing {} ({w} activation)", names.join(", ")),
        None => format!("writing {}", names.join(", ")),
    };
    step(tx, node, Phase::Secrets, what, || {
        for m in &chosen {
            upload(h, m).map_err(|e| format!("secret `{}` ({}): {e}", m.name, m.dest))?;
        }
        Ok(((), format!("{} secret(s) written", chosen.len())))
    })
}

/// What a node holds at a secret's destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub sha256: String,
    pub uid: String,
    pub gid: String,
    pub user: String,
    pub group: String,
    pub mode: u32,
}

/// Reads, in one round trip, what the node holds at each destination (`None`: no file).
pub fn inspect(h: &dyn Host, list: &[Arc<Material>]) -> Result<Vec<Option<Held>>, String> {
    let mut a = argv(["sh", "-c", SECRET_STATE, "edgectl-secret-state"]);
    a.extend(list.iter().map(|m| m.dest.clone()));
    let o = h.run(&a, true).map_err(|e| e.to_string())?;
    if !o.ok() {
        return Err(format!(
            "reading the secrets' destinations: exit {}: {}",
            o.status,
            o.stderr.trim()
        ));
    }
    let lines: Vec<&str> = o.stdout.lines().collect();
    if lines.len() != list.len() {
        return Err(format!(
            "reading the secrets' destinations: {} lines for {} secrets",
            lines.len(),
            list.len()
        ));
    }
    Ok(lines.into_iter().map(parse_held).collect())
}

/// One line of `secret_state.sh`.
fn parse_held(line: &str) -> Option<Held> {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        [sha, uid, gid, user, group, mode] if sha.len() == 64 => Some(Held {
            sha256: sha.to_string(),
            uid: uid.to_string(),
            gid: gid.to_string(),
            user: user.to_string(),
            group: group.to_string(),
            mode: u32::from_str_radix(mode, 8).ok()?,
        }),
        _ => None,
    }
}

/// One secret's plan line from what the node holds (or why it could not be read).
pub fn judge(m: &Material, held: Result<Option<&Held>, &str>) -> SecretPlan {
    let (change, detail) = match held {
        Err(e) => (SecretChange::Unknown, Some(e.to_string())),
        Ok(None) => (SecretChange::New, None),
        Ok(Some(h)) => {
            let mut diff = Vec::new();
            if h.sha256 != m.sha256 {
                diff.push("content differs".to_string());
            }
            if m.owner != h.user && m.owner != h.uid {
                diff.push(format!("owner {}, wants {}", h.user, m.owner));
            }
            if m.group != h.group && m.group != h.gid {
                diff.push(format!("group {}, wants {}", h.group, m.group));
            }
            if h.mode != m.mode {
                diff.push(format!("mode {:04o}, wants {:04o}", h.mode, m.mode));
            }
            if diff.is_empty() {
                (SecretChange::Unchanged, None)
            } else {
                (SecretChange::Changed, Some(diff.join(", ")))
            }
        }
    };
    SecretPlan {
        name: m.name.clone(),
        dest: m.dest.clone(),
        when: m.when.to_string(),
        sha256: m.sha256.clone(),
        change,
        detail,
    }
}

/// The node's secrets in its plan: what it holds read over `h` (None: the node could not be
/// reached, so each is unknown).
pub fn plan_node(h: Option<&dyn Host>, list: &[Arc<Material>]) -> Vec<SecretPlan> {
    if list.is_empty() {
        return Vec::new();
    }
    let held = match h {
        Some(h) => inspect(h, list),
        None => Err("the node could not be reached".to_string()),
    };
    match held {
        Ok(held) => list
            .iter()
            .zip(&held)
            .map(|(m, x)| judge(m, Ok(x.as_ref())))
            .collect(),
        Err(e) => list.iter().map(|m| judge(m, Err(&e))).collect(),
    }
}

/// Adds the node's secrets to its plan.
pub fn add_to_plan(np: &mut NodePlan, h: Option<&dyn Host>, list: &[Arc<Material>]) {
    np.secrets = plan_node(h, list);
}

#[cfg(test)]
mod decisions {
    use super::*;
    use crate::event::State as Ev;
    use crate::fake::{Call, FakeHost, exit, ok};

    fn secret(name: &str, dest: &str, when: SecretWhen) -> Secret {
        Secret {
            name: name.into(),
            source: SecretSource::File(name.into()),
            dest: dest.into(),
            owner: "ray".into(),
            group: "keys".into(),
            mode: 0o440,
            nodes: vec!["n1".into()],
            when,
        }
    }

    fn material(name: &str, dest: &str, when: SecretWhen, bytes: &str) -> Arc<Material> {
        Arc::new(Material::new(
            &secret(name, dest, when),
            bytes.as_bytes().to_vec(),
        ))
    }

    /// A node that does whatever it is asked.
    fn node() -> FakeHost {
        let h = FakeHost::new("n1");
        h.on_name("edgectl-secret-dir", |_| ok(""));
        h.on_name("edgectl-secret-place", |_| ok(""));
        h
    }

    /// The calls as short words: `dir D`, `upload P MODE`, `place TMP DEST OWNER GROUP`.
    fn trace(h: &FakeHost) -> Vec<String> {
        h.calls()
            .iter()
            .map(|c| match c {
                Call::Upload { path, mode } => format!("upload {path} {mode:o}"),
                Call::Run { argv, root } => {
                    assert!(root, "as root: {argv:?}");
                    let name = c.script_name().unwrap_or("?");
                    format!(
                        "{} {}",
                        name.trim_start_matches("edgectl-secret-"),
                        argv[4..].join(" ")
                    )
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn sha256_is_the_standard_one() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_secret_is_written_beside_its_destination_then_owned_and_renamed_into_place() {
        let h = node();
        let m = material("tok", "/run/keys/app/tok", SecretWhen::Before, "s3cret");
        upload(&h, &m).unwrap();
        assert_eq!(
            trace(&h),
            [
                "dir /run/keys/app",
                "upload /run/keys/app/tok.edgectl-secret 440",
                "place /run/keys/app/tok.edgectl-secret /run/keys/app/tok ray keys",
            ]
        );
        let all = format!("{:?}", h.calls());
        assert!(
            !all.contains("s3cret"),
            "the content is never in argv: {all}"
        );
        assert!(!format!("{m:?}").contains("s3cret"), "nor in Debug: {m:?}");
    }

    #[test]
    fn secrets_of_one_when_go_in_order_as_one_step_and_the_first_failure_stops_it() {
        let h = node();
        let list = vec![
            material("a", "/run/keys/a", SecretWhen::Before, "1"),
            material("b", "/var/lib/b", SecretWhen::After, "2"),
            material("c", "/etc/c", SecretWhen::Before, "3"),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        deliver(&h, "n1", &list, Some(SecretWhen::Before), &tx).unwrap();
        let uploads: Vec<String> = trace(&h)
            .into_iter()
            .filter(|t| t.starts_with("upload"))
            .collect();
        assert_eq!(
            uploads,
            [
                "upload /run/keys/a.edgectl-secret 440",
                "upload /etc/c.edgectl-secret 440"
            ]
        );
        let seen: Vec<(Phase, Ev, String)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.phase, e.state, e.message))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    Phase::Secrets,
                    Ev::Started,
                    "writing a, c (before activation)".into()
                ),
                (Phase::Secrets, Ev::Ok, "2 secret(s) written".into()),
            ]
        );

        // Nothing of that `when`: no step at all.
        let h = node();
        deliver(&h, "n1", &list[..1], Some(SecretWhen::After), &tx).unwrap();
        assert!(h.calls().is_empty());
        assert!(rx.try_recv().is_err());

        // An owner the node does not know: that secret fails, named, and the next one is not
        // written.
        let h = node();
        h.on_name("edgectl-secret-place", |a| {
            if a[1] == "/run/keys/a" {
                exit(1, "chown: invalid user: 'ray:keys'")
            } else {
                ok("")
            }
        });
        let e = deliver(&h, "n1", &list, None, &tx).unwrap_err();
        assert_eq!(
            e,
            "secret `a` (/run/keys/a): exit 1: chown: invalid user: 'ray:keys'"
        );
        assert!(
            !trace(&h).iter().any(|t| t.contains("/var/lib/b")),
            "{:?}",
            trace(&h)
        );
        let last = std::iter::from_fn(|| rx.try_recv().ok()).last().unwrap();
        assert_eq!((last.phase, last.state), (Phase::Secrets, Ev::Failed));
    }

    #[test]
    fn the_plan_compares_digest_owner_group_and_mode_never_the_content() {
        let list = vec![
            material("a", "/run/keys/a", SecretWhen::Before, "one"),
            material("b", "/run/keys/b", SecretWhen::After, "two"),
            material("c", "/run/keys/c", SecretWhen::Before, "three"),
            material("d", "/run/keys/d", SecretWhen::Before, "four"),
        ];
        let h = FakeHost::new("n1");
        let (a, b, d) = (
            list[0].sha256.clone(),
            list[1].sha256.clone(),
            list[3].sha256.clone(),
        );
        h.on_name("edgectl-secret-state", move |args| {
            assert_eq!(
                args,
                ["/run/keys/a", "/run/keys/b", "/run/keys/c", "/run/keys/d"]
            );
            ok(&format!(
                "{a} 1000 1001 ray keys 440\n{b} 0 0 root root 644\n-\n{d} 0 0 root root 440\n"
            ))
        });
        let p = plan_node(Some(&h), &list);
        let changes: Vec<(SecretChange, Option<&str>)> =
            p.iter().map(|s| (s.change, s.detail.as_deref())).collect();
        assert_eq!(
            changes,
            [
                (SecretChange::Unchanged, None),
                (
                    SecretChange::Changed,
                    Some("owner root, wants ray, group root, wants keys, mode 0644, wants 0440")
                ),
                (SecretChange::New, None),
                (
                    SecretChange::Changed,
                    Some("owner root, wants ray, group root, wants keys")
                ),
            ]
        );
        assert_eq!(p[1].when, "after");
        assert_eq!(p[0].sha256, sha256_hex(b"one"));
        let json = serde_json::to_string(&p).unwrap();
        for content in ["one", "two", "three", "four"] {
            assert!(!json.contains(&format!("\"{content}\"")), "{json}");
        }
        // Numeric ids match as well as names; a changed content is named first.
        let held = Held {
            sha256: "0".repeat(64),
            uid: "1000".into(),
            gid: "1001".into(),
            user: "ray".into(),
            group: "keys".into(),
            mode: 0o440,
        };
        let mut s = secret("x", "/run/keys/x", SecretWhen::Before);
        s.owner = "1000".into();
        s.group = "1001".into();
        let m = Material::new(&s, b"x".to_vec());
        let j = judge(&m, Ok(Some(&held)));
        assert_eq!(
            (j.change, j.detail.as_deref()),
            (SecretChange::Changed, Some("content differs"))
        );
    }

    #[test]
    fn a_node_that_cannot_be_read_leaves_its_secrets_unknown_with_why() {
        let list = vec![material("a", "/run/keys/a", SecretWhen::Before, "one")];
        let p = plan_node(None, &list);
        assert_eq!(p[0].change, SecretChange::Unknown);
        let h = FakeHost::new("n1");
        h.on_name("edgectl-secret-state", |_| ok("garbage\nmore\n"));
        let p = plan_node(Some(&h), &list);
        assert_eq!(p[0].change, SecretChange::Unknown);
        assert!(
            p[0].detail.as_deref().unwrap().contains("2 lines for 1"),
            "{p:?}"
        );
        assert!(!p[0].pending());
        assert!(
            plan_node(Some(&h), &[]).is_empty(),
            "no secrets, no round trip"
        );
    }

    fn cluster_with(secrets: Vec<Secret>) -> Cluster {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        let mut c = edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster;
        c.secrets = secrets;
        c
    }

    #[test]
    fn sources_are_read_on_the_controller_for_the_selected_nodes_only() {
        let d = tempfile::tempdir().unwrap();
        let topo = d.path().join("cluster.toml");
        std::fs::write(d.path().join("tok"), "file-secret").unwrap();
        let mut a = secret("a", "/run/keys/a", SecretWhen::Before);
        a.source = SecretSource::File("tok".into());
        a.nodes = vec!["head".into(), "worker1".into()];
        let mut b = secret("b", "/run/keys/b", SecretWhen::After);
        // Run in the topology's directory, without a shell.
        b.source = SecretSource::Command(vec!["cat".into(), "tok".into()]);
        b.nodes = vec!["worker1".into()];
        let mut missing = secret("m", "/run/keys/m", SecretWhen::Before);
        missing.source = SecretSource::File("nope".into());
        missing.nodes = vec!["worker3".into()];
        let c = cluster_with(vec![a, b, missing.clone()]);
        let s = Secrets::read(&c, &topo, &["head".into(), "worker1".into()]).unwrap();
        let names =
            |n: &str| -> Vec<String> { s.for_node(n).iter().map(|m| m.name.clone()).collect() };
        assert_eq!(names("head"), ["a"]);
        assert_eq!(names("worker1"), ["a", "b"]);
        assert!(
            names("worker3").is_empty(),
            "not selected: its file is not read"
        );
        assert_eq!(s.for_node("worker1")[1].sha256, sha256_hex(b"file-secret"));

        let e = Secrets::read(&c, &topo, &["worker3".into()]).unwrap_err();
        assert!(e.starts_with("secret `m`: cannot read its file "), "{e}");
        assert!(
            e.contains(&d.path().join("nope").display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_command_that_fails_prints_nothing_or_cannot_start_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let topo = d.path().join("cluster.toml");
        let read = |argv: &[&str]| {
            let mut s = secret("cmd", "/run/keys/cmd", SecretWhen::Before);
            s.source = SecretSource::Command(argv.iter().map(|x| x.to_string()).collect());
            s.nodes = vec!["head".into()];
            Secrets::read(&cluster_with(vec![s]), &topo, &["head".into()]).map(|_| ())
        };
        let e = read(&["sh", "-c", "echo no such key >&2; exit 3"]).unwrap_err();
        assert_eq!(
            e,
            "secret `cmd`: its command `sh -c echo no such key >&2; exit 3` exited with status 3: no such key"
        );
        let e = read(&["true"]).unwrap_err();
        assert!(e.contains("printed nothing"), "{e}");
        let e = read(&["/nonexistent/edgectl-test-program"]).unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
        assert!(read(&["echo", "ok"]).is_ok());
        let e = run_command(
            &["sleep".into(), "5".into()],
            d.path(),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(e.contains("did not finish within"), "{e}");
    }

    #[test]
    fn a_saved_plan_is_applied_only_with_the_secrets_it_showed() {
        let m = material("a", "/run/keys/a", SecretWhen::Before, "one");
        let s = Secrets::from_nodes([("n1".to_string(), vec![m.clone()])].into());
        let np = |secrets: Vec<SecretPlan>| NodePlan {
            node: "n1".into(),
            change: crate::report::Change::Unchanged,
            current: None,
            target: "/nix/store/x".into(),
            option_changes: vec![],
            closure: None,
            error: None,
            apply_in_progress: None,
            secrets,
        };
        let plan = |secrets| Plan {
            topology: "t".into(),
            topology_hash: "h".into(),
            nodes: vec![np(secrets)],
        };
        let sel = ["n1".to_string()];
        let same = judge(&m, Ok(None));
        assert!(s.check_plan(&plan(vec![same.clone()]), &sel).is_ok());
        let mut other = same.clone();
        other.sha256 = sha256_hex(b"two");
        let e = s.check_plan(&plan(vec![other]), &sel).unwrap_err();
        assert!(
            e.contains("secrets of n1 changed since this plan was made (a)"),
            "{e}"
        );
        assert!(
            s.check_plan(&plan(vec![]), &sel).is_err(),
            "a secret added since"
        );
        assert!(
            s.check_plan(&plan(vec![]), &[]).is_ok(),
            "nodes not applied are not compared"
        );
    }
}
