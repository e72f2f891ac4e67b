//! Node selector terms, as `--on` and a `[[secret]]`'s `nodes` take them: a node name, a glob
//! over names (`worker*`, `n?`), or a tag (`@gpu`).

/// Whether `s` matches the glob `pat` (`*`: any run of characters, `?`: one character).
pub fn glob(pat: &str, s: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pat.as_bytes(), s.as_bytes())
}

/// Whether one selector term picks the node with this name and these tags.
pub fn matches(term: &str, name: &str, tags: &[String]) -> bool {
    match term.strip_prefix('@') {
        Some(tag) => tags.iter().any(|t| t == tag),
        None => glob(term, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("worker*", "worker12"));
        assert!(glob("w?rker1", "worker1"));
        assert!(!glob("worker*", "head"));
        assert!(glob("*", ""));
    }

    #[test]
    fn terms_are_names_globs_or_tags() {
        let tags = vec!["gpu".to_string()];
        assert!(matches("n1", "n1", &[]));
        assert!(!matches("n1", "n12", &[]));
        assert!(matches("n*", "n12", &[]));
        assert!(matches("@gpu", "x", &tags));
        assert!(
            !matches("@gpu", "gpu", &[]),
            "a tag term never matches a name"
        );
    }
}
