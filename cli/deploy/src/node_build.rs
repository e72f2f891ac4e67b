//! `--build-on nodes`: the controller sends each node only its system's derivations (a few
//! hundred kilobytes, not the closure), and the node realises them, substituting from the
//! binary caches it reaches. On a testbed the nodes' datacenter link is far faster than a
//! laptop's uplink, so the closure never crosses the slow link.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::event::{Phase, Sender, State as Ev, emit};
use crate::fanout::{Deliveries, Delivery, FanoutError, Source};
use crate::host::argv;
use crate::pool::parallel_map;
use crate::session::Session;

/// Each needing node gets its derivation and builds it; at most `parallel` at once.
pub fn build_on_nodes(
    rt: &tokio::runtime::Runtime,
    needing: &[Arc<Session>],
    derivations: &BTreeMap<String, String>,
    parallel: usize,
    tx: &Sender,
) -> Deliveries {
    let (tx, drvs) = (tx.clone(), derivations.clone());
    parallel_map(rt, parallel, needing.to_vec(), move |s: Arc<Session>| {
        let r = match drvs.get(&s.name) {
            Some(drv) => build_one(&s, drv, &tx),
            None => Err(FanoutError::NodeBuild(format!(
                "no derivation was evaluated for {}",
                s.name
            ))),
        };
        if let Err(e) = &r {
            emit(&tx, &s.name, Phase::Copy, Ev::Failed, e.to_string());
        }
        (s.name.clone(), r)
    })
    .into_iter()
    .collect()
}

fn build_one(s: &Session, drv: &str, tx: &Sender) -> Result<Delivery, FanoutError> {
    emit(
        tx,
        &s.name,
        Phase::Copy,
        Ev::Started,
        "derivations from the controller; the node builds its system",
    );
    s.host
        .copy_derivations(&[drv.to_string()])
        .map_err(FanoutError::Controller)?;
    emit(
        tx,
        &s.name,
        Phase::Copy,
        Ev::Progress,
        "building on the node",
    );
    // Root's own store on the node (through its daemon where one runs, as on NixOS), so the
    // output is where activation looks for it.
    let o = s
        .host
        .run(&argv(["nix-store", "--realise", drv]), true)
        .map_err(|e| FanoutError::NodeBuild(e.to_string()))?;
    if !o.ok() {
        return Err(FanoutError::NodeBuild(tail(&o.stderr)));
    }
    let built = o.stdout.lines().map(str::trim).any(|l| l == s.system);
    if !built {
        return Err(FanoutError::NodeBuild(format!(
            "it built {:?}, not the system {} the controller evaluated",
            o.stdout.trim(),
            s.system
        )));
    }
    emit(tx, &s.name, Phase::Copy, Ev::Ok, "built on the node");
    Ok(Delivery::from(Source::BuiltOnNode, None))
}

/// The end of Nix's account: where a build failure says why.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim().lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{Call, FakeHost, exit, ok};

    fn session(h: &FakeHost, system: &str) -> Arc<Session> {
        Arc::new(Session {
            name: h.name().to_string(),
            host: Box::new(h.clone()),
            key: None,
            system: system.into(),
            current: None,
            generation: None,
            unchanged: false,
            lock_owner: "test".into(),
        })
    }

    use crate::host::Host;

    #[test]
    fn a_node_gets_its_derivation_builds_it_and_must_produce_the_evaluated_system() {
        let rt = crate::pool::runtime(2);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let good = FakeHost::new("n1");
        good.on(
            |a| a.first().is_some_and(|x| x == "nix-store"),
            |_| ok("/nix/store/s1-system\n"),
        );
        let wrong = FakeHost::new("n2");
        wrong.on(
            |a| a.first().is_some_and(|x| x == "nix-store"),
            |_| ok("/nix/store/other\n"),
        );
        let broken = FakeHost::new("n3");
        broken.on(
            |a| a.first().is_some_and(|x| x == "nix-store"),
            |_| exit(1, "error: cannot build '/nix/store/d3.drv': no substituter"),
        );
        let drvs: BTreeMap<String, String> = [1, 2, 3]
            .map(|i| (format!("n{i}"), format!("/nix/store/d{i}.drv")))
            .into();
        let needing = [
            session(&good, "/nix/store/s1-system"),
            session(&wrong, "/nix/store/s2-system"),
            session(&broken, "/nix/store/s3-system"),
        ];
        let got = build_on_nodes(&rt, &needing, &drvs, 2, &tx);
        assert_eq!(got["n1"], Ok(Delivery::from(Source::BuiltOnNode, None)));
        assert_eq!(
            good.calls(),
            [
                Call::CopyDerivations(vec!["/nix/store/d1.drv".into()]),
                Call::Run {
                    argv: argv(["nix-store", "--realise", "/nix/store/d1.drv"]),
                    root: true
                }
            ]
        );
        let e = got["n2"].clone().unwrap_err().to_string();
        assert!(e.contains("not the system /nix/store/s2-system"), "{e}");
        let e = got["n3"].clone().unwrap_err().to_string();
        assert!(
            e.contains("no substituter") && e.contains("--build-on controller"),
            "{e}"
        );
        // A derivation that cannot be sent is never built.
        let lost = FakeHost::new("n1");
        lost.fail_copy(Some("connection reset".into()));
        let got = build_on_nodes(
            &rt,
            &[session(&lost, "/nix/store/s1-system")],
            &drvs,
            1,
            &tx,
        );
        assert_eq!(
            got["n1"],
            Err(FanoutError::Controller("connection reset".into()))
        );
        assert_eq!(lost.calls().len(), 1);
    }
}
