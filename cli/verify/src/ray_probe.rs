//! Ray beyond a head count: once every agent has answered (and before the latency matrix, so
//! nothing else of `verify` runs meanwhile), the agent on the Ray head runs the Ray probe
//! (`edgectl_agent::ray_probe`): one actor per alive node with timed calls to it, and a batch
//! of tasks on the head alone against the same batch on every node. Its answer becomes a check
//! `ray actor NODE` per Ray node (p99 against `ray_actor_p99_ms`) and one `ray scaling` of the
//! cluster (efficiency against `ray_scaling_min`).

use std::net::SocketAddr;
use std::time::Duration;

use edgectl_agent::client;
use edgectl_agent::proto::{Request, Response};
use edgectl_agent::ray_probe::{ActorStat, RayProbe, Scaling, TIME_LIMIT};
use edgectl_model::{Cluster, Feature, Node, Role};
use quinn::Connection;

use crate::checks::{Check, Verdict};
use crate::verify::{NodeReport, RAY_GCS_PORT};

/// Timed calls per actor.
pub const SAMPLES: u32 = 200;
/// About how long the batch takes on the head alone (seconds).
pub const SCALING_S: f64 = 3.0;
/// How long the controller waits for the probe: the agent's limit and a margin.
const WAIT: Duration = Duration::from_secs(TIME_LIMIT.as_secs() + 60);

pub const SCALING: &str = "ray scaling";

/// A Ray node of the topology, and what Ray may know it by: the addresses it may have
/// registered with (its LAN addresses, its host, the address its agent answered on) and, as a
/// last resort, its host name (a NixOS node's is its topology name).
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub addresses: Vec<String>,
}

/// The topology's Ray nodes (every node with the `ray` feature), in its order.
pub fn members(cluster: &Cluster, reports: &[NodeReport]) -> Vec<Member> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.has(Feature::Ray))
        .map(|n| {
            let mut addresses: Vec<String> = n
                .interfaces
                .iter()
                .map(|i| i.address.addr.to_string())
                .collect();
            addresses.push(n.host.clone());
            addresses.extend(n.control_ip.map(|ip| ip.to_string()));
            addresses.extend(
                reports
                    .iter()
                    .filter(|r| r.name == n.name)
                    .filter_map(|r| r.address.clone()),
            );
            let mut unique: Vec<String> = Vec::new();
            for a in addresses {
                if !unique.contains(&a) {
                    unique.push(a);
                }
            }
            Member {
                name: n.name.clone(),
                addresses: unique,
            }
        })
        .collect()
}

/// The name of the actor check of topology node (or unknown Ray node) `who`.
pub fn actor_check(who: &str) -> String {
    format!("ray actor {who}")
}

/// Asks the head's agent for the probe where `ray status` there found a running cluster, keeps
/// the answer in the head's report, and returns the checks; skips them, saying why, where Ray
/// is not there. Nothing when the cluster wants no Ray or the head was not verified (or did not
/// answer: its own check says so).
pub async fn probe(
    cluster: &Cluster,
    nodes: &[&Node],
    reports: &mut [NodeReport],
    conns: &[Option<(Connection, SocketAddr)>],
) -> Vec<Check> {
    if !cluster.nodes.iter().any(|n| n.has(Feature::Ray)) {
        return Vec::new();
    }
    let Some(i) = nodes.iter().position(|n| n.is(Role::RayHead)) else {
        return Vec::new();
    };
    let (Some(Some((conn, _))), Some(_)) = (conns.get(i), reports.get(i)) else {
        return Vec::new();
    };
    let head = nodes[i].name.clone();
    let members = members(cluster, reports);
    let report = &reports[i];
    let why_not = match &report.ray {
        None => Some(format!("`ray status` on {head} gave no answer")),
        Some(r) if !r.present => Some(format!("ray is not installed on {head}")),
        Some(r) if !r.ok => Some(format!(
            "`ray status` on {head} found no running cluster to probe"
        )),
        Some(_) => None,
    };
    if let Some(why) = why_not {
        return skipped(&head, &members, &why, &cluster.targets);
    }
    let req = Request::RayProbe {
        address: report
            .address
            .as_ref()
            .map(|a| format!("{a}:{RAY_GCS_PORT}")),
        samples: SAMPLES,
        scaling_s: SCALING_S,
    };
    let answer = match client::request(conn, &req, WAIT).await {
        Ok(Response::RayProbe(p)) => Ok(*p),
        // An agent older than this controller does not know the request.
        Ok(Response::Error { message }) if predates_probe(&message) => {
            let why = format!(
                "the agent on {head} predates the Ray probe: apply a configuration with this edgectl's agent"
            );
            return skipped(&head, &members, &why, &cluster.targets);
        }
        Ok(Response::Error { message }) | Err(message) => Err(message),
        Ok(o) => Err(format!("unexpected answer {o:?}")),
    };
    let checks = judge(
        &head,
        &members,
        answer.as_ref().map_err(String::as_str),
        &cluster.targets,
    );
    reports[i].ray_probe = answer.ok();
    checks
}

