//! Configuration: YAML file → `Spec` → (validate + compile) → `Snapshot`.
//!
//! ```text
//! file ──read──▶ text ──serde-saphyr──▶ Spec ──compile(previous)──▶ Snapshot
//!                  └──────── Outline (path ↔ line:col) ─────────┘ for errors
//! ```
//!
//! Every error names `file:line:column` and the field path. `reload` owns
//! the one writer of the live snapshot.

pub mod compile;
pub mod error;
pub mod outline;
pub mod reload;
pub mod spec;
pub mod units;

use std::path::Path;

pub use error::{ConfigError, LoadError};
use outline::Outline;
pub use spec::Spec;

use crate::snapshot::Snapshot;
use crate::upstream::balance::hash64;

/// Largest config file read (a guard against pointing at the wrong file).
const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Parses YAML text into a `Spec` and its version (hash of the bytes).
pub fn parse(file: &str, text: &str) -> Result<(Spec, String), LoadError> {
    let outline = Outline::new(text);
    let options = serde_saphyr::options! { with_snippet: false };
    match serde_saphyr::from_str_with_options::<Spec>(text, options) {
        Ok(spec) => Ok((spec, format!("{:016x}", hash64(text.as_bytes())))),
        Err(e) => {
            let loc = e.location();
            let (line, column) = loc.map_or((None, None), |l| (Some(l.line()), Some(l.column())));
            let path = line
                .zip(column)
                .and_then(|(l, c)| outline.path_at(l, c))
                .unwrap_or_default()
                .to_owned();
            let message = first_line(&e.to_string());
            Err(LoadError::Invalid(vec![ConfigError {
                file: file.to_owned(),
                line,
                column,
                path,
                message,
            }]))
        }
    }
}

/// The message without the location prefix serde-saphyr adds.
fn first_line(msg: &str) -> String {
    let line = msg.lines().next().unwrap_or(msg);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    match line.rfind(" at line ") {
        Some(i) => line[..i].to_owned(),
        None => line.to_owned(),
    }
}

/// Parses and compiles `text`, reusing state from `previous`.
pub fn build(file: &str, text: &str, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    let (spec, version) = parse(file, text)?;
    let base = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    compile::compile(spec, version, previous, base).map_err(|errs| {
        let outline = Outline::new(text);
        LoadError::Invalid(
            errs.0
                .into_iter()
                .map(|(path, message)| {
                    let loc = outline.locate(&path);
                    ConfigError {
                        file: file.to_owned(),
                        line: loc.map(|l| l.0),
                        column: loc.map(|l| l.1),
                        path,
                        message,
                    }
                })
                .collect(),
        )
    })
}

/// Reads, parses and compiles the file at `path`.
pub fn load(path: &Path, previous: Option<&Snapshot>) -> Result<Snapshot, LoadError> {
    let file = path.display().to_string();
    let read = |source| LoadError::Read {
        file: file.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    build(&file, &text, previous)
}
