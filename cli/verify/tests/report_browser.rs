//! The HTML report in a real headless browser (Debian's `chromium`, which scripts/setup.sh
//! installs): the page loads without a console message (it has no script, and its Content
//! Security Policy turns any resource it would load, or markup a hostile name would inject,
//! into one), the DOM has the heatmap, the measured-against-target tables and their SVGs, and
//! a screenshot shows the heatmap's colours and the tables. Skipped, with the reason, only
//! where chromium is not installed.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgectl_agent::proto::{PairStat, percentile, round_trips};
use edgectl_verify::checks::{self, Check, Verdict};
use edgectl_verify::verify::{NodeReport, Report};

include!("common/sample_report.rs");

fn chromium() -> Option<PathBuf> {
    edgectl_testkit::require(
        "chromium",
        edgectl_testkit::tool("chromium")
            .map_err(|e| format!("{e} (Debian: apt-get install chromium; scripts/setup.sh does)")),
    )
}

/// What one headless run printed.
struct Run {
    stdout: String,
    stderr: String,
}

/// Runs chromium headless on `page` with `args`; a run that does not end within a few minutes
/// (a hung browser) fails the test rather than hanging it.
fn headless(bin: &Path, profile: &Path, page: &Path, args: &[String]) -> Run {
    let mut c = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    let mut out = c.stdout.take().unwrap();
    let mut err = c.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let end = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = c.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("chromium {args:?} did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = Run {
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    };
    assert!(
        status.success(),
        "chromium {args:?}: {status}\n{}",
        run.stderr
    );
    run
}

/// The page's console messages (scripts, CSP violations, failed loads), as chromium logs them.
fn console(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect()
}

/// An 8-bit RGB or RGBA PNG, decoded: width, height, and RGB per pixel.
struct Image {
    w: usize,
    h: usize,
    rgb: Vec<[u8; 3]>,
}

fn decode_png(b: &[u8]) -> Image {
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut idat) = (8, Vec::new());
    let mut head = None;
    while at + 8 <= b.len() {
        let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let kind = &b[at + 4..at + 8];
        let data = &b[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => head = Some(data.to_vec()),
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    let h = head.expect("IHDR");
    let w = u32::from_be_bytes(h[0..4].try_into().unwrap()) as usize;
    let ht = u32::from_be_bytes(h[4..8].try_into().unwrap()) as usize;
    let (depth, colour, interlace) = (h[8], h[9], h[12]);
    assert!(
        depth == 8 && (colour == 2 || colour == 6) && interlace == 0,
        "a PNG this decoder does not read: depth {depth}, colour type {colour}, interlace {interlace}"
    );
    let bpp = if colour == 6 { 4 } else { 3 };
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("IDAT inflates");
    let stride = w * bpp;
    assert_eq!(raw.len(), ht * (stride + 1), "IDAT size");
    let mut px = vec![0u8; ht * stride];
    for y in 0..ht {
        let f = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= bpp {
                px[y * stride + x - bpp]
            } else {
                0
            };
            let up = if y > 0 { px[(y - 1) * stride + x] } else { 0 };
            let c = if x >= bpp && y > 0 {
                px[(y - 1) * stride + x - bpp]
            } else {
                0
            };
            let pred = match f {
                0 => 0,
                1 => a,
                2 => up,
                3 => ((u16::from(a) + u16::from(up)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(up) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(up)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        up
                    } else {
                        c
                    }
                }
                f => panic!("PNG filter {f}"),
            };
            px[y * stride + x] = line[x].wrapping_add(pred);
        }
    }
    let rgb = px.chunks(bpp).map(|p| [p[0], p[1], p[2]]).collect();
    Image { w, h: ht, rgb }
}

