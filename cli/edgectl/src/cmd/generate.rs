use std::path::Path;

use crate::{Ctx, ProfileArgs, exit};

pub fn run(ctx: &Ctx, file: &Path, out: &Path, force: bool, json: bool, p: &ProfileArgs) -> u8 {
    let Some(loaded) = super::load_or_report(ctx, file, p, json) else {
        return exit::ERROR;
    };
    let fail = |msg: String| super::fail(ctx, json, edgectl_deploy::EngineError::Failed(msg));
    let files = match edgectl_render::render(&loaded.cluster) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let changed = match edgectl_render::write::write_dir(out, &files, force) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if json {
        let names: Vec<&String> = files.keys().collect();
        println!(
            "{}",
            serde_json::json!({ "ok": true, "out": out.display().to_string(), "changed": changed, "files": names })
        );
    } else {
        let hosts = files.keys().filter(|k| k.starts_with("hosts/")).count();
        println!(
            "{} {} ({} hosts, {} files){}",
            if changed { "wrote" } else { "unchanged:" },
            out.display(),
            hosts,
            files.len(),
            if changed {
                ""
            } else {
                " — already up to date"
            }
        );
        println!(
            "next: nix flake check {0}  |  nixos-rebuild build --flake {0}#<node>",
            out.display()
        );
    }
    exit::OK
}
