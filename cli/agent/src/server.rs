//! `edgectl agent`: the QUIC server on a node. Any holder of a cluster certificate may ping it
//! (agents measure latency between themselves); everything else answers the controller only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use quinn::{ClientConfig, Connection, Endpoint};
#[cfg(feature = "zenoh")]
use tokio::sync::Mutex;
use tokio::sync::Notify;

use crate::pki::{CONTROLLER, Identity};
use crate::proto::{KIND_ECHO_DATAGRAM, KIND_JSON, KIND_PING, MAX_REQUEST, Request, Response};
use crate::{client, facts, ray, tls, wasm};

pub struct AgentOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Ends the agent by itself (one uploaded by `verify` must not outlive the run).
    pub exit_after: Option<Duration>,
}

/// Files the controller uploads into the state directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "node.pem";
pub const KEY_FILE: &str = "node.key";

struct Agent {
    endpoint: Endpoint,
    peer_cfg: ClientConfig,
    #[cfg(feature = "zenoh")]
    zenoh: Mutex<Option<crate::zn::Zn>>,
    stop: Notify,
}

fn load_keys(dir: &Path) -> Option<(String, Identity)> {
    let r = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    Some((
        r(CA_FILE)?,
        Identity {
            cert_pem: r(CERT_FILE)?,
            key_pem: r(KEY_FILE)?,
        },
    ))
}

pub fn run(opts: AgentOptions) -> Result<(), String> {
    // One worker for all network work: an echo then never hops between worker threads, which
    // on a busy machine costs more than the network round trip it measures. Blocking work
    // (facts, Wasm) runs on tokio's blocking pool. (Zenoh refuses the current-thread flavour.)
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(serve(opts))
}

async fn serve(opts: AgentOptions) -> Result<(), String> {
    let started = Instant::now();
    let deadline = opts.exit_after.map(|d| started + d);
    // A service may start before edgectl has uploaded the keys; wait for them.
    let mut warned = false;
    let (ca, id) = loop {
        if let Some(k) = load_keys(&opts.state_dir) {
            break k;
        }
        if !warned {
            eprintln!(
                "edgectl agent: waiting for {}/{{{CA_FILE},{CERT_FILE},{KEY_FILE}}} (uploaded by `edgectl verify`)",
                opts.state_dir.display()
            );
            warned = true;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err("no keys uploaded before the deadline".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let endpoint = Endpoint::server(tls::server(&ca, &id)?, opts.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;
    let agent = Arc::new(Agent {
        endpoint: endpoint.clone(),
        peer_cfg: tls::client(&ca, Some(&id))?,
        #[cfg(feature = "zenoh")]
        zenoh: Mutex::new(None),
        stop: Notify::new(),
    });
    eprintln!(
        "edgectl agent: listening on {} (QUIC, mutual TLS)",
        opts.listen
    );
    let _ = std::fs::write(
        opts.state_dir.join("agent.pid"),
        std::process::id().to_string(),
    );
    let expire = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expire);
    loop {
        tokio::select! {
            inc = endpoint.accept() => {
                let Some(inc) = inc else { break };
                let a = agent.clone();
                tokio::spawn(async move {
                    match inc.await {
                        Ok(conn) => connection(a, conn).await,
                        // Refused handshakes (no or foreign certificate) end here.
                        Err(e) => eprintln!("edgectl agent: handshake refused: {e}"),
                    }
                });
            }
            _ = agent.stop.notified() => break,
            _ = &mut expire => {
                eprintln!("edgectl agent: --exit-after reached");
                break;
            }
        }
    }
    #[cfg(feature = "zenoh")]
    if let Some(z) = agent.zenoh.lock().await.take() {
        z.close().await;
    }
    endpoint.close(0u32.into(), b"bye");
    // Give the close frame (and the Shutdown answer) a moment to leave.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = std::fs::remove_file(opts.state_dir.join("agent.pid"));
    Ok(())
}

async fn connection(agent: Arc<Agent>, conn: Connection) {
    let controller = tls::peer_is(&conn, CONTROLLER);
    // Latency probes arrive as datagrams and go straight back.
    let echo = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = echo.read_datagram().await {
            if d.first() == Some(&KIND_ECHO_DATAGRAM) && echo.send_datagram(d).is_err() {
                break;
            }
        }
    });
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let a = agent.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            let Ok(buf) = recv.read_to_end(MAX_REQUEST).await else {
                return;
            };
            let answer = match kind[0] {
                KIND_PING => buf,
                KIND_JSON => {
                    let resp = match serde_json::from_slice::<Request>(&buf) {
                        Err(e) => Response::Error {
                            message: format!("bad request: {e}"),
                        },
                        Ok(_) if !controller => Response::Error {
                            message: "only the controller's certificate may send requests".into(),
                        },
                        Ok(req) => handle(&a, req).await,
                    };
                    serde_json::to_vec(&resp).unwrap_or_default()
                }
                _ => return,
            };
            let _ = send.write_all(&answer).await;
            let _ = send.finish();
            // Stopping here would reset the stream before the peer has read it.
            let _ = send.stopped().await;
        });
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

