//! The `Procfile`: one `type: command` line per process type, as on Heroku. For Skiff the
//! command names a WebAssembly component inside the slug, optionally followed by arguments.

use std::collections::BTreeMap;

/// A Procfile that could not be read; the line number is 1-based, as editors show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    /// A line without the `type: command` shape.
    #[error("Procfile line {line}: expected `type: command`, found {text:?}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// A process type name with characters Heroku does not allow.
    #[error(
        "Procfile line {line}: invalid process type {name:?} (letters, digits, `-` and `_` only)"
    )]
    BadType {
        /// 1-based line number.
        line: usize,
        /// The offending name.
        name: String,
    },
    /// A type named twice.
    #[error("Procfile line {line}: process type {name:?} is declared twice")]
    Duplicate {
        /// 1-based line number.
        line: usize,
        /// The repeated name.
        name: String,
    },
    /// A type with nothing to run.
    #[error("Procfile line {line}: process type {name:?} has an empty command")]
    EmptyCommand {
        /// 1-based line number.
        line: usize,
        /// The type's name.
        name: String,
    },
    /// Guards memory and the manifest against absurd files.
    #[error("Procfile is too large ({0} bytes; the limit is 64 KiB)")]
    TooLarge(usize),
}

/// Process types in declaration-independent (sorted) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    /// Process type -> command line.
    pub processes: BTreeMap<String, String>,
}

/// Whether `name` may name a process type (`web`, `worker`, `release`, `clock-2`, ...).
pub fn is_valid_process_type(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Procfile {
    /// Parses Procfile text. Blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, ProcfileError> {
        if text.len() > 64 * 1024 {
            return Err(ProcfileError::TooLarge(text.len()));
        }
        let mut processes = BTreeMap::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let Some((name, command)) = trimmed.split_once(':') else {
                return Err(ProcfileError::Syntax {
                    line,
                    text: raw.to_owned(),
                });
            };
            let name = name.trim();
            let command = command.trim();
            if !is_valid_process_type(name) {
                return Err(ProcfileError::BadType {
                    line,
                    name: name.to_owned(),
                });
            }
            if command.is_empty() {
                return Err(ProcfileError::EmptyCommand {
                    line,
                    name: name.to_owned(),
                });
            }
            if processes
                .insert(name.to_owned(), command.to_owned())
                .is_some()
            {
                return Err(ProcfileError::Duplicate {
                    line,
                    name: name.to_owned(),
                });
            }
        }
        Ok(Self { processes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_skips_comments() {
        let p = Procfile::parse("# comment\n\nweb: bin/app.wasm --port 1\nworker:bin/w.wasm\n")
            .expect("valid");
        assert_eq!(p.processes["web"], "bin/app.wasm --port 1");
        assert_eq!(p.processes["worker"], "bin/w.wasm");
    }

    #[test]
    fn reports_line_numbers() {
        assert_eq!(
            Procfile::parse("web: a\nnot a process line\n"),
            Err(ProcfileError::Syntax {
                line: 2,
                text: "not a process line".into()
            })
        );
        assert!(matches!(
            Procfile::parse("we b: x"),
            Err(ProcfileError::BadType { line: 1, .. })
        ));
        assert!(matches!(
            Procfile::parse("web: a\nweb: b"),
            Err(ProcfileError::Duplicate { line: 2, .. })
        ));
        assert!(matches!(
            Procfile::parse("web:"),
            Err(ProcfileError::EmptyCommand { line: 1, .. })
        ));
    }
}
