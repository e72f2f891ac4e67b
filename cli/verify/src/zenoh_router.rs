//! Zenoh through the cluster's routers, as the nodes use them. For each `zenoh-router` node R,
//! every agent that answered opens a client-mode session connected to R's endpoint only
//! (`tcp/<R's LAN address>:7447`, the endpoint the generated configuration connects the
//! nodes' zenohd to), so that every ping and its answer pass through R; every ordered pair
//! then measures pub/sub round trips, in the latency matrix's rounds, and the sessions close.
//! Each pair is a check `latency A -> B (zenoh through router R)` against `latency_p99_ms`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use edgectl_agent::client;
use edgectl_agent::proto::{PairStat, Request, Response};
use edgectl_model::{Cluster, Node, Role};
use quinn::Connection;
use serde::{Deserialize, Serialize};

use crate::checks::{self, Check, Verdict};
use crate::verify::{directed_rounds, join_vec};

/// zenohd's port on the router nodes (render's `host::ZENOH_PORT`, modules/zenoh.nix).
pub const ROUTER_PORT: u16 = edgectl_render::host::ZENOH_PORT;

/// The round trips between the nodes through one router.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterPairs {
    /// The router's node.
    pub router: String,
    /// The endpoint the sessions connected to.
    pub endpoint: String,
    pub pairs: Vec<PairStat>,
}

/// The endpoint the nodes' Zenoh configuration connects to for router node `r`.
pub fn endpoint(r: &Node) -> String {
    format!("tcp/{}:{ROUTER_PORT}", edgectl_render::host::lan_address(r))
}

/// The cluster's router nodes (selected or not: the nodes use them either way) and their
/// endpoints, in the topology's order.
pub fn routers(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .nodes
        .iter()
        .filter(|n| n.is(Role::ZenohRouter))
        .map(|n| (n.name.clone(), endpoint(n)))
        .collect()
}

/// What the check names say about how a pair was measured.
pub fn kind(router: &str) -> String {
    format!("zenoh through router {router}")
}

/// A failed check on `node` about the measurement through `router` as a whole.
fn failed(node: &str, name: String, expected: String, actual: String) -> Check {
    Check {
        node: node.to_string(),
        category: "network".into(),
        name,
        expected,
        actual,
        verdict: Verdict::Fail,
        reason: None,
    }
}

/// Measures through every router of `cluster` between the `live` agents (index into
/// `nodes`, connection, address) and adds the checks to `out`.
pub async fn measure(
    cluster: &Cluster,
    nodes: &[&Node],
    live: &[(usize, &Connection, SocketAddr)],
    samples: u32,
    out: &mut Vec<Check>,
) -> Vec<RouterPairs> {
    let mut all = Vec::new();
    if live.len() < 2 {
        return all;
    }
    let order: BTreeMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    for (router, ep) in routers(cluster) {
        let mut pairs = through(nodes, live, &router, &ep, samples, out).await;
        pairs.sort_by_key(|s| {
            (
                order.get(s.from.as_str()).copied(),
                order.get(s.to.as_str()).copied(),
            )
        });
        let target = cluster.targets.latency_p99_ms;
        out.extend(
            pairs
                .iter()
                .map(|s| checks::latency(&kind(&router), s, target)),
        );
        all.push(RouterPairs {
            router,
            endpoint: ep,
            pairs,
        });
    }
    all
}

/// One router: sessions open, the rounds, sessions closed.
async fn through(
    nodes: &[&Node],
    live: &[(usize, &Connection, SocketAddr)],
    router: &str,
    ep: &str,
    samples: u32,
    out: &mut Vec<Check>,
) -> Vec<PairStat> {
    let opens = live.iter().map(|&(i, conn, _)| {
        let req = Request::ZenohRouterOpen {
            me: nodes[i].name.clone(),
            routers: vec![ep.to_string()],
        };
        async move { client::request(conn, &req, Duration::from_secs(20)).await }
    });
    let mut open = Vec::new();
    for (&(i, conn, _), r) in live.iter().zip(join_vec(opens.collect()).await) {
        match r {
            Ok(Response::Ok) => open.push((i, conn)),
            Ok(Response::Error { message }) | Err(message) => out.push(failed(
                &nodes[i].name,
                format!("zenoh session through router {router}"),
                format!("client session connected to {ep}"),
                message,
            )),
            Ok(o) => out.push(failed(
                &nodes[i].name,
                format!("zenoh session through router {router}"),
                format!("client session connected to {ep}"),
                format!("unexpected answer {o:?}"),
            )),
        }
    }
    let mut pairs = Vec::new();
    for round in directed_rounds(open.len()) {
        let reqs = round.iter().map(|&(x, y)| {
            let (i, conn) = open[x];
            let req = Request::ZenohRouterPairs {
                peers: vec![nodes[open[y].0].name.clone()],
                samples,
            };
            async move {
                (
                    i,
                    client::request(conn, &req, Duration::from_secs(300)).await,
                )
            }
        });
        for (i, r) in join_vec(reqs.collect()).await {
            let why = match r {
                Ok(Response::Pairs { pairs: p }) => {
                    pairs.extend(p);
                    continue;
                }
                Ok(Response::Error { message }) | Err(message) => message,
                Ok(o) => format!("unexpected answer {o:?}"),
            };
            out.push(failed(
                &nodes[i].name,
                format!("latency matrix through router {router}"),
                "measured".into(),
                why,
            ));
        }
    }
    // Client sessions have no listener; they go now all the same (and with the connection).
    let closes = open.iter().map(|(_, conn)| {
        client::request(conn, &Request::ZenohRouterClose, Duration::from_secs(10))
    });
    join_vec(closes.collect()).await;
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn routers_are_the_role_with_the_endpoint_the_nodes_connect_to() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/edge-lab.toml");
        let c = edgectl_model::load(&p, &Default::default())
            .expect("the example loads")
            .cluster;
        let want: Vec<(String, String)> = c
            .nodes
            .iter()
            .filter(|n| n.is(Role::ZenohRouter))
            .map(|n| {
                let ip = n.interfaces.first().map(|i| i.address.addr.to_string());
                (
                    n.name.clone(),
                    format!("tcp/{}:7447", ip.unwrap_or_else(|| n.host.clone())),
                )
            })
            .collect();
        assert!(!want.is_empty(), "the example has a zenoh router");
        assert_eq!(routers(&c), want);
        // The same endpoint the generated configuration gives the other nodes.
        let other = c.nodes.iter().find(|n| !n.is(Role::ZenohRouter)).unwrap();
        let ctx = edgectl_render::host::context(&c, other);
        let connect: Vec<String> = ctx["zenoh"]["connect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let eps: Vec<String> = want.into_iter().map(|(_, e)| e).collect();
        assert_eq!(connect, eps);
        assert_eq!(kind("r1"), "zenoh through router r1");
    }
}
