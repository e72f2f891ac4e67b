//! What `install` has done on each node, kept under `.edgectl/install/` so a rerun resumes,
//! and the facts it found there, which `plan` and `apply` build with.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::facts::NodeFacts;
use crate::state::{StateError, write_atomic};

/// A phase of `install`, in order (`--until` stops after one).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Read the node: disks, boot, network, what it runs.
    Facts,
    /// Make sure the node has a usable Nix.
    Nix,
    /// Copy the system's closure.
    Copy,
    /// Make NixOS the boot default (lustrate, bootloader).
    Switch,
    /// Reboot into NixOS and check it came back.
    Reboot,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::Facts,
        Step::Nix,
        Step::Copy,
        Step::Switch,
        Step::Reboot,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Step::Facts => "facts",
            Step::Nix => "nix",
            Step::Copy => "copy",
            Step::Switch => "switch",
            Step::Reboot => "reboot",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstallState {
    #[serde(default)]
    pub done: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facts: Option<NodeFacts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

impl InstallState {
    fn path(state_dir: &Path, node: &str) -> PathBuf {
        state_dir.join("install").join(format!("{node}.json"))
    }
    pub fn load(state_dir: &Path, node: &str) -> InstallState {
        std::fs::read(Self::path(state_dir, node))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }
    pub(crate) fn save(&self, state_dir: &Path, node: &str) -> Result<(), StateError> {
        let path = Self::path(state_dir, node);
        // Serializing plain data cannot fail; an empty file would be worse than an error.
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_atomic(&path, &text).map_err(|error| StateError::Io { path, error })
    }
    pub(crate) fn has(&self, s: Step) -> bool {
        self.done.contains(&s)
    }
}
