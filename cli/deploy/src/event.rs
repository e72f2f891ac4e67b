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
    /// Writing the node's `[[secret]]`s.
    Secrets,
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

/// Runs one phase of one node (or of the run, with node ""): `Started` with `what`, then `Ok`
/// with the message `f` returns beside its value, or `Failed` with its error, so no renderer
/// ever shows a phase that began and never ended.
pub fn step<T, E: std::fmt::Display>(
    tx: &Sender,
    node: &str,
    phase: Phase,
    what: impl Into<String>,
    f: impl FnOnce() -> Result<(T, String), E>,
) -> Result<T, E> {
    emit(tx, node, phase, State::Started, what);
    match f() {
        Ok((v, done)) => {
            emit(tx, node, phase, State::Ok, done);
            Ok(v)
        }
        Err(e) => {
            emit(tx, node, phase, State::Failed, e.to_string());
            Err(e)
        }
    }
}

pub fn emit(tx: &Sender, node: &str, phase: Phase, state: State, message: impl Into<String>) {
    let _ = tx.send(Event {
        node: node.to_string(),
        phase,
        state,
        message: message.into(),
        bytes: None,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_always_ends_in_ok_or_failed() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let ok: Result<u32, String> = step(&tx, "n1", Phase::Connect, "dialing", || {
            Ok((7, "connected".to_string()))
        });
        let bad: Result<u32, String> = step(&tx, "n1", Phase::Evaluate, "building", || {
            Err("no space".into())
        });
        assert_eq!(ok, Ok(7));
        assert_eq!(bad, Err("no space".into()));
        let seen: Vec<(State, String)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| (e.state, e.message))
            .collect();
        assert_eq!(
            seen,
            [
                (State::Started, "dialing".into()),
                (State::Ok, "connected".into()),
                (State::Started, "building".into()),
                (State::Failed, "no space".into()),
            ]
        );
    }
}