async fn handle(a: &Arc<Agent>, req: Request) -> Response {
    let err = |message: String| Response::Error { message };
    match req {
        Request::Facts => match blocking(facts::gather).await {
            Ok(f) => Response::Facts(Box::new(f)),
            Err(e) => err(e),
        },
        Request::WasmColdStart => match blocking(wasm::cold_start).await {
            Ok(Ok(c)) => Response::ColdStart(c),
            Ok(Err(e)) | Err(e) => err(e),
        },
        Request::RunWasi {
            name,
            module_b64,
            args,
            timeout_ms,
        } => {
            let Ok(module) = base64::engine::general_purpose::STANDARD.decode(module_b64) else {
                return err("module is not base64".into());
            };
            match blocking(move || {
                wasm::run_wasi(&name, &module, &args, Duration::from_millis(timeout_ms))
            })
            .await
            {
                Ok(o) => Response::Wasi(o),
                Err(e) => err(e),
            }
        }
        Request::RayStatus { address } => {
            match blocking(move || ray::status(address.as_deref())).await {
                Ok(r) => Response::Ray(r),
                Err(e) => err(e),
            }
        }
        Request::ZenohOpen {
            me,
            listen,
            connect,
        } => zenoh_open(a, &me, &listen, &connect).await,
        Request::Matrix {
            me,
            peers,
            samples,
            zenoh,
        } => {
            let mut quic = Vec::new();
            // One peer at a time: concurrent probes from one agent would measure each other.
            for p in &peers {
                quic.push(
                    client::quic_pair(
                        &a.endpoint,
                        Some(&a.peer_cfg),
                        &me,
                        &p.name,
                        p.quic,
                        samples,
                    )
                    .await,
                );
            }
            #[allow(unused_mut)]
            let mut zn = Vec::new();
            #[cfg(feature = "zenoh")]
            if zenoh && let Some(z) = a.zenoh.lock().await.as_ref() {
                for p in &peers {
                    zn.push(z.pair(&p.name, samples).await);
                }
            }
            let _ = zenoh;
            Response::Matrix { quic, zenoh: zn }
        }
        Request::Shutdown => {
            // Answer first: closing the endpoint now would lose the reply in flight.
            let a = a.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                a.stop.notify_one();
            });
            Response::Ok
        }
    }
}

#[cfg(feature = "zenoh")]
async fn zenoh_open(a: &Arc<Agent>, me: &str, listen: &str, connect: &[String]) -> Response {
    let mut slot = a.zenoh.lock().await;
    if let Some(old) = slot.take() {
        old.close().await;
    }
    match crate::zn::Zn::open(me, listen, connect).await {
        Ok(z) => {
            *slot = Some(z);
            Response::Ok
        }
        Err(message) => Response::Error { message },
    }
}

#[cfg(not(feature = "zenoh"))]
async fn zenoh_open(_: &Arc<Agent>, _: &str, _: &str, _: &[String]) -> Response {
    Response::Error {
        message: "this edgectl was built without the `zenoh` feature".into(),
    }
}
