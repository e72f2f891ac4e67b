//! `--on` selections: node names, globs (`worker*`) and tags (`@gpu`), comma-separated.

use edgectl_model::Cluster;
use edgectl_model::select::matches;

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
            if matches(t, &n.name, &n.tags) {
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
