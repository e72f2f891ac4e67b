//! What `check` requires of an SSH public key: the line sshd would accept in
//! `authorized_keys`. A key sshd ignores would lock the user out of every node once NixOS
//! manages the keys, so a wrong one is an error here, not a surprise after the switch.

/// Key types OpenSSH accepts by default, with the size their blob must have (`None`: checked
/// by its own rule).
const TYPES: &[(&str, Option<usize>)] = &[
    ("ssh-ed25519", Some(4 + 11 + 4 + 32)),
    ("ecdsa-sha2-nistp256", Some(4 + 19 + 4 + 8 + 4 + 65)),
    ("ecdsa-sha2-nistp384", Some(4 + 19 + 4 + 8 + 4 + 97)),
    ("ecdsa-sha2-nistp521", Some(4 + 19 + 4 + 8 + 4 + 133)),
    ("ssh-rsa", None),
    ("sk-ssh-ed25519@openssh.com", None),
    ("sk-ecdsa-sha2-nistp256@openssh.com", None),
];

/// `Ok` when `line` ("TYPE BASE64 [COMMENT]") is a public key sshd would use; otherwise why not.
pub fn check(line: &str) -> Result<(), String> {
    let mut f = line.split_whitespace();
    let (Some(kind), Some(b64)) = (f.next(), f.next()) else {
        return Err("expected \"TYPE BASE64 [COMMENT]\"".into());
    };
    if kind == "ssh-dss" {
        return Err("DSA keys are disabled in OpenSSH 9 and later; use an ed25519 key".into());
    }
    let Some(&(_, size)) = TYPES.iter().find(|(t, _)| *t == kind) else {
        return Err(format!(
            "unknown key type `{kind}` (expected one of {})",
            TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
        ));
    };
    let blob = decode(b64).ok_or("its base64 part does not decode")?;
    let mut r = Reader(&blob);
    let inner = r.string().ok_or("the decoded key is truncated")?;
    if inner != kind.as_bytes() {
        return Err(format!(
            "it says `{kind}`, but the key itself is `{}`",
            String::from_utf8_lossy(inner)
        ));
    }
    match size {
        Some(n) if blob.len() != n => Err(format!(
            "{kind} keys are {n} bytes once decoded; this one is {} (a truncated or edited copy?)",
            blob.len()
        )),
        Some(_) => Ok(()),
        None if kind == "ssh-rsa" => {
            let _e = r.string().ok_or("the decoded key is truncated")?;
            let n = r.string().ok_or("the decoded key is truncated")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if r.0.is_empty() && bits >= 2048 {
                Ok(())
            } else if bits < 2048 {
                Err(format!(
                    "an RSA key of {bits} bits is too short (at least 2048)"
                ))
            } else {
                Err("the decoded key has trailing bytes".into())
            }
        }
        None => {
            // Security keys: the public key, then the application string.
            while r.string().is_some() {}
            if r.0.is_empty() {
                Ok(())
            } else {
                Err("the decoded key is truncated".into())
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    /// An SSH wire string: a big-endian u32 length, then that many bytes.
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let s = self.0.get(4..4usize.checked_add(len)?)?;
        self.0 = &self.0[4 + len..];
        Some(s)
    }
}

/// Standard base64, as in `authorized_keys` (missing padding is tolerated).
fn decode(s: &str) -> Option<Vec<u8>> {
    let padded;
    let s = match s.len() % 4 {
        0 => s,
        1 => return None,
        r => {
            padded = format!("{s}{}", "=".repeat(4 - r));
            padded.as_str()
        }
    };
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return None;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let mut n = 0u32;
        let mut real = 0;
        for (j, &c) in chunk.iter().enumerate() {
            n <<= 6;
            if c == b'=' {
                if !last || j < 4 - pad {
                    return None;
                }
            } else {
                n |= val(c)?;
                real += 1;
            }
        }
        // `real` characters carry real - 1 whole bytes.
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..real.max(1)]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_shaped_like_real_ones_pass() {
        // The project's test and example keys: right type and size, bytes that spell a warning.
        for k in [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l x@y",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgZXhhbXBsZTogcmVwbGFjZSBpdCBub3ch",
        ] {
            assert_eq!(check(k), Ok(()), "{k}");
        }
    }

    /// Keys fresh from ssh-keygen, of every type it makes by default.
    #[test]
    fn keys_from_ssh_keygen_pass() {
        let Ok(t) = tempfile::tempdir() else { return };
        for (ty, bits) in [
            ("ed25519", ""),
            ("rsa", "3072"),
            ("ecdsa", "256"),
            ("ecdsa", "521"),
        ] {
            let f = t.path().join(format!("k-{ty}{bits}"));
            let mut c = std::process::Command::new("ssh-keygen");
            c.args(["-q", "-N", "", "-t", ty, "-f"]).arg(&f);
            if !bits.is_empty() {
                c.args(["-b", bits]);
            }
            match c.output() {
                Ok(o) if o.status.success() => {}
                // No OpenSSH client here: the recorded shapes above still run.
                _ => return,
            }
            let line = std::fs::read_to_string(f.with_extension("pub")).unwrap();
            assert_eq!(check(line.trim()), Ok(()), "{line}");
        }
        let f = t.path().join("short");
        let o = std::process::Command::new("ssh-keygen")
            .args(["-q", "-N", "", "-t", "rsa", "-b", "1024", "-f"])
            .arg(&f)
            .output()
            .unwrap();
        if o.status.success() {
            let line = std::fs::read_to_string(f.with_extension("pub")).unwrap();
            assert!(check(line.trim()).unwrap_err().contains("1024 bits"));
        }
    }

    #[test]
    fn broken_keys_say_why() {
        let cases = [
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEdgeCtlExampleKeyReplaceWithYoursXXXXXXXXX a@b",
                "51 bytes once decoded; this one is 50",
            ),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey", "this one is 21"),
            ("ssh-ed25519 !!!!", "does not decode"),
            (
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGVkZ2VjdGwgdGVzdCBrZXksIG5vdCBhIHJlYWwgb25l",
                "is `ssh-ed25519`",
            ),
            ("ssh-dss AAAAB3NzaC1kc3M=", "DSA"),
            ("ssh-foo AAAA", "unknown key type"),
            ("ssh-ed25519", "TYPE BASE64"),
        ];
        for (k, want) in cases {
            let e = check(k).unwrap_err();
            assert!(e.contains(want), "{k}: {e}");
        }
    }

    #[test]
    fn base64_decodes_like_the_standard() {
        assert_eq!(decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(decode("Zm9vYmE=").unwrap(), b"fooba");
        assert!(decode("Zm9v=mFy").is_none());
        assert_eq!(decode("Zm9").unwrap(), b"fo");
        assert!(decode("Zm9vY").is_none());
    }
}
