//! The typed results of the commands, the layer every command shares: what `plan` found on
//! each node, and what happened to each node in one `apply` (the value of `result` in its
//! report, its record in the state file, and the row of the table).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::activate::Goal;
use crate::nixcmd::ClosureDiff;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeOutcome {
    /// Already on the wanted system: nothing was done.
    Unchanged,
    /// Activated, and the node confirmed it could still be reached.
    Confirmed,
    /// `--goal build`: the system was built, no node was touched.
    Built,
    /// `--goal push`: the closure was copied, nothing was activated.
    Pushed,
    /// The activation (or a step before it) failed; the node kept or went back to its system.
    Failed,
    /// Activated, but not confirmed in time: the node went back to its previous system.
    RolledBack,
    /// The node could not be reached, so nothing is known of it beyond that.
    Unreachable,
    /// The activation's end could not be learned (for example the node vanished mid-way).
    Unknown,
}

impl NodeOutcome {
    /// Whether this outcome counts against the run's exit code.
    pub fn failed(self) -> bool {
        !matches!(
            self,
            NodeOutcome::Unchanged
                | NodeOutcome::Confirmed
                | NodeOutcome::Built
                | NodeOutcome::Pushed
        )
    }

    /// Whether the node now runs the wanted system, so the state may record it as applied.
    pub fn applied(self) -> bool {
        matches!(self, NodeOutcome::Unchanged | NodeOutcome::Confirmed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeOutcome::Unchanged => "unchanged",
            NodeOutcome::Confirmed => "confirmed",
            NodeOutcome::Built => "built",
            NodeOutcome::Pushed => "pushed",
            NodeOutcome::Failed => "failed",
            NodeOutcome::RolledBack => "rolled-back",
            NodeOutcome::Unreachable => "unreachable",
            NodeOutcome::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for NodeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OptionChange {
    pub option: String,
    pub old: Value,
    pub new: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    New,
    Changed,
    Unchanged,
    Unreachable,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodePlan {
    pub node: String,
    pub change: Change,
    pub current: Option<String>,
    pub target: String,
    pub option_changes: Vec<OptionChange>,
    #[serde(skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub closure: Option<ClosureDiff>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The holder of the node's lock when an apply was running there during the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_in_progress: Option<String>,
    /// The node's `[[secret]]`s: by name, destination and digest, never their content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretPlan>,
}

impl NodePlan {
    /// Whether `apply` would change this node: its system, or a secret it does not hold yet.
    pub fn has_changes(&self) -> bool {
        matches!(self.change, Change::New | Change::Changed)
            || self.secrets.iter().any(SecretPlan::pending)
    }
}

/// What a node holds of one secret, against what `apply` would write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretChange {
    /// Nothing at its destination.
    New,
    /// Other content, owner, group or mode there (`detail` says which).
    Changed,
    /// Exactly this content, owner, group and mode.
    Unchanged,
    /// The node could not be read.
    Unknown,
}

/// One secret in a node's plan. The content itself is never shown, saved or logged: its
/// SHA-256 stands for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretPlan {
    pub name: String,
    pub dest: String,
    /// "before" or "after" activation.
    pub when: String,
    /// Hex SHA-256 of the content, as read on the controller.
    pub sha256: String,
    pub change: SecretChange,
    /// What differs on the node, or why it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SecretPlan {
    /// Whether `apply` would write it (a node that could not be read counts as unreachable).
    pub fn pending(&self) -> bool {
        matches!(self.change, SecretChange::New | SecretChange::Changed)
    }

    /// One line for a terminal: name, destination, short digest and what changes.
    pub fn line(&self) -> String {
        let short: String = self.sha256.chars().take(12).collect();
        let change = serde_json::to_value(self.change)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        let mut l = format!(
            "secret {} -> {} (sha256:{short}, {} activation): {change}",
            self.name, self.dest, self.when
        );
        if let Some(d) = &self.detail {
            l.push_str(&format!(" ({d})"));
        }
        l
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub topology: String,
    pub topology_hash: String,
    pub nodes: Vec<NodePlan>,
}

impl Plan {
    /// Whether `apply` would change anything: a system, or a secret (see [`NodePlan::has_changes`]).
    pub fn has_changes(&self) -> bool {
        self.nodes.iter().any(NodePlan::has_changes)
    }
    pub fn has_unreachable(&self) -> bool {
        self.nodes.iter().any(|n| n.change == Change::Unreachable)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub node: String,
    pub result: NodeOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub message: String,
    /// Where the node's closure came from, when this apply copied one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closure: Option<crate::fanout::Delivery>,
}

impl NodeResult {
    pub fn failed(&self) -> bool {
        self.result.failed()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub goal: Goal,
    pub nodes: Vec<NodeResult>,
}

impl ApplyReport {
    pub fn any_failed(&self) -> bool {
        self.nodes.iter().any(NodeResult::failed)
    }
}

pub(crate) fn result(
    name: &str,
    system: &str,
    result: NodeOutcome,
    msg: String,
    generation: Option<u64>,
) -> NodeResult {
    NodeResult {
        node: name.into(),
        result,
        system: Some(system.into()),
        generation,
        message: msg,
        closure: None,
    }
}

#[cfg(test)]
mod tests {
    use super::NodeOutcome::{self, *};

    #[test]
    fn names_are_the_reports_words() {
        let all = [
            Unchanged,
            Confirmed,
            Built,
            Pushed,
            Failed,
            RolledBack,
            Unreachable,
            Unknown,
        ];
        for o in all {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::String(o.as_str().into())
            );
            let back: NodeOutcome = serde_json::from_value(o.as_str().into()).unwrap();
            assert_eq!(back, o);
        }
        let failed: Vec<_> = all.iter().filter(|o| o.failed()).collect();
        assert_eq!(failed, [&Failed, &RolledBack, &Unreachable, &Unknown]);
        assert!(
            all.iter()
                .filter(|o| o.applied())
                .eq([&Unchanged, &Confirmed])
        );
    }
}
