//! One escaping function per output language, so that no user string (node names, URNs, user
//! names, file names) reaches generated TOML, Python or XML unescaped.

use std::fmt::Write as _;

/// A TOML basic string literal, quotes included.
pub fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A Python 3 string literal, quotes included. Like `repr`, but always double-quoted and with
/// every non-ASCII or non-printable character escaped, so the file is plain ASCII whatever the
/// input was.
pub fn py_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Text for XML element content or a double-quoted attribute value. Characters XML 1.0 cannot
/// carry at all (most C0 controls, lone surrogates cannot occur in Rust strings) become U+FFFD;
/// tab and newlines become character references so attribute normalisation keeps them.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A comment line's text: generated comments quote values from the input, and a newline there
/// would end the comment and inject whatever follows.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_round_trip() {
        for s in [
            "plain",
            "quo\"te",
            "back\\slash",
            "new\nline",
            "tab\t",
            "ünï",
            "\u{7f}\u{1}",
        ] {
            let doc = format!("k = {}", toml_str(s));
            let v: toml::Table = toml::from_str(&doc).unwrap();
            assert_eq!(v["k"].as_str(), Some(s), "{doc}");
        }
    }

    #[test]
    fn python_strings() {
        assert_eq!(py_str("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(py_str("é☃😀"), r#""\xe9\u2603\U0001f600""#);
        assert_eq!(py_str("\u{0}"), r#""\x00""#);
        assert!(
            py_str("x'''y").contains("'''"),
            "single quotes need no escape in a double-quoted literal"
        );
    }

    #[test]
    fn xml_text() {
        assert_eq!(
            xml_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
        assert_eq!(xml_escape("a\u{1}b\nc"), "a\u{FFFD}b&#10;c");
        let doc = format!(
            "<r a=\"{}\">{}</r>",
            xml_escape("x\"<&\n"),
            xml_escape("]]><!--")
        );
        let d = roxmltree::Document::parse(&doc).unwrap();
        assert_eq!(d.root_element().attribute("a"), Some("x\"<&\n"));
        assert_eq!(d.root_element().text(), Some("]]><!--"));
    }

    #[test]
    fn comments_stay_on_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