/// Whether an agent's error says it does not know the request (serde's words for an unknown
/// tag, which the agent answers as "bad request: ...").
fn predates_probe(message: &str) -> bool {
    message.contains("unknown variant `ray-probe`")
}

fn expected_actor(t: &edgectl_model::topology::TargetsSpec) -> String {
    match t.ray_actor_p99_ms {
        Some(ms) => format!("p99 <= {ms} ms"),
        None => "answered (no ray_actor_p99_ms target)".into(),
    }
}

fn expected_scaling(t: &edgectl_model::topology::TargetsSpec) -> String {
    match t.ray_scaling_min {
        Some(m) => format!("efficiency >= {m} (speedup over the ideal)"),
        None => "measured (no ray_scaling_min target)".into(),
    }
}

fn check(node: &str, name: String, expected: String, actual: String, ok: bool) -> Check {
    Check {
        node: node.to_string(),
        category: "ray".into(),
        name,
        expected,
        actual,
        verdict: if ok { Verdict::Pass } else { Verdict::Fail },
        reason: None,
    }
}

/// Every check the probe would make, skipped for `why`.
pub fn skipped(
    head: &str,
    members: &[Member],
    why: &str,
    t: &edgectl_model::topology::TargetsSpec,
) -> Vec<Check> {
    let skip = |node: &str, name: String, expected: String| Check {
        node: node.to_string(),
        category: "ray".into(),
        name,
        expected,
        actual: "-".into(),
        verdict: Verdict::Skip,
        reason: Some(why.to_string()),
    };
    let mut v: Vec<Check> = members
        .iter()
        .map(|m| skip(&m.name, actor_check(&m.name), expected_actor(t)))
        .collect();
    v.push(skip(head, SCALING.into(), expected_scaling(t)));
    v
}