fn hex(c: &str) -> [u8; 3] {
    let v = u32::from_str_radix(c.trim_start_matches('#'), 16).unwrap();
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

impl Image {
    /// Pixels of colour `c` (within a small tolerance) in rows `ys`.
    fn count(&self, c: &str, ys: std::ops::Range<usize>) -> usize {
        let c = hex(c);
        ys.flat_map(|y| (0..self.w).map(move |x| (x, y)))
            .filter(|(x, y)| {
                let p = self.rgb[y * self.w + x];
                (0..3).all(|i| p[i].abs_diff(c[i]) <= 3)
            })
            .count()
    }

    /// The first row with at least `n` pixels of colour `c`.
    fn first_row_with(&self, c: &str, n: usize) -> Option<usize> {
        (0..self.h).find(|y| self.count(c, *y..*y + 1) >= n)
    }
}

#[test]
fn the_report_loads_in_a_real_browser_and_shows_the_heatmap_and_the_tables() {
    let Some(bin) = chromium() else { return };
    let r = sample_report();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("report");
    edgectl_verify::report::write(&r, &dir).expect("report written");
    let page = dir.join("index.html");
    let profile = d.path().join("profile");

    // The DOM as the browser built it.
    let run = headless(&bin, &profile, &page, &["--dump-dom".into()]);
    assert_eq!(console(&run.stderr), Vec::<&str>::new(), "console messages");
    let dom = &run.stdout;
    assert!(dom.contains("<h2>Measured against targets</h2>"), "{dom}");
    // Three round-trip tables and three of per-node checks, each with its axis; a drawing
    // per measured row; the heatmap; the checks and the nodes tables.
    assert_eq!(dom.matches("<table class=\"measure\"").count(), 6, "{dom}");
    assert_eq!(dom.matches("class=\"axis\"").count(), 6);
    let measured = r.quic.iter().filter(|s| s.samples > 0).count()
        + r.zenoh.len()
        + r.zenoh_routers.iter().map(|z| z.pairs.len()).sum::<usize>()
        // wasm cold start and unikernel boot on two nodes each, Ray's scaling on one.
        + 5;
    assert_eq!(dom.matches("class=\"dist\"").count(), measured);
    assert!(dom.matches("class=\"target\"").count() >= measured);
    assert!(dom.contains("<div class=\"heatmap\"><svg"));
    assert!(dom.contains("<th>verdict</th><th>node</th><th>category</th>"));
    assert!(dom.contains("<th>node</th><th>agent</th><th>CPU</th>"));
    // Hostile strings stayed text: the DOM has no element they would have made.
    assert!(!dom.contains("<script") && !dom.contains("<img"), "{dom}");
    assert!(dom.contains("gpu\"&amp;'&lt;script&gt;alert(1)&lt;/script&gt;"));

    // The screenshot: the heatmap's cells at the top, the tables' shading below them.
    let shot = d.path().join("shot.png");
    let run = headless(
        &bin,
        &profile,
        &page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000".into(),
        ],
    );
    assert_eq!(console(&run.stderr), Vec::<&str>::new(), "console messages");
    let img = decode_png(&std::fs::read(&shot).expect("screenshot written"));
    assert_eq!((img.w, img.h), (1280, 2000));
    let cell = 80 * 80;
    // Pairs within half the target are green, the slow one red, one amber: whole cells.
    let green = img
        .first_row_with("#59a14f", 80)
        .expect("green heatmap cells");
    assert!(img.count("#59a14f", 0..700) >= 3 * cell, "green cells");
    assert!(img.count("#e45756", 0..700) >= cell, "red cells");
    // The tables below: header shading, the failing rows' background, the plots' backgrounds.
    let tables = img.first_row_with("#f4f4f4", 200).expect("table headers");
    assert!(tables > green, "the tables come after the heatmap");
    assert!(
        img.count("#f4f4f4", tables..2000) >= 20_000,
        "table headers"
    );
    assert!(img.count("#fde8e8", tables..2000) >= 10_000, "failing rows");
    assert!(
        img.count("#f7f7f7", tables..2000) >= 20 * 250 * 20,
        "plot areas"
    );
    assert!(img.count("#c62828", tables..2000) >= 200, "target lines");
    let white = img.count("#ffffff", 0..2000);
    assert!(white < img.w * img.h * 9 / 10, "the page is mostly empty");
}
