//! Before `install` makes NixOS the boot default: will NixOS let this controller in? It
//! accepts only the topology's `cluster.ssh_keys` (no passwords, and the console does not
//! help on a testbed), so a login key missing there loses the node at its first reboot. This
//! is checked on the controller, before anything on a node changes.

use std::path::Path;
use std::process::Command;

/// A public key's identity: its type and blob, without options or comment.
fn id(line: &str) -> Option<(String, String)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    // An authorized_keys line may start with options; the key is the type and the blob after.
    words.windows(2).find_map(|w| {
        let kind = w[0];
        let known = kind.starts_with("ssh-")
            || kind.starts_with("ecdsa-")
            || kind.starts_with("sk-ssh-")
            || kind.starts_with("sk-ecdsa-");
        (known && w[1].starts_with("AAAA")).then(|| (kind.to_string(), w[1].to_string()))
    })
}

/// The public keys this controller logs in with: the identity's (its `.pub` beside it, else
/// derived by `ssh-keygen -y`), or without one those ssh-agent offers.
pub fn login_keys(identity: Option<&Path>) -> Result<Vec<String>, String> {
    let out = match identity {
        Some(key) => {
            let public = key.with_extension(match key.extension() {
                Some(e) => format!("{}.pub", e.to_string_lossy()),
                None => "pub".into(),
            });
            if let Ok(text) = std::fs::read_to_string(&public) {
                return Ok(text.lines().map(String::from).collect());
            }
            Command::new("ssh-keygen")
                .args(["-y", "-P", "", "-f"])
                .arg(key)
                .output()
                .map_err(|e| format!("cannot run ssh-keygen: {e}"))?
        }
        None => Command::new("ssh-add")
            .arg("-L")
            .output()
            .map_err(|e| format!("cannot run ssh-add: {e}"))?,
    };
    if !out.status.success() {
        return Err(match identity {
            Some(k) => format!(
                "cannot read the public half of {} (put it beside it as .pub)",
                k.display()
            ),
            None => "no --identity, and ssh-agent offers no key".into(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect())
}

/// `Ok` when one of `login` is among `authorized`; else what to do.
pub fn check(authorized: &[String], login: &[String]) -> Result<(), String> {
    let allowed: Vec<_> = authorized.iter().filter_map(|k| id(k)).collect();
    if login
        .iter()
        .filter_map(|k| id(k))
        .any(|k| allowed.contains(&k))
    {
        return Ok(());
    }
    let offered: Vec<String> = login
        .iter()
        .filter_map(|k| id(k))
        .map(|(t, b)| format!("{t} {}...", &b[..b.len().min(24)]))
        .collect();
    Err(format!(
        "the key edgectl logs in with ({}) is not in cluster.ssh_keys, so the installed NixOS would refuse it and the node would be lost at its first reboot; add its public half to `ssh_keys` in the topology, or log in with one of those keys (--identity)",
        if offered.is_empty() {
            "none found".to_string()
        } else {
            offered.join(", ")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHhs3pHAo6Y3VbrwxPO0sJ0Tl8q1Ea8DoBHqZ5pFMZKw alice@laptop";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0aBQ1jvQ4h0iTqfCbbuD7cmvQ5D0cqnq1a3v8bYQ3p bob";

    #[test]
    fn the_login_key_must_be_authorized_whatever_its_comment_or_options() {
        let same_other_comment = ED.replace("alice@laptop", "alice@desk");
        assert_eq!(
            check(&[ED.into()], std::slice::from_ref(&same_other_comment)),
            Ok(())
        );
        let with_options = format!("restrict,pty {same_other_comment}");
        assert_eq!(check(&[with_options], &[ED.into()]), Ok(()));
        // One of several agent keys is enough.
        assert_eq!(check(&[ED.into()], &[OTHER.into(), ED.into()]), Ok(()));
        let e = check(&[OTHER.into()], &[ED.into()]).unwrap_err();
        assert!(
            e.contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA...") && e.contains("ssh_keys"),
            "{e}"
        );
        let e = check(&[ED.into()], &[]).unwrap_err();
        assert!(e.contains("(none found)"), "{e}");
    }

    #[test]
    fn the_public_half_is_read_beside_the_identity() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("id_ed25519");
        std::fs::write(&key, "private").unwrap();
        std::fs::write(d.path().join("id_ed25519.pub"), format!("{ED}\n")).unwrap();
        assert_eq!(login_keys(Some(&key)).unwrap(), vec![ED.to_string()]);
    }
}
