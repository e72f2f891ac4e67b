//! Writes a generated flake atomically: everything goes to a temporary directory beside the
//! target, which then replaces the target in one rename. A failure leaves the target as it was.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{Files, MARKER};

#[derive(Debug)]
pub enum WriteError {
    /// The directory has files and was not written by edgectl.
    NotOurs(PathBuf),
    NotADirectory(PathBuf),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NotOurs(p) => write!(
                f,
                "{} exists, is not empty and was not created by `edgectl generate`; pass --force to replace it, or choose another directory",
                p.display()
            ),
            WriteError::NotADirectory(p) => {
                write!(f, "{} exists and is not a directory", p.display())
            }
            WriteError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for WriteError {}

fn io_at(p: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |e| WriteError::Io(p.to_path_buf(), e)
}

/// Replaces `out` with exactly `files`. Returns whether anything differed from what was there.
pub fn write_dir(out: &Path, files: &Files, force: bool) -> Result<bool, WriteError> {
    if let Ok(meta) = fs::symlink_metadata(out) {
        if !meta.is_dir() {
            return Err(WriteError::NotADirectory(out.to_path_buf()));
        }
        let empty = fs::read_dir(out).map_err(io_at(out))?.next().is_none();
        if !empty && !out.join(MARKER).exists() && !force {
            return Err(WriteError::NotOurs(out.to_path_buf()));
        }
        if !empty && same_contents(out, files) {
            return Ok(false);
        }
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_at(&parent))?;
    let base = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let stamp = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let tmp = parent.join(format!(".{base}.edgectl-new-{stamp}"));
    let old = parent.join(format!(".{base}.edgectl-old-{stamp}"));
    let result = (|| {
        for (rel, text) in files {
            let p = tmp.join(rel);
            if let Some(d) = p.parent() {
                fs::create_dir_all(d).map_err(io_at(d))?;
            }
            fs::write(&p, text).map_err(io_at(&p))?;
        }
        let had_old = out.exists();
        if had_old {
            fs::rename(out, &old).map_err(io_at(out))?;
        }
        if let Err(e) = fs::rename(&tmp, out) {
            if had_old {
                let _ = fs::rename(&old, out);
            }
            return Err(WriteError::Io(out.to_path_buf(), e));
        }
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|_| true)
}

fn same_contents(dir: &Path, files: &Files) -> bool {
    let mut found = Vec::new();
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) -> io::Result<()> {
        for e in fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, base, out)?;
            } else {
                out.push(
                    p.strip_prefix(base)
                        .map(|r| r.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
        Ok(())
    }
    if walk(dir, dir, &mut found).is_err() {
        return false;
    }
    found.len() == files.len()
        && files
            .iter()
            .all(|(rel, text)| fs::read_to_string(dir.join(rel)).is_ok_and(|t| &t == text))
}
