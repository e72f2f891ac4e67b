pub mod check;
pub mod cloudlab;
pub mod day2;
pub mod deploy;
pub mod generate;
pub mod lab;
pub mod profiles;
pub mod verify;

use edgectl_model::Diagnostics;

use crate::Ctx;

/// Prints problems: JSON on stdout for scripts, or rustc-style reports on stderr.
pub fn report(ctx: &Ctx, diags: &Diagnostics, json: bool) {
    if json {
        let v = serde_json::json!({ "ok": false, "diagnostics": diags });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        eprint!("{}", diags.render(ctx.color, 50));
    }
}

/// Reports an engine error (diagnostics or a message) and returns exit code 1.
pub fn fail(ctx: &Ctx, json: bool, e: edgectl_deploy::EngineError) -> u8 {
    match e {
        edgectl_deploy::EngineError::Invalid(d) => report(ctx, &d, json),
        other => {
            let m = other.to_string();
            if json {
                println!("{}", serde_json::json!({ "ok": false, "error": m }));
            } else {
                eprintln!("error: {m}");
            }
        }
    }
    crate::exit::ERROR
}

/// Loads and validates a topology; on failure prints every problem and returns `None`.
pub fn load_or_report(
    ctx: &Ctx,
    file: &std::path::Path,
    p: &crate::ProfileArgs,
    json: bool,
) -> Option<edgectl_model::Loaded> {
    let opts = edgectl_model::LoadOptions {
        profile_dirs: p.profile_dirs.clone(),
    };
    match edgectl_model::load(file, &opts) {
        Ok(l) => Some(l),
        Err(diags) => {
            report(ctx, &diags, json);
            None
        }
    }
}
