//! Progress as events on a channel. The terminal view and `--json` are two renderers of the
//! same stream.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Evaluate,
    Connect,
    Inspect,
    Copy,
    Activate,
    Confirm,
    Done,
    // `edgectl install`'s phases.
    Facts,
    Nix,
    Switch,
    Reboot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Started,
    Progress,
    Ok,
    Skipped,
    /// It worked, but not as it should have: say so, and why.
    Warning,
    Failed,
    RolledBack,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Empty for cluster-wide steps (evaluation).
    pub node: String,
    pub phase: Phase,
    pub state: State,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

pub type Sender = tokio::sync::mpsc::UnboundedSender<Event>;

pub fn emit(tx: &Sender, node: &str, phase: Phase, state: State, message: impl Into<String>) {
    let _ = tx.send(Event {
        node: node.to_string(),
        phase,
        state,
        message: message.into(),
        bytes: None,
    });
}
