use edgectl_model::{Diagnostics, ProfileSet};

use crate::table::Table;
use crate::{Ctx, ProfileArgs, exit};

pub fn run(ctx: &Ctx, name: Option<&str>, json: bool, p: &ProfileArgs) -> u8 {
    let (mut set, mut diags) = ProfileSet::builtin();
    for d in &p.profile_dirs {
        diags.extend(set.add_dir(d));
    }
    let names: Vec<String> = match name {
        Some(n) if !set.contains(n) => {
            let all: Vec<&str> = set.names().collect();
            eprintln!("error: unknown profile `{n}`; known: {}", all.join(", "));
            return exit::ERROR;
        }
        Some(n) => vec![n.to_string()],
        None => set.names().map(String::from).collect(),
    };
    let mut resolved = Vec::new();
    let mut rdiags = Diagnostics::default();
    for n in &names {
        if let Ok(p) = set.resolve(n, &mut rdiags) {
            resolved.push(p);
        }
    }
    diags.extend(rdiags);
    if !diags.is_empty() {
        super::report(ctx, &diags, json);
        return exit::ERROR;
    }
    if json {
        let v = if name.is_some() {
            serde_json::to_value(&resolved[0])
        } else {
            serde_json::to_value(&resolved)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&v.unwrap_or_default()).unwrap_or_default()
        );
        return exit::OK;
    }
    if name.is_some() {
        let p = &resolved[0];
        println!("{}", toml::to_string_pretty(&**p).unwrap_or_default());
        return exit::OK;
    }
    let mut t = Table::new(&[
        "PROFILE",
        "CPU",
        "CORES",
        "MEMORY",
        "GPU",
        "EXPERIMENT NIC",
        "FROM",
    ]);
    for p in &resolved {
        t.row(vec![
            p.name.clone(),
            p.cpu.model.clone(),
            format!("{}c/{}t", p.cpu.cores, p.cpu.threads),
            format!("{} GiB", p.memory_gib),
            p.gpu_summary(),
            p.experiment_nic_gbps()
                .map(|g| format!("{g} Gb/s"))
                .unwrap_or("-".into()),
            p.origin.clone(),
        ]);
    }
    print!("{}", t.render());
    exit::OK
}
