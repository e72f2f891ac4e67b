//! Diagnostics: every problem found in a file, with where it is, what was there and how to fix it.
//! Rendered like rustc through miette, or serialised as JSON.

use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use serde::Serialize;

use crate::source::SourceFile;

macro_rules! kinds {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The kind of a problem. Its kebab-case name is part of the JSON contract.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum Kind { $(#[serde(rename = $name)] $variant),* }
        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];
            pub fn as_str(self) -> &'static str { match self { $(Kind::$variant => $name),* } }
            pub fn from_name(s: &str) -> Option<Kind> { match s { $($name => Some(Kind::$variant),)* _ => None } }
        }
    };
}

kinds! {
    Io => "io",
    IsDirectory => "is-directory",
    TooLarge => "too-large",
    NotUtf8 => "not-utf8",
    Binary => "binary",
    TooDeep => "too-deep",
    Empty => "empty",
    Syntax => "syntax",
    UnknownKey => "unknown-key",
    MissingField => "missing-field",
    WrongType => "wrong-type",
    InvalidValue => "invalid-value",
    DuplicateName => "duplicate-name",
    DuplicateHost => "duplicate-host",
    DuplicateAddress => "duplicate-address",
    DuplicateMac => "duplicate-mac",
    AddressOutsidePrefix => "address-outside-prefix",
    InvalidAddress => "invalid-address",
    InvalidHostname => "invalid-hostname",
    InvalidMac => "invalid-mac",
    UnknownProfile => "unknown-profile",
    ProfileCycle => "profile-cycle",
    UnknownRole => "unknown-role",
    UnknownFeature => "unknown-feature",
    UnknownNetwork => "unknown-network",
    FeatureConflict => "feature-conflict",
    CudaWithoutGpu => "cuda-without-gpu",
    RayNoHead => "ray-no-head",
    RayTwoHeads => "ray-two-heads",
    ZenohNoRouter => "zenoh-no-router",
    InvalidTarget => "invalid-target",
    NoNodes => "no-nodes",
    NotRspec => "not-rspec",
    UnknownInterface => "unknown-interface",
    UnknownUser => "unknown-user",
    AmbiguousUser => "ambiguous-user",
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub kind: Kind,
    pub file: String,
    /// 1-based; 0 when the problem is with the file as a whole.
    pub line: usize,
    pub column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(skip)]
    pub span: Option<Range<usize>>,
    #[serde(skip)]
    pub source: Option<Arc<SourceFile>>,
}

