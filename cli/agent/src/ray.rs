//! `ray status` as facts: how many nodes are alive and how many GPUs the cluster has.

use std::process::Command;
use std::time::Duration;

use crate::facts::which;
use crate::proto::RayFacts;

/// Counts the `N node_<id>` lines under "Active:" and reads the total of `x/y GPU`.
pub fn parse_status(text: &str) -> (u32, f64) {
    let mut alive = 0;
    let mut gpus = 0.0;
    let mut in_active = false;
    for line in text.lines() {
        let t = line.trim();
        // Ray's autoscaler v2 lists a node with nothing to run under "Idle:": alive all the same.
        if t == "Active:" || t == "Idle:" {
            in_active = true;
            continue;
        }
        if t.ends_with(':') {
            in_active = false;
        }
        if in_active {
            let mut w = t.split_whitespace();
            if let (Some(n), Some(id)) = (w.next(), w.next())
                && id.starts_with("node_")
            {
                alive += n.parse::<u32>().unwrap_or(1);
            }
        }
        if let Some(r) = t.strip_suffix(" GPU")
            && let Some((_, total)) = r.split_once('/')
            && let Ok(g) = total.trim().parse::<f64>()
        {
            gpus = g;
        }
    }
    (alive, gpus)
}

/// `ray status` against the GCS at `address` (the head's; default: what Ray finds by itself).
pub fn status(address: Option<&str>) -> RayFacts {
    let Some(ray) = which("ray") else {
        return RayFacts {
            present: false,
            ok: false,
            alive_nodes: 0,
            gpus: 0.0,
            output: "ray is not on PATH".into(),
        };
    };
    let mut cmd = Command::new("timeout");
    cmd.arg(Duration::from_secs(60).as_secs().to_string())
        .arg(ray)
        .arg("status");
    if let Some(a) = address {
        cmd.args(["--address", a]);
    }
    match cmd.output() {
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let (alive_nodes, gpus) = parse_status(&text);
            RayFacts {
                present: true,
                ok: o.status.success(),
                alive_nodes,
                gpus,
                output: text.chars().take(4000).collect(),
            }
        }
        Err(e) => RayFacts {
            present: true,
            ok: false,
            alive_nodes: 0,
            gpus: 0.0,
            output: format!("cannot run ray: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output() {
        let t = "======== Autoscaler status: 2024-11-20 10:00:00 ========\nNode status\n-----\nActive:\n 1 node_4f5e0c\n 1 node_9a8b7c\nPending:\n (no pending nodes)\nRecent failures:\n (no failures)\n\nResources\n-----\nUsage:\n 0.0/16.0 CPU\n 0.0/1.0 GPU\n 0B/20.00GiB memory\n";
        assert_eq!(parse_status(t), (2, 1.0));
        let v2 = "Node status\n-----\nActive:\n 1 node_4f5e0c\nIdle:\n 1 node_9a8b7c\n 1 node_1b2c3d\nPending:\n 1 node_77aa00\nRecent failures:\n (no failures)\n";
        assert_eq!(parse_status(v2), (3, 0.0), "pending nodes are not alive");
        assert_eq!(
            parse_status("Active:\n (no active nodes)\nPending:\n"),
            (0, 0.0)
        );
    }
}
