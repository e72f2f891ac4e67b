//! `verify --report DIR`: an HTML page and an SVG latency heatmap a person reads at a glance.
//! Colours carry the verdict (green pass, red fail, grey skip); the heatmap colours a pair by
//! its p99 against the target, and prints p50/p99 in every cell.

use std::fmt::Write as _;
use std::path::Path;

use edgectl_agent::proto::PairStat;

use crate::checks::Verdict;
use crate::verify::Report;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Green below half the target, amber up to it, red above; without a target, shades of blue.
fn cell_colour(p99: f64, target: Option<f64>) -> &'static str {
    match target {
        Some(t) if p99 > t => "#e45756",
        Some(t) if p99 > t / 2.0 => "#f2c45a",
        Some(_) => "#59a14f",
        None if p99 > 5.0 => "#2f5f98",
        None if p99 > 1.0 => "#5b8fd0",
        None => "#a9c8ee",
    }
}

const CELL: usize = 86;
const LABEL: usize = 70;

fn panel(
    out: &mut String,
    x0: usize,
    title: &str,
    names: &[String],
    stats: &[PairStat],
    target: Option<f64>,
) {
    let n = names.len();
    let _ = writeln!(
        out,
        r#"<text x="{}" y="24" font-size="16" font-weight="bold">{}</text>"#,
        x0,
        esc(title)
    );
    let y0 = 60;
    for (j, name) in names.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text>"#,
            x0 + LABEL + j * CELL + CELL / 2,
            y0 - 8,
            esc(name)
        );
    }
    for (i, from) in names.iter().enumerate() {
        let y = y0 + i * CELL;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="13" text-anchor="end">{}</text>"#,
            x0 + LABEL - 8,
            y + CELL / 2 + 4,
            esc(from)
        );
        for (j, to) in names.iter().enumerate() {
            let x = x0 + LABEL + j * CELL;
            let s = stats.iter().find(|s| &s.from == from && &s.to == to);
            let (fill, l1, l2) = match s {
                _ if i == j => ("#eeeeee", String::new(), String::new()),
                None => ("#ffffff", "n/a".to_string(), String::new()),
                Some(s) if s.error.is_some() => ("#e45756", "error".to_string(), String::new()),
                Some(s) => (
                    cell_colour(s.p99_ms, target),
                    format!("p50 {:.2}", s.p50_ms),
                    format!("p99 {:.2}", s.p99_ms),
                ),
            };
            let _ = writeln!(
                out,
                r##"<rect x="{x}" y="{y}" width="{CELL}" height="{CELL}" fill="{fill}" stroke="#ffffff" stroke-width="2"><title>{} → {}: {} {}</title></rect>"##,
                esc(from),
                esc(to),
                l1,
                l2
            );
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" font-size="13" text-anchor="middle">{}</text><text x="{}" y="{}" font-size="13" text-anchor="middle" font-weight="bold">{}</text>"#,
                x + CELL / 2,
                y + CELL / 2 - 4,
                l1,
                x + CELL / 2,
                y + CELL / 2 + 14,
                l2
            );
        }
    }
    let _ = n;
}

