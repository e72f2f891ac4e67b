//! Reading files safely: size, type and encoding are checked before any parsing, and TOML
//! nesting depth is bounded before the parser sees the text.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;
use toml::de::DeTable;

use crate::diag::{Diagnostic, Kind};
use crate::read::Reader;
use crate::source::SourceFile;

/// Larger than any real cluster file (10,000 nodes are about 3 MB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Arrays and inline tables nested deeper than this are refused before parsing.
pub const MAX_NESTING: usize = 32;

pub fn read_source(path: &Path) -> Result<Arc<SourceFile>, Diagnostic> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| {
        Diagnostic::file(Kind::Io, &shown, format!("cannot read file: {e}"))
            .help("check the path and its permissions")
    })?;
    if meta.is_dir() {
        return Err(
            Diagnostic::file(Kind::IsDirectory, &shown, "this is a directory, not a file")
                .help("pass the topology file itself, e.g. examples/edge-lab.toml"),
        );
    }
    if !meta.is_file() {
        // A FIFO or device would block or never end; topology files are regular files.
        return Err(Diagnostic::file(
            Kind::Io,
            &shown,
            "not a regular file (a pipe, socket or device?)",
        )
        .help("save the topology to a file and pass its path"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::file(
            Kind::TooLarge,
            &shown,
            format!(
                "file is {} bytes; the limit is {} bytes",
                meta.len(),
                MAX_FILE_BYTES
            ),
        )
        .help("a topology this large is almost certainly not a topology; check the path"));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` guards files that grow after the metadata call (or report a size of 0, like FIFOs).
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            Diagnostic::file(Kind::Io, &shown, format!("cannot read file: {e}"))
                .help("check the path and its permissions")
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Diagnostic::file(
            Kind::TooLarge,
            &shown,
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        )
        .help("check the path"));
    }
    source_from_bytes(&shown, bytes)
}

pub fn source_from_bytes(name: &str, bytes: Vec<u8>) -> Result<Arc<SourceFile>, Diagnostic> {
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        let line = bytes[..pos].iter().filter(|&&b| b == b'\n').count() + 1;
        let mut d = Diagnostic::file(
            Kind::Binary,
            name,
            format!("file contains a NUL byte at offset {pos} (line {line}); it looks binary"),
        )
        .help("pass a TOML text file");
        d.line = line;
        d.column = 1;
        return Err(d);
    }
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(name, text)),
        Err(e) => {
            let pos = e.utf8_error().valid_up_to();
            let b = e.as_bytes();
            let line = b[..pos].iter().filter(|&&c| c == b'\n').count() + 1;
            let col = b[..pos].iter().rev().take_while(|&&c| c != b'\n').count() + 1;
            let mut d = Diagnostic::file(
                Kind::NotUtf8,
                name,
                format!(
                    "file is not valid UTF-8 (bad byte 0x{:02x} at offset {pos})",
                    b[pos]
                ),
            )
            .help("save the file as UTF-8");
            d.line = line;
            d.column = col;
            Err(d)
        }
    }
}

/// The deepest nesting of `[`/`{` in value position, skipping strings and comments. Table
/// headers (`[a]`, `[[a]]`) count as depth 1 or 2 and are harmless.
fn nesting_depth(text: &str) -> (usize, usize) {
    let b = text.as_bytes();
    let (mut depth, mut max, mut at) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            q @ (b'"' | b'\'') => {
                let triple = b.len() >= i + 3 && b[i + 1] == q && b[i + 2] == q;
                if triple {
                    i += 3;
                    while i < b.len()
                        && !(b.len() >= i + 3 && b[i] == q && b[i + 1] == q && b[i + 2] == q)
                    {
                        i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 3;
                } else {
                    i += 1;
                    while i < b.len() && b[i] != q && b[i] != b'\n' {
                        i += if q == b'"' && b[i] == b'\\' { 2 } else { 1 };
                    }
                    i += 1;
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    max = depth;
                }
                if depth == MAX_NESTING + 1 && at == 0 {
                    at = i;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (max, at)
}

/// Parses TOML, reporting every syntax error the parser can recover from. `text` is the
/// Reader's source text (passed separately so the tree can borrow it).
pub fn parse_toml<'a>(r: &mut Reader, text: &'a str) -> Option<Spanned<DeTable<'a>>> {
    if text.trim().is_empty() {
        let name = r.src.name.clone();
        r.diags
            .push(Diagnostic::file(Kind::Empty, &name, "file is empty").help(
                "a topology needs at least [cluster] and one [[node]]; see examples/edge-lab.toml",
            ));
        return None;
    }
    let (depth, at) = nesting_depth(text);
    if depth > MAX_NESTING {
        r.error(
            Kind::TooDeep,
            at..at + 1,
            format!("arrays or inline tables nested {depth} deep; the limit is {MAX_NESTING}"),
        )
        .help("a topology never nests this deep; flatten the value");
        return None;
    }
    let (doc, errors) = DeTable::parse_recoverable(text);
    if errors.is_empty() {
        return Some(doc);
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        r.error(Kind::Syntax, span, format!("TOML syntax error: {msg}"))
            .help("fix the TOML syntax at this point (strings need quotes, tables need `]`)");
    }
    None
}
