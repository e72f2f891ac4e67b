//! Small inline SVGs for the report's measured-against-target tables: one scale per table (an
//! axis with labelled ticks in the table's header), and per row either a distribution (every
//! sample as a dot, min to max, p50 and p99) or a bar (one measured value), each with the
//! target as a dashed red line. No script, no external resource; every coordinate is finite
//! whatever the numbers (NaN and infinities are left out, values beyond the scale are drawn
//! at its end and marked).

use std::fmt::Write as _;

/// Width and height of a row's SVG and of the axis; the plot runs from `X0` to `X1`.
pub const W: f64 = 320.0;
pub const H: f64 = 26.0;
pub const AXIS_H: f64 = 22.0;
pub const X0: f64 = 12.0;
pub const X1: f64 = 308.0;

pub const PASS: &str = "#59a14f";
pub const FAIL: &str = "#e45756";
pub const SKIP: &str = "#9e9e9e";
pub const TARGET: &str = "#c62828";

/// Escapes text for HTML and XML, in text and in quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Not allowed in XML 1.0: the fragment must stay parseable.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

/// A number as the report prints it: three significant digits or so, no exponent.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A linear scale from `lo` to `hi` (both ticks) onto `X0..X1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub lo: f64,
    pub hi: f64,
    pub step: f64,
}

impl Scale {
    /// A scale from 0 (or the lowest value, when below 0) that holds every finite value, with
    /// 1, 2 or 5 times a power of ten between ticks.
    pub fn covering(values: impl IntoIterator<Item = f64>) -> Scale {
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        // Room to the right of the largest value, so its mark is not on the frame.
        hi += (hi - lo) * 0.05;
        if hi - lo <= 0.0 || !(hi - lo).is_finite() {
            return Scale {
                lo: 0.0,
                hi: 1.0,
                step: 0.2,
            };
        }
        let raw = (hi - lo) / 5.0;
        let p = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * p)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * p);
        Scale {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// Where `v` lies, clamped to the plot.
    pub fn x(&self, v: f64) -> f64 {
        if !v.is_finite() {
            return if v > 0.0 { X1 } else { X0 };
        }
        let f = (v - self.lo) / (self.hi - self.lo);
        (X0 + f * (X1 - X0)).clamp(X0, X1)
    }

    pub fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n.clamp(0, 50))
            .map(|i| self.lo + i as f64 * self.step)
            .collect()
    }

    fn beyond(&self, v: f64) -> bool {
        v.is_finite() && v > self.hi
    }
}

fn open(out: &mut String, class: &str, h: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="{class}" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="{}">"#,
        esc(label)
    );
}

/// The table's axis: a labelled tick per step, in `unit`.
pub fn axis(s: &Scale, unit: &str) -> String {
    let mut o = String::new();
    open(&mut o, "axis", AXIS_H, &format!("scale in {unit}"));
    let _ = write!(
        o,
        r##"<line x1="{X0}" y1="{y}" x2="{X1}" y2="{y}" stroke="#999"/>"##,
        y = AXIS_H - 4.0
    );
    for t in s.ticks() {
        let x = s.x(t);
        let _ = write!(
            o,
            r##"<line class="tick" x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{}" stroke="#999"/><text class="tick" x="{x:.2}" y="11" font-size="10" text-anchor="middle">{}</text>"##,
            AXIS_H - 8.0,
            AXIS_H - 2.0,
            tick_label(t, s.step),
        );
    }
    o.push_str("</svg>");
    o
}

/// A tick's label with as many decimals as the step needs.
fn tick_label(v: f64, step: f64) -> String {
    let d = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    // -0.0 prints as "-0".
    let v = if v.abs() < step / 1e6 { 0.0 } else { v };
    format!("{v:.d$}")
}

fn frame(o: &mut String, s: &Scale) {
    let _ = write!(
        o,
        r##"<rect x="{X0}" y="2" width="{}" height="{}" fill="#f7f7f7"/>"##,
        X1 - X0,
        H - 4.0
    );
    for t in s.ticks() {
        let _ = write!(
            o,
            r##"<line x1="{x:.2}" y1="2" x2="{x:.2}" y2="{}" stroke="#e2e2e2"/>"##,
            H - 2.0,
            x = s.x(t)
        );
    }
}

/// The target as a dashed line across the row, with what it means in its tooltip.
fn target_line(o: &mut String, s: &Scale, target: Option<(f64, &str)>) {
    if let Some((t, what)) = target.filter(|(t, _)| t.is_finite()) {
        let _ = write!(
            o,
            r#"<line class="target" data-value="{t}" x1="{x:.2}" y1="0" x2="{x:.2}" y2="{H}" stroke="{TARGET}" stroke-width="2" stroke-dasharray="4 2"><title>target: {}</title></line>"#,
            esc(what),
            x = s.x(t)
        );
    }
}

