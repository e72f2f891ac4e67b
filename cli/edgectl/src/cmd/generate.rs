use std::path::Path;

use edgectl_model::{LoadOptions, load};

use crate::{Ctx, ProfileArgs, exit};

pub fn run(ctx: &Ctx, file: &Path, out: &Path, force: bool, json: bool, p: &ProfileArgs) -> u8 {
    let opts = LoadOptions {
        profile_dirs: p.profile_dirs.clone(),
    };
    let loaded = match load(file, &opts) {
        Ok(l) => l,
        Err(diags) => {
            super::report(ctx, &diags, json);
            return exit::ERROR;
        }
    };
    let fail = |msg: String| {
        if json {
            println!("{}", serde_json::json!({ "ok": false, "error": msg }));
        } else {
            eprintln!("error: {msg}");
        }
        exit::ERROR
    };
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
