//! What the agent takes from the controller over real QUIC on loopback: requests up to
//! `MAX_REQUEST` and an error answer beyond it; a Zenoh session whose listener is gone once
//! the controller closes it or goes away.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use edgectl_agent::pki::CONTROLLER;
use edgectl_agent::proto::{KIND_JSON, MAX_REQUEST, Request, Response};
use edgectl_agent::{client, tls};
use quinn::{Connection, Endpoint};

/// An agent for node n1 on loopback (in a thread of this process), and the controller's
/// endpoint for it.
fn agent() -> (
    tempfile::TempDir,
    SocketAddr,
    Endpoint,
    std::thread::JoinHandle<Result<(), String>>,
    tokio::runtime::Runtime,
) {
    let a = common::start(Duration::from_secs(120));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ctrl = a.pki.identity(CONTROLLER).unwrap();
    let ep = rt.block_on(async {
        client::endpoint(tls::client(&a.pki.ca_pem, Some(&ctrl)).unwrap()).unwrap()
    });
    (a.dir, a.addr, ep, a.thread, rt)
}

async fn connect(ep: &Endpoint, addr: SocketAddr) -> Connection {
    for _ in 0..100 {
        if let Ok(c) = client::connect(ep, None, addr, "n1", Duration::from_millis(200)).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent does not answer on {addr}");
}

/// Sends `body` as one JSON request, as is, and returns the answer.
async fn raw_request(conn: &Connection, body: &[u8]) -> Result<Response, String> {
    let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut buf = vec![KIND_JSON];
    buf.extend_from_slice(body);
    // The agent may stop reading: the answer counts, not whether all of it went out.
    let _ = s.write_all(&buf).await;
    let _ = s.finish();
    let back = r.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&back).map_err(|e| e.to_string())
}

/// `{"op":"facts"}` padded with an unknown field to `len` bytes.
fn facts_of_size(len: usize) -> Vec<u8> {
    let head = br#"{"op":"facts","pad":""#;
    let mut v = head.to_vec();
    v.resize(len - 2, b'a');
    v.extend_from_slice(br#""}"#);
    v
}

#[test]
fn requests_beyond_the_limit_are_answered_with_an_error() {
    let (_d, addr, ep, agent, rt) = agent();
    rt.block_on(async {
        let t = Duration::from_secs(30);
        let conn = connect(&ep, addr).await;
        // Just under the limit: read and answered (a module of ~12 MiB fits, base64 in JSON).
        match tokio::time::timeout(t, raw_request(&conn, &facts_of_size(MAX_REQUEST - 1)))
            .await
            .unwrap()
        {
            Ok(Response::Facts(_)) => {}
            other => panic!("a request under the limit: {other:?}"),
        }
        // Just over it: an error that says so, not a silently dropped stream.
        match tokio::time::timeout(t, raw_request(&conn, &facts_of_size(MAX_REQUEST + 1)))
            .await
            .unwrap()
        {
            Ok(Response::Error { message }) => {
                assert!(message.contains("too large"), "{message}");
                assert!(message.contains(&format!("{} MiB", MAX_REQUEST >> 20)));
            }
            other => panic!("a request over the limit: {other:?}"),
        }
        // Through the client, as verify sends a module too large: the error reaches it, and
        // the connection still serves the next request.
        let huge = Request::RunWasi {
            name: "huge".into(),
            module_b64: "A".repeat(MAX_REQUEST + (4 << 20)),
            args: vec![],
            timeout_ms: 1000,
        };
        match client::request(&conn, &huge, t).await {
            Ok(Response::Error { message }) => assert!(message.contains("too large"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client::request(&conn, &Request::Facts, t).await,
            Ok(Response::Facts(_))
        ));
        assert!(matches!(
            client::request(&conn, &Request::Shutdown, t).await,
            Ok(Response::Ok)
        ));
    });
    agent.join().unwrap().unwrap();
}

/// Whether something accepts TCP connections on `port` of loopback, within `wait`.
#[cfg(feature = "zenoh")]
fn accepts(port: u16, wait: Duration) -> bool {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, wait).is_ok()
}

/// Waits up to 10 s for `port` to stop accepting connections.
#[cfg(feature = "zenoh")]
async fn closes(port: u16) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if !accepts(port, Duration::from_millis(200)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[cfg(feature = "zenoh")]
#[test]
fn the_zenoh_listener_closes_with_the_run() {
    let (_d, addr, ep, agent, rt) = agent();
    let zport = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    rt.block_on(async {
        let t = Duration::from_secs(20);
        let open = Request::ZenohOpen {
            me: "n1".into(),
            listen: format!("tcp/127.0.0.1:{zport}"),
            connect: vec![],
        };
        // Closed on request: verify's ZenohClose after the matrix.
        let conn = connect(&ep, addr).await;
        assert!(matches!(
            client::request(&conn, &open, t).await,
            Ok(Response::Ok)
        ));
        assert!(
            accepts(zport, Duration::from_secs(2)),
            "the session is not listening"
        );
        assert!(matches!(
            client::request(&conn, &Request::ZenohClose, t).await,
            Ok(Response::Ok)
        ));
        assert!(closes(zport).await, "ZenohClose left the listener open");

        // Closed with the controller's connection: a verify that ends (or dies) without
        // asking, as with a service agent that keeps running.
        assert!(matches!(
            client::request(&conn, &open, t).await,
            Ok(Response::Ok)
        ));
        assert!(accepts(zport, Duration::from_secs(2)));
        conn.close(0u32.into(), b"done");
        assert!(
            closes(zport).await,
            "the listener outlived the connection that opened it"
        );

        // The agent itself is still there.
        let conn = connect(&ep, addr).await;
        assert!(matches!(
            client::request(&conn, &Request::Shutdown, t).await,
            Ok(Response::Ok)
        ));
    });
    agent.join().unwrap().unwrap();
}