/// A triangle at the right end: something lies beyond the scale (`what` says what).
fn beyond_mark(o: &mut String, what: &str) {
    let _ = write!(
        o,
        r##"<polygon class="beyond" points="{},{} {},{} {},{}" fill="#333"><title>{}</title></polygon>"##,
        X1 - 7.0,
        H / 2.0 - 5.0,
        X1,
        H / 2.0,
        X1 - 7.0,
        H / 2.0 + 5.0,
        esc(what)
    );
}

/// Most samples a row draws as dots: a page of many pairs stays small.
pub const MAX_DOTS: usize = 100;

/// The samples drawn as dots: all of them, or [`MAX_DOTS`] evenly spaced by rank (the smallest
/// and the largest among them).
fn dots(samples: &[f64]) -> Vec<f64> {
    if samples.len() <= MAX_DOTS {
        return samples.to_vec();
    }
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    (0..MAX_DOTS)
        .map(|i| v[i * (v.len() - 1) / (MAX_DOTS - 1)])
        .collect()
}

/// What a distribution row draws.
pub struct Spread<'a> {
    /// Every sample, when the measurement carried them; else only the percentiles are drawn.
    pub samples: &'a [f64],
    pub p50: f64,
    pub p99: f64,
    pub colour: &'a str,
    pub unit: &'a str,
}

/// One row's distribution: samples as dots (spread vertically so they do not hide each
/// other), a line from min to max, a box from p50 to p99, p50 and p99 as ticks.
pub fn spread(s: &Scale, d: &Spread, target: Option<(f64, &str)>) -> String {
    let mut o = String::new();
    open(&mut o, "dist", H, "distribution");
    frame(&mut o, s);
    let mid = H / 2.0;
    let finite: Vec<f64> = d
        .samples
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    let (min, max) = finite
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    if !finite.is_empty() {
        let _ = write!(
            o,
            r##"<line class="range" data-min="{min}" data-max="{max}" x1="{:.2}" y1="{mid}" x2="{:.2}" y2="{mid}" stroke="#777"><title>min {} {u}, max {} {u}</title></line>"##,
            s.x(min),
            s.x(max),
            num(min),
            num(max),
            u = esc(d.unit)
        );
    }
    if d.p50.is_finite() && d.p99.is_finite() {
        let (a, b) = (s.x(d.p50), s.x(d.p99));
        let _ = write!(
            o,
            r#"<rect class="box" x="{:.2}" y="{}" width="{:.2}" height="{}" fill="{}" fill-opacity="0.35"/>"#,
            a.min(b),
            mid - 6.0,
            (b - a).abs(),
            12.0,
            d.colour
        );
    }
    for (k, v) in dots(&finite).iter().enumerate() {
        // A fixed pattern of heights: the same data draws the same picture.
        let dy = ((k * 7) % 11) as f64 - 5.0;
        let _ = write!(
            o,
            r##"<circle class="sample" cx="{:.2}" cy="{:.2}" r="1.6" fill="#333" fill-opacity="0.45"/>"##,
            s.x(*v),
            mid + dy
        );
    }
    for (class, v, w, colour) in [("p50", d.p50, 2.0, "#222"), ("p99", d.p99, 3.0, d.colour)] {
        if v.is_finite() {
            let _ = write!(
                o,
                r#"<line class="{class}" data-value="{v}" x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{}" stroke="{colour}" stroke-width="{w}"><title>{class} {} {}</title></line>"#,
                mid - 8.0,
                mid + 8.0,
                num(v),
                esc(d.unit),
                x = s.x(v)
            );
        }
    }
    let top = if finite.is_empty() { d.p99 } else { max };
    if s.beyond(top) {
        beyond_mark(
            &mut o,
            &format!("max {} {} is beyond the scale", num(top), d.unit),
        );
    }
    target_line(&mut o, s, target);
    o.push_str("</svg>");
    o
}

