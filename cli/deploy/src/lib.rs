//! edgectl's deploy engine: a small `Host` trait (SSH, fakes), a `Goal` that maps onto
//! `switch-to-configuration`, bounded parallel rollout with node-side confirmation and
//! rollback, state with pinned host keys, and progress as events with two renderers.

pub mod activate;
pub mod engine;
pub mod event;
pub mod facts;
pub mod fanout;
pub mod host;
pub mod install;
pub mod nixcmd;
pub mod progress;
pub mod quote;
pub mod select;
pub mod state;

pub use activate::Goal;
pub use engine::{ApplyReport, EngineError, Options, Plan, apply, plan};
