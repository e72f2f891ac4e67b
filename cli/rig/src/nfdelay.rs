//! A netem stand-in for kernels without netem (TEST-RIG section 4): packets sent to an NFQUEUE
//! are held a fixed delay from their arrival and a share of them is dropped. Used by the
//! `nfdelay` binary (by hand) and by [`crate::Rig::impair`] (tests, in a thread).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

/// Holds every packet of `queue` for `delay`, drops `loss_pct` percent, for `duration`; then
/// releases what it holds and unbinds (with `--queue-bypass`, traffic flows untouched after).
/// `ready` is called once the queue is bound; setting `stop` ends it early.
pub fn run(
    queue: u16,
    delay: Duration,
    loss_pct: f64,
    duration: Duration,
    stop: &AtomicBool,
    ready: impl FnOnce(),
) -> Result<(), String> {
    let until = Instant::now() + duration;
    let mut q = Queue::open().map_err(|e| format!("cannot open NFQUEUE: {e}"))?;
    q.bind(queue)
        .map_err(|e| format!("cannot bind queue {queue}: {e}"))?;
    // The kernel must not drop on its own when many packets are held at once.
    let _ = q.set_queue_max_len(queue, 65536);
    let _ = q.set_fail_open(queue, true);
    q.set_nonblocking(true);
    ready();
    // xorshift: loss needs no cryptographic randomness, nor another crate.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1_000_000) as f64 / 10_000.0
    };
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        // Arrival is stamped as a packet comes off the queue; polling every ~50 us keeps that
        // within a small fraction of the delay.
        loop {
            match q.recv() {
                Ok(m) => held.push_back((Instant::now(), m)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t + delay <= now) {
            let (_, mut m) = held.pop_front().expect("front exists");
            m.set_verdict(if rand() < loss_pct {
                Verdict::Drop
            } else {
                Verdict::Accept
            });
            let _ = q.verdict(m);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    for (_, mut m) in held {
        m.set_verdict(Verdict::Accept);
        let _ = q.verdict(m);
    }
    let _ = q.unbind(queue);
    Ok(())
}