/// One measured value as a bar from the scale's 0, with labelled summary numbers (min, max,
/// p50...) the measurement also reported as ticks.
pub fn bar(
    s: &Scale,
    value: f64,
    others: &[(String, f64)],
    colour: &str,
    unit: &str,
    target: Option<(f64, &str)>,
) -> String {
    let mut o = String::new();
    open(&mut o, "dist", H, "measured value");
    frame(&mut o, s);
    let mid = H / 2.0;
    if value.is_finite() {
        let (a, b) = (s.x(0.0), s.x(value));
        let _ = write!(
            o,
            r#"<rect class="value" data-value="{value}" x="{:.2}" y="{}" width="{:.2}" height="12" fill="{colour}"><title>{} {}</title></rect>"#,
            a.min(b),
            mid - 6.0,
            (b - a).abs(),
            num(value),
            esc(unit)
        );
    }
    for (label, v) in others.iter().filter(|(_, v)| v.is_finite()) {
        let _ = write!(
            o,
            r##"<line class="stat" data-value="{v}" x1="{x:.2}" y1="{}" x2="{x:.2}" y2="{}" stroke="#222" stroke-width="2"><title>{} {} {}</title></line>"##,
            mid - 9.0,
            mid + 9.0,
            esc(label),
            num(*v),
            esc(unit),
            x = s.x(*v)
        );
    }
    let top = others
        .iter()
        .map(|(_, v)| *v)
        .chain([value])
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if s.beyond(top) {
        beyond_mark(
            &mut o,
            &format!("{} {} is beyond the scale", num(top), unit),
        );
    }
    target_line(&mut o, s, target);
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_hold_their_values_on_round_ticks() {
        let s = Scale::covering([0.31, 2.0, 3.7]);
        assert_eq!((s.lo, s.step), (0.0, 1.0));
        assert!(s.hi >= 3.7 && s.hi <= 5.0, "{s:?}");
        assert_eq!(s.x(s.lo), X0);
        assert_eq!(s.x(s.hi), X1);
        assert!((s.x(2.0) - (X0 + 2.0 / s.hi * (X1 - X0))).abs() < 1e-9);
        let s = Scale::covering([0.012, 0.04]);
        assert_eq!(s.step, 0.01);
        assert_eq!(tick_label(0.03, s.step), "0.03");
        let s = Scale::covering([-3.0, 8.0]);
        assert!(
            s.lo <= -3.0 && s.hi >= 8.0 && s.ticks().contains(&0.0),
            "{s:?}"
        );
        // Nothing measurable still gives a scale, and marks stay inside the plot.
        for s in [
            Scale::covering([]),
            Scale::covering([f64::NAN, f64::INFINITY, 0.0]),
            Scale::covering([1e300, -1e300]),
        ] {
            assert!(s.lo < s.hi && !s.ticks().is_empty(), "{s:?}");
            for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e308, -1e308] {
                let x = s.x(v);
                assert!((X0..=X1).contains(&x), "{v} -> {x}");
            }
        }
    }

    #[test]
    fn marks_are_where_their_values_are_and_hostile_numbers_stay_out() {
        let s = Scale::covering([10.0]);
        let svg = spread(
            &s,
            &Spread {
                samples: &[1.0, 2.0, f64::NAN, 50.0],
                p50: 2.0,
                p99: f64::INFINITY,
                colour: FAIL,
                unit: "u<b>",
            },
            Some((5.0, "p99 <= 5 ms")),
        );
        let doc = roxmltree::Document::parse(&svg).expect("well-formed");
        let line = |class: &str| {
            doc.descendants()
                .find(|n| n.attribute("class") == Some(class))
                .unwrap_or_else(|| panic!("no {class} in {svg}"))
        };
        let x = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
        assert!((x(line("target"), "x1") - s.x(5.0)).abs() < 0.01);
        assert!((x(line("p50"), "x1") - s.x(2.0)).abs() < 0.01);
        // 50 lies beyond the scale: drawn at its end and marked; NaN is not drawn.
        assert_eq!(x(line("range"), "x2"), X1);
        assert!(line("beyond").has_children());
        assert_eq!(
            doc.descendants()
                .filter(|n| n.attribute("class") == Some("sample"))
                .count(),
            3
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains("u&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
    }

    #[test]
    fn many_samples_draw_at_most_max_dots_from_min_to_max() {
        let v: Vec<f64> = (0..5000).rev().map(|i| f64::from(i) / 1000.0).collect();
        let d = dots(&v);
        assert_eq!(d.len(), MAX_DOTS);
        assert_eq!((d[0], d[MAX_DOTS - 1]), (0.0, 4.999));
        let s = Scale::covering([5.0]);
        let svg = spread(
            &s,
            &Spread {
                samples: &v,
                p50: 2.5,
                p99: 4.95,
                colour: PASS,
                unit: "ms",
            },
            None,
        );
        assert_eq!(svg.matches("class=\"sample\"").count(), MAX_DOTS);
        assert!(!svg.contains("class=\"target\""));
    }
}
