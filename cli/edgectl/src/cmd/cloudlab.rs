//! `edgectl import cloudlab` and `edgectl export cloudlab-profile`.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use edgectl_cloudlab::{ImportOptions, import_file, plan, profile_py, request_rspec, write_atomic};
use edgectl_model::{Diagnostic, Diagnostics, Kind, LoadOptions, load};

use crate::{Ctx, EXIT_CODES, ProfileArgs, exit};

#[derive(Subcommand)]
pub enum ImportCmd {
    /// Turn a CloudLab manifest (or request RSpec, or the portal API's JSON map of manifests)
    /// into a topology file.
    #[command(after_help = EXIT_CODES)]
    Cloudlab {
        /// The RSpec XML (the portal's Manifest tab, or the GENI AM API), or the JSON map.
        file: PathBuf,
        /// Write the topology here (atomically) instead of to stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Your CloudLab user name: whose <login> entries to use. Needed when several users can log in.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// The cluster name (default: the experiment's name).
        #[arg(long, value_name = "CLUSTER")]
        name: Option<String>,
        /// Print the result (topology, notes) or every problem as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ExportCmd {
    /// Write a geni-lib profile.py (or a request RSpec) that allocates the topology's nodes and LANs.
    #[command(name = "cloudlab-profile", after_help = EXIT_CODES)]
    CloudlabProfile {
        /// The topology file (e.g. cluster.toml).
        file: PathBuf,
        /// Write here (atomically) instead of to stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Write the request RSpec XML instead of profile.py.
        #[arg(long)]
        rspec: bool,
        #[command(flatten)]
        profiles: ProfileArgs,
    },
}

pub fn import(ctx: &Ctx, cmd: ImportCmd) -> u8 {
    let ImportCmd::Cloudlab {
        file,
        output,
        user,
        name,
        json,
    } = cmd;
    let imported = match import_file(&file, &ImportOptions { user, name }) {
        Ok(i) => i,
        Err(d) => {
            super::report(ctx, &d, json);
            return exit::ERROR;
        }
    };
    if let Some(Err(d)) = output.as_ref().map(|out| write(out, &imported.toml)) {
        super::report(ctx, &d, json);
        return exit::ERROR;
    }
    if json {
        let v = serde_json::json!({
            "ok": true,
            "file": file.display().to_string(),
            "output": output.as_ref().map(|p| p.display().to_string()),
            "manifest": imported.manifest,
            "notes": imported.notes,
            "unknown_profiles": imported.unknown_profiles,
            "topology": imported.file,
            "toml": if output.is_none() { Some(&imported.toml) } else { None },
        });
        stdout(&format!(
            "{}\n",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        ));
        return exit::OK;
    }
    if output.is_none() {
        stdout(&imported.toml);
    }
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    if let Some(out) = &output {
        let nodes = imported.file.nodes.len();
        eprintln!(
            "wrote {} ({nodes} node{})",
            out.display(),
            if nodes == 1 { "" } else { "s" }
        );
    }
    exit::OK
}

pub fn export(ctx: &Ctx, cmd: ExportCmd) -> u8 {
    let ExportCmd::CloudlabProfile {
        file,
        output,
        rspec,
        profiles,
    } = cmd;
    let opts = LoadOptions {
        profile_dirs: profiles.profile_dirs.clone(),
    };
    let loaded = match load(&file, &opts) {
        Ok(l) => l,
        Err(d) => {
            super::report(ctx, &d, false);
            return exit::ERROR;
        }
    };
    let p = plan(&loaded.cluster, &loaded.file);
    let text = if rspec {
        request_rspec(&p)
    } else {
        profile_py(&p, &file.display().to_string())
    };
    match &output {
        Some(out) => {
            if let Err(d) = write(out, &text) {
                super::report(ctx, &d, false);
                return exit::ERROR;
            }
            eprintln!("wrote {}", out.display());
        }
        None => stdout(&text),
    }
    for n in &p.notes {
        eprintln!("note: {n}");
    }
    exit::OK
}

fn write(path: &Path, text: &str) -> Result<(), Diagnostics> {
    write_atomic(path, text).map_err(|e| {
        Diagnostics(vec![
            Diagnostic::file(
                Kind::Io,
                &path.display().to_string(),
                format!("cannot write: {e}"),
            )
            .help("check that the directory exists and is writable"),
        ])
    })
}

/// Prints without `print!`'s panic when stdout is a closed pipe (`edgectl ... | head`).
fn stdout(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