/// The heatmap: QUIC and Zenoh side by side, rows are senders, columns receivers, in ms.
pub fn heatmap_svg(r: &Report) -> String {
    let names: Vec<String> = r.nodes.iter().map(|n| n.name.clone()).collect();
    let n = names.len().max(1);
    let pw = LABEL + n * CELL + 30;
    let mut panels: Vec<(String, &Vec<PairStat>)> = if r.zenoh.is_empty() {
        vec![("QUIC round trip (ms)".into(), &r.quic)]
    } else {
        vec![
            ("QUIC round trip (ms)".into(), &r.quic),
            ("Zenoh ping-pong (ms)".into(), &r.zenoh),
        ]
    };
    panels.extend(
        r.zenoh_routers
            .iter()
            .map(|z| (format!("Zenoh via router {} (ms)", z.router), &z.pairs)),
    );
    let w = pw * panels.len() + 10;
    let h = 60 + n * CELL + 70;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (k, (title, stats)) in panels.iter().enumerate() {
        panel(
            &mut out,
            10 + k * pw,
            title,
            &names,
            stats,
            r.latency_p99_ms,
        );
    }
    // Legend.
    let ly = 60 + n * CELL + 25;
    let items: Vec<(&str, String)> = match r.latency_p99_ms {
        Some(t) => vec![
            ("#59a14f", format!("p99 ≤ {:.2} ms", t / 2.0)),
            ("#f2c45a", format!("p99 ≤ {t} ms (target)")),
            ("#e45756", format!("p99 > {t} ms: fails")),
        ],
        None => vec![
            ("#a9c8ee", "p99 ≤ 1 ms".into()),
            ("#5b8fd0", "≤ 5 ms".into()),
            ("#2f5f98", "> 5 ms (no target set)".into()),
        ],
    };
    let mut x = 10;
    for (c, label) in items {
        let _ = writeln!(
            out,
            r#"<rect x="{x}" y="{}" width="18" height="18" fill="{c}"/><text x="{}" y="{}" font-size="13">{}</text>"#,
            ly - 14,
            x + 24,
            ly,
            esc(&label)
        );
        x += 24 + label.chars().count() * 7 + 20;
    }
    let _ = writeln!(
        out,
        r##"<text x="10" y="{}" font-size="12" fill="#555">rows: sender, columns: receiver</text>"##,
        ly + 22
    );
    out.push_str("</svg>\n");
    out
}

