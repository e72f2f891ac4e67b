//! A usable Nix on a node before `edgectl install` copies its system there. In order: the Nix
//! the node already has, Ubuntu's `nix-bin` (22.04 ships 2.6, 24.04 2.18.1; 20.04 has none),
//! else the controller's own Nix, shipped the way the Nix installer tarball works: the store
//! paths of its closure as a tar, registered with that Nix's `nix-store --load-db`, linked into
//! `/usr/local/bin` (which Ubuntu's sshd and sudo both put on PATH). After the switch the
//! node runs NixOS's own Nix on the same store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::host::{Host, argv};

/// The oldest Nix a node may run: edgectl passes `--extra-experimental-features nix-command`
/// to `nix path-info` (plan's closure diff) and `nix copy` (fan-out), which Nix 2.4 introduced.
pub const MIN: (u32, u32) = (2, 4);

/// Where the registration of a shipped Nix goes on the node.
const REGINFO: &str = concat!(state_dir!(), "/nix.reginfo");

/// Runs as root on the node with a tar of the store paths on stdin. $1: the Nix store path.
const UNPACK: &str = node_script!("sh/unpack_nix.sh");

const APT: &str =
    "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nix-bin";

/// `nix-store (Nix) 2.18.1` -> (2, 18).
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let v = s.split_whitespace().last()?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// The store path that holds `nix-store` (`/nix/store/<hash>-nix-2.24.9`), or why it is none.
pub fn store_path_of(bin: &Path) -> Result<PathBuf, String> {
    let real = bin
        .canonicalize()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let parts: Vec<_> = real.components().take(4).collect();
    let p: PathBuf = parts.iter().collect();
    if p.starts_with("/nix/store") && parts.len() == 4 && p.join("bin/nix-store").exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} is not inside a Nix store path with bin/nix-store",
            real.display()
        ))
    }
}

/// The Nix to ship to nodes: `explicit` (`--nix-from`), else the controller's own `nix-store`
/// when it lives in /nix/store (the Nix installer, NixOS), else why there is none.
pub fn controller_nix(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return store_path_of(&p.join("bin/nix-store"))
            .map_err(|e| format!("--nix-from {}: {e}", p.display()));
    }
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("nix-store"))
        .find(|p| p.is_file())
        .ok_or("no nix-store on this machine's PATH")?;
    store_path_of(&found).map_err(|e| format!("this machine's Nix cannot be shipped: {e}"))
}

fn node_version(h: &dyn Host) -> Option<(String, (u32, u32))> {
    let o = h.run(&argv(["nix-store", "--version"]), false).ok()?;
    if !o.ok() {
        return None;
    }
    let line = o.stdout.trim().to_string();
    parse_version(&line).map(|v| (line, v))
}

fn too_old(v: Option<&(String, (u32, u32))>) -> String {
    match v {
        Some((line, _)) => format!("{line} (older than {}.{})", MIN.0, MIN.1),
        None => "none".into(),
    }
}

/// What [`ensure`] may run, for `--dry-run`.
pub fn planned_commands(ship: Option<&Path>, chosen: bool) -> Vec<String> {
    let show = |a: Vec<String>| crate::quote::command(&a).unwrap_or_default();
    let mut v = vec![show(argv(["nix-store", "--version"]))];
    if !chosen {
        v.push(format!(
            "# if missing or older than {}.{}: {}",
            MIN.0,
            MIN.1,
            show(argv(["sh", "-c", APT]))
        ));
    }
    v.push(match ship {
        Some(p) => format!(
            "# if still missing: ship {} (tar of its closure, nix-store --load-db, links in /usr/local/bin)",
            p.display()
        ),
        None => "# if still missing: fail (no Nix on this machine to ship; see --nix-from)".into(),
    });
    v
}

/// Makes sure the node has Nix >= [`MIN`]; returns its version line and how it got there.
/// `chosen`: the user named the Nix to ship (`--nix-from`), which then goes in place of
/// Ubuntu's nix-bin, not after it.
pub fn ensure(
    h: &dyn Host,
    ship: &Result<PathBuf, String>,
    chosen: bool,
) -> Result<String, String> {
    let had = node_version(h);
    if let Some((line, v)) = &had
        && *v >= MIN
    {
        return Ok(line.clone());
    }
    let apt_said = if chosen {
        "apt not tried: --nix-from chose the Nix".to_string()
    } else {
        let apt = h.run(&argv(["sh", "-c", APT]), true);
        let after = node_version(h);
        if let Some((line, v)) = &after
            && *v >= MIN
        {
            return Ok(format!("{line} (Ubuntu's nix-bin)"));
        }
        match apt {
            Ok(o) if o.ok() => format!("nix-bin gave {}", too_old(after.as_ref())),
            Ok(o) => format!(
                "apt-get: {}",
                o.stderr.lines().last().unwrap_or("failed").trim()
            ),
            Err(e) => e.to_string(),
        }
    };
    let p = ship.as_ref().map_err(|why| {
        format!(
            "the node has no usable Nix (found {}; {apt_said}) and {why}; install Nix >= {}.{} on the node, or pass --nix-from /nix/store/...-nix-<version>",
            too_old(had.as_ref()),
            MIN.0,
            MIN.1
        )
    })?;
    ship_nix(h, p)?;
    match node_version(h) {
        Some((line, v)) if v >= MIN => Ok(format!("{line} (from {})", p.display())),
        other => Err(format!(
            "shipped {} but the node runs {}",
            p.display(),
            too_old(other.as_ref())
        )),
    }
}

