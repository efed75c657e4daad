//! Skiff's shared vocabulary: what an app is called, what a Procfile says, what a slug and a
//! release hold. Every other crate speaks these types; nothing here touches the disk or the
//! network, so the rules they encode can be tested (and fuzzed) in isolation.

pub mod cgi;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod manifest;
pub mod names;
pub mod procfile;
pub mod sizes;
pub mod text;

pub use manifest::{ProcessKind, ProcessSpec, ReleaseSpec, SLUG_MANIFEST_VERSION, SlugManifest};
pub use names::{AppName, ConfigKey, NameError};
pub use procfile::{Procfile, ProcfileError};

/// Starts the last line of a build's output stream; what follows is `ok vN` or `failed`. The
/// platform writes it and the git hook reads it to accept or reject the push.
pub const BUILD_RESULT_MARKER: &str = "\u{1e}skiff-result ";

/// Errors from parsing the YAML a buildpack's `bin/release` prints.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseYamlError {
    /// The output was not the YAML shape Heroku's buildpack API describes.
    #[error("bin/release printed invalid YAML: {0}")]
    Yaml(String),
    /// A process type name in `default_process_types` is not a valid name.
    #[error("bin/release named an invalid process type {0:?}")]
    BadProcessType(String),
}

/// What a buildpack's `bin/release` declares. Unknown keys (`addons`, `config_vars`) are
/// accepted and ignored, as Heroku does for the keys it has retired.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct BuildpackRelease {
    /// Process types the buildpack proposes when the app has no Procfile entry for them.
    #[serde(default)]
    pub default_process_types: std::collections::BTreeMap<String, String>,
}

impl BuildpackRelease {
    /// Parses `bin/release` output; empty output means "no defaults".
    pub fn parse(text: &str) -> Result<Self, ReleaseYamlError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let parsed: Option<Self> =
            serde_yaml_ng::from_str(text).map_err(|e| ReleaseYamlError::Yaml(e.to_string()))?;
        let parsed = parsed.unwrap_or_default();
        for name in parsed.default_process_types.keys() {
            if !procfile::is_valid_process_type(name) {
                return Err(ReleaseYamlError::BadProcessType(name.clone()));
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_yaml_with_defaults() {
        let r = BuildpackRelease::parse(
            "---\naddons: []\ndefault_process_types:\n  web: bin/app.wasm\n",
        )
        .expect("valid");
        assert_eq!(r.default_process_types["web"], "bin/app.wasm");
    }

    #[test]
    fn release_yaml_empty_and_bad() {
        assert!(
            BuildpackRelease::parse("")
                .expect("empty ok")
                .default_process_types
                .is_empty()
        );
        assert!(
            BuildpackRelease::parse("---\n")
                .expect("doc ok")
                .default_process_types
                .is_empty()
        );
        assert!(BuildpackRelease::parse("default_process_types: [1, 2]").is_err());
        assert!(BuildpackRelease::parse("default_process_types:\n  'we b': x\n").is_err());
    }
}
