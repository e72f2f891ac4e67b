//! Children that can be called off together: `--fanout auto` starts the direct copies while it
//! still measures the LAN, and stops them all when it decides to fan out instead.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// Shared by the children it may stop; clones stop the same children.
#[derive(Clone, Default)]
pub struct Stop(Arc<Mutex<Stopping>>);

#[derive(Default)]
struct Stopping {
    stopped: bool,
    /// Process groups of the children running now.
    groups: Vec<u32>,
}

impl Stop {
    /// Runs `c` in a process group of its own (a `nix copy` and its `ssh` go together) to its
    /// end; None when [`Self::stop`] came first or ended it.
    pub fn output(&self, mut c: Command) -> std::io::Result<Option<Output>> {
        use std::os::unix::process::CommandExt;
        c.process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = {
            let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if s.stopped {
                return Ok(None);
            }
            let child = c.spawn()?;
            s.groups.push(child.id());
            child
        };
        let id = child.id();
        let out = child.wait_with_output();
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.groups.retain(|g| *g != id);
        if s.stopped { Ok(None) } else { out.map(Some) }
    }

    /// Ends every child running now and refuses new ones.
    pub fn stop(&self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.stopped = true;
        for g in &s.groups {
            // The whole group: Nix's own `ssh` child must not carry on uploading.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{g}")])
                .status();
        }
    }

    pub fn stopped(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn stop_ends_running_children_with_their_own_children_and_refuses_new_ones() {
        let stop = Stop::default();
        let mut sh = Command::new("sh");
        // A child of the child (as `nix copy` runs `ssh`) that would outlive a plain kill.
        sh.args(["-c", "sleep 30 & wait"]);
        let s = stop.clone();
        let t = Instant::now();
        let running = std::thread::spawn(move || s.output(sh).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        stop.stop();
        assert!(
            running.join().unwrap().is_none(),
            "a stopped child has no output"
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(stop.stopped());
        assert!(stop.output(Command::new("true")).unwrap().is_none());
        let o = Stop::default()
            .output(Command::new("echo"))
            .unwrap()
            .unwrap();
        assert!(o.status.success());
    }
}
