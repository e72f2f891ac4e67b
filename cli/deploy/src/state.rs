//! `.edgectl/state.json` beside the topology: what was applied where, and the host keys seen at
//! first contact. Written atomically; guarded by a lock so two applies cannot interleave.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node's SSH host key as recorded in the state file (its two fields are the file's
/// `host_key` and `host_key_public`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostKey {
    /// `SHA256:...` as OpenSSH prints it.
    #[serde(rename = "host_key")]
    pub fingerprint: String,
    /// `ssh-ed25519 AAAA...`, for the known_hosts file that `nix copy` (OpenSSH) reads.
    #[serde(rename = "host_key_public")]
    pub public: String,
}

/// A node's checks in its last `verify`: when, and how many passed, failed and were skipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub at: u64,
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    /// The system store path last activated and confirmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The SSH host key seen at first contact; any other is refused.
    #[serde(flatten)]
    pub host_key: Option<HostKey>,
    /// The edge.* settings applied, for option-level plans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<u64>,
    /// What the last apply did to this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// The last `verify` of this node, for `edgectl status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<VerifyRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_hash: Option<String>,
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeState>,
}

/// Why the state directory could not be used; each message names the file and what to do.
#[derive(Debug)]
pub enum StateError {
    /// A file of the state directory could not be read or written.
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// `state.json` exists but is not edgectl state.
    Corrupt { path: PathBuf, error: String },
    /// Another edgectl run holds the state directory.
    Busy { path: PathBuf, holder: String },
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            StateError::Corrupt { path, error } => write!(
                f,
                "{}: {error} (fix the file, or remove it to forget what was applied and the pinned host keys)",
                path.display()
            ),
            StateError::Busy { path, holder } => write!(
                f,
                "another `edgectl apply` holds {} (pid {holder}); wait for it to finish",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Io { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

pub fn dir_for(topology: &Path) -> PathBuf {
    topology
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .join(".edgectl")
}

/// What `.edgectl/.gitignore` says: the folder holds the CA and cluster keys, known hosts and
/// state, none of which belongs in the user's repository.
const GITIGNORE: &str =
    "# Written by edgectl: keys, known hosts and state stay out of version control.\n*\n";

/// Creates the state folder readable by its owner only (it holds private keys), tightens one
/// an older edgectl created world-readable, and keeps it out of the user's repository.
pub fn ensure(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let mode = fs::metadata(dir).map_err(io(dir))?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700)).map_err(io(dir))?;
    }
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        write_atomic(&ignore, GITIGNORE.as_bytes()).map_err(io(&ignore))?;
    }
    Ok(())
}

impl State {
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let p = dir.join("state.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateError::Corrupt {
                path: p.clone(),
                error: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
                version: 1,
                ..Default::default()
            }),
            Err(e) => Err(io(&p)(e)),
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let p = dir.join("state.json");
        // Serializing plain data cannot fail; an empty file would be worse than an error.
        let mut text = serde_json::to_vec_pretty(self).unwrap_or_default();
        text.push(b'\n');
        write_atomic(&p, &text).map_err(io(&p))
    }
}

/// Write to a temporary file in the same directory, sync, then rename over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|s| s.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// An exclusive lock on the cluster's state directory for the life of the value.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn acquire(dir: &Path) -> Result<Lock, StateError> {
        ensure(dir)?;
        let p = dir.join("apply.lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        match f.try_lock() {
            Ok(()) => {
                let _ = f.set_len(0);
                let _ = (&f).write_all(format!("{}\n", std::process::id()).as_bytes());
                Ok(Lock { _file: f })
            }
            Err(_) => {
                let holder = fs::read_to_string(&p).unwrap_or_default();
                Err(StateError::Busy {
                    path: p,
                    holder: holder.trim().to_string(),
                })
            }
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_pinned_host_key_keeps_the_files_two_fields() {
        let old = r#"{"system":"/nix/store/x","host_key":"SHA256:abc","host_key_public":"ssh-ed25519 AAAA"}"#;
        let n: NodeState = serde_json::from_str(old).unwrap();
        assert_eq!(
            n.host_key,
            Some(HostKey {
                fingerprint: "SHA256:abc".into(),
                public: "ssh-ed25519 AAAA".into()
            })
        );
        let back: serde_json::Value = serde_json::to_value(&n).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );
        // Half a key pins nothing, as before; no key writes neither field.
        let half: NodeState = serde_json::from_str(r#"{"host_key":"SHA256:abc"}"#).unwrap();
        assert_eq!(half.host_key, None);
        let none = serde_json::to_string(&NodeState::default()).unwrap();
        assert!(!none.contains("host_key"), "{none}");
    }

    #[test]
    fn the_state_folder_is_private_and_ignored_by_git() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join(".edgectl");
        ensure(&d).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d), 0o700);
        let ignore = fs::read_to_string(d.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|l| l == "*"), "{ignore}");
        // One an older edgectl left world-readable is tightened; a user's .gitignore is kept.
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(d.join(".gitignore"), "mine\n").unwrap();
        ensure(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
        assert_eq!(fs::read_to_string(d.join(".gitignore")).unwrap(), "mine\n");
        // And a lock takes the same path.
        let d2 = t.path().join("other/.edgectl");
        drop(Lock::acquire(&d2).unwrap());
        assert_eq!(mode(&d2), 0o700);
    }
}
