//! The small interface the engine drives a node through. `SshHost` is the real one; tests fake
//! it. Everything above this layer is argv, never shell text.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;

use crate::quote;
use crate::stop::Stop;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
}

#[derive(Debug, Clone)]
pub enum HostError {
    /// The node cannot be reached (TCP, SSH handshake, or the connection dropped).
    Unreachable(String),
    /// The node's SSH host key is not the one recorded at first contact.
    HostKeyChanged {
        expected: String,
        found: String,
    },
    Auth(String),
    /// A command line that cannot be built (an argument with a NUL).
    BadArgument(String),
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::Unreachable(m) => write!(f, "unreachable: {m}"),
            HostError::HostKeyChanged { expected, found } => write!(
                f,
                "SSH host key changed (recorded {expected}, now {found}); refusing to deploy. If the node was reinstalled, remove it from .edgectl/state.json"
            ),
            HostError::Auth(m) => write!(f, "SSH authentication failed: {m}"),
            HostError::BadArgument(m) => write!(f, "cannot build command: {m}"),
        }
    }
}

impl std::error::Error for HostError {}

pub use crate::state::HostKey;

pub trait Host: Send + Sync {
    fn name(&self) -> &str;
    /// Runs argv on the node (through sudo when the login user is not root and `root` is set).
    fn run(&self, argv: &[String], root: bool) -> Result<Output, HostError>;
    /// A new, independent connection: confirmation must not ride on a session that a broken
    /// network could have left half-alive.
    fn fresh(&self) -> Result<Box<dyn Host>, HostError>;
    fn host_key(&self) -> Option<HostKey>;
    /// Copies store paths (with their closure) to the node.
    fn copy_closure(&self, paths: &[String]) -> Result<(), String>;
    /// [`Self::copy_closure`] that `stop` can call off: Ok(false) when it did (what was
    /// copied by then stays, as after any interrupted `nix copy`).
    fn copy_closure_until(&self, paths: &[String], stop: &Stop) -> Result<bool, String> {
        if stop.stopped() {
            return Ok(false);
        }
        self.copy_closure(paths).map(|()| true)
    }
    /// Copies derivations (`.drv` files and their closure, not their outputs) to the node, for
    /// the node to build.
    fn copy_derivations(&self, drvs: &[String]) -> Result<(), String>;
    /// Writes `bytes` to `path` as root with `mode`, atomically (temp file, then rename), so
    /// secrets never pass through argv or the Nix store.
    fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), HostError>;
    /// Runs argv with `input` as its standard input.
    fn run_with_stdin(
        &self,
        argv: &[String],
        root: bool,
        input: &mut dyn Read,
    ) -> Result<Output, HostError>;
    /// Runs argv with another process's output as its standard input, which does not pass
    /// through this process (a `nix-store --export` stream).
    fn run_piped(
        &self,
        argv: &[String],
        root: bool,
        stdin: std::process::Stdio,
    ) -> Result<Output, HostError>;
}

/// Runs as root on the node: stdin -> "$1.tmp" (created under umask 077) -> chmod -> rename.
pub const UPLOAD: &str = include_str!("sh/upload.sh");

pub fn argv<I: IntoIterator<Item = S>, S: Into<String>>(it: I) -> Vec<String> {
    it.into_iter().map(Into::into).collect()
}

#[derive(Debug, Clone)]
pub struct SshTarget {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// The key recorded at first contact; a different key is refused.
    pub pinned: Option<HostKey>,
    /// known_hosts file written from the pinned keys, for OpenSSH (`nix copy`).
    pub known_hosts: PathBuf,
}

pub struct SshHost {
    target: SshTarget,
    session: Mutex<ssh2::Session>,
    key: HostKey,
    /// The OpenSSH connection the `ssh` and `nix copy` children share.
    mux: crate::mux::Mux,
}

fn key_type_name(t: ssh2::HostKeyType) -> &'static str {
    match t {
        ssh2::HostKeyType::Rsa => "ssh-rsa",
        ssh2::HostKeyType::Dss => "ssh-dss",
        ssh2::HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        ssh2::HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        ssh2::HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        ssh2::HostKeyType::Ed25519 => "ssh-ed25519",
        ssh2::HostKeyType::Unknown => "unknown",
    }
}

/// How long a silent connection waits before the kernel probes the peer, and how it gives up:
/// a node that vanished is reported after about IDLE + INTERVAL * PROBES (40 s), and one that
/// stops acknowledging what we send after USER_TIMEOUT. A live node answers probes from its
/// kernel however long its command stays silent.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 6;
const USER_TIMEOUT: Duration = Duration::from_secs(40);

