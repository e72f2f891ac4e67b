//! Talking to an agent: connect with a certificate, send one request, read one answer; and the
//! echo round trips that latency is measured with.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use quinn::{ClientConfig, Connection, Endpoint};

use crate::pki::Party;
use crate::proto::{
    KIND_ECHO_DATAGRAM, KIND_JSON, KIND_PING, MAX_RESPONSE, PairStat, Request, Response,
    percentile, round_trips,
};

pub fn endpoint(cfg: ClientConfig) -> Result<Endpoint, String> {
    let mut e = Endpoint::client("0.0.0.0:0".parse().unwrap()).map_err(|e| e.to_string())?;
    e.set_default_client_config(cfg);
    Ok(e)
}

pub async fn connect(
    ep: &Endpoint,
    cfg: Option<&ClientConfig>,
    addr: SocketAddr,
    node: &str,
    timeout: Duration,
) -> Result<Connection, String> {
    let name = Party::Node(node).dns_name();
    let connecting = match cfg {
        Some(c) => ep.connect_with(c.clone(), addr, &name),
        None => ep.connect(addr, &name),
    }
    .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| format!("no answer from {addr} within {} ms", timeout.as_millis()))?
        .map_err(|e| format!("{addr}: {e}"))?;
    // The server checks our certificate after the handshake completes on our side; an
    // answered stream proves it let us in.
    Ok(conn)
}

pub async fn request(
    conn: &Connection,
    req: &Request,
    timeout: Duration,
) -> Result<Response, String> {
    let fut = async {
        let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut buf = vec![KIND_JSON];
        serde_json::to_writer(&mut buf, req).map_err(|e| e.to_string())?;
        let sent = match s.write_all(&buf).await {
            Ok(()) => s.finish().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        // An agent that stops reading a request (one too large) still answers why.
        let body = match r.read_to_end(MAX_RESPONSE).await {
            Ok(b) => b,
            Err(e) => return Err(sent.err().unwrap_or_else(|| e.to_string())),
        };
        serde_json::from_slice::<Response>(&body).map_err(|e| format!("bad answer: {e}"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// One echo round trip on a fresh stream (a stream costs no extra packets in QUIC).
pub async fn ping(conn: &Connection, seq: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    let (mut s, mut r) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let mut buf = vec![KIND_PING];
    buf.extend_from_slice(&seq.to_le_bytes());
    s.write_all(&buf).await.map_err(|e| e.to_string())?;
    s.finish().map_err(|e| e.to_string())?;
    let back = r.read_to_end(64).await.map_err(|e| e.to_string())?;
    if back != seq.to_le_bytes() {
        return Err("echo mismatch".into());
    }
    Ok(t0.elapsed())
}

/// `samples` round trips to one peer (after a short warm-up), as percentiles.
pub async fn quic_pair(
    ep: &Endpoint,
    cfg: Option<&ClientConfig>,
    me: &str,
    peer: &str,
    addr: SocketAddr,
    samples: u32,
) -> PairStat {
    let mut st = PairStat::new(me, peer);
    let conn = match connect(ep, cfg, addr, peer, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => {
            st.error = Some(e);
            return st;
        }
    };
    let mut v = Vec::with_capacity(samples as usize);
    match echo_datagrams(&conn, samples, &mut v).await {
        Ok(lost) => st.lost = lost,
        Err(e) => st.error = Some(e),
    }
    conn.close(0u32.into(), b"done");
    v.sort_by(f64::total_cmp);
    st.samples = v.len() as u32;
    st.p50_ms = percentile(&v, 50.0);
    st.p99_ms = percentile(&v, 99.0);
    st.rtt_ms = round_trips(&v);
    st
}

/// Time between probes: they are sent on a fixed schedule, not one after another's answer (like
/// `ping -i`), so a pair takes `samples` x this however long its round trip is.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// How long after the last probe an answer still counts: datagrams are never retransmitted, so
/// an answer is back within a round trip or lost.
pub const PROBE_GRACE: Duration = Duration::from_millis(300);

/// Answers as they come back: the probe's seq and when it arrived.
pub type Answers = tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>;

/// Collects round trips of probes sent every [`PROBE_INTERVAL`]: `send(seq)` sends probe `seq`,
/// `answers` brings them back. Returns the round trips of the answered probes (ms) and how many
/// were lost.
pub async fn probe_schedule(
    samples: u32,
    mut send: impl FnMut(u64) -> Result<(), String>,
    answers: &mut Answers,
) -> Result<(Vec<f64>, u32), String> {
    let n = samples as usize;
    let mut sent: Vec<Option<Instant>> = vec![None; n];
    let mut rtt: Vec<Option<f64>> = vec![None; n];
    let mut got = 0;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next = 0usize;
    let deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(deadline);
    while got < n {
        tokio::select! {
            _ = tick.tick(), if next < n => {
                sent[next] = Some(Instant::now());
                send(next as u64)?;
                next += 1;
                if next == n {
                    deadline.as_mut().reset((Instant::now() + PROBE_GRACE).into());
                }
            }
            a = answers.recv() => {
                let Some((seq, at)) = a else { break };
                let k = seq as usize;
                if k < n && rtt[k].is_none() && let Some(t0) = sent[k] {
                    rtt[k] = Some(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
                    got += 1;
                }
            }
            _ = &mut deadline => break,
        }
    }
    let lost = rtt.iter().filter(|r| r.is_none()).count() as u32;
    Ok((rtt.into_iter().flatten().collect(), lost))
}

/// Probes of 9-byte QUIC datagrams (kind byte, seq), which the agent sends straight back, like
/// ICMP echo: a lost one is lost, not retransmitted. A warm-up of 3 round trips comes first.
async fn echo_datagrams(
    conn: &Connection,
    samples: u32,
    out: &mut Vec<f64>,
) -> Result<u32, String> {
    let msg = |seq: u64| {
        let mut m = vec![KIND_ECHO_DATAGRAM];
        m.extend_from_slice(&seq.to_le_bytes());
        bytes_of(m)
    };
    const WARM: u64 = 1 << 40;
    for w in 0..3 {
        conn.send_datagram(msg(WARM + w))
            .map_err(|e| e.to_string())?;
        let _ = tokio::time::timeout(PROBE_GRACE, conn.read_datagram()).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c = conn.clone();
    let reader = tokio::spawn(async move {
        while let Ok(d) = c.read_datagram().await {
            let at = Instant::now();
            if d.len() == 9
                && let Ok(b) = <[u8; 8]>::try_from(&d[1..])
                && tx.send((u64::from_le_bytes(b), at)).is_err()
            {
                break;
            }
        }
    });
    let r = probe_schedule(
        samples,
        |seq| conn.send_datagram(msg(seq)).map_err(|e| e.to_string()),
        &mut rx,
    )
    .await;
    reader.abort();
    let (v, lost) = r?;
    out.extend(v);
    Ok(lost)
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}
