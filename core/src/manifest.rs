//! The slug manifest (what a build produced) and the release spec (what the runtime runs).
//! Both are versioned JSON so that a slug written today still loads after an upgrade.

use std::collections::BTreeMap;

/// Bumped whenever the manifest's meaning changes; readers refuse versions they do not know.
pub const SLUG_MANIFEST_VERSION: u32 = 1;

/// How the runtime drives a process type's component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessKind {
    /// Exports `wasi:http/incoming-handler`: one fresh instance per request.
    WasiHttp,
    /// Exports `wasi:cli/run`: a command (served CGI-style for `web`, long-lived otherwise).
    Command,
}

/// One process type, resolved at build time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The command line as the Procfile or buildpack gave it.
    pub command: String,
    /// Path of the component inside the slug's `app/` tree.
    pub component: String,
    /// Arguments after the component path.
    #[serde(default)]
    pub args: Vec<String>,
    /// How the component is driven, read from its exports at build time.
    pub kind: ProcessKind,
}

/// What a slug contains; stored as `manifest.json` at the slug's root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlugManifest {
    /// [`SLUG_MANIFEST_VERSION`] at the time of the build.
    pub version: u32,
    /// The buildpack(s) that built the slug, in the order they ran.
    pub buildpacks: Vec<String>,
    /// Process types declared by the Procfile or the buildpack's defaults.
    pub process_types: BTreeMap<String, ProcessSpec>,
    /// The git commit the slug was built from.
    pub commit: Option<String>,
    /// Bytes of the app tree before compression.
    pub unpacked_bytes: u64,
}

/// Errors from reading a slug manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("slug manifest is invalid: {0}")]
    Invalid(#[from] serde_json::Error),
    /// Written by a newer Skiff.
    #[error(
        "slug manifest version {0} is not supported (this Skiff reads version {SLUG_MANIFEST_VERSION})"
    )]
    Version(u32),
    /// A process type name the Procfile rules refuse.
    #[error("slug manifest names an invalid process type {0:?}")]
    BadProcessType(String),
    /// A component path that is not a plain relative path inside the app, which the builder
    /// always writes; the platform joins it onto the slug's `app/` directory.
    #[error(
        "slug manifest process type {process:?} names component {component:?}, which is not a path inside the app"
    )]
    BadComponent {
        /// The process type.
        process: String,
        /// The path as written.
        component: String,
    },
}

impl SlugManifest {
    /// Parses and version-checks a manifest, and checks each process type's name and
    /// component path the way the builder wrote them.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Self = serde_json::from_slice(bytes)?;
        if manifest.version != SLUG_MANIFEST_VERSION {
            return Err(ManifestError::Version(manifest.version));
        }
        for (name, spec) in &manifest.process_types {
            if !crate::procfile::is_valid_process_type(name) {
                return Err(ManifestError::BadProcessType(name.clone()));
            }
            let normal = crate::text::app_relative(&spec.component)
                .is_some_and(|rel| rel.to_str() == Some(spec.component.as_str()));
            if !normal {
                return Err(ManifestError::BadComponent {
                    process: name.clone(),
                    component: spec.component.clone(),
                });
            }
        }
        Ok(manifest)
    }

    /// Serialises the manifest.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and maps cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// Splits a Procfile command into the component path and its arguments.
pub fn split_command(command: &str) -> (String, Vec<String>) {
    let mut words = command.split_whitespace().map(str::to_owned);
    let component = words.next().unwrap_or_default();
    (component, words.collect())
}

/// Everything the runtime needs to run one release of one app: immutable once cut.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReleaseSpec {
    /// The app.
    pub app: crate::AppName,
    /// `v1`, `v2`, ... as a number.
    pub version: u64,
    /// sha256 of the slug archive, hex.
    pub slug: String,
    /// The slug's manifest.
    pub manifest: SlugManifest,
    /// Config vars, given to every dyno as environment variables.
    pub config: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trip_and_version_check() {
        let mut m = SlugManifest {
            version: SLUG_MANIFEST_VERSION,
            buildpacks: vec!["rust".into()],
            process_types: BTreeMap::new(),
            commit: None,
            unpacked_bytes: 3,
        };
        m.process_types.insert(
            "web".into(),
            ProcessSpec {
                command: "bin/a.wasm".into(),
                component: "bin/a.wasm".into(),
                args: vec![],
                kind: ProcessKind::WasiHttp,
            },
        );
        assert_eq!(
            SlugManifest::from_json(&m.to_json()).expect("round trip"),
            m
        );
        m.version = 99;
        assert!(matches!(
            SlugManifest::from_json(&m.to_json()),
            Err(ManifestError::Version(99))
        ));
        assert!(SlugManifest::from_json(b"{\"version\":1,\"extra\":1}").is_err());
        m.version = SLUG_MANIFEST_VERSION;
        for bad in [
            "/etc/passwd",
            "/app/bin/a.wasm",
            "../a.wasm",
            "bin/../a.wasm",
            "",
            "bin//a",
        ] {
            let mut bad_m = m.clone();
            if let Some(web) = bad_m.process_types.get_mut("web") {
                web.component = bad.into();
            }
            assert!(
                matches!(
                    SlugManifest::from_json(&bad_m.to_json()),
                    Err(ManifestError::BadComponent { .. })
                ),
                "{bad}"
            );
        }
        let mut bad_m = m.clone();
        if let Some(web) = bad_m.process_types.remove("web") {
            bad_m.process_types.insert("we b".into(), web);
        }
        assert!(matches!(
            SlugManifest::from_json(&bad_m.to_json()),
            Err(ManifestError::BadProcessType(_))
        ));
    }

    #[test]
    fn splits_commands() {
        assert_eq!(
            split_command("bin/a.wasm  --x 1"),
            (
                "bin/a.wasm".to_owned(),
                vec!["--x".to_owned(), "1".to_owned()]
            )
        );
    }
}