fn detect_dead_peer(tcp: &TcpStream) -> std::io::Result<()> {
    let s = socket2::SockRef::from(tcp);
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    s.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// What the `ssh` children prefer (`ssh_ciphers!` and `ssh_kex!`: AES-GCM and curve25519, the
/// exchange edgectl's own libssh2 session uses too). These connections carry store paths;
/// secrets go over the libssh2 session.
pub const FAST_CRYPTO: [&str; 4] = [
    "-o",
    concat!("Ciphers=", ssh_ciphers!()),
    "-o",
    concat!("KexAlgorithms=", ssh_kex!()),
];

impl SshHost {
    pub fn connect(target: SshTarget) -> Result<SshHost, HostError> {
        let addr = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|e| HostError::Unreachable(format!("{}: {e}", target.host)))?
            .next()
            .ok_or_else(|| HostError::Unreachable(format!("{}: no address", target.host)))?;
        let tcp = TcpStream::connect_timeout(&addr, target.connect_timeout)
            .map_err(|e| HostError::Unreachable(format!("{addr}: {e}")))?;
        detect_dead_peer(&tcp).map_err(|e| HostError::Unreachable(format!("{addr}: {e}")))?;
        let mut s = ssh2::Session::new().map_err(|e| HostError::Unreachable(e.to_string()))?;
        s.set_tcp_stream(tcp);
        s.set_timeout(target.connect_timeout.as_millis() as u32);
        s.handshake()
            .map_err(|e| HostError::Unreachable(format!("SSH handshake with {addr}: {e}")))?;
        let (blob, kind) = s
            .host_key()
            .ok_or_else(|| HostError::Unreachable("no host key".into()))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let public = format!("{} {}", key_type_name(kind), b64.encode(blob));
        let hash = s.host_key_hash(ssh2::HashType::Sha256).unwrap_or_default();
        let fingerprint = format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
        );
        let key = HostKey {
            fingerprint,
            public,
        };
        if let Some(p) = &target.pinned
            && p.fingerprint != key.fingerprint
        {
            return Err(HostError::HostKeyChanged {
                expected: p.fingerprint.clone(),
                found: key.fingerprint,
            });
        }
        let mut tried = Vec::new();
        if let Some(id) = &target.identity {
            match s.userauth_pubkey_file(&target.user, None, id, None) {
                Ok(()) => {}
                Err(e) => tried.push(format!("{}: {e}", id.display())),
            }
        }
        if !s.authenticated() && s.userauth_agent(&target.user).is_err() {
            tried.push("ssh-agent".into());
        }
        if !s.authenticated() {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            for k in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let p = home.join(".ssh").join(k);
                if p.exists() && s.userauth_pubkey_file(&target.user, None, &p, None).is_ok() {
                    break;
                }
            }
        }
        if !s.authenticated() {
            return Err(HostError::Auth(format!(
                "as {}@{} (tried {})",
                target.user,
                target.host,
                tried.join(", ")
            )));
        }
        // No session timeout and no libssh2 keepalive: libssh2 caps every socket wait at the
        // keepalive interval and then fails the read ("Timed out waiting on socket"), so any
        // command silent for 5 s (grub-install, apt-get -qq, nix path-info) died. Commands may
        // be silent for as long as they like; a node that is gone is caught by the kernel's TCP
        // keepalive and user timeout set in `detect_dead_peer`.
        s.set_timeout(0);
        Ok(SshHost {
            target,
            session: Mutex::new(s),
            key,
            mux: Default::default(),
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// The options that make OpenSSH reach this node the way this session did, with its host
    /// key pinned.
    pub fn openssh_options(&self) -> Vec<String> {
        let mut o = vec![
            "-p".to_string(),
            self.target.port.to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.target.known_hosts.display()),
            "-o".into(),
            format!(
                "ConnectTimeout={}",
                self.target.connect_timeout.as_secs().max(1)
            ),
            // A node that vanishes mid-copy ends the copy in 30 s, not at TCP's timeout.
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "ServerAliveCountMax=6".into(),
        ];
        if let Some(id) = &self.target.identity {
            o.extend([
                "-i".to_string(),
                id.display().to_string(),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        o
    }

    /// [`Self::openssh_options`], through this command's shared connection to the node, for
    /// the `ssh` and `nix copy` children (not for anything that outlives the command).
    fn child_options(&self) -> Vec<String> {
        let mut o = self.openssh_options();
        o.extend(FAST_CRYPTO.iter().map(|s| s.to_string()));
        let dest = format!("{}@{}", self.target.user, self.target.host);
        o.extend(self.mux.options(&o, &dest, self.target.connect_timeout));
        o
    }

    /// [`Self::child_options`] as `NIX_SSHOPTS` for `nix copy`.
    fn nix_sshopts(&self) -> String {
        // Nix splits NIX_SSHOPTS on spaces, so paths with spaces cannot be passed.
        self.child_options().join(" ")
    }

    /// Runs argv on the node through OpenSSH with `stdin` as its input, so a stream from
    /// another process (`nix-store --export`) goes to the node without passing through us,
    /// and OpenSSH's flow control, not libssh2's, sets the pace on a slow link.
    pub fn run_piped(
        &self,
        argv: &[String],
        root: bool,
        stdin: std::process::Stdio,
    ) -> Result<Output, HostError> {
        let cmd = wire_command(&self.target.user, argv, root)
            .ok_or_else(|| HostError::BadArgument("an argument contains a NUL byte".into()))?;
        let o = std::process::Command::new("ssh")
            .args(self.child_options())
            .arg("--")
            .arg(format!("{}@{}", self.target.user, self.target.host))
            .arg(cmd)
            .stdin(stdin)
            .output()
            .map_err(|e| HostError::Unreachable(format!("cannot run ssh: {e}")))?;
        Ok(Output {
            // 255 is OpenSSH's own failure (connection, authentication), not the command's.
            status: o.status.code().unwrap_or(255),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        })
    }
}

impl SshHost {
    /// Runs argv on the node with `input` as its standard input, streamed: the input may be
    /// far larger than memory. The command's output is collected once the input is sent, so
    /// it must not write much before reading all of it.
    pub fn run_with_stdin(
        &self,
        argv: &[String],
        root: bool,
        input: &mut dyn Read,
    ) -> Result<Output, HostError> {
        let cmd = wire_command(&self.target.user, argv, root)
            .ok_or_else(|| HostError::BadArgument("an argument contains a NUL byte".into()))?;
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let io = |e: ssh2::Error| HostError::Unreachable(e.to_string());
        let mut ch = s.channel_session().map_err(io)?;
        ch.exec(&cmd).map_err(io)?;
        std::io::copy(input, &mut ch).map_err(|e| HostError::Unreachable(e.to_string()))?;
        ch.send_eof().map_err(io)?;
        // Bytes, then text: output that is not UTF-8 is the command's, not a dead node (a
        // `read_to_string` would fail on it, as if the connection had).
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        ch.read_to_end(&mut stdout)
            .map_err(|e| HostError::Unreachable(e.to_string()))?;
        ch.stderr()
            .read_to_end(&mut stderr)
            .map_err(|e| HostError::Unreachable(e.to_string()))?;
        ch.wait_close().map_err(io)?;
        let status = ch.exit_status().map_err(io)?;
        Ok(Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}

impl Host for SshHost {
    fn name(&self) -> &str {
        &self.target.node
    }

    fn run_with_stdin(
        &self,
        argv: &[String],
        root: bool,
        input: &mut dyn Read,
    ) -> Result<Output, HostError> {
        SshHost::run_with_stdin(self, argv, root, input)
    }

    fn run_piped(
        &self,
        argv: &[String],
        root: bool,
        stdin: std::process::Stdio,
    ) -> Result<Output, HostError> {
        SshHost::run_piped(self, argv, root, stdin)
    }

    fn run(&self, argv: &[String], root: bool) -> Result<Output, HostError> {
        // Stdin at end of file at once: a command that reads it cannot wait forever.
        self.run_with_stdin(argv, root, &mut std::io::empty())
    }

    fn upload(&self, path: &str, bytes: &[u8], mode: u32) -> Result<(), HostError> {
        let a = argv([
            "sh",
            "-c",
            UPLOAD,
            "edgectl-upload",
            path,
            &format!("{mode:o}"),
        ]);
        let o = self.run_with_stdin(&a, true, &mut &bytes[..])?;
        match o.status {
            0 => Ok(()),
            code => Err(HostError::Unreachable(format!(
                "upload to {path} failed ({code}): {}",
                o.stderr.trim()
            ))),
        }
    }

    fn fresh(&self) -> Result<Box<dyn Host>, HostError> {
        let mut t = self.target.clone();
        t.pinned = Some(self.key.clone());
        Ok(Box::new(SshHost::connect(t)?))
    }

    fn host_key(&self) -> Option<HostKey> {
        Some(self.key.clone())
    }

    fn copy_closure(&self, paths: &[String]) -> Result<(), String> {
        self.nix_copy(paths, false, None).map(|_| ())
    }

    fn copy_closure_until(&self, paths: &[String], stop: &Stop) -> Result<bool, String> {
        self.nix_copy(paths, false, Some(stop))
    }

    fn copy_derivations(&self, drvs: &[String]) -> Result<(), String> {
        self.nix_copy(drvs, true, None).map(|_| ())
    }
}

impl SshHost {
    /// `nix copy` to the node over OpenSSH (with the pinned key), of the paths or, with
    /// `derivation`, of the derivations themselves.
    /// Ok(false): `stop` called it off.
    fn nix_copy(
        &self,
        paths: &[String],
        derivation: bool,
        stop: Option<&Stop>,
    ) -> Result<bool, String> {
        let t = &self.target;
        let mut url = format!("ssh://{}@{}", t.user, t.host);
        if t.user != "root" {
            url.push_str("?remote-program=sudo%20-n%20nix-store");
        }
        let mut c = std::process::Command::new("nix");
        c.args(["copy", "--to", &url]);
        if derivation {
            c.arg("--derivation");
        }
        c.args(paths).env("NIX_SSHOPTS", self.nix_sshopts());
        // Only a copy that may be called off leaves our process group (and a Ctrl-C).
        let out = match stop {
            Some(stop) => stop.output(c),
            None => c.output().map(Some),
        };
        let Some(out) = out.map_err(|e| format!("cannot run nix copy: {e}"))? else {
            return Ok(false);
        };
        if out.status.success() {
            Ok(true)
        } else {
            Err(format!(
                "nix copy to {}: {}",
                t.node,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// The command line SSH sends: argv quoted for the remote shell, behind `sudo -n --` when the
/// command needs root and the login user is not root (CloudLab's default: sudo without password).
pub fn remote_command(user: &str, argv: &[String], root: bool) -> Option<String> {
    let mut full = Vec::new();
    if root && user != "root" {
        full.extend(["sudo".to_string(), "-n".into(), "--".into()]);
    }
    full.extend_from_slice(argv);
    quote::command(&full)
}

/// What SSH sends for argv: [`remote_command`]'s POSIX line, made to run the same under any
/// login shell. SSH hands the line to the user's login shell, which CloudLab lets users set to
/// tcsh; csh-family shells reject a newline inside quotes (every multi-line script) and expand
/// `!` even there. So the line travels base64-encoded, inside single quotes that no shell
/// reads into, and /bin/sh decodes and runs it.
pub fn wire_command(user: &str, argv: &[String], root: bool) -> Option<String> {
    remote_command(user, argv, root).map(|line| any_shell(&line))
}

/// A POSIX shell line wrapped so that sh, bash, zsh, tcsh and fish all run it through /bin/sh.
pub fn any_shell(line: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(line);
    format!("/bin/sh -c 'eval \"$(printf %s {b64} | base64 -d)\"'")
}

/// Writes the known_hosts file OpenSSH reads for `nix copy`: one line per node.
pub fn write_known_hosts(path: &Path, entries: &[(String, u16, HostKey)]) -> std::io::Result<()> {
    let mut text = String::new();
    for (host, port, key) in entries {
        let h = if *port == 22 {
            host.clone()
        } else {
            format!("[{host}]:{port}")
        };
        text.push_str(&format!("{h} {}\n", key.public));
    }
    crate::state::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_commands_go_through_sudo_for_other_users() {
        let a = argv(["readlink", "-f", "/nix/var/nix/profiles/system"]);
        assert_eq!(
            remote_command("alice", &a, true).unwrap(),
            "sudo -n -- readlink -f /nix/var/nix/profiles/system"
        );
        assert_eq!(
            remote_command("root", &a, true).unwrap(),
            "readlink -f /nix/var/nix/profiles/system"
        );
        assert_eq!(
            remote_command("alice", &a, false).unwrap(),
            "readlink -f /nix/var/nix/profiles/system"
        );
        let evil = argv(["cat", "x; rm -rf / #"]);
        assert_eq!(
            remote_command("alice", &evil, true).unwrap(),
            "sudo -n -- cat 'x; rm -rf / #'"
        );
    }
}
