//! A walker over TOML's spanned document tree that records every problem instead of stopping at
//! the first, and remembers where each value was written (by field path) for later checks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diag::{DiagMut, Diagnostic, Diagnostics, Kind, did_you_mean};
use crate::source::SourceFile;

/// Where each field was written, keyed by its path (`node[2].lan[0].mac`).
///
/// Every field of every node is recorded, but paths are looked up almost only to report a
/// problem. So recording appends to one buffer (no allocation, hashing or scattered table
/// writes per field, and one free when dropped: a map of 100,000+ owned keys made large files
/// slower per node than small ones), and the index is built at the first lookup and catches
/// up on later records at the next, so each record is indexed at most once.
#[derive(Debug, Default, Clone)]
pub struct Spans {
    /// Every recorded path, end to end.
    text: String,
    /// Where each path ends in `text`, and its span, in the order recorded.
    entries: Vec<(usize, Range<usize>)>,
    index: RefCell<SpanIndex>,
}

#[derive(Debug, Default, Clone)]
struct SpanIndex {
    /// A path to its latest entry: recording a path again replaces its span, as it always did.
    map: HashMap<Box<str>, usize>,
    /// How many entries `map` covers.
    upto: usize,
}

impl Spans {
    pub fn insert(&mut self, path: String, span: Range<usize>) {
        self.insert_str(&path, span);
    }
    pub fn insert_str(&mut self, path: &str, span: Range<usize>) {
        self.record(span, |s| s.push_str(path));
    }
    /// Records a path written straight into the buffer, so callers need not build a `String`.
    pub fn record(&mut self, span: Range<usize>, write_path: impl FnOnce(&mut String)) {
        write_path(&mut self.text);
        self.entries.push((self.text.len(), span));
    }
    pub fn get(&self, path: &str) -> Option<Range<usize>> {
        let mut ix = self.index.borrow_mut();
        let mut start = ix.upto.checked_sub(1).map_or(0, |k| self.entries[k].0);
        for k in ix.upto..self.entries.len() {
            let end = self.entries[k].0;
            ix.map.insert(self.text[start..end].into(), k);
            start = end;
        }
        ix.upto = self.entries.len();
        ix.map.get(path).map(|&k| self.entries[k].1.clone())
    }
}

pub struct Table<'a, 'i> {
    pub entries: &'a DeTable<'i>,
    pub span: Range<usize>,
    pub path: String,
}

impl<'a, 'i> Table<'a, 'i> {
    pub fn get(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub fn child(&self, key: &str) -> String {
        let mut s = String::with_capacity(self.path.len() + 1 + key.len());
        self.write_child(&mut s, key);
        s
    }

    /// The path of item `i` of the array `key` in this table: `key[i]`.
    pub fn item(&self, key: &str, i: usize) -> String {
        let mut s = String::with_capacity(self.path.len() + key.len() + 8);
        self.write_child(&mut s, key);
        let _ = write!(s, "[{i}]");
        s
    }

    /// Appends the path of `key` in this table (as [`Table::child`] spells it) to `out`.
    pub fn write_child(&self, out: &mut String, key: &str) {
        if !self.path.is_empty() {
            out.push_str(&self.path);
            out.push('.');
        }
        out.push_str(key);
    }
}

pub struct Reader {
    pub src: Arc<SourceFile>,
    pub diags: Diagnostics,
    pub spans: Spans,
}

pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A short rendering of a value for the `value` part of a diagnostic.
pub fn show(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "[...]".into(),
        DeValue::Table(_) => "{...}".into(),
    }
}

pub fn int_value(v: &DeValue<'_>) -> Option<i128> {
    match v {
        DeValue::Integer(i) => i128::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok(),
        _ => None,
    }
}

impl Reader {
    pub fn new(src: Arc<SourceFile>) -> Self {
        Reader {
            src,
            diags: Diagnostics::default(),
            spans: Spans::default(),
        }
    }

