//! `edgectl agent`: the QUIC server on a node. Any holder of a cluster certificate may ping it
//! (agents measure latency between themselves); everything else answers the controller only.
//! A connection that negotiates ALPN `h3` speaks HTTP/3 instead (see [`http3`]).

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
use crate::{client, facts, http3, ray, tls, wasm};

pub struct AgentOptions {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// Ends the agent by itself (one uploaded by `verify` must not outlive the run).
    pub exit_after: Option<Duration>,
    /// What runs users' WASI modules; `None`: this executable as `edgectl agent --run-wasi`.
    pub wasi_runner: Option<wasm::Runner>,
}

/// Files the controller uploads into the state directory.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "node.pem";
pub const KEY_FILE: &str = "node.key";

struct Agent {
    endpoint: Endpoint,
    peer_cfg: ClientConfig,
    /// The Zenoh session and the connection that opened it: it ends with that connection, so
    /// that its listener (which asks for no certificate) is open only while `verify` runs.
    #[cfg(feature = "zenoh")]
    zenoh: Mutex<Option<(usize, crate::zn::Zn)>>,
    /// The session through the cluster's router, likewise (see `zn_router`).
    #[cfg(feature = "zenoh")]
    zenoh_router: crate::zn_router::Slot,
    wasi_runner: wasm::Runner,
    stop: Notify,
}

/// When process `pid` started (clock ticks after boot, field 22 of /proc/PID/stat): with the
/// pid, it names one process, never a later one that reuses the number.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `agent.pid` in the state directory: "PID START" (see [`proc_start_time`]), which `verify`
/// checks, with the command line, before it stops a previous agent.
pub const PID_FILE: &str = "agent.pid";

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
        #[cfg(feature = "zenoh")]
        zenoh_router: Mutex::new(None),
        wasi_runner: opts
            .wasi_runner
            .clone()
            .unwrap_or_else(wasm::Runner::edgectl),
        stop: Notify::new(),
    });
    eprintln!(
        "edgectl agent: listening on {} (QUIC, mutual TLS)",
        opts.listen
    );
    let me = std::process::id();
    let _ = std::fs::write(
        opts.state_dir.join(PID_FILE),
        format!("{me} {}\n", proc_start_time(me).unwrap_or(0)),
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
    if let Some((_, z)) = agent.zenoh.lock().await.take() {
        z.close().await;
    }
    #[cfg(feature = "zenoh")]
    crate::zn_router::close(&agent.zenoh_router, None).await;
    endpoint.close(0u32.into(), b"bye");
    // Give the close frame (and the Shutdown answer) a moment to leave.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = std::fs::remove_file(opts.state_dir.join(PID_FILE));
    Ok(())
}

async fn connection(agent: Arc<Agent>, conn: Connection) {
    let controller = tls::peer_is(&conn, CONTROLLER);
    // Tools other than edgectl read the node over HTTP/3, on this same endpoint.
    if tls::alpn(&conn).as_deref() == Some(http3::ALPN) {
        return http3::serve(conn, controller).await;
    }
    // Latency probes arrive as datagrams and go straight back.
    let echo = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = echo.read_datagram().await {
            if d.first() == Some(&KIND_ECHO_DATAGRAM) && echo.send_datagram(d).is_err() {
                break;
            }
        }
    });
    let id = conn.stable_id();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let a = agent.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            let error = |message: String| {
                serde_json::to_vec(&Response::Error { message }).unwrap_or_default()
            };
            let answer = match kind[0] {
                KIND_PING => match recv.read_to_end(PING_LIMIT).await {
                    Ok(buf) => buf,
                    Err(_) => return,
                },
                // Nothing of a request that would be refused is read.
                KIND_JSON if !controller => {
                    let _ = recv.stop(0u32.into());
                    error("only the controller's certificate may send requests".into())
                }
                KIND_JSON => match recv.read_to_end(MAX_REQUEST).await {
                    Ok(buf) => {
                        let resp = match serde_json::from_slice::<Request>(&buf) {
                            Err(e) => Response::Error {
                                message: format!("bad request: {e}"),
                            },
                            Ok(req) => handle(&a, req, id).await,
                        };
                        serde_json::to_vec(&resp).unwrap_or_default()
                    }
                    Err(quinn::ReadToEndError::TooLong) => {
                        // The sender learns to stop sending, and why.
                        let _ = recv.stop(0u32.into());
                        error(format!(
                            "request too large: the agent reads at most {} MiB",
                            MAX_REQUEST >> 20
                        ))
                    }
                    Err(_) => return,
                },
                _ => return,
            };
            let _ = send.write_all(&answer).await;
            let _ = send.finish();
            // Stopping here would reset the stream before the peer has read it.
            let _ = send.stopped().await;
        });
    }
    // The controller that opened the Zenoh session is gone (done, or dead): so is the session.
    #[cfg(feature = "zenoh")]
    {
        let mut slot = agent.zenoh.lock().await;
        if slot.as_ref().is_some_and(|(owner, _)| *owner == id)
            && let Some((_, z)) = slot.take()
        {
            z.close().await;
        }
    }
    #[cfg(feature = "zenoh")]
    crate::zn_router::close(&agent.zenoh_router, Some(id)).await;
}

