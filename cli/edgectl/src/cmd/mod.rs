pub mod check;
pub mod cloudlab;
pub mod deploy;
pub mod generate;
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