/// The probe's answer (or why there is none) as checks: `ray actor NODE` for each of
/// `members`, `ray actor ADDRESS` for each alive Ray node that is none of them, then
/// `ray scaling` on the head.
pub fn judge(
    head: &str,
    members: &[Member],
    probe: Result<&RayProbe, &str>,
    t: &edgectl_model::topology::TargetsSpec,
) -> Vec<Check> {
    let failed_all = |why: String| {
        let mut v: Vec<Check> = members
            .iter()
            .map(|m| {
                check(
                    &m.name,
                    actor_check(&m.name),
                    expected_actor(t),
                    why.clone(),
                    false,
                )
            })
            .collect();
        v.push(check(
            head,
            SCALING.into(),
            expected_scaling(t),
            why.clone(),
            false,
        ));
        v
    };
    let p = match probe {
        Err(e) => return failed_all(format!("the Ray probe failed: {e}")),
        Ok(p) => p,
    };
    if p.nodes.is_empty() {
        return failed_all(match &p.error {
            Some(e) => format!("the Ray probe failed: {e}"),
            None => "the Ray probe found no alive Ray node".into(),
        });
    }
    let mut used = vec![false; p.nodes.len()];
    let mut v = Vec::new();
    for m in members {
        let free = |f: &dyn Fn(&ActorStat) -> bool| {
            p.nodes
                .iter()
                .enumerate()
                .position(|(k, s)| !used[k] && f(s))
        };
        let at = free(&|s| m.addresses.contains(&s.address))
            .or_else(|| free(&|s| !s.hostname.is_empty() && s.hostname == m.name));
        match at {
            Some(k) => {
                used[k] = true;
                v.push(actor(&m.name, actor_check(&m.name), &p.nodes[k], t));
            }
            None => {
                let alive: Vec<&str> = p.nodes.iter().map(|s| s.address.as_str()).collect();
                v.push(check(
                    &m.name,
                    actor_check(&m.name),
                    expected_actor(t),
                    format!(
                        "no alive Ray node at {} (Ray's nodes: {})",
                        m.addresses.join(" or "),
                        alive.join(", ")
                    ),
                    false,
                ));
            }
        }
    }
    for (k, s) in p.nodes.iter().enumerate() {
        if !used[k] {
            let mut c = actor(head, actor_check(&s.address), s, t);
            c.actual
                .push_str(" (a Ray node that is no node of the topology)");
            v.push(c);
        }
    }
    v.push(scaling(head, p.scaling.as_ref(), p.error.as_deref(), t));
    v
}

fn actor(
    node: &str,
    name: String,
    s: &ActorStat,
    t: &edgectl_model::topology::TargetsSpec,
) -> Check {
    if let Some(e) = &s.error {
        return check(node, name, expected_actor(t), e.clone(), false);
    }
    let actual = format!(
        "p50 {:.3} ms, p99 {:.3} ms ({} calls to an actor on {})",
        s.p50_ms, s.p99_ms, s.samples, s.address
    );
    // Round trips that happened: a count, and percentiles in the order percentiles have.
    let measured = s.samples > 0 && s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms && s.p99_ms.is_finite();
    let ok = measured && t.ray_actor_p99_ms.is_none_or(|ms| s.p99_ms <= ms);
    check(node, name, expected_actor(t), actual, ok)
}

