use std::path::Path;

use crate::table::Table;
use crate::{Ctx, ProfileArgs, exit};

pub fn run(ctx: &Ctx, file: &Path, json: bool, p: &ProfileArgs) -> u8 {
    let Some(loaded) = super::load_or_report(ctx, file, p, json) else {
        return exit::ERROR;
    };
    let c = &loaded.cluster;
    if json {
        let v = serde_json::json!({ "ok": true, "file": file.display().to_string(), "cluster": c });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return exit::OK;
    }
    let mut t = Table::new(&["NODE", "HOST", "PROFILE", "CPU", "GPU", "ROLES", "FEATURES"]);
    for n in &c.nodes {
        let cpu = format!(
            "{}x {} ({}c/{}t)",
            n.profile.cpu.sockets,
            short_cpu(&n.profile.cpu.model),
            n.profile.cpu.cores,
            n.profile.cpu.threads
        );
        t.row(vec![
            n.name.clone(),
            if n.port == 22 {
                n.host.clone()
            } else {
                format!("{}:{}", n.host, n.port)
            },
            n.profile.name.clone(),
            cpu,
            n.profile.gpu_summary(),
            join(n.roles.iter().map(|r| r.as_str())),
            join(n.features.iter().map(|f| f.as_str())),
        ]);
    }
    print!("{}", t.render());
    let nets: Vec<String> = c
        .networks
        .iter()
        .map(|n| format!("{} {}", n.name, n.subnet))
        .collect();
    println!(
        "\n{}: {} node{} valid; nixpkgs {}; LANs: {}",
        c.name,
        c.nodes.len(),
        if c.nodes.len() == 1 { "" } else { "s" },
        c.nixpkgs,
        if nets.is_empty() {
            "none".to_string()
        } else {
            nets.join(", ")
        }
    );
    exit::OK
}

fn join<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// "Intel(R) Xeon(R) Silver 4114 CPU @ 2.20GHz" -> "Xeon Silver 4114".
fn short_cpu(model: &str) -> String {
    let s = model.replace("(R)", "").replace("(TM)", "");
    let s = s.split(" @ ").next().unwrap_or(&s);
    let words: Vec<&str> = s
        .split_whitespace()
        .filter(|w| !matches!(*w, "Intel" | "CPU" | "Processor" | "AMD"))
        .collect();
    words.join(" ")
}
