//! Zenoh through a router, as the agents measure it for `verify`: two agents on loopback, each
//! with a client session connected to a real router (the `zenoh` crate in router mode, what
//! `edgectl agent --zenoh-router` runs) and to nothing else, exchange pings through it; with
//! no router at the endpoint, no session opens and the answer says why.
#![cfg(feature = "zenoh")]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use edgectl_agent::pki::CONTROLLER;
use edgectl_agent::proto::{Request, Response};
use edgectl_agent::{client, tls};
use quinn::Connection;

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn connect(a: &common::LoopbackAgent, name: &str) -> Connection {
    let ctrl = a.pki.identity(CONTROLLER).unwrap();
    let ep = client::endpoint(tls::client(&a.pki.ca_pem, Some(&ctrl)).unwrap()).unwrap();
    for _ in 0..100 {
        if let Ok(c) = client::connect(&ep, None, a.addr, name, Duration::from_millis(200)).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent does not answer on {}", a.addr);
}

async fn ask(conn: &Connection, req: &Request) -> Response {
    client::request(conn, req, Duration::from_secs(60))
        .await
        .unwrap()
}

fn open(me: &str, ep: &str) -> Request {
    Request::ZenohRouterOpen {
        me: me.into(),
        routers: vec![ep.into()],
    }
}

#[test]
fn agents_measure_round_trips_through_a_real_router_and_only_through_it() {
    let port = free_tcp_port();
    let ep = format!("tcp/127.0.0.1:{port}");
    let router = {
        let ep = ep.clone();
        std::thread::spawn(move || {
            edgectl_agent::zn_router::run_router(&[ep], Some(Duration::from_secs(30)))
        })
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(up, "the router does not listen on {ep}");
    let a1 = common::start_node("n1", Duration::from_secs(60));
    let a2 = common::start_node("n2", Duration::from_secs(60));
    // Their state folders live as long as they do.
    let _dirs = (a1.dir.path(), a2.dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c1 = connect(&a1, "n1").await;
        let c2 = connect(&a2, "n2").await;
        // Nothing to measure before a session is open.
        match ask(
            &c1,
            &Request::ZenohRouterPairs {
                peers: vec!["n2".into()],
                samples: 5,
            },
        )
        .await
        {
            Response::Error { message } => assert!(message.contains("no session"), "{message}"),
            o => panic!("{o:?}"),
        }
        assert!(matches!(ask(&c1, &open("n1", &ep)).await, Response::Ok));
        assert!(matches!(ask(&c2, &open("n2", &ep)).await, Response::Ok));
        for (conn, me, peer) in [(&c1, "n1", "n2"), (&c2, "n2", "n1")] {
            let req = Request::ZenohRouterPairs {
                peers: vec![peer.into()],
                samples: 50,
            };
            let Response::Pairs { pairs } = ask(conn, &req).await else {
                panic!("no pairs from {me}");
            };
            assert_eq!(pairs.len(), 1);
            let s = &pairs[0];
            assert_eq!((s.from.as_str(), s.to.as_str()), (me, peer));
            assert!(s.error.is_none(), "{s:?}");
            assert_eq!(s.samples, 50, "{s:?}");
            assert!(s.p50_ms > 0.0 && s.p99_ms >= s.p50_ms, "{s:?}");
        }
        // A peer without a session through the router never answers.
        let req = Request::ZenohRouterPairs {
            peers: vec!["n3".into()],
            samples: 5,
        };
        let Response::Pairs { pairs } = ask(&c1, &req).await else {
            panic!("no pairs");
        };
        assert!(
            pairs[0].error.as_deref().is_some_and(|e| e.contains("n3")),
            "{pairs:?}"
        );
        assert!(matches!(
            ask(&c1, &Request::ZenohRouterClose).await,
            Response::Ok
        ));
        assert!(matches!(
            ask(&c2, &Request::ZenohRouterClose).await,
            Response::Ok
        ));

        // No router at the endpoint: the session does not open, and the answer names it.
        let nobody = format!("tcp/127.0.0.1:{}", free_tcp_port());
        match ask(&c1, &open("n1", &nobody)).await {
            Response::Error { message } => assert!(message.contains(&nobody), "{message}"),
            o => panic!("a session opened without a router: {o:?}"),
        }
        for c in [&c1, &c2] {
            assert!(matches!(ask(c, &Request::Shutdown).await, Response::Ok));
        }
    });
    a1.thread.join().unwrap().unwrap();
    a2.thread.join().unwrap().unwrap();
    drop(router);
}