/// An echo probe is a kind byte and a sequence number.
const PING_LIMIT: usize = 64;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())
}

/// Answers one request of the controller, which came on connection `conn`.
async fn handle(a: &Arc<Agent>, req: Request, conn: usize) -> Response {
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
            let runner = a.wasi_runner.clone();
            match blocking(move || {
                wasm::run_wasi(
                    &runner,
                    &name,
                    &module,
                    &args,
                    Duration::from_millis(timeout_ms),
                )
            })
            .await
            {
                Ok(o) => Response::Wasi(o),
                Err(e) => err(e),
            }
        }
        Request::UnikernelBoot { runs } => {
            match blocking(move || crate::unikernel::measure(runs)).await {
                Ok(Ok(b)) => Response::UnikernelBoot(b),
                Ok(Err(e)) | Err(e) => err(e),
            }
        }
        req @ (Request::ZenohRouterOpen { .. }
        | Request::ZenohRouterClose
        | Request::ZenohRouterPairs { .. }) => via_router(a, conn, req).await,
        Request::WasmCliColdStart { runs } => {
            match blocking(move || crate::wasm_cli::measure(runs)).await {
                Ok(w) => Response::WasmCli(w),
                Err(e) => err(e),
            }
        }
        Request::RayStatus { address } => {
            match blocking(move || ray::status(address.as_deref())).await {
                Ok(r) => Response::Ray(r),
                Err(e) => err(e),
            }
        }
        Request::RayProbe {
            address,
            samples,
            scaling_s,
        } => {
            let probe = move || crate::ray_probe::run(address.as_deref(), samples, scaling_s);
            match blocking(probe).await {
                Ok(r) => Response::RayProbe(Box::new(r)),
                Err(e) => err(e),
            }
        }
        Request::ZenohOpen {
            me,
            listen,
            connect,
        } => zenoh_open(a, conn, &me, &listen, &connect).await,
        Request::ZenohClose => {
            #[cfg(feature = "zenoh")]
            if let Some((_, z)) = a.zenoh.lock().await.take() {
                z.close().await;
            }
            Response::Ok
        }
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
            if zenoh && let Some((_, z)) = a.zenoh.lock().await.as_ref() {
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
async fn zenoh_open(
    a: &Arc<Agent>,
    conn: usize,
    me: &str,
    listen: &str,
    connect: &[String],
) -> Response {
    let mut slot = a.zenoh.lock().await;
    if let Some((_, old)) = slot.take() {
        old.close().await;
    }
    match crate::zn::Zn::open(me, listen, connect).await {
        Ok(z) => {
            *slot = Some((conn, z));
            Response::Ok
        }
        Err(message) => Response::Error { message },
    }
}

/// The requests about the session through the cluster's router.
#[cfg(feature = "zenoh")]
async fn via_router(a: &Arc<Agent>, conn: usize, req: Request) -> Response {
    crate::zn_router::handle(&a.zenoh_router, conn, req).await
}

#[cfg(not(feature = "zenoh"))]
async fn via_router(_: &Arc<Agent>, _: usize, _: Request) -> Response {
    Response::Error {
        message: "this edgectl was built without the `zenoh` feature".into(),
    }
}

#[cfg(not(feature = "zenoh"))]
async fn zenoh_open(_: &Arc<Agent>, _: usize, _: &str, _: &str, _: &[String]) -> Response {
    Response::Error {
        message: "this edgectl was built without the `zenoh` feature".into(),
    }
}
