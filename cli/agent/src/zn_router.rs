//! Zenoh through the cluster's router, as the nodes use it: the agent opens a client-mode
//! session connected to one router endpoint only (`tcp/<router's LAN address>:7447`, what the
//! nodes' zenohd connect to, see modules/zenoh.nix and render's `host::ZENOH_PORT`), so every
//! ping and its answer pass through that router; it has no listener and does no scouting.
//! Pings and pongs go under [`PREFIX`], never the peer sessions' keys.
//!
//! [`run_router`] is `edgectl agent --zenoh-router ENDPOINT`: a router from the same `zenoh`
//! crate, configured as modules/lib/zenoh.nix's `zenohConfigFor { router = true; }` configures
//! zenohd (router mode, those listen endpoints, multicast scouting off), for a node or a test
//! rig without zenohd.

use std::time::Duration;

use tokio::sync::Mutex;

use crate::proto::{Request, Response};
use crate::zn::Zn;

/// zenohd's port on the router nodes in the generated configuration.
pub const ROUTER_PORT: u16 = 7447;
/// The first part of the keys of pings through a router.
pub const PREFIX: &str = "edgectl/via-router";

/// The agent's session through a router and the controller's connection that opened it.
pub type Slot = Mutex<Option<(usize, Zn)>>;

fn cfg_err(e: impl std::fmt::Display) -> String {
    format!("zenoh config: {e}")
}

fn endpoints(es: &[String]) -> String {
    serde_json::json!(es).to_string()
}

/// A client session's config: connected to `routers` only.
pub fn client_config(routers: &[String]) -> Result<zenoh::Config, String> {
    if routers.is_empty() {
        return Err("no router endpoint to connect to".into());
    }
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", r#""client""#).map_err(cfg_err)?;
    c.insert_json5("connect/endpoints", &endpoints(routers))
        .map_err(cfg_err)?;
    c.insert_json5("scouting/multicast/enabled", "false")
        .map_err(cfg_err)?;
    c.insert_json5("scouting/gossip/enabled", "false")
        .map_err(cfg_err)?;
    Ok(c)
}

/// A router's config, as `zenohConfigFor { router = true; listen = ...; }` writes zenohd's.
pub fn router_config(listen: &[String]) -> Result<zenoh::Config, String> {
    if listen.is_empty() {
        return Err("a router needs an endpoint to listen on".into());
    }
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", r#""router""#).map_err(cfg_err)?;
    c.insert_json5("listen/endpoints", &endpoints(listen))
        .map_err(cfg_err)?;
    c.insert_json5("connect/endpoints", "[]").map_err(cfg_err)?;
    c.insert_json5("scouting/multicast/enabled", "false")
        .map_err(cfg_err)?;
    Ok(c)
}

/// Opens `me`'s session through `routers` (client mode), answering pings under [`PREFIX`].
pub async fn open_client(me: &str, routers: &[String]) -> Result<Zn, String> {
    let c = client_config(routers)?;
    Zn::start(c, me, PREFIX)
        .await
        .map_err(|e| format!("through {}: {e}", routers.join(", ")))
}

/// Closes the session in `slot`; with `owner`, only one that connection opened.
pub async fn close(slot: &Slot, owner: Option<usize>) {
    let mut s = slot.lock().await;
    if owner.is_none_or(|o| s.as_ref().is_some_and(|(by, _)| *by == o))
        && let Some((_, z)) = s.take()
    {
        z.close().await;
    }
}

/// Answers the requests about the session through the router, which came on connection `conn`.
pub async fn handle(slot: &Slot, conn: usize, req: Request) -> Response {
    match req {
        Request::ZenohRouterOpen { me, routers } => {
            close(slot, None).await;
            match open_client(&me, &routers).await {
                Ok(z) => {
                    *slot.lock().await = Some((conn, z));
                    Response::Ok
                }
                Err(message) => Response::Error { message },
            }
        }
        Request::ZenohRouterClose => {
            close(slot, None).await;
            Response::Ok
        }
        Request::ZenohRouterPairs { peers, samples } => {
            let s = slot.lock().await;
            let Some((_, z)) = s.as_ref() else {
                return Response::Error {
                    message: "no session through a router is open".into(),
                };
            };
            let mut pairs = Vec::new();
            // One peer at a time, as in the peer-to-peer matrix.
            for p in &peers {
                pairs.push(z.pair(p, samples).await);
            }
            Response::Pairs { pairs }
        }
        _ => Response::Error {
            message: "not a request about the session through a router".into(),
        },
    }
}

/// `edgectl agent --zenoh-router ENDPOINT...`: a Zenoh router listening on `listen` until
/// `exit_after` (or until it is killed).
pub fn run_router(listen: &[String], exit_after: Option<Duration>) -> Result<(), String> {
    let c = router_config(listen)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let session = tokio::time::timeout(Duration::from_secs(10), zenoh::open(c))
            .await
            .map_err(|_| "the zenoh router did not start within 10 s".to_string())?
            .map_err(|e| format!("zenoh router on {}: {e}", listen.join(", ")))?;
        eprintln!(
            "edgectl agent: Zenoh router listening on {}",
            listen.join(", ")
        );
        match exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
        let _ = session.close().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_router_and_client_as_the_nodes_use_them() {
        let r = router_config(&["tcp/10.0.0.1:7447".into()]).unwrap();
        assert_eq!(r.get_json("mode").unwrap(), r#""router""#);
        assert_eq!(
            r.get_json("listen/endpoints").unwrap(),
            r#"["tcp/10.0.0.1:7447"]"#
        );
        assert_eq!(r.get_json("scouting/multicast/enabled").unwrap(), "false");
        let c = client_config(&["tcp/10.0.0.1:7447".into()]).unwrap();
        assert_eq!(c.get_json("mode").unwrap(), r#""client""#);
        assert_eq!(
            c.get_json("connect/endpoints").unwrap(),
            r#"["tcp/10.0.0.1:7447"]"#
        );
        assert!(client_config(&[]).is_err());
        assert!(router_config(&[]).is_err());
        // An endpoint zenoh cannot parse is an error, not a panic.
        assert!(client_config(&["not an endpoint".into()]).is_err());
    }
}
