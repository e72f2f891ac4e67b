// Embeds `modules/**/*.nix`, `templates/*.tera` and the NixOS option list supplement, so the
// binary writes a self-contained flake without the repository at hand.
use std::{env, fs, path::Path, path::PathBuf};

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, base, out);
        } else if p
            .extension()
            .is_some_and(|e| e == "nix" || e == "tera" || e == "sh")
        {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            out.push((rel, fs::canonicalize(&p).unwrap()));
        }
    }
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../..");
    let mut code = String::new();
    for (name, dir) in [("MODULES", "modules"), ("TEMPLATES", "templates")] {
        let d = root.join(dir);
        println!("cargo:rerun-if-changed={}", d.display());
        let mut files = Vec::new();
        walk(&d, &d, &mut files);
        code.push_str(&format!("pub static {name}: &[(&str, &str)] = &[\n"));
        for (rel, abs) in files {
            println!("cargo:rerun-if-changed={}", abs.display());
            code.push_str(&format!(
                "    ({rel:?}, include_str!({:?})),\n",
                abs.display().to_string()
            ));
        }
        code.push_str("];\n");
    }
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded.rs"),
        code,
    )
    .unwrap();
}