fn scaling(
    head: &str,
    s: Option<&Scaling>,
    error: Option<&str>,
    t: &edgectl_model::topology::TargetsSpec,
) -> Check {
    let name = SCALING.to_string();
    let Some(s) = s else {
        let why = error.unwrap_or("the probe ended before it");
        return check(
            head,
            name,
            expected_scaling(t),
            format!("not measured: {why}"),
            false,
        );
    };
    if let Some(e) = &s.error {
        return check(head, name, expected_scaling(t), e.clone(), false);
    }
    let actual = format!(
        "efficiency {:.2}: speedup {:.2} of ideal {:.2} ({} tasks of {:.0} ms: {:.2} s on the head alone, {:.2} s on {} nodes with {} CPUs)",
        s.efficiency,
        s.speedup,
        s.ideal,
        s.tasks,
        s.task_ms,
        s.one_node_s,
        s.all_nodes_s,
        s.nodes,
        s.cpus
    );
    let measured = s.tasks > 0
        && s.one_node_s > 0.0
        && s.all_nodes_s > 0.0
        && s.ideal >= 1.0
        && s.efficiency.is_finite()
        && s.efficiency > 0.0;
    let ok = measured && t.ray_scaling_min.is_none_or(|m| s.efficiency >= m);
    check(head, name, expected_scaling(t), actual, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgectl_model::topology::TargetsSpec;

    fn stat(address: &str, hostname: &str, p50: f64, p99: f64) -> ActorStat {
        ActorStat {
            node_id: format!("id-{address}"),
            address: address.into(),
            hostname: hostname.into(),
            cpus: 1.0,
            samples: 200,
            p50_ms: p50,
            p99_ms: p99,
            max_ms: p99 * 2.0,
            error: None,
        }
    }

    fn two_nodes() -> RayProbe {
        RayProbe {
            ray_version: Some("2.40.0".into()),
            python: Some("/v/bin/python3".into()),
            head: Some("id-10.10.1.1".into()),
            nodes: vec![
                stat("10.10.1.1", "head", 0.4, 1.2),
                stat("10.10.1.2", "w1", 0.9, 4.5),
            ],
            scaling: Some(Scaling {
                tasks: 4,
                task_ms: 750.0,
                nodes: 2,
                head_cpus: 1,
                cpus: 2,
                one_node_s: 3.0,
                all_nodes_s: 2.0,
                speedup: 1.5,
                ideal: 2.0,
                efficiency: 0.75,
                error: None,
            }),
            error: None,
        }
    }

    fn members() -> Vec<Member> {
        vec![
            Member {
                name: "head".into(),
                addresses: vec!["10.10.1.1".into(), "head.example.org".into()],
            },
            Member {
                name: "w1".into(),
                addresses: vec!["10.10.1.2".into()],
            },
        ]
    }

    fn targets(p99: Option<f64>, min: Option<f64>) -> TargetsSpec {
        TargetsSpec {
            ray_actor_p99_ms: p99,
            ray_scaling_min: min,
            ..Default::default()
        }
    }

    fn view(cs: &[Check]) -> Vec<(&str, &str, Verdict)> {
        cs.iter()
            .map(|c| (c.node.as_str(), c.name.as_str(), c.verdict))
            .collect()
    }

    #[test]
    fn each_node_has_its_actor_check_and_the_cluster_a_scaling_check() {
        let p = two_nodes();
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert_eq!(
            view(&cs),
            [
                ("head", "ray actor head", Verdict::Pass),
                ("w1", "ray actor w1", Verdict::Pass),
                ("head", "ray scaling", Verdict::Pass),
            ]
        );
        assert!(cs.iter().all(|c| c.category == "ray"));
        assert_eq!(cs[1].expected, "answered (no ray_actor_p99_ms target)");
        assert_eq!(
            cs[1].actual,
            "p50 0.900 ms, p99 4.500 ms (200 calls to an actor on 10.10.1.2)"
        );
        assert_eq!(cs[2].expected, "measured (no ray_scaling_min target)");
        assert!(
            cs[2]
                .actual
                .starts_with("efficiency 0.75: speedup 1.50 of ideal 2.00 (4 tasks of 750 ms"),
            "{}",
            cs[2].actual
        );
    }

    #[test]
    fn targets_are_judged() {
        let p = two_nodes();
        // w1's p99 (4.5 ms) is over 2 ms, the head's (1.2 ms) is not; 0.75 is under 0.8.
        let cs = judge("head", &members(), Ok(&p), &targets(Some(2.0), Some(0.8)));
        assert_eq!(
            view(&cs),
            [
                ("head", "ray actor head", Verdict::Pass),
                ("w1", "ray actor w1", Verdict::Fail),
                ("head", "ray scaling", Verdict::Fail),
            ]
        );
        assert_eq!(cs[0].expected, "p99 <= 2 ms");
        assert_eq!(cs[2].expected, "efficiency >= 0.8 (speedup over the ideal)");
        let cs = judge("head", &members(), Ok(&p), &targets(Some(5.0), Some(0.75)));
        assert!(cs.iter().all(|c| c.verdict == Verdict::Pass), "{cs:#?}");
    }

    #[test]
    fn what_was_not_measured_fails_with_its_reason() {
        let mut p = two_nodes();
        p.nodes[1].error = Some("GetTimeoutError: Get timed out".into());
        p.nodes[1].samples = 0;
        p.scaling = Some(Scaling {
            error: Some("the head offers no CPU to tasks".into()),
            ..Default::default()
        });
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert_eq!(
            view(&cs),
            [
                ("head", "ray actor head", Verdict::Pass),
                ("w1", "ray actor w1", Verdict::Fail),
                ("head", "ray scaling", Verdict::Fail),
            ]
        );
        assert!(cs[1].actual.contains("timed out"));
        assert!(cs[2].actual.contains("no CPU"));
        // Numbers that no real measurement gives pass no check.
        let mut p = two_nodes();
        p.nodes[0].p50_ms = 0.0;
        p.nodes[1].p99_ms = 0.5;
        p.scaling.as_mut().unwrap().efficiency = f64::NAN;
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert!(cs.iter().all(|c| c.verdict == Verdict::Fail), "{cs:#?}");
        // The probe stopped before the batch: said so.
        let mut p = two_nodes();
        p.scaling = None;
        p.error = Some("KeyboardInterrupt: ".into());
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert_eq!(cs[2].actual, "not measured: KeyboardInterrupt: ");
        // No answer at all: every check fails with the reason.
        let cs = judge("head", &members(), Err("timed out"), &targets(None, None));
        assert_eq!(cs.len(), 3);
        for c in &cs {
            assert_eq!(c.verdict, Verdict::Fail);
            assert_eq!(c.actual, "the Ray probe failed: timed out");
        }
        let p = RayProbe {
            error: Some("ConnectionError: could not find any running Ray instance".into()),
            ..Default::default()
        };
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert!(cs.iter().all(|c| c.verdict == Verdict::Fail
            && c.actual.contains("could not find any running Ray instance")));
    }

    #[test]
    fn ray_nodes_are_found_by_address_then_host_name() {
        let mut p = two_nodes();
        // w1 registered with another address, but its host name is its topology name; and a
        // node the topology does not know has joined.
        p.nodes[1].address = "192.168.7.2".into();
        p.nodes.push(stat("10.10.1.9", "stranger", 0.5, 0.8));
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert_eq!(
            view(&cs),
            [
                ("head", "ray actor head", Verdict::Pass),
                ("w1", "ray actor w1", Verdict::Pass),
                ("head", "ray actor 10.10.1.9", Verdict::Pass),
                ("head", "ray scaling", Verdict::Pass),
            ]
        );
        assert!(
            cs[2]
                .actual
                .ends_with("(a Ray node that is no node of the topology)")
        );
        // A topology node Ray does not list fails, naming what Ray has.
        let mut p = two_nodes();
        p.nodes.pop();
        let cs = judge("head", &members(), Ok(&p), &targets(None, None));
        assert_eq!(cs[1].verdict, Verdict::Fail);
        assert_eq!(
            cs[1].actual,
            "no alive Ray node at 10.10.1.2 (Ray's nodes: 10.10.1.1)"
        );
    }

    #[test]
    fn an_older_agents_refusal_is_recognised() {
        // An agent's Request without `ray-probe` refuses it as this one refuses a tag it lacks.
        let known = r#"{"op": "ray-probe", "samples": 1, "scaling_s": 3.0}"#;
        assert!(serde_json::from_str::<Request>(known).is_ok());
        let future = serde_json::from_str::<Request>(r#"{"op": "ray-probe-v9"}"#).unwrap_err();
        let older = format!("bad request: {future}").replace("ray-probe-v9", "ray-probe");
        assert!(predates_probe(&older), "{older}");
        assert!(!predates_probe("bad request: missing field `samples`"));
    }

    #[test]
    fn skipped_checks_say_why() {
        let cs = skipped(
            "head",
            &members(),
            "ray is not installed on head",
            &targets(None, Some(0.8)),
        );
        assert_eq!(
            view(&cs),
            [
                ("head", "ray actor head", Verdict::Skip),
                ("w1", "ray actor w1", Verdict::Skip),
                ("head", "ray scaling", Verdict::Skip),
            ]
        );
        assert!(
            cs.iter()
                .all(|c| c.reason.as_deref() == Some("ray is not installed on head"))
        );
        assert_eq!(cs[2].expected, "efficiency >= 0.8 (speedup over the ideal)");
    }
}
