//! `nfdelay QUEUE DELAY_MS LOSS_PERCENT SECONDS`: holds each packet of NFQUEUE QUEUE for
//! DELAY_MS, drops LOSS_PERCENT of them, and exits by itself after SECONDS. Run it inside a
//! node's network namespace after
//! `iptables -A OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass`.

use std::time::Duration;

fn arg<T: std::str::FromStr>(a: &[String], i: usize, what: &str) -> T {
    a.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: nfdelay QUEUE DELAY_MS LOSS_PERCENT SECONDS ({what} missing or invalid)");
        std::process::exit(2)
    })
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let r = edgectl_rig::nfdelay::run(
        arg(&a, 1, "QUEUE"),
        Duration::from_secs_f64(arg::<f64>(&a, 2, "DELAY_MS") / 1000.0),
        arg(&a, 3, "LOSS_PERCENT"),
        Duration::from_secs_f64(arg(&a, 4, "SECONDS")),
        &std::sync::atomic::AtomicBool::new(false),
        || println!("ready"),
    );
    if let Err(e) = r {
        eprintln!("nfdelay: {e}");
        std::process::exit(1);
    }
}
