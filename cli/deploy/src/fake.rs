//! A scripted [`Host`] for unit tests of the deploy logic: it answers commands by rule, records
//! every call, and injects faults (a refused new connection, a failed copy), so the decisions
//! above the host layer can be tested without root, sshd or the rig. The rig proves the real
//! mechanics; this proves what the controller concludes from what a node says.

use std::sync::{Arc, Mutex};

use crate::host::{Host, HostError, HostKey, Output};

type Responder = Box<dyn Fn(&[String]) -> Result<Output, HostError> + Send + Sync>;
type Matcher = Box<dyn Fn(&[String]) -> bool + Send + Sync>;

/// One thing the code under test asked of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Run { argv: Vec<String>, root: bool },
    Fresh,
    Copy(Vec<String>),
    CopyDerivations(Vec<String>),
    Upload { path: String, mode: u32 },
}

impl Call {
    /// For `sh -c SCRIPT NAME ARGS...`: NAME (edgectl names every script it runs this way).
    pub fn script_name(&self) -> Option<&str> {
        match self {
            Call::Run { argv, .. } if argv.len() >= 4 && argv[0] == "sh" && argv[1] == "-c" => {
                Some(argv[3].as_str())
            }
            _ => None,
        }
    }
}

struct Inner {
    name: String,
    key: Option<HostKey>,
    /// Later rules win, so a test can override a default.
    rules: Mutex<Vec<(Matcher, Responder)>>,
    calls: Mutex<Vec<Call>>,
    fresh_error: Mutex<Option<HostError>>,
    copy_error: Mutex<Option<String>>,
}

/// A fake node. Clones (and [`Host::fresh`] connections) share its rules and its call log.
#[derive(Clone)]
pub struct FakeHost {
    inner: Arc<Inner>,
}

/// Exit 0 with `stdout`.
pub fn ok(stdout: &str) -> Result<Output, HostError> {
    Ok(Output {
        status: 0,
        stdout: stdout.into(),
        stderr: String::new(),
    })
}

/// Exit `status` with `stderr`.
pub fn exit(status: i32, stderr: &str) -> Result<Output, HostError> {
    Ok(Output {
        status,
        stdout: String::new(),
        stderr: stderr.into(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeHost {
    pub fn new(name: &str) -> FakeHost {
        FakeHost {
            inner: Arc::new(Inner {
                name: name.into(),
                key: Some(HostKey {
                    fingerprint: format!("SHA256:fake-{name}"),
                    public: format!("ssh-ed25519 AAAAfake{name}"),
                }),
                rules: Mutex::new(Vec::new()),
                calls: Mutex::new(Vec::new()),
                fresh_error: Mutex::new(None),
                copy_error: Mutex::new(None),
            }),
        }
    }

    /// Answers every run that `matches` with `answer(argv)`.
    pub fn on(
        &self,
        matches: impl Fn(&[String]) -> bool + Send + Sync + 'static,
        answer: impl Fn(&[String]) -> Result<Output, HostError> + Send + Sync + 'static,
    ) -> &FakeHost {
        lock(&self.inner.rules).push((Box::new(matches), Box::new(answer)));
        self
    }

    /// Answers `sh -c SCRIPT NAME ARGS...` for this exact script text with `answer(ARGS)`.
    pub fn on_script(
        &self,
        script: &str,
        answer: impl Fn(&[String]) -> Result<Output, HostError> + Send + Sync + 'static,
    ) -> &FakeHost {
        let s = script.to_string();
        self.on(
            move |a| a.len() >= 4 && a[0] == "sh" && a[1] == "-c" && a[2] == s,
            move |a| answer(&a[4..]),
        )
    }

    /// Answers `sh -c ANY NAME ...` by the script's NAME (its `$0`).
    pub fn on_name(
        &self,
        name: &str,
        answer: impl Fn(&[String]) -> Result<Output, HostError> + Send + Sync + 'static,
    ) -> &FakeHost {
        let n = name.to_string();
        self.on(
            move |a| a.len() >= 4 && a[0] == "sh" && a[1] == "-c" && a[3] == n,
            move |a| answer(&a[4..]),
        )
    }

    /// New connections fail with `e` (None: they work again).
    pub fn fail_fresh(&self, e: Option<HostError>) {
        *lock(&self.inner.fresh_error) = e;
    }

    /// Copies fail with `e` (None: they work again).
    pub fn fail_copy(&self, e: Option<String>) {
        *lock(&self.inner.copy_error) = e;
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner.calls).clone()
    }

    /// The names of the scripts run so far, in order.
    pub fn scripts(&self) -> Vec<String> {
        self.calls()
            .iter()
            .filter_map(|c| c.script_name().map(String::from))
            .collect()
    }
}

impl Host for FakeHost {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn run(&self, argv: &[String], root: bool) -> Result<Output, HostError> {
        lock(&self.inner.calls).push(Call::Run {
            argv: argv.to_vec(),
            root,
        });
        let rules = lock(&self.inner.rules);
        match rules.iter().rev().find(|(m, _)| m(argv)) {
            Some((_, answer)) => answer(argv),
            None => exit(127, &format!("fake host: no rule for {argv:?}")),
        }
    }

    fn fresh(&self) -> Result<Box<dyn Host>, HostError> {
        lock(&self.inner.calls).push(Call::Fresh);
        match lock(&self.inner.fresh_error).clone() {
            Some(e) => Err(e),
            None => Ok(Box::new(self.clone())),
        }
    }

    fn host_key(&self) -> Option<HostKey> {
        self.inner.key.clone()
    }

    fn copy_closure(&self, paths: &[String]) -> Result<(), String> {
        lock(&self.inner.calls).push(Call::Copy(paths.to_vec()));
        match lock(&self.inner.copy_error).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn copy_derivations(&self, drvs: &[String]) -> Result<(), String> {
        lock(&self.inner.calls).push(Call::CopyDerivations(drvs.to_vec()));
        match lock(&self.inner.copy_error).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn run_with_stdin(
        &self,
        argv: &[String],
        root: bool,
        _input: &mut dyn std::io::Read,
    ) -> Result<Output, HostError> {
        self.run(argv, root)
    }

    fn run_piped(
        &self,
        argv: &[String],
        root: bool,
        _stdin: std::process::Stdio,
    ) -> Result<Output, HostError> {
        self.run(argv, root)
    }

    fn upload(&self, path: &str, _bytes: &[u8], mode: u32) -> Result<(), HostError> {
        lock(&self.inner.calls).push(Call::Upload {
            path: path.into(),
            mode,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::argv;

    #[test]
    fn later_rules_win_and_every_call_is_recorded() {
        let h = FakeHost::new("n1");
        h.on_name("probe", |_| ok("first"));
        h.on_name("probe", |a| ok(&format!("second {}", a.join(","))));
        let o = h
            .run(&argv(["sh", "-c", "echo", "probe", "x", "y"]), true)
            .unwrap();
        assert_eq!(o.stdout, "second x,y");
        let o = h.run(&argv(["true"]), false).unwrap();
        assert_eq!(o.status, 127, "no rule: command not found");
        h.fail_fresh(Some(HostError::Unreachable("down".into())));
        assert!(h.fresh().is_err());
        assert_eq!(h.scripts(), ["probe"]);
        assert_eq!(h.calls().len(), 3);
        assert_eq!(h.calls()[2], Call::Fresh);
    }
}
