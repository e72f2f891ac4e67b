//! CloudLab in and out of edgectl: `import cloudlab` turns a manifest (or request) RSpec into a
//! topology file; `export cloudlab-profile` turns a topology into a geni-lib profile or request
//! RSpec that allocates the same nodes and LANs.
//!
//! Decisions the importer makes, and why:
//! - A manifest is recognised by `sliver_id` or `<host>`, not by `type`: the portal's Manifest
//!   tab labels real manifests `type="request"`.
//! - `host` is the chosen user's `<login hostname>` (the physical node's name, which the portal's
//!   SSH command uses and which does not change with the experiment's name); `<host name>` is
//!   kept in a comment, and used only when the user has no `<login>` on that node.
//! - A hardware type without a built-in profile is kept as the node's profile and reported;
//!   edgectl writes no stub profile, because a stub would be invented hardware. `edgectl check`
//!   then asks for `[profile.TYPE]` or a `profile_dir` file.
//! - A request RSpec has no hosts or MACs: `host` is a placeholder (the node name) and `mac` is
//!   empty, so the topology checks and round-trips; import the manifest once the nodes exist.
//! - Links become `[network.NAME]` with the subnet the members' addresses share, and `vlan` from
//!   `vlantag` as asked for; CloudLab delivers most LANs untagged, so whatever consumes `vlan`
//!   must know it is the switch's VLAN.
//! - The generated topology is checked before it is returned; anything `check` would refuse
//!   (other than the unknown profiles above) fails the import instead.

pub mod escape;
pub mod export;
pub mod import;
pub mod rspec;

use std::io::Write as _;
use std::path::Path;

pub use export::{Plan, plan, profile_py, request_rspec};
pub use import::{ImportOptions, Imported, import_file, import_source};

/// Writes `text` to `path` through a temporary file in the same directory and a rename, so a
/// reader sees the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the output path has no file name",
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.edgectl-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
