//! What the config files of gatewan and bgpctl share: errors that name the file, the line
//! and the field and say how to fix it; the parser; and the `mesh`, `api`, `metrics` and
//! `log` sections.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_saphyr::Spanned;

mod api;
mod log;
mod mesh;
mod metrics;

pub use api::{ApiConfig, ApiSettings, ApiTlsConfig, TcpApiSettings};
pub use log::{LogConfig, LogFormat};
pub use mesh::{MeshConfig, MeshMemberSettings};
pub use metrics::MetricsConfig;

pub const DEFAULT_MESH_PORT: u16 = 7946;

/// A config error: where, which field, what to do.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Config errors found once the daemon runs (they depend on the host), one per line,
/// each `error: FILE: FIELD: MESSAGE`; the daemon exits 2 with them.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors with the file they belong to.
pub struct Checker<'a> {
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a Path) -> Self {
        Checker {
            file,
            errors: Vec::new(),
        }
    }

    pub fn error<T>(
        &mut self,
        at: Option<&Spanned<T>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: at.map(|s| s.referenced.line()).filter(|&l| l > 0),
            field: field.into(),
            message: message.into(),
        });
    }

    pub fn finish(self) -> Result<(), Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// Reads and parses a YAML config file into `T`; syntax and type errors carry their line.
pub fn parse_file<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    serde_saphyr::from_str::<T>(&text).map_err(|e| {
        let line = e.location().map(|l| l.line()).filter(|&l| l > 0);
        let field = line.map(|l| yaml_path_at(&text, l)).unwrap_or_default();
        vec![ConfigError {
            file: path.to_path_buf(),
            line,
            field,
            message: yaml_message(&e),
        }]
    })
}

/// The parser's message without the location it repeats (ours goes in front).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let msg = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    let mut first = msg.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = first.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        first = after;
    }
    first.to_string()
}

/// The dotted path (`transits[1].capacity`) of the key on `line` (1-based) of a block-style
/// YAML document, from indentation alone: serde reports a line but not the field, and
/// operators fix fields.
pub fn yaml_path_at(text: &str, line: u64) -> String {
    // (indent of the key, key, index within the list it heads, if any)
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut list_index: Vec<(usize, usize)> = Vec::new(); // (indent of '-', index)
    for (n, raw) in text.lines().enumerate() {
        let content = raw.split(" #").next().unwrap_or("").trim_end();
        let trimmed = content.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut indent = content.len() - trimmed.len();
        let mut rest = trimmed;
        if let Some(item) = rest
            .strip_prefix("- ")
            .or_else(|| (rest == "-").then_some(""))
        {
            while list_index.last().is_some_and(|&(i, _)| i > indent) {
                list_index.pop();
            }
            match list_index.last_mut() {
                Some((i, idx)) if *i == indent => *idx += 1,
                _ => list_index.push((indent, 0)),
            }
            stack.retain(|(i, _)| *i < indent);
            let idx = list_index.last().map_or(0, |&(_, idx)| idx);
            if let Some((_, parent)) = stack.last_mut() {
                let base = parent.split('[').next().unwrap_or("").to_string();
                *parent = format!("{base}[{idx}]");
            }
            indent += 2;
            rest = item;
        }
        stack.retain(|(i, _)| *i < indent);
        list_index.retain(|&(i, _)| i < indent);
        let key = rest
            .split_once(':')
            .map(|(k, _)| k.trim().trim_matches('"').to_string());
        if let Some(k) = key.filter(|k| !k.is_empty() && !k.contains(' ')) {
            stack.push((indent, k));
        }
        if n as u64 + 1 == line {
            break;
        }
    }
    stack
        .iter()
        .map(|(_, k)| k.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// What [`is_name`] asks, for messages.
pub const NAME_RULE: &str = "1-63 lower-case letters, digits or dashes";

/// Names (of members, datacenters, transits): lower-case letters, digits and dashes, as
/// in DNS labels, not starting with a dash.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-')
        && !s.starts_with('-')
}

/// Refuses a name that is not [`is_name`].
pub fn check_name(c: &mut Checker, v: &Spanned<String>, field: &str) {
    if !is_name(&v.value) {
        c.error(Some(v), field, format!("{:?} must be {NAME_RULE}", v.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_yaml_is_named_by_its_path_in_the_document() {
        let y = "a: 1\nlist:\n  - name: x\n    cap: 1\n  - name: y\n    cap: 2\nm:\n  k: v\n";
        assert_eq!(yaml_path_at(y, 1), "a");
        assert_eq!(yaml_path_at(y, 4), "list[0].cap");
        assert_eq!(yaml_path_at(y, 6), "list[1].cap");
        assert_eq!(yaml_path_at(y, 8), "m.k");
    }
}
