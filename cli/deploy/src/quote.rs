//! Commands are built as argv and quoted here, once, for the remote shell that SSH exec runs.

/// Quotes one argument for a POSIX shell: the shell sees exactly `s`.
pub fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A command line for `sh -c` from argv; None when an argument holds a NUL (no shell can).
pub fn command(argv: &[String]) -> Option<String> {
    if argv.iter().any(|a| a.contains('\0')) {
        return None;
    }
    Some(argv.iter().map(|a| sh(a)).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh("abc"), "abc");
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("x'; rm -rf /; echo '"), "'x'\\''; rm -rf /; echo '\\'''");
        assert_eq!(sh("$(id)"), "'$(id)'");
        assert_eq!(sh("`id`"), "'`id`'");
        assert_eq!(sh(""), "''");
        assert!(command(&["a\0b".into()]).is_none());
    }

    #[test]
    fn quoted_arguments_reach_a_real_shell_unchanged() {
        let nasty = [
            "; rm -rf /tmp/x",
            "$(touch /tmp/edgectl-pwned)",
            "`id`",
            "a'b\"c",
            "\n\t",
            "*",
        ];
        let argv: Vec<String> = std::iter::once("printf".to_string())
            .chain(std::iter::once("%s\\0".to_string()))
            .chain(nasty.iter().map(|s| s.to_string()))
            .collect();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(command(&argv).unwrap())
            .output()
            .unwrap();
        let got: Vec<&[u8]> = out
            .stdout
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .collect();
        let want: Vec<&[u8]> = nasty.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(got, want);
        assert!(!std::path::Path::new("/tmp/edgectl-pwned").exists());
    }
}
