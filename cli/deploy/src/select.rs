//! `--on` selections: node names, globs (`worker*`) and tags (`@gpu`), comma-separated.

use edgectl_model::Cluster;

fn glob(pat: &str, s: &str) -> bool {
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

/// The names of the selected nodes in topology order; an error names a term that matched nothing.
pub fn select(c: &Cluster, on: Option<&str>) -> Result<Vec<String>, String> {
    let Some(on) = on else {
        return Ok(c.nodes.iter().map(|n| n.name.clone()).collect());
    };
    let terms: Vec<&str> = on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if terms.is_empty() {
        return Err(
            "--on is empty; name nodes, globs such as worker*, or tags such as @gpu".into(),
        );
    }
    let mut picked = vec![false; c.nodes.len()];
    for t in &terms {
        let mut hit = false;
        for (i, n) in c.nodes.iter().enumerate() {
            let m = match t.strip_prefix('@') {
                Some(tag) => n.tags.iter().any(|x| x == tag),
                None => glob(t, &n.name),
            };
            if m {
                picked[i] = true;
                hit = true;
            }
        }
        if !hit {
            let names: Vec<&str> = c.nodes.iter().map(|n| n.name.as_str()).collect();
            return Err(format!(
                "--on term `{t}` matches no node (nodes: {})",
                names.join(", ")
            ));
        }
    }
    Ok(c.nodes
        .iter()
        .zip(picked)
        .filter(|(_, p)| *p)
        .map(|(n, _)| n.name.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        assert!(glob("worker*", "worker12"));
        assert!(glob("w?rker1", "worker1"));
        assert!(!glob("worker*", "head"));
        assert!(glob("*", ""));
    }
}
