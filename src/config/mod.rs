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
pub mod plan;
pub mod reload;
pub mod spec;
pub mod units;

use std::path::Path;

pub use error::{ConfigError, LoadError};
use outline::Outline;
pub use spec::Spec;

use crate::hash::hash64;
use crate::snapshot::Snapshot;

/// A digest of one definition in the file (an upstream, a rate-limit
/// policy, a route): runtime types keep it instead of the serde input, so
/// a reload can tell an unchanged definition (whose state is carried
/// over) from a changed one without holding the file's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition([u8; 32]);

impl Definition {
    /// The digest of `spec` (SHA-256 of its JSON form; every map in the
    /// spec types is ordered, so equal definitions give equal digests).
    pub fn of<T: serde::Serialize + ?Sized>(spec: &T) -> Self {
        let json = serde_json::to_vec(spec).unwrap_or_default();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Definition(out)
    }
}

/// The config's JSON Schema (draft 2020-12), derived from the spec types:
/// their doc comments are the descriptions, their serde defaults the
/// defaults.
pub fn schema() -> String {
    let mut schema = schemars::schema_for!(Spec);
    schema.insert(
        "title".to_owned(),
        serde_json::Value::from("Tollgate configuration"),
    );
    serde_json::to_string_pretty(&schema).unwrap_or_default()
}

/// Largest config file read: hand-written configs are far smaller, and a
/// bound here keeps a wrong or hostile file from exhausting memory.
pub const MAX_CONFIG_BYTES: usize = 4 << 20;

/// Deepest nesting of mappings and sequences in a config (the deepest the
/// schema uses is about 8).
pub const MAX_CONFIG_DEPTH: usize = 32;

/// The YAML parser's limits, every one set here rather than left to the
/// library's defaults: nesting, node and event counts, aliases (billion
/// laughs), scalar bytes.
fn yaml_budget() -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_reader_input_bytes = Some(MAX_CONFIG_BYTES);
    b.flow_nesting_limit = MAX_CONFIG_DEPTH;
    b.max_depth = MAX_CONFIG_DEPTH;
    b.max_events = 500_000;
    b.max_nodes = 200_000;
    b.max_aliases = 1_000;
    b.max_anchors = 1_000;
    b.max_documents = 1;
    b.max_total_scalar_bytes = MAX_CONFIG_BYTES;
    b
}

/// Parses YAML text into a `Spec` and its version (hash of the bytes).
pub fn parse(file: &str, text: &str) -> Result<(Spec, String), LoadError> {
    if text.len() > MAX_CONFIG_BYTES {
        return Err(LoadError::Invalid(vec![ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            path: String::new(),
            message: format!("the file is larger than {MAX_CONFIG_BYTES} bytes"),
        }]));
    }
    let outline = Outline::new(text);
    let options = serde_saphyr::options! { with_snippet: false, budget: Some(yaml_budget()) };
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
    if meta.len() > MAX_CONFIG_BYTES as u64 {
        return Err(read(std::io::Error::other(format!(
            "larger than {MAX_CONFIG_BYTES} bytes"
        ))));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    build(&file, &text, previous)
}
