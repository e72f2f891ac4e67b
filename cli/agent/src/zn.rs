//! Zenoh ping-pong between agents: each agent opens a peer-mode session (scouting off, explicit
//! endpoints), answers `edgectl/ping/<me>/<from>` on `edgectl/pong/<from>/<me>`, and measures
//! its own round trips to every peer. A session through the cluster's router (see
//! [`crate::zn_router`]) does the same under a prefix of its own.

use std::time::{Duration, Instant};

use zenoh::Wait;
use zenoh::pubsub::Subscriber;

use crate::proto::{PairStat, percentile, round_trips};

pub struct Zn {
    session: zenoh::Session,
    me: String,
    /// The first part of its ping and pong keys: another measurement's session never answers.
    prefix: String,
    _responder: Subscriber<()>,
}

fn cfg_err(e: impl std::fmt::Display) -> String {
    format!("zenoh config: {e}")
}

impl Zn {
    pub async fn open(me: &str, listen: &str, connect: &[String]) -> Result<Zn, String> {
        let mut c = zenoh::Config::default();
        c.insert_json5("mode", r#""peer""#).map_err(cfg_err)?;
        c.insert_json5("listen/endpoints", &serde_json::json!([listen]).to_string())
            .map_err(cfg_err)?;
        c.insert_json5("connect/endpoints", &serde_json::json!(connect).to_string())
            .map_err(cfg_err)?;
        c.insert_json5("scouting/multicast/enabled", "false")
            .map_err(cfg_err)?;
        c.insert_json5("scouting/gossip/enabled", "false")
            .map_err(cfg_err)?;
        Zn::start(c, me, "edgectl").await
    }

    /// Opens a session of config `c` that answers pings under `prefix` (see the module's doc).
    pub(crate) async fn start(c: zenoh::Config, me: &str, prefix: &str) -> Result<Zn, String> {
        let session = tokio::time::timeout(Duration::from_secs(10), zenoh::open(c))
            .await
            .map_err(|_| "zenoh session did not open within 10 s".to_string())?
            .map_err(|e| format!("zenoh open: {e}"))?;
        let s2 = session.clone();
        let me_s = me.to_string();
        let pong = format!("{prefix}/pong");
        let responder = session
            .declare_subscriber(format!("{prefix}/ping/{me}/*"))
            .callback(move |sample| {
                let from = sample.key_expr().as_str().rsplit('/').next().unwrap_or("");
                let _ = s2
                    .put(format!("{pong}/{from}/{me_s}"), sample.payload().clone())
                    .wait();
            })
            .await
            .map_err(|e| format!("zenoh subscribe: {e}"))?;
        Ok(Zn {
            session,
            me: me.to_string(),
            prefix: prefix.to_string(),
            _responder: responder,
        })
    }

    pub async fn pair(&self, peer: &str, samples: u32) -> PairStat {
        let mut st = PairStat::new(&self.me, peer);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let sub = match self
            .session
            .declare_subscriber(format!("{}/pong/{}/{peer}", self.prefix, self.me))
            .callback(move |s| {
                // Stamped here, on arrival, not when the measuring task gets to it.
                let at = Instant::now();
                let b = s.payload().to_bytes();
                if let Ok(a) = <[u8; 8]>::try_from(&b[..]) {
                    let _ = tx.send((u64::from_le_bytes(a), at));
                }
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                st.error = Some(format!("zenoh subscribe: {e}"));
                return st;
            }
        };
        let key = format!("{}/ping/{peer}/{}", self.prefix, self.me);
        // Declarations take a moment to reach the peer: ping until the first answer comes back.
        const WARM: u64 = 1 << 40;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut w = WARM;
        let mut ready = false;
        while Instant::now() < deadline && !ready {
            w += 1;
            let _ = self.session.put(&key, w.to_le_bytes().to_vec()).await;
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
                ready = true;
            }
        }
        if !ready {
            st.error = Some(format!("no Zenoh answer from {peer} within 5 s"));
            return st;
        }
        let r = crate::client::probe_schedule(
            samples,
            |seq| {
                self.session
                    .put(&key, seq.to_le_bytes().to_vec())
                    .wait()
                    .map_err(|e| format!("zenoh put: {e}"))
            },
            &mut rx,
        )
        .await;
        drop(sub);
        match r {
            Ok((mut v, lost)) => {
                v.sort_by(f64::total_cmp);
                st.samples = v.len() as u32;
                st.lost = lost;
                st.p50_ms = percentile(&v, 50.0);
                st.p99_ms = percentile(&v, 99.0);
                st.rtt_ms = round_trips(&v);
            }
            Err(e) => st.error = Some(e),
        }
        st
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}