    pub fn error(&mut self, kind: Kind, span: Range<usize>, msg: impl Into<String>) -> DiagMut<'_> {
        self.diags.push(Diagnostic::at(kind, &self.src, span, msg));
        DiagMut(self.diags.0.last_mut().expect("just pushed"))
    }

    pub fn root<'a, 'i>(&mut self, doc: &'a Spanned<DeTable<'i>>) -> Table<'a, 'i> {
        Table {
            entries: doc.get_ref(),
            span: doc.span(),
            path: String::new(),
        }
    }

    /// Reports every key not in `allowed`, suggesting the nearest allowed one.
    pub fn check_keys(&mut self, t: &Table<'_, '_>, allowed: &[&str]) {
        for (k, _) in t.entries.iter() {
            let key = k.get_ref().as_ref();
            if allowed.contains(&key) {
                continue;
            }
            let where_ = if t.path.is_empty() {
                "the top level".to_string()
            } else {
                format!("[{}]", t.path)
            };
            let help = match did_you_mean(key, allowed.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? Rename the key to `{s}`."),
                None => format!(
                    "remove it; allowed keys in {where_} are: {}",
                    allowed.join(", ")
                ),
            };
            let path = t.child(key);
            self.error(
                Kind::UnknownKey,
                k.span(),
                format!("unknown key `{key}` in {where_}"),
            )
            .field(path)
            .help(help);
        }
    }

    fn missing(&mut self, t: &Table<'_, '_>, key: &str, what: &dyn std::fmt::Display) {
        let where_ = if t.path.is_empty() {
            "the file".to_string()
        } else {
            format!("[{}]", t.path)
        };
        let span = t.span.start
            ..t.span
                .start
                .saturating_add(1)
                .min(t.span.end.max(t.span.start));
        self.error(
            Kind::MissingField,
            span,
            format!("missing required field `{key}` in {where_}"),
        )
        .field(t.child(key))
        .help(format!("add `{key} = {what}`"));
    }

    fn wrong_type(&mut self, path: &str, v: &Spanned<DeValue<'_>>, expected: &str) {
        self.error(
            Kind::WrongType,
            v.span(),
            format!(
                "`{path}` must be {expected}, found {}",
                type_name(v.get_ref())
            ),
        )
        .field(path.to_string())
        .value(show(v.get_ref()))
        .help(format!(
            "write `{}` as {expected}",
            path.rsplit('.').next().unwrap_or(path)
        ));
    }

    pub fn table<'a, 'i>(
        &mut self,
        v: &'a Spanned<DeValue<'i>>,
        path: String,
    ) -> Option<Table<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => {
                self.spans.insert_str(&path, v.span());
                Some(Table {
                    entries: t,
                    span: v.span(),
                    path,
                })
            }
            _ => {
                self.wrong_type(&path, v, "a table");
                None
            }
        }
    }

    pub fn opt_table<'a, 'i>(&mut self, t: &Table<'a, 'i>, key: &str) -> Option<Table<'a, 'i>> {
        let v = t.get(key)?;
        self.table(v, t.child(key))
    }

    /// A value that may be written as one table or an array of tables (`lan = {...}` or
    /// `[[node.lan]]`); returns each with its path `key[i]`.
    pub fn tables<'a, 'i>(&mut self, t: &Table<'a, 'i>, key: &str) -> Vec<Table<'a, 'i>> {
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        match v.get_ref() {
            DeValue::Table(_) => self.table(v, t.item(key, 0)).into_iter().collect(),
            DeValue::Array(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.table(item, t.item(key, i)))
                .collect(),
            _ => {
                self.wrong_type(&t.child(key), v, "a table or an array of tables");
                Vec::new()
            }
        }
    }

    fn raw<'a, 'i>(
        &mut self,
        t: &Table<'a, 'i>,
        key: &str,
        required: bool,
        what: &dyn std::fmt::Display,
    ) -> Option<&'a Spanned<DeValue<'i>>> {
        match t.get(key) {
            Some(v) => {
                self.spans.record(v.span(), |s| t.write_child(s, key));
                Some(v)
            }
            None => {
                if required {
                    self.missing(t, key, what);
                }
                None
            }
        }
    }

    pub fn string(&mut self, t: &Table<'_, '_>, key: &str, required: bool) -> Option<String> {
        let v = self.raw(t, key, required, &"\"...\"")?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.wrong_type(&t.child(key), v, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, t: &Table<'_, '_>, key: &str) -> Option<bool> {
        let v = self.raw(t, key, false, &"true")?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(&t.child(key), v, "true or false");
                None
            }
        }
    }

    /// An integer in `[min, max]`.
    pub fn integer(
        &mut self,
        t: &Table<'_, '_>,
        key: &str,
        required: bool,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let v = self.raw(t, key, required, &min.max(1))?;
        let path = t.child(key);
        match int_value(v.get_ref()) {
            Some(n) if n >= i128::from(min) && n <= i128::from(max) => Some(n as i64),
            Some(n) => {
                self.error(
                    Kind::InvalidValue,
                    v.span(),
                    format!("`{path}` must be between {min} and {max}"),
                )
                .field(path)
                .value(n.to_string())
                .help(format!("use a whole number from {min} to {max}"));
                None
            }
            None => {
                self.wrong_type(&path, v, "an integer");
                None
            }
        }
    }

    /// A number (integer or float) as written; range checks are the caller's.
    pub fn number(&mut self, t: &Table<'_, '_>, key: &str, required: bool) -> Option<f64> {
        let v = self.raw(t, key, required, &"1.0")?;
        match v.get_ref() {
            DeValue::Float(f) => f.as_str().replace('_', "").parse::<f64>().ok().or_else(|| {
                self.wrong_type(&t.child(key), v, "a number");
                None
            }),
            DeValue::Integer(_) => int_value(v.get_ref()).map(|n| n as f64),
            _ => {
                self.wrong_type(&t.child(key), v, "a number");
                None
            }
        }
    }

    /// An array of strings; each element's span is recorded as `key[i]`.
    pub fn strings(&mut self, t: &Table<'_, '_>, key: &str) -> Option<Vec<String>> {
        let v = self.raw(t, key, false, &"[]")?;
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(&t.child(key), v, "an array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => {
                    self.spans.record(item.span(), |p| {
                        t.write_child(p, key);
                        let _ = write!(p, "[{i}]");
                    });
                    out.push(s.to_string());
                }
                _ => self.wrong_type(&t.item(key, i), item, "a string"),
            }
        }
        Some(out)
    }
}
