//! Renderers of the event stream: indicatif bars on a terminal, plain lines otherwise, and one
//! JSON object per line for `--json`.

use std::collections::HashMap;
use std::io::Write;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::event::{Event, Sender, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Plain,
    Json,
    Quiet,
}

impl Mode {
    /// Bars only when stdout is a terminal; scripts and logs get plain lines.
    pub fn detect(json: bool) -> Mode {
        use std::io::IsTerminal;
        if json {
            Mode::Json
        } else if std::io::stdout().is_terminal() {
            Mode::Bars
        } else {
            Mode::Plain
        }
    }
}

pub struct Renderer {
    handle: std::thread::JoinHandle<()>,
}

impl Renderer {
    /// Waits until every event has been drawn (all senders must be dropped first).
    pub fn finish(self) {
        let _ = self.handle.join();
    }
}

pub fn start(mode: Mode) -> (Sender, Renderer) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let handle = std::thread::spawn(move || {
        let multi = MultiProgress::new();
        let mut bars: HashMap<String, ProgressBar> = HashMap::new();
        let style = ProgressStyle::with_template("{spinner} {prefix:>12} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        while let Some(e) = rx.blocking_recv() {
            match mode {
                Mode::Quiet => {}
                Mode::Json => {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default());
                }
                Mode::Plain => {
                    let who = if e.node.is_empty() {
                        "cluster"
                    } else {
                        e.node.as_str()
                    };
                    let phase = serde_json::to_value(e.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    let state = serde_json::to_value(e.state)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    eprintln!("[{who}] {phase} {state}: {}", e.message);
                }
                Mode::Bars => {
                    let key = if e.node.is_empty() {
                        "cluster".to_string()
                    } else {
                        e.node.clone()
                    };
                    let bar = bars.entry(key.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.set_style(style.clone());
                        b.set_prefix(key.clone());
                        b.enable_steady_tick(std::time::Duration::from_millis(120));
                        b
                    });
                    let phase = serde_json::to_value(e.phase)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    if e.state == State::Warning {
                        // A warning outlives the bar's next message.
                        multi.suspend(|| eprintln!("warning: [{key}] {phase}: {}", e.message));
                    }
                    bar.set_message(format!("{phase}: {}", e.message));
                    if matches!(e.state, State::Failed | State::RolledBack)
                        || (e.phase == crate::event::Phase::Done)
                    {
                        bar.finish_with_message(format!("{phase}: {}", e.message));
                    }
                }
            }
        }
        for b in bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
    });
    (tx, Renderer { handle })
}
