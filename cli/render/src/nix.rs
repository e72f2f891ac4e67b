//! The one way a value from a topology becomes Nix source. Every string goes through
//! `string`, every attribute name through `attr_name`; templates reach both only through the
//! `nix` and `attr` filters.

use serde_json::Value;

/// Nix strings are C strings underneath, so NUL cannot be represented at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NulInString(pub String);

/// A double-quoted Nix string literal that evaluates to exactly `s`.
pub fn string(s: &str) -> Result<String, NulInString> {
    if s.contains('\0') {
        return Err(NulInString(s.replace('\0', "\\0")));
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // Escaping every `$` rules out `${` interpolation whatever follows.
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

const KEYWORDS: &[&str] = &[
    "if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or",
];

/// An attribute name: bare when Nix allows it, quoted otherwise.
pub fn attr_name(s: &str) -> Result<String, NulInString> {
    let mut chars = s.chars();
    let bare = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '\'' || c == '-')
        && !KEYWORDS.contains(&s);
    if bare { Ok(s.to_string()) } else { string(s) }
}

/// A JSON value as a Nix expression (objects become attribute sets).
pub fn literal(v: &Value) -> Result<String, NulInString> {
    Ok(match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                // Nix has no exponent-free literal for every float; Rust's shortest repr is valid Nix
                // when it has a dot, and an integer-valued float needs one added.
                let s = format!("{f:?}");
                if s.contains('.') || s.contains('e') {
                    s
                } else {
                    format!("{s}.0")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => string(s)?,
        Value::Array(a) => {
            let items: Result<Vec<String>, _> = a.iter().map(literal).collect();
            let items = items?;
            if items.is_empty() {
                "[ ]".into()
            } else {
                format!("[ {} ]", items.join(" "))
            }
        }
        Value::Object(o) => {
            let mut s = String::from("{ ");
            for (k, v) in o {
                s.push_str(&format!("{} = {}; ", attr_name(k)?, literal(v)?));
            }
            s.push('}');
            s
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(string("a\"b").unwrap(), r#""a\"b""#);
        assert_eq!(string("${x}").unwrap(), r#""\${x}""#);
        assert_eq!(string("a\\b\nc").unwrap(), r#""a\\b\nc""#);
        assert_eq!(string("''").unwrap(), r#""''""#);
        assert!(string("a\0b").is_err());
        assert_eq!(attr_name("head").unwrap(), "head");
        assert_eq!(attr_name("1node").unwrap(), "\"1node\"");
        assert_eq!(attr_name("in").unwrap(), "\"in\"");
        assert_eq!(
            literal(&serde_json::json!({"a": [1, "x", null, true]})).unwrap(),
            "{ a = [ 1 \"x\" null true ]; }"
        );
    }
}
