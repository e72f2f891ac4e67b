//! The report's "Measured against targets" section: for every target, a table per node (per
//! pair for round trips) with the measured value, the target, the verdict and an inline SVG of
//! the distribution against the target line (see [`crate::svg`]).
//!
//! Round trips come from the report's pair lists (QUIC, Zenoh, Zenoh through each router):
//! the answered round trips are drawn when the agent sent them (`PairStat::rtt_ms`), else its
//! p50 and p99 alone, and the table says which. Every other check is drawn from its own fields,
//! whatever check it is: one whose `expected` reads `[label] OP NUMBER [unit]` (`p50 <= 50 ms`,
//! `<= 25 ms`, `efficiency >= 0.8`) and whose `actual` has that label's number (or, without a
//! label, a number in that unit) is a [`Measure`]; checks whose names differ only in node names
//! share a table. The section is well-formed XML (it is parsed as such in the tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use edgectl_agent::proto::PairStat;

use crate::checks::{self, Check, Verdict};
use crate::svg::{self, Scale, Spread, esc, num};
use crate::verify::Report;

/// Styles the section's markup uses (the page's `<style>` includes them).
pub const CSS: &str = "h3{font-size:15px;margin:20px 0 4px} table.measure td{vertical-align:middle} \
td.svg,th.svg{padding:1px 6px} td.num{text-align:right;font-variant-numeric:tabular-nums} \
tr.none td{color:#777} p.drawn{margin:2px 0 6px} td.t,td.m{white-space:nowrap} \
.heatmap{max-width:100%;overflow-x:auto}";

/// A comparison a target makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Le,
    Lt,
    Ge,
    Gt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Le => "≤",
            Op::Lt => "<",
            Op::Ge => "≥",
            Op::Gt => ">",
        }
    }
}

/// A check's measured number against its numeric target, read from the check's own text.
#[derive(Debug, Clone, PartialEq)]
pub struct Measure {
    /// The statistic the target is about ("p99"), when `expected` names one.
    pub label: Option<String>,
    pub op: Op,
    pub target: f64,
    /// "" when the target has none.
    pub unit: String,
    pub value: f64,
    /// Other summary numbers `actual` gives in the same unit: min, max, mean, median, pNN.
    pub stats: Vec<(String, f64)>,
}

impl Measure {
    /// The target as the check states it: `p99 <= 5 ms`.
    pub fn target_text(&self) -> String {
        let label = self
            .label
            .as_deref()
            .map(|l| format!("{l} "))
            .unwrap_or_default();
        format!("{label}{} {} {}", self.op.as_str(), self.target, self.unit)
            .trim_end()
            .to_string()
    }
}

const UNITS: &[&str] = &[
    "ns", "us", "µs", "ms", "s", "min", "h", "%", "x", "B", "KB", "kB", "MB", "GB", "TB", "KiB",
    "MiB", "GiB", "TiB", "bps", "kbps", "Kbps", "Mbps", "Gbps", "B/s", "kB/s", "MB/s", "GB/s",
    "KiB/s", "MiB/s", "GiB/s", "Hz", "kHz", "MHz", "GHz", "W", "°C", "C",
];

fn is_unit(s: &str) -> bool {
    UNITS.contains(&s)
}

/// A token without the punctuation prose puts around it.
fn trim(t: &str) -> &str {
    t.trim_start_matches(['(', '[', '"', '\''])
        .trim_end_matches([',', ';', ':', ')', ']', '"', '\''])
}

/// A number, alone or with a unit stuck to it ("25ms"): digits with at most one point and a
/// sign, never `inf`, `NaN` or an exponent.
fn number(t: &str) -> Option<(f64, &str)> {
    let b = t.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'-' | b'+')));
    let (mut digits, mut dots) = (0, 0);
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        if b[i] == b'.' {
            dots += 1;
        } else {
            digits += 1;
        }
        i += 1;
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    let (n, rest) = t.split_at(i);
    if !rest.is_empty() && !is_unit(rest) {
        return None;
    }
    n.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| (v, rest))
}

