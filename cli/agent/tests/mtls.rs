//! The agent's door: mutual TLS against the cluster CA, over real UDP on loopback. The
//! controller may ask anything, another node only ping; a foreign CA or no certificate at all
//! gets nothing.

mod common;

use std::time::Duration;

use edgectl_agent::pki::{self, CONTROLLER, Party};
use edgectl_agent::proto::{Request, Response};
use edgectl_agent::{client, tls};

#[test]
fn only_cluster_certificates_get_in() {
    let common::LoopbackAgent {
        dir: _dir,
        pki,
        addr,
        thread: agent,
    } = common::start(Duration::from_secs(60));

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let t = Duration::from_secs(5);
        let ctrl = pki.identity(CONTROLLER).unwrap();
        let ep = client::endpoint(tls::client(&pki.ca_pem, Some(&ctrl)).unwrap()).unwrap();
        let mut conn = None;
        for _ in 0..100 {
            if let Ok(c) = client::connect(&ep, None, addr, "n1", Duration::from_millis(200)).await
            {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let conn = conn.expect("controller connects");
        match client::request(&conn, &Request::Facts, t).await.unwrap() {
            Response::Facts(f) => assert!(f.cpu.threads > 0),
            other => panic!("{other:?}"),
        }

        // Another node of the cluster: pings (latency) yes, requests no.
        let n2 = pki.identity(Party::Node("n2")).unwrap();
        let ep2 = client::endpoint(tls::client(&pki.ca_pem, Some(&n2)).unwrap()).unwrap();
        let c2 = client::connect(&ep2, None, addr, "n1", t).await.unwrap();
        client::ping(&c2, 7).await.expect("a peer node may ping");
        match client::request(&c2, &Request::Facts, t).await.unwrap() {
            Response::Error { message } => assert!(message.contains("controller"), "{message}"),
            other => panic!("a node certificate must not get facts: {other:?}"),
        }

        // A certificate from another CA (named like the controller), and none at all.
        let (_, foreign) = pki::foreign_identity(CONTROLLER).unwrap();
        for (what, id) in [("foreign CA", Some(&foreign)), ("no certificate", None)] {
            let ep3 = client::endpoint(tls::client(&pki.ca_pem, id).unwrap()).unwrap();
            let refused = match client::connect(&ep3, None, addr, "n1", t).await {
                Err(_) => true,
                Ok(c) => {
                    client::request(&c, &Request::Facts, t).await.is_err()
                        && client::ping(&c, 1).await.is_err()
                }
            };
            assert!(refused, "{what} must be refused");
        }

        // A client that does not trust the cluster CA refuses the agent, too.
        let (fca, fid) = pki::foreign_identity(Party::Node("n1")).unwrap();
        let ep4 = client::endpoint(tls::client(&fca, Some(&fid)).unwrap()).unwrap();
        assert!(client::connect(&ep4, None, addr, "n1", t).await.is_err());

        assert!(matches!(
            client::request(&conn, &Request::Shutdown, t).await.unwrap(),
            Response::Ok
        ));
    });
    agent.join().unwrap().unwrap();
}