impl Diagnostic {
    /// A problem with a file as a whole (cannot be read, too large, ...).
    pub fn file(kind: Kind, file: &str, message: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            file: file.to_string(),
            line: 0,
            column: 0,
            field: None,
            value: None,
            message: message.into(),
            help: None,
            span: None,
            source: None,
        }
    }

    pub fn at(
        kind: Kind,
        source: &Arc<SourceFile>,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = source.line_col(span.start);
        Diagnostic {
            kind,
            file: source.name.clone(),
            line,
            column,
            field: None,
            value: None,
            message: message.into(),
            help: None,
            span: Some(span),
            source: Some(source.clone()),
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn value(mut self, value: impl Into<String>) -> Self {
        let mut v: String = value.into();
        if v.len() > 200 {
            let mut cut = 200;
            while !v.is_char_boundary(cut) {
                cut -= 1;
            }
            v.truncate(cut);
            v.push('…');
        }
        self.value = Some(v);
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// A just-recorded diagnostic, for adding details in a chain.
pub struct DiagMut<'a>(pub &'a mut Diagnostic);

impl DiagMut<'_> {
    pub fn field(self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }
    pub fn value(self, value: impl Into<String>) -> Self {
        let d = std::mem::replace(self.0, Diagnostic::file(Kind::Io, "", ""));
        *self.0 = d.value(value);
        self
    }
    pub fn help(self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }
}

/// All problems found, in file order within each file.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(transparent)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }
    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }
    pub fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    }

    /// Rendered like rustc (source excerpt, caret, help). At most `limit` are drawn in full; the
    /// rest are listed one per line so that a file with 10,000 bad nodes stays readable.
    pub fn render(&self, color: bool, limit: usize) -> String {
        let theme = if color {
            miette::GraphicalTheme::unicode()
        } else {
            miette::GraphicalTheme::unicode_nocolor()
        };
        let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
        let mut out = String::new();
        for (i, d) in self.0.iter().enumerate() {
            if i >= limit {
                let _ = writeln!(out, "error[{}]: {}: {}", d.kind, d.location(), d.message);
                continue;
            }
            let mut md = miette::MietteDiagnostic::new(format!("{}: {}", d.location(), d.message))
                .with_code(format!("edgectl::{}", d.kind));
            if let Some(h) = &d.help {
                md = md.with_help(h.clone());
            }
            let label = match (&d.field, &d.value) {
                (Some(f), Some(v)) => format!("{f} = {v}"),
                (Some(f), None) => f.clone(),
                (None, Some(v)) => v.clone(),
                (None, None) => String::from("here"),
            };
            let rendered = match (&d.source, &d.span) {
                // Very long lines (minified or generated input) make unreadable excerpts.
                (Some(src), Some(span))
                    if line_len_at(&src.text, span.start) <= MAX_EXCERPT_LINE =>
                {
                    md = md.with_label(miette::LabeledSpan::at(span.clone(), label));
                    let report = miette::Report::new(md)
                        .with_source_code(miette::NamedSource::new(&src.name, src.text.clone()));
                    let mut s = String::new();
                    handler.render_report(&mut s, report.as_ref()).map(|_| s)
                }
                _ => {
                    let mut s = String::new();
                    handler.render_report(&mut s, &md).map(|_| s)
                }
            };
            match rendered {
                Ok(s) => out.push_str(&s),
                Err(_) => {
                    let _ = writeln!(out, "error[{}]: {}: {}", d.kind, d.location(), d.message);
                }
            }
            out.push('\n');
        }
        let n = self.0.len();
        let _ = writeln!(out, "{n} problem{} found", if n == 1 { "" } else { "s" });
        out
    }
}

const MAX_EXCERPT_LINE: usize = 400;

fn line_len_at(text: &str, offset: usize) -> usize {
    let b = text.as_bytes();
    let offset = offset.min(b.len());
    let start = b[..offset]
        .iter()
        .rposition(|&c| c == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let end = b[offset..]
        .iter()
        .position(|&c| c == b'\n')
        .map(|i| offset + i)
        .unwrap_or(b.len());
    end - start
}

/// Levenshtein distance, for "did you mean" hints.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate within a small edit distance, if any.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    if word.chars().count() > 64 {
        return None;
    }
    let limit = (word.chars().count() / 3).max(2);
    let w = word.to_lowercase();
    let candidates: Vec<&'a str> = candidates.into_iter().collect();
    let near = candidates
        .iter()
        .map(|c| (edit_distance(&w, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    // "timeout" should find "confirm_timeout_s": a long enough word inside a key counts too.
    near.or_else(|| {
        (w.len() >= 4)
            .then(|| {
                candidates
                    .iter()
                    .copied()
                    .find(|c| c.to_lowercase().contains(&w))
            })
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("adress", ["address", "mac", "vlan"]),
            Some("address")
        );
        assert_eq!(did_you_mean("zzzzzz", ["address", "mac"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn line_col_counts_chars() {
        let s = SourceFile::new("f", "ab\nçd = 1\n");
        assert_eq!(s.line_col(0), (1, 1));
        assert_eq!(s.line_col(3), (2, 1));
        assert_eq!(s.line_col(5), (2, 2)); // after the two-byte ç
        assert_eq!(s.line_col(1000), (3, 1));
    }
}