fn is_word(t: &str) -> bool {
    t.chars().next().is_some_and(char::is_alphabetic)
        && t.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn is_stat(label: &str) -> bool {
    let l = label.to_ascii_lowercase();
    ["min", "max", "mean", "avg", "median"].contains(&l.as_str())
        || (l.len() > 1
            && l.starts_with('p')
            && l[1..].chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// The numbers of `text`, each with the word before it and its unit.
fn numbers(text: &str) -> Vec<(Option<&str>, f64, &str)> {
    let t: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for (j, raw) in t.iter().enumerate() {
        let Some((v, stuck)) = number(trim(raw)) else {
            continue;
        };
        let unit = if stuck.is_empty() {
            t.get(j + 1)
                .map(|u| u.trim_end_matches([',', ';', ':', ')']))
                .filter(|u| is_unit(u))
                .unwrap_or("")
        } else {
            stuck
        };
        let label = j
            .checked_sub(1)
            .map(|k| t[k])
            .filter(|w| is_word(w) && number(w).is_none());
        out.push((label, v, unit));
    }
    out
}

/// The check's number against its numeric target, when its text has both.
pub fn measure(c: &Check) -> Option<Measure> {
    let t: Vec<&str> = c.expected.split_whitespace().collect();
    let ops = [
        ("<=", Op::Le),
        ("≤", Op::Le),
        (">=", Op::Ge),
        ("≥", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (i, op, rest) = t.iter().enumerate().find_map(|(i, w)| {
        ops.iter()
            .find_map(|(s, op)| w.strip_prefix(s).map(|r| (i, *op, r)))
    })?;
    let (num_tok, after) = if rest.is_empty() {
        (*t.get(i + 1)?, i + 2)
    } else {
        (rest, i + 1)
    };
    let (target, stuck) = number(trim(num_tok))?;
    let unit = if stuck.is_empty() {
        t.get(after)
            .map(|u| u.trim_end_matches([',', ';', ':', ')']))
            .filter(|u| is_unit(u))
            .unwrap_or("")
    } else {
        stuck
    };
    let label = i.checked_sub(1).map(|k| t[k]).filter(|w| is_word(w));
    let found = numbers(&c.actual);
    let same_unit = |u: &str| u == unit;
    let pick = label
        .and_then(|l| {
            found
                .iter()
                .position(|(w, _, u)| w.is_some_and(|w| w.eq_ignore_ascii_case(l)) && same_unit(u))
        })
        .or_else(|| {
            // Without the label in `actual`: the first number in the target's unit, when the
            // target has one (a bare number could be a count).
            (label.is_none() || !unit.is_empty())
                .then(|| found.iter().position(|(_, _, u)| same_unit(u)))
                .flatten()
        })?;
    let value = found[pick].1;
    let stats = found
        .iter()
        .enumerate()
        .filter(|(k, (w, _, u))| *k != pick && same_unit(u) && w.is_some_and(is_stat))
        .map(|(_, (w, v, _))| (w.unwrap_or("").to_string(), *v))
        .collect();
    Some(Measure {
        label: label.map(String::from),
        op,
        target,
        unit: unit.to_string(),
        value,
        stats,
    })
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Skip => "skip",
    }
}

fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => svg::PASS,
        Verdict::Fail => svg::FAIL,
        Verdict::Skip => svg::SKIP,
    }
}

/// The report's round-trip lists, titled as the heatmap titles them.
fn pair_lists(r: &Report) -> Vec<(String, &[PairStat])> {
    let mut v: Vec<(String, &[PairStat])> = Vec::new();
    if !r.quic.is_empty() || r.nodes.len() >= 2 {
        v.push(("QUIC round trip".into(), &r.quic));
    }
    if !r.zenoh.is_empty() {
        v.push(("Zenoh ping-pong".into(), &r.zenoh));
    }
    for z in &r.zenoh_routers {
        v.push((format!("Zenoh via router {}", z.router), &z.pairs));
    }
    v
}

/// The pairs the round-trip tables draw, by sender.
fn pairs_by_sender(r: &Report) -> BTreeMap<&str, Vec<&PairStat>> {
    let mut m: BTreeMap<&str, Vec<&PairStat>> = BTreeMap::new();
    for (_, pairs) in pair_lists(r) {
        for s in pairs {
            m.entry(s.from.as_str()).or_default().push(s);
        }
    }
    m
}

/// Whether `c` is the latency check of a pair the round-trip tables draw (its kind, the name's
/// last words, aside): what `checks::latency` makes of that pair.
fn drawn_as_pair(
    by_sender: &BTreeMap<&str, Vec<&PairStat>>,
    target: Option<f64>,
    c: &Check,
) -> bool {
    by_sender.get(c.node.as_str()).is_some_and(|pairs| {
        pairs.iter().any(|s| {
            c.name
                .starts_with(&format!("latency {} -> {} (", s.from, s.to))
                && {
                    let mut w = checks::latency("", s, target);
                    w.name.clone_from(&c.name);
                    w == *c
                }
        })
    })
}

/// Why a node's agent could not measure, when it did not answer.
fn absent(r: &Report, node: &str) -> Option<String> {
    r.nodes
        .iter()
        .find(|n| n.name == node)
        .and_then(|n| n.error.as_ref().map(|e| format!("agent {}: {e}", n.agent)))
}

fn pair_table(o: &mut String, r: &Report, title: &str, pairs: &[PairStat]) {
    let t = r.latency_p99_ms.filter(|t| t.is_finite());
    let target_text = match t {
        Some(t) => format!("p99 ≤ {t} ms (latency_p99_ms)"),
        None => "no latency_p99_ms target".into(),
    };
    let with_samples = pairs.iter().filter(|s| !s.rtt_ms.is_empty()).count();
    let measured = pairs
        .iter()
        .filter(|s| s.error.is_none() && s.samples > 0)
        .count();
    let _ = write!(
        o,
        "<h3>{}: {}</h3><p class=\"muted drawn\">Drawn per pair: the answered round trips \
         (dots; beyond {dots}, {dots} evenly spaced by rank), min to max (grey line), p50 \
         (black tick) to p99 (coloured tick, box between){}. {with_samples} of {measured} \
         measured pairs carry their samples; the others show p50 and p99 only (an agent that \
         does not send them).</p>",
        esc(title),
        esc(&target_text),
        if t.is_some() {
            ", and the target (red dashed line)"
        } else {
            ""
        },
        dots = svg::MAX_DOTS
    );
    // A long tail would squeeze the rest: the scale ends past the p99s and the target, and
    // what lies beyond is marked at its end.
    let scale = Scale::covering(
        pairs
            .iter()
            .filter(|s| s.error.is_none() && s.samples > 0)
            .flat_map(|s| [s.p50_ms, s.p99_ms])
            .chain(t),
    );
    let _ = write!(
        o,
        "<table class=\"measure\" data-kind=\"pairs\"><thead><tr><th>sender</th><th>receiver</th>\
         <th>samples (lost)</th><th>min</th><th>p50</th><th>p99</th><th>max</th><th>target</th>\
         <th>verdict</th><th class=\"svg\">{}</th></tr></thead><tbody>",
        svg::axis(&scale, "ms")
    );
    let target_cell = t.map(|t| format!("≤ {t} ms")).unwrap_or_else(|| "-".into());
    for s in pairs {
        let v = checks::latency("", s, r.latency_p99_ms).verdict;
        let head = format!(
            "<tr class=\"{}\"><td>{}</td><td>{}</td>",
            verdict_class(v),
            esc(&s.from),
            esc(&s.to)
        );
        if s.error.is_some() || s.samples == 0 {
            let why = s.error.as_deref().unwrap_or("no round trip answered");
            let _ = write!(
                o,
                "{head}<td colspan=\"5\">no measurement: {}</td><td class=\"t\">{}</td><td class=\"v\">{}</td><td class=\"svg\"></td></tr>",
                esc(why),
                esc(&target_cell),
                v.as_str()
            );
            continue;
        }
        let (min, max) = s
            .rtt_ms
            .iter()
            .filter(|x| x.is_finite())
            .fold(None, |m: Option<(f64, f64)>, x| match m {
                None => Some((*x, *x)),
                Some((a, b)) => Some((a.min(*x), b.max(*x))),
            })
            .map(|(a, b)| (num(a), num(b)))
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let drawing = svg::spread(
            &scale,
            &Spread {
                samples: &s.rtt_ms,
                p50: s.p50_ms,
                p99: s.p99_ms,
                colour: colour(v),
                unit: "ms",
            },
            t.map(|t| (t, target_text.as_str())),
        );
        let _ = write!(
            o,
            "{head}<td class=\"num\">{} ({}){}</td><td class=\"num\">{min}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{max}</td><td class=\"t\">{}</td><td class=\"v\">{}</td>\
             <td class=\"svg\">{drawing}</td></tr>",
            s.samples,
            s.lost,
            if s.rtt_ms.is_empty() {
                " <span class=\"muted\">p50, p99 only</span>"
            } else {
                ""
            },
            num(s.p50_ms),
            num(s.p99_ms),
            esc(&target_cell),
            v.as_str()
        );
    }
    // A node whose agent did not answer: one row says which pairs were not measured, and why.
    for a in &r.nodes {
        let Some(why) = absent(r, &a.name) else {
            continue;
        };
        let missing: Vec<&str> = r
            .nodes
            .iter()
            .map(|b| b.name.as_str())
            .filter(|b| {
                *b != a.name
                    && !pairs.iter().any(|s| {
                        (s.from == a.name && s.to == *b) || (s.from == *b && s.to == a.name)
                    })
            })
            .collect();
        if missing.is_empty() {
            continue;
        }
        let _ = write!(
            o,
            "<tr class=\"none\"><td>{}</td><td>↔ {}</td><td colspan=\"5\">not measured: {}</td><td class=\"t\">{}</td><td class=\"v\">-</td><td class=\"svg\"></td></tr>",
            esc(&a.name),
            esc(&missing.join(", ")),
            esc(&why),
            esc(&target_cell)
        );
    }
    o.push_str("</tbody></table>");
}

/// A check's name with the report's node names as `*`: checks of one kind share a table.
fn template(names: &BTreeSet<&str>, name: &str) -> String {
    name.split_whitespace()
        .map(|w| {
            let bare = trim(w);
            if names.contains(bare) {
                w.replace(bare, "*")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Group<'a> {
    category: &'a str,
    template: String,
    rows: Vec<(&'a Check, Option<Measure>)>,
}

fn groups<'a>(r: &'a Report) -> Vec<Group<'a>> {
    let names: BTreeSet<&str> = r
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(r.checks.iter().map(|c| c.node.as_str()))
        .collect();
    let mut out: Vec<Group> = Vec::new();
    let by_sender = pairs_by_sender(r);
    let checks: Vec<&Check> = r
        .checks
        .iter()
        .filter(|c| !drawn_as_pair(&by_sender, r.latency_p99_ms, c))
        .collect();
    for c in &checks {
        if measure(c).is_none() {
            continue;
        }
        let t = template(&names, &c.name);
        if !out
            .iter()
            .any(|g| g.category == c.category && g.template == t)
        {
            out.push(Group {
                category: &c.category,
                template: t,
                rows: Vec::new(),
            });
        }
    }
    // Every check of a group's kind, measured or not: one without a number says why.
    for c in checks {
        let t = template(&names, &c.name);
        if let Some(g) = out
            .iter_mut()
            .find(|g| g.category == c.category && g.template == t)
        {
            g.rows.push((c, measure(c)));
        }
    }
    out
}

fn group_table(o: &mut String, r: &Report, g: &Group) {
    let ms: Vec<&Measure> = g.rows.iter().filter_map(|(_, m)| m.as_ref()).collect();
    let unit = ms.first().map(|m| m.unit.as_str()).unwrap_or("");
    let stat_names: BTreeSet<&str> = ms
        .iter()
        .flat_map(|m| m.stats.iter().map(|(l, _)| l.as_str()))
        .collect();
    let targets: BTreeSet<String> = ms.iter().map(|m| m.target_text()).collect();
    let _ = write!(
        o,
        "<h3>{}: {}</h3><p class=\"muted drawn\">Target {}. Drawn per node: the value the check \
         judged (bar: green pass, red fail){}, and the target (red dashed line). One number per \
         node and check: the distribution behind it does not reach the report.</p>",
        esc(g.category),
        esc(&g.template),
        esc(&targets.into_iter().collect::<Vec<_>>().join(", ")),
        if stat_names.is_empty() {
            String::new()
        } else {
            format!(
                ", the other numbers the node reported ({}, black ticks)",
                esc(&stat_names.into_iter().collect::<Vec<_>>().join(", "))
            )
        }
    );
    let scale = Scale::covering(ms.iter().flat_map(|m| {
        [m.value, m.target]
            .into_iter()
            .chain(m.stats.iter().map(|(_, v)| *v))
    }));
    let _ = write!(
        o,
        "<table class=\"measure\" data-kind=\"checks\"><thead><tr><th>node</th><th>check</th>\
         <th>measured</th><th>target</th><th>verdict</th><th class=\"svg\">{}</th></tr></thead><tbody>",
        svg::axis(&scale, unit)
    );
    for (c, m) in &g.rows {
        let _ = write!(
            o,
            "<tr class=\"{}\"><td>{}</td><td>{}</td>",
            verdict_class(c.verdict),
            esc(&c.node),
            esc(&c.name)
        );
        let why = c
            .reason
            .as_ref()
            .map(|r| format!(" <span class=\"muted\">({})</span>", esc(r)))
            .unwrap_or_default();
        match m {
            Some(m) => {
                let target = m.target_text();
                let drawing = svg::bar(
                    &scale,
                    m.value,
                    &m.stats,
                    colour(c.verdict),
                    &m.unit,
                    Some((m.target, target.as_str())),
                );
                let stats: String = m
                    .stats
                    .iter()
                    .map(|(l, v)| format!(", {l} {}", num(*v)))
                    .collect();
                let _ = write!(
                    o,
                    "<td class=\"m\">{}{} {}{}{why}</td><td class=\"t\">{}</td><td class=\"v\">{}</td><td class=\"svg\">{drawing}</td></tr>",
                    m.label
                        .as_deref()
                        .map(|l| format!("{} ", esc(l)))
                        .unwrap_or_default(),
                    num(m.value),
                    esc(&m.unit),
                    esc(&stats),
                    esc(target.trim_end()),
                    c.verdict.as_str()
                );
            }
            None => {
                let _ = write!(
                    o,
                    "<td>no measurement: {}{why}</td><td>{}</td><td class=\"v\">{}</td><td class=\"svg\"></td></tr>",
                    esc(&c.actual),
                    esc(&c.expected),
                    c.verdict.as_str()
                );
            }
        }
    }
    // Nodes whose agent did not answer have no check of this kind: say so, and why.
    for n in &r.nodes {
        if g.rows.iter().any(|(c, _)| c.node == n.name) {
            continue;
        }
        if let Some(why) = absent(r, &n.name) {
            let _ = write!(
                o,
                "<tr class=\"none\"><td>{}</td><td>-</td><td>not measured: {}</td><td>-</td><td class=\"v\">-</td><td class=\"svg\"></td></tr>",
                esc(&n.name),
                esc(&why)
            );
        }
    }
    o.push_str("</tbody></table>");
}

/// The section, as well-formed XML (HTML that an XML parser reads too).
pub fn section(r: &Report) -> String {
    let mut o = String::from("<section id=\"measured\"><h2>Measured against targets</h2>");
    let lists = pair_lists(r);
    for (title, pairs) in &lists {
        pair_table(&mut o, r, title, pairs);
    }
    let gs = groups(r);
    for g in &gs {
        group_table(&mut o, r, g);
    }
    if lists.is_empty() && gs.is_empty() {
        o.push_str("<p class=\"muted\">Nothing in this run was measured against a number.</p>");
    }
    o.push_str("</section>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::NodeReport;
    use edgectl_agent::proto::{percentile, round_trips};
    use roxmltree::{Document, Node};

    include!("../tests/common/sample_report.rs");

    fn check(expected: &str, actual: &str) -> Check {
        Check {
            node: "n".into(),
            category: "runtime".into(),
            name: "x".into(),
            expected: expected.into(),
            actual: actual.into(),
            verdict: Verdict::Pass,
            reason: None,
        }
    }

    fn m(expected: &str, actual: &str) -> Option<(Option<String>, Op, f64, String, f64)> {
        measure(&check(expected, actual)).map(|m| (m.label, m.op, m.target, m.unit, m.value))
    }

    #[test]
    fn a_number_against_a_target_is_read_from_the_checks_own_text() {
        let ms = |l: Option<&str>, op, t, v| Some((l.map(String::from), op, t, "ms".into(), v));
        // As checks::latency, checks::wasm, the unikernel and Ray checks write them.
        assert_eq!(
            m(
                "p99 <= 2 ms",
                "p50 0.50 ms, p99 3.00 ms (100 samples, 0 lost)"
            ),
            ms(Some("p99"), Op::Le, 2.0, 3.0)
        );
        assert_eq!(
            m("<= 25 ms", "3.21 ms (compile 12.0 ms)"),
            ms(None, Op::Le, 25.0, 3.21)
        );
        let c = check(
            "p50 <= 50 ms (launch to first serial output, under KVM)",
            "p50 42.0 ms, max 90.0 ms (5 boots, qemu microvm)",
        );
        let u = measure(&c).unwrap();
        assert_eq!((u.value, u.target), (42.0, 50.0));
        assert_eq!(u.stats, [("max".to_string(), 90.0)]);
        assert_eq!(
            m(
                "efficiency >= 0.8 (speedup over the ideal)",
                "efficiency 0.62: speedup 1.24 of ideal 2.00 (8 tasks)"
            ),
            Some((Some("efficiency".into()), Op::Ge, 0.8, String::new(), 0.62))
        );
        assert_eq!(m("≤25ms", "took 30ms"), ms(None, Op::Le, 25.0, 30.0));
        // No number against a target: not a measurement.
        for (e, a) in [
            ("runs", "3.2 ms"),
            ("2", "2"),
            ("p99 <= 2 ms", "timed out after 5 s"),
            ("<= 25 ms", "-"),
            ("<= 25 ms", "12 s"),
            ("p99 <= inf ms", "p99 3 ms"),
            ("p99 <= 1e3 ms", "p99 3 ms"),
            ("<= NaN", "NaN"),
            ("intel xeon silver 4114", "intel xeon silver 4114"),
            (
                "answered (no latency_p99_ms target)",
                "p50 0.5 ms, p99 0.9 ms",
            ),
            ("<=", ""),
            ("", ""),
        ] {
            assert_eq!(m(e, a), None, "{e:?} / {a:?}");
        }
    }

    #[test]
    fn any_text_and_any_numbers_render_without_a_panic() {
        let odd = [
            "",
            "<",
            "<=",
            "≤",
            "≥-",
            "<= -",
            "<= .",
            "<= 1.2.3 ms",
            "p99 <= 99999999999999999999999 ms",
            "p99 p99 p99",
            "\u{0}\u{1b}<&>\"'",
            "<= 5 ms ms ms",
            "p-1 <= -3 ms",
            "µ≤≥<>",
            "(((",
        ];
        let mut r = Report::default();
        for (k, e) in odd.iter().enumerate() {
            for a in odd {
                let mut c = check(e, a);
                c.node = odd[k % odd.len()].to_string();
                c.name = format!("{a} {e}");
                let _ = measure(&c);
                r.checks.push(c);
            }
        }
        let mut s = PairStat::new("a", "b");
        (s.samples, s.p50_ms, s.p99_ms) = (3, f64::NAN, f64::INFINITY);
        s.rtt_ms = vec![f64::NEG_INFINITY, 1e308, f64::NAN, -1.0];
        r.quic.push(s);
        r.nodes.push(NodeReport {
            name: "\u{1}".into(),
            error: Some("\u{2}".into()),
            ..Default::default()
        });
        let html = section(&r);
        Document::parse(&html).expect("well-formed whatever the input");
        assert!(!html.contains("NaN") && !html.contains("inf\""), "{html}");
    }

    fn class<'a>(n: Node<'a, 'a>, c: &str) -> Vec<Node<'a, 'a>> {
        n.descendants()
            .filter(|d| {
                d.attribute("class")
                    .is_some_and(|a| a.split(' ').any(|w| w == c))
            })
            .collect()
    }

    fn attr(n: Node, a: &str) -> f64 {
        n.attribute(a)
            .unwrap_or_else(|| panic!("{a} missing on {n:?}"))
            .parse()
            .unwrap()
    }

    /// The x of value `v` by the axis the reader sees: the table's labelled ticks.
    fn axis_x(table: Node, v: f64) -> f64 {
        let axis = class(table, "axis")[0];
        let ticks: Vec<(f64, f64)> = axis
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| (attr(n, "x"), n.text().unwrap().parse::<f64>().unwrap()))
            .collect();
        assert!(ticks.len() >= 3, "{ticks:?}");
        let ((x0, v0), (x1, v1)) = (ticks[0], ticks[ticks.len() - 1]);
        x0 + (v - v0) * (x1 - x0) / (v1 - v0)
    }

    fn cells(tr: Node) -> Vec<String> {
        tr.children()
            .filter(|n| n.has_tag_name("td"))
            .map(|n| {
                n.descendants()
                    .filter(|d| d.is_text() && !d.ancestors().any(|a| a.has_tag_name("svg")))
                    .map(|d| d.text().unwrap_or(""))
                    .collect()
            })
            .collect()
    }

    fn rows<'a>(table: Node<'a, 'a>) -> Vec<Node<'a, 'a>> {
        table
            .descendants()
            .filter(|n| n.has_tag_name("tr") && n.parent().is_some_and(|p| p.has_tag_name("tbody")))
            .collect()
    }

    #[test]
    fn every_target_gets_a_table_of_measured_target_verdict_and_a_drawing() {
        let r = sample_report();
        let html = section(&r);
        let doc = Document::parse(&html).expect("the section is well-formed XML");
        // Escaped everywhere: nothing of the hostile strings became markup.
        assert!(
            doc.descendants()
                .all(|n| !n.has_tag_name("script") && !n.has_tag_name("img")),
            "{html}"
        );
        assert!(html.contains("gpu&quot;&amp;&#39;&lt;script&gt;"));
        let tables = class(doc.root(), "measure");
        let titles: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("h3"))
            .map(|n| n.text().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            titles,
            [
                "QUIC round trip: p99 ≤ 2 ms (latency_p99_ms)",
                "Zenoh ping-pong: p99 ≤ 2 ms (latency_p99_ms)",
                "Zenoh via router edge-1: p99 ≤ 2 ms (latency_p99_ms)",
                "runtime: wasm cold start",
                "runtime: unikernel boot",
                "ray: ray scaling",
            ]
        );
        // (Latency checks are the pair tables, not tables of their own again; the cpu model
        // check has no number.)
        assert_eq!(tables.len(), titles.len());

        // QUIC: every measured pair, its samples drawn, the target where the axis puts 2 ms.
        let quic = tables[0];
        let rs = rows(quic);
        // 6 pairs of the live nodes, then one row for the node whose agent did not answer.
        assert_eq!(rs.len(), 7);
        for (tr, s) in rs.iter().zip(&r.quic) {
            let c = cells(*tr);
            assert_eq!(
                (c[0].as_str(), c[1].as_str()),
                (s.from.as_str(), s.to.as_str())
            );
            if s.error.is_some() {
                assert!(
                    c[2].starts_with("no measurement: no answer within 5 s <timeout>"),
                    "{c:?}"
                );
                assert_eq!(tr.attribute("class"), Some("fail"));
                assert!(class(*tr, "dist").is_empty());
                continue;
            }
            let want = if s.p99_ms > TARGET_P99_MS {
                "fail"
            } else {
                "pass"
            };
            assert_eq!(tr.attribute("class"), Some(want), "{c:?}");
            assert_eq!(c[3], num(s.rtt_ms[0]));
            assert_eq!(c[4], num(s.p50_ms));
            assert_eq!(c[5], num(s.p99_ms));
            assert_eq!(c[6], num(s.rtt_ms[s.rtt_ms.len() - 1]));
            assert_eq!(c[2], "100 (0)");
            let svg = class(*tr, "dist")[0];
            let target = class(svg, "target")[0];
            assert!((attr(target, "x1") - axis_x(quic, TARGET_P99_MS)).abs() < 0.02);
            let p99 = class(svg, "p99")[0];
            assert!((attr(p99, "x1") - axis_x(quic, s.p99_ms)).abs() < 0.02);
            assert_eq!(class(svg, "sample").len(), s.rtt_ms.len());
            let range = class(svg, "range")[0];
            assert!((attr(range, "x1") - axis_x(quic, s.rtt_ms[0])).abs() < 0.02);
        }
        assert!(
            rs.iter()
                .any(|tr| tr.attribute("class") == Some("fail") && !class(*tr, "dist").is_empty())
        );
        let c = cells(rs[6]);
        assert_eq!(
            c[..3],
            [
                "edge-4",
                &format!("↔ edge-1, edge-2, {HOSTILE}"),
                "not measured: agent unreachable: ssh 10.0.0.4:22: connection refused <again>"
            ]
        );
        assert_eq!(rs[6].attribute("class"), Some("none"));

        // Zenoh from an agent that sends no samples: p50 and p99 only, and it says so.
        for tr in &rows(tables[1])[..6] {
            let svg = class(*tr, "dist")[0];
            assert!(class(svg, "sample").is_empty() && class(svg, "range").is_empty());
            assert_eq!(class(svg, "p50").len(), 1);
            assert!(cells(*tr)[2].contains("p50, p99 only"));
        }
        assert_eq!(class(rows(tables[2])[0], "sample").len(), 100);

        // Per node: the value as a bar as long as the axis says, the target where it says.
        let wasm = tables[3];
        let rs = rows(wasm);
        let c: Vec<Vec<String>> = rs.iter().map(|tr| cells(*tr)).collect();
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(c[0][..3], ["edge-1", "wasm cold start", "3.21 ms"]);
        assert_eq!(c[1][2], "31.7 ms");
        assert_eq!((c[0][4].as_str(), c[1][4].as_str()), ("pass", "FAIL"));
        assert_eq!(c[0][3], "≤ 25 ms");
        assert_eq!(c[2][0], HOSTILE);
        assert_eq!(
            c[2][2],
            "no measurement: timed out <script>alert(2)</script>"
        );
        assert_eq!(
            c[3][..3],
            [
                "edge-4",
                "-",
                "not measured: agent unreachable: ssh 10.0.0.4:22: connection refused <again>"
            ]
        );
        for (tr, v) in rs.iter().zip([3.21, 31.7]) {
            let bar = class(*tr, "value")[0];
            assert!((attr(bar, "x") - axis_x(wasm, 0.0)).abs() < 0.02);
            let end = attr(bar, "x") + attr(bar, "width");
            assert!((end - axis_x(wasm, v)).abs() < 0.02, "{v}: {end}");
            let t = class(*tr, "target")[0];
            assert!((attr(t, "x1") - axis_x(wasm, 25.0)).abs() < 0.02);
        }
        assert_eq!(class(rs[1], "value")[0].attribute("fill"), Some(svg::FAIL));

        // The other numbers a check reports (the unikernel's max) are drawn as ticks.
        let uk = tables[4];
        let stat = class(rows(uk)[0], "stat")[0];
        assert!((attr(stat, "x1") - axis_x(uk, 90.0)).abs() < 0.02);
        assert_eq!(cells(rows(uk)[1])[2], "p50 61.5 ms, max 70.2");
        // A lower bound: ≥, unitless.
        assert_eq!(cells(rows(tables[5])[0])[3], "efficiency ≥ 0.8");
    }

    #[test]
    fn the_page_loads_nothing_and_keeps_the_heatmap() {
        let r = sample_report();
        let page = crate::report::html(&r);
        assert!(page.contains("content=\"default-src 'none'; style-src 'unsafe-inline'\""));
        assert!(!page.contains("<script") && !page.contains("<img") && !page.contains("src=\""));
        // The heatmap is in the page itself, and parses, hostile names and all.
        let start = page.find("<div class=\"heatmap\">").unwrap() + "<div class=\"heatmap\">".len();
        let end = start + page[start..].find("</svg>").unwrap() + "</svg>".len();
        let doc = Document::parse(&page[start..end]).expect("heatmap is well-formed");
        assert!(doc.descendants().any(|n| n.text() == Some(HOSTILE)));
        assert!(page.contains("<section id=\"measured\">"));
    }
}