pub fn html(r: &Report) -> String {
    let mut o = String::new();
    let verdict_class = |v: Verdict| match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Skip => "skip",
    };
    let _ = write!(
        o,
        r#"<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"><title>edgectl verify: {c}</title><style>
body{{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px;color:#222}}
h1{{font-size:22px;margin:0 0 6px}} h2{{font-size:17px;margin:24px 0 8px}}
.banner{{display:inline-block;padding:8px 14px;border-radius:6px;font-weight:bold;font-size:18px;color:white}}
.ok{{background:#59a14f}} .bad{{background:#e45756}}
.counts span{{margin-right:16px;font-size:15px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}
th{{background:#f4f4f4}} tr.fail td{{background:#fde8e8}} tr.skip td{{color:#777}}
td.v{{font-weight:bold}} tr.pass td.v{{color:#2e7d32}} tr.fail td.v{{color:#c62828}}
.muted{{color:#666;font-size:13px}}
{measured_css}
</style></head><body>
<h1>edgectl verify: {c}</h1>
<div class="muted">{t}</div><p><span class="banner {cls}">{word}</span></p>
<div class="counts"><span style="color:#2e7d32">{p} passed</span><span style="color:#c62828">{f} failed</span><span style="color:#777">{s} skipped</span><span class="muted">verify took {secs:.1} s (matrix {msecs:.1} s)</span></div>
"#,
        c = esc(&r.cluster),
        t = esc(&r.topology),
        measured_css = crate::measured::CSS,
        cls = if r.ok { "ok" } else { "bad" },
        word = if r.ok {
            "ALL CHECKS PASS"
        } else {
            "SOME CHECKS FAIL"
        },
        p = r.summary.pass,
        f = r.summary.fail,
        s = r.summary.skip,
        secs = r.timings.total_ms / 1000.0,
        msecs = r.timings.matrix_ms / 1000.0,
    );
    let _ = write!(
        o,
        "<h2>Latency</h2><div class=\"heatmap\">{}</div><p class=\"muted\">Also in <a href=\"latency.svg\">latency.svg</a>.</p>{}",
        heatmap_svg(r),
        crate::measured::section(r)
    );
    // Failures first, so the page answers "what is wrong" before anything else.
    let mut checks: Vec<_> = r.checks.iter().collect();
    checks.sort_by_key(|c| match c.verdict {
        Verdict::Fail => 0,
        Verdict::Pass => 1,
        Verdict::Skip => 2,
    });
    let _ = write!(
        o,
        "<h2>Checks</h2><table><tr><th>verdict</th><th>node</th><th>category</th><th>check</th><th>expected</th><th>actual</th></tr>"
    );
    for c in checks {
        let _ = write!(
            o,
            "<tr class=\"{cl}\"><td class=\"v\">{v}</td><td>{n}</td><td>{cat}</td><td>{name}</td><td>{e}</td><td>{a}{why}</td></tr>",
            cl = verdict_class(c.verdict),
            v = c.verdict.as_str(),
            n = esc(&c.node),
            cat = esc(&c.category),
            name = esc(&c.name),
            e = esc(&c.expected),
            a = esc(&c.actual),
            why = c
                .reason
                .as_ref()
                .map(|r| format!(" <span class=\"muted\">({})</span>", esc(r)))
                .unwrap_or_default(),
        );
    }
    let _ = write!(
        o,
        "</table><h2>Nodes</h2><table><tr><th>node</th><th>agent</th><th>CPU</th><th>memory</th><th>kernel</th><th>GPUs</th><th>address</th></tr>"
    );
    for n in &r.nodes {
        let (cpu, mem, kernel, gpus) = match &n.facts {
            Some(f) => (
                format!(
                    "{} ({}s/{}c/{}t)",
                    f.cpu.model, f.cpu.sockets, f.cpu.cores, f.cpu.threads
                ),
                format!("{:.1} GiB", f.memory_bytes as f64 / (1u64 << 30) as f64),
                f.kernel.clone(),
                if f.gpus.is_empty() {
                    "-".into()
                } else {
                    f.gpus
                        .iter()
                        .map(|g| g.model.clone())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.name),
            esc(&n.agent),
            n.error
                .as_ref()
                .map(|e| format!(": {}", esc(e)))
                .unwrap_or_default(),
            esc(&cpu),
            esc(&mem),
            esc(&kernel),
            esc(&gpus),
            esc(n.address.as_deref().unwrap_or("-"))
        );
    }
    o.push_str(
        "</table><p class=\"muted\">Every fact and check is in report.json.</p></body></html>\n",
    );
    o
}

pub fn write(r: &Report, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let w = |name: &str, text: &[u8]| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| format!("{}: {e}", dir.join(name).display()))
    };
    w("latency.svg", heatmap_svg(r).as_bytes())?;
    w("index.html", html(r).as_bytes())?;
    w(
        "report.json",
        &serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{Check, Verdict};
    use crate::verify::NodeReport;

    fn stat(from: &str, to: &str, p99: f64) -> PairStat {
        PairStat {
            from: from.into(),
            to: to.into(),
            samples: 100,
            lost: 0,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            error: None,
            rtt_ms: vec![],
        }
    }

    #[test]
    fn heatmap_colours_pairs_by_target_and_page_escapes() {
        let r = Report {
            cluster: "lab<1>".into(),
            latency_p99_ms: Some(2.0),
            nodes: ["a", "b"]
                .iter()
                .map(|n| NodeReport {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            quic: vec![stat("a", "b", 0.5), stat("b", "a", 3.0)],
            checks: vec![Check {
                node: "a".into(),
                category: "network".into(),
                name: "latency b -> a (quic)".into(),
                expected: "p99 <= 2 ms".into(),
                actual: "p99 3 ms".into(),
                verdict: Verdict::Fail,
                reason: None,
            }],
            ..Default::default()
        };
        let svg = heatmap_svg(&r);
        assert!(svg.contains("#59a14f") && svg.contains("#e45756"), "{svg}");
        assert!(svg.contains("p99 3.00") && !svg.contains("Zenoh"));
        let html = html(&r);
        assert!(html.contains("lab&lt;1&gt;") && html.contains("SOME CHECKS FAIL"));
    }
}
