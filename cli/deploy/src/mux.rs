//! One OpenSSH connection per node for all of a command's `ssh` and `nix copy` children
//! (OpenSSH's ControlMaster): each child otherwise pays a TCP connect, a key exchange and a
//! login of its own, and on a node with little CPU to spare (or across an ocean) that is most
//! of a short command's time.
//!
//! The master is our own child, started on first use and stopped when its [`Mux`] is dropped
//! or edgectl ends (it watches edgectl's end of a pipe); it never outlives the command (no
//! `ControlPersist`), so nothing is left logged in. A child
//! that cannot reach the master (it failed to start, or died with the connection) makes its
//! own connection: OpenSSH does that by itself under `ControlMaster=no`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct Mux {
    state: Mutex<State>,
}

#[derive(Default)]
enum State {
    #[default]
    Unstarted,
    Up {
        master: Child,
        dir: PathBuf,
        socket: PathBuf,
    },
    /// No master: the children connect on their own.
    Off,
}

impl Mux {
    /// The options that send an OpenSSH child through the master for `dest`, started now with
    /// `base` (the node's own options) when it is not yet; none when it cannot be.
    pub(crate) fn options(&self, base: &[String], dest: &str, wait: Duration) -> Vec<String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*s, State::Unstarted) {
            *s = start(base, dest, wait).unwrap_or(State::Off);
        }
        match &*s {
            State::Up { socket, .. } => vec![
                "-o".into(),
                format!("ControlPath={}", socket.display()),
                "-o".into(),
                "ControlMaster=no".into(),
            ],
            _ => Vec::new(),
        }
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        let s = std::mem::take(self.state.get_mut().unwrap_or_else(|p| p.into_inner()));
        if let State::Up {
            mut master, dir, ..
        } = s
        {
            // End of input: the watcher stops the master and removes the directory.
            drop(master.stdin.take());
            let _ = master.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A private directory for the socket: whoever can open it can run commands on the node.
/// Short (a socket path has about 100 bytes) and without spaces (`NIX_SSHOPTS` is split on
/// them).
fn private_dir() -> Option<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let tmp = std::env::temp_dir();
    let base = match tmp.to_str() {
        Some(t) if t.len() <= 60 && !t.contains(char::is_whitespace) => tmp,
        _ => PathBuf::from("/tmp"),
    };
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let d = base.join(format!("edgectl-ssh.{}.{n}", std::process::id()));
        // `create` fails on anything already there, so the directory is ours and 0700.
        if std::fs::DirBuilder::new().mode(0o700).create(&d).is_ok() {
            return Some(d);
        }
    }
    None
}

/// Runs the master (`ssh "$@"`) for as long as its standard input stays open, then removes the
/// socket's directory (`$0`): edgectl holds that input, so the master ends with edgectl however
/// edgectl ends (a panic, a signal, an exit that skips destructors), not only in [`Drop`]. (A
/// background job's input is /dev/null unless it is handed over, hence fd 3.)
const WATCH: &str = r#"exec 3<&0
ssh "$@" </dev/null &
p=$!
{ read -r _ <&3; kill "$p" 2>/dev/null; } &
exec 3<&-
wait "$p"
rm -rf "$0""#;

fn start(base: &[String], dest: &str, wait: Duration) -> Option<State> {
    let dir = private_dir()?;
    let socket = dir.join("m");
    let master = Command::new("sh")
        .args(["-c", WATCH])
        .arg(&dir)
        .args(base)
        .args(["-M", "-N", "-o", "ControlPersist=no", "-o"])
        .arg(format!("ControlPath={}", socket.display()))
        .arg("--")
        .arg(dest)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut master) = master else {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    };
    if ready(&mut master, &socket, wait) {
        Some(State::Up {
            master,
            dir,
            socket,
        })
    } else {
        drop(master.stdin.take());
        let _ = master.wait();
        let _ = std::fs::remove_dir_all(&dir);
        None
    }
}

/// The master listens once it has logged in; it exits when it cannot.
fn ready(master: &mut Child, socket: &Path, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    loop {
        if socket.exists() {
            return true;
        }
        if !matches!(master.try_wait(), Ok(None)) || Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