fn ship_nix(h: &dyn Host, p: &Path) -> Result<(), String> {
    let out = |c: &mut Command, what: &str| -> Result<Vec<u8>, String> {
        let o = c.output().map_err(|e| format!("cannot run {what}: {e}"))?;
        if o.status.success() {
            Ok(o.stdout)
        } else {
            Err(format!(
                "{what}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    let closure = out(Command::new("nix-store").arg("-qR").arg(p), "nix-store -qR")?;
    let paths: Vec<String> = String::from_utf8_lossy(&closure)
        .lines()
        .map(String::from)
        .collect();
    let reginfo = out(
        Command::new("nix-store").arg("--dump-db").args(&paths),
        "nix-store --dump-db",
    )?;
    h.upload(REGINFO, &reginfo, 0o644)
        .map_err(|e| e.to_string())?;
    let mut tar = Command::new("tar")
        .args(["-C", "/", "-cf", "-", "--"])
        .args(paths.iter().map(|p| p.trim_start_matches('/')))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let stdout = tar.stdout.take().expect("piped");
    let p_str = p.display().to_string();
    let r = h.run_piped(
        &argv(["sh", "-c", UNPACK, "edgectl-nix", &p_str]),
        true,
        stdout.into(),
    );
    let t = tar.wait_with_output();
    match r {
        Err(e) => Err(e.to_string()),
        Ok(o) if !o.ok() => Err(format!("unpacking Nix on the node: {}", o.stderr.trim())),
        Ok(_) => match t {
            Ok(t) if t.status.success() => Ok(()),
            Ok(t) => Err(format!(
                "tar: {}",
                String::from_utf8_lossy(&t.stderr).trim()
            )),
            Err(e) => Err(format!("tar: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("nix-store (Nix) 2.18.1"), Some((2, 18)));
        assert_eq!(parse_version("nix-store (Nix) 2.6.0"), Some((2, 6)));
        assert_eq!(parse_version("nix-store (Nix) 2.3"), Some((2, 3)));
        assert_eq!(
            parse_version("nix-store (Nix) 2.25pre20241010_abc"),
            Some((2, 25))
        );
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("command not found"), None);
        assert!((2, 3) < MIN && (2, 6) >= MIN && (3, 0) >= MIN);
    }

    #[test]
    fn a_chosen_nix_goes_in_place_of_ubuntus() {
        use crate::fake::{FakeHost, exit};
        let node = || {
            let h = FakeHost::new("n1");
            h.on(
                |a| a.first().is_some_and(|x| x == "nix-store"),
                |_| exit(127, "nix-store: not found"),
            );
            h.on(
                |a| a.len() > 2 && a[2] == APT,
                |_| exit(100, "E: no nix-bin"),
            );
            h
        };
        let apt_tried = |h: &FakeHost| {
            h.calls().iter().any(|c| {
                matches!(c, crate::fake::Call::Run { argv, .. } if argv.len() > 2 && argv[2] == APT)
            })
        };
        let nothing: Result<PathBuf, String> = Err("no Nix here".into());
        let h = node();
        let e = ensure(&h, &nothing, false).unwrap_err();
        assert!(apt_tried(&h) && e.contains("apt-get: E: no nix-bin"), "{e}");
        let h = node();
        let e = ensure(&h, &nothing, true).unwrap_err();
        assert!(!apt_tried(&h), "apt ran though --nix-from chose the Nix");
        assert!(e.contains("apt not tried"), "{e}");
        assert!(
            !planned_commands(None, true)
                .iter()
                .any(|c| c.contains("apt-get"))
        );
        assert!(
            planned_commands(None, false)
                .iter()
                .any(|c| c.contains("apt-get"))
        );
    }

    #[test]
    fn only_store_paths_ship() {
        let e = store_path_of(Path::new("/bin/sh")).unwrap_err();
        assert!(e.contains("not inside a Nix store path"), "{e}");
        assert!(controller_nix(Some(Path::new("/tmp"))).is_err());
    }
}
