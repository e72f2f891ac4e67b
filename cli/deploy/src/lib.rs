//! edgectl's deploy engine: a small `Host` trait (SSH, fakes), a `Goal` that maps onto
//! `switch-to-configuration`, bounded parallel rollout with node-side confirmation and
//! rollback, state with pinned host keys, and progress as events with two renderers.

// A node that cannot be opened returns its full result (with its host key) as the error, once
// per node per run: its size does not matter.
#![allow(clippy::result_large_err)]

/// The node's state folder (root-only, survives reboots), spelled once: a literal so that
/// paths under it and the node scripts can be put together at compile time.
macro_rules! state_dir {
    () => {
        "/nix/var/edgectl"
    };
}

/// A node-side program from `src/sh` with `EDGECTL_STATE` set on its first line, so that the
/// scripts name the state folder through that variable and never spell it.
macro_rules! node_script {
    ($file:literal) => {
        concat!("EDGECTL_STATE=", state_dir!(), "\n", include_str!($file))
    };
}

pub mod activate;
pub mod apply;
pub mod boot_gate;
pub mod day2;
pub mod event;
pub mod facts;
pub mod fake;
pub mod fanout;
pub mod host;
pub mod install;
pub mod install_state;
pub mod login_key;
mod mux;
pub mod nixcmd;
pub mod node_build;
pub mod nodenix;
pub mod plan;
pub mod pool;
pub mod progress;
pub mod quote;
pub mod report;
pub mod run;
pub mod secrets;
pub mod select;
pub mod session;
pub mod state;
pub mod stop;

pub use activate::Goal;
pub use apply::apply;
pub use plan::plan;
pub use report::{ApplyReport, NodeOutcome, NodeResult, Plan};
pub use run::{BuildOn, EngineError, Options, Run};
