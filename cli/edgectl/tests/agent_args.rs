//! The NixOS module starts the agent as `edgectl agent <agentArgsFor {...}>`
//! (modules/agent.nix): the arguments `agentArgsFor` (modules/lib) returns, evaluated by real
//! Nix, must be ones `edgectl agent` parses, and a flag it does not know must be refused rather
//! than ignored.

use std::process::{Command, Output};

/// `agentArgsFor ATTRS` from modules/lib, evaluated by nix-instantiate.
fn agent_args_for(attrs: &str) -> Vec<String> {
    let expr = format!("lib.agentArgsFor {attrs}");
    let json = edgectl_testkit::eval_modules_lib(&expr);
    serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("{expr} is not a list of strings ({e}): {json}"))
}

/// `edgectl agent ARGS --help`: clap parses and checks every argument before it reaches
/// `--help`, so exit 0 means ARGS parsed (without starting an agent), and exit 2 names what
/// did not.
fn parse(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .arg("agent")
        .args(args)
        .arg("--help")
        .output()
        .unwrap()
}

use edgectl_testkit::explain;

#[test]
fn the_agent_parses_exactly_what_the_module_passes() {
    if edgectl_testkit::nix().is_none() {
        return;
    }
    for attrs in [
        "{ }",
        r#"{ port = 9443; stateDir = "/var/lib/edge-agent"; }"#,
    ] {
        let args = agent_args_for(attrs);
        assert!(
            args.iter().filter(|a| a.starts_with("--")).count() >= 2,
            "{attrs}: {args:?}"
        );
        let o = parse(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{attrs}: {args:?}\n{}",
            explain(&o)
        );
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("Usage: edgectl agent"), "{}", explain(&o));
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "{flag} is not an option of `edgectl agent`:\n{help}"
            );
        }

        // The same parse refuses what it does not know, and a value it cannot use, so the
        // exit 0 above is a real verdict on the module's arguments.
        let mut unknown = args.clone();
        unknown.extend(["--listen-port".to_string(), "7443".to_string()]);
        let o = parse(&unknown);
        assert_eq!(o.status.code(), Some(1), "{}", explain(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--listen-port"),
            "{}",
            explain(&o)
        );
        let bad: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with("0.0.0.0:") {
                    "0.0.0.0".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        assert_ne!(bad, args, "{attrs}: no listen address in {args:?}");
        let o = parse(&bad);
        assert_eq!(o.status.code(), Some(1), "{bad:?}\n{}", explain(&o));
    }
}
