//! The agent's HTTP/3 door, read by a real HTTP/3 client (h3 over h3-quinn, ALPN `h3`) over UDP
//! on loopback: `GET /facts` and `GET /checks` answer JSON to the controller's certificate,
//! under the same mutual TLS as edgectl's own protocol, which keeps working on the same port.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use edgectl_agent::pki::{self, CONTROLLER, Identity, Party};
use edgectl_agent::proto::{Request, Response};
use edgectl_agent::{client, http3, tls};
use http::{Method, StatusCode, header};

/// An HTTP/3 client of the agent at `addr` (node n1) that trusts `ca` and presents `id`.
struct H3 {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    _driver: tokio::task::JoinHandle<()>,
    port: u16,
}

async fn h3_connect(
    ca: &str,
    id: Option<&Identity>,
    addr: SocketAddr,
    t: Duration,
) -> Result<H3, String> {
    let ep = client::endpoint(tls::client_for(ca, id, &[http3::ALPN])?)?;
    let conn = client::connect(&ep, None, addr, "n1", t).await?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(H3 {
        send,
        conn,
        _driver: driver,
        port: addr.port(),
    })
}

/// One request: status, content-type, `allow` and the body.
async fn fetch(
    c: &mut H3,
    method: Method,
    path: &str,
    t: Duration,
) -> Result<(StatusCode, String, Option<String>, Vec<u8>), String> {
    let fut = async {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("https://n1.node.edgectl:{}{path}", c.port))
            .body(())
            .map_err(|e| e.to_string())?;
        let mut s = c.send.send_request(req).await.map_err(|e| e.to_string())?;
        s.finish().await.map_err(|e| e.to_string())?;
        let resp = s.recv_response().await.map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        while let Some(mut chunk) = s.recv_data().await.map_err(|e| e.to_string())? {
            while chunk.has_remaining() {
                let n = chunk.chunk().len();
                body.extend_from_slice(chunk.chunk());
                chunk.advance(n);
            }
        }
        let h = |k: header::HeaderName| {
            resp.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Ok((
            resp.status(),
            h(header::CONTENT_TYPE).unwrap_or_default(),
            h(header::ALLOW),
            body,
        ))
    };
    tokio::time::timeout(t, fut)
        .await
        .map_err(|_| format!("no answer within {} s", t.as_secs()))?
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[test]
fn facts_and_checks_over_http3_beside_the_agent_protocol() {
    let common::LoopbackAgent {
        dir: _dir,
        pki,
        addr,
        thread: agent,
    } = common::start(Duration::from_secs(120));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = Duration::from_secs(30);
        let ctrl = pki.identity(CONTROLLER).unwrap();
        // The agent starts in a thread: wait for it.
        let mut c = None;
        for _ in 0..100 {
            if let Ok(h) =
                h3_connect(&pki.ca_pem, Some(&ctrl), addr, Duration::from_millis(200)).await
            {
                c = Some(h);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = c.expect("the controller's HTTP/3 client connects");
        assert_eq!(tls::alpn(&c.conn).as_deref(), Some(http3::ALPN));

        // /facts: the facts edgectl's protocol returns, as JSON.
        let (status, ctype, _, body) = fetch(&mut c, Method::GET, "/facts", t).await.unwrap();
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::OK, "application/json")
        );
        let f = json(&body);
        assert!(f["cpu"]["threads"].as_u64().unwrap() > 0, "{f}");
        assert!(f["memory_bytes"].as_u64().unwrap() > 0, "{f}");
        assert!(f["hostname"].is_string() && f["units"].is_object(), "{f}");
        let typed: edgectl_agent::facts::Facts = serde_json::from_slice(&body).unwrap();
        assert!(typed.cpu.threads > 0);

        // /checks: the node's checks of itself, on this machine (no topology).
        let (status, ctype, _, body) = fetch(&mut c, Method::GET, "/checks", t).await.unwrap();
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::OK, "application/json")
        );
        let v = json(&body);
        assert!(v["hostname"].is_string() && v["ok"].is_boolean(), "{v}");
        let checks = v["checks"].as_array().unwrap();
        let verdict = |name: &str| {
            checks
                .iter()
                .find(|c| c["name"] == name)
                .unwrap_or_else(|| panic!("no {name} check in {v}"))["verdict"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(verdict("facts"), "pass");
        assert_eq!(verdict("wasm cold start"), "pass");
        for name in ["gpu", "kvm", "ray status", "unit edgectl-agent"] {
            assert!(
                ["pass", "fail", "skip"].contains(&verdict(name).as_str()),
                "{name}"
            );
        }
        let typed: edgectl_agent::checks::LocalChecks = serde_json::from_slice(&body).unwrap();
        assert_eq!(typed.checks.len(), checks.len());

        // Other paths and methods, on the same connection.
        for p in ["/", "/facts/", "/metrics", "/facts/../checks"] {
            let (status, ctype, _, body) = fetch(&mut c, Method::GET, p, t).await.unwrap();
            assert_eq!(status, StatusCode::NOT_FOUND, "{p}");
            assert_eq!(ctype, "application/json");
            assert!(json(&body)["error"].is_string());
        }
        for m in [Method::POST, Method::DELETE] {
            let (status, _, allow, body) = fetch(&mut c, m.clone(), "/facts", t).await.unwrap();
            assert_eq!(
                (status, allow.as_deref()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("GET")),
                "{m}"
            );
            assert!(json(&body)["error"].is_string());
        }

        // A node's certificate is the cluster's, but only the controller reads the node.
        let n2 = pki.identity(Party::Node("n2")).unwrap();
        let mut c2 = h3_connect(&pki.ca_pem, Some(&n2), addr, t).await.unwrap();
        let (status, ctype, _, body) = fetch(&mut c2, Method::GET, "/facts", t).await.unwrap();
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::FORBIDDEN, "application/json")
        );
        assert!(
            json(&body)["error"]
                .as_str()
                .unwrap()
                .contains("controller")
        );

        // A certificate from another CA (named like the controller), and none at all: no
        // answer, whatever the handshake looked like on the client's side.
        let (_, foreign) = pki::foreign_identity(CONTROLLER).unwrap();
        for (what, id) in [("foreign CA", Some(&foreign)), ("no certificate", None)] {
            let got = match h3_connect(&pki.ca_pem, id, addr, Duration::from_secs(5)).await {
                Err(_) => None,
                Ok(mut c) => fetch(&mut c, Method::GET, "/facts", Duration::from_secs(5))
                    .await
                    .ok(),
            };
            assert!(got.is_none(), "{what} must be refused, got {got:?}");
        }
        // A client that does not trust the cluster CA refuses the agent.
        let (fca, fid) = pki::foreign_identity(CONTROLLER).unwrap();
        assert!(h3_connect(&fca, Some(&fid), addr, t).await.is_err());

        // edgectl's own protocol on the same port, while the HTTP/3 connection is open.
        let ep = client::endpoint(tls::client(&pki.ca_pem, Some(&ctrl)).unwrap()).unwrap();
        let conn = client::connect(&ep, None, addr, "n1", t).await.unwrap();
        assert_eq!(
            tls::alpn(&conn).as_deref(),
            Some(edgectl_agent::proto::ALPN)
        );
        client::ping(&conn, 7).await.unwrap();
        match client::request(&conn, &Request::Facts, t).await.unwrap() {
            Response::Facts(f) => assert!(f.cpu.threads > 0),
            other => panic!("{other:?}"),
        }
        let (status, _, _, _) = fetch(&mut c, Method::GET, "/facts", t).await.unwrap();
        assert_eq!(status, StatusCode::OK, "HTTP/3 still answers");
        c.conn.close(0u32.into(), b"done");

        assert!(matches!(
            client::request(&conn, &Request::Shutdown, t).await.unwrap(),
            Response::Ok
        ));
    });
    agent.join().unwrap().unwrap();
}
