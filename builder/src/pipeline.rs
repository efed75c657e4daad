//! The build pipeline: detect, compile, release, resolve process types, pack the slug.
//! A failed step ends the build with a message for the pusher; nothing is deployed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use skiff_core::manifest::split_command;
use skiff_core::{BuildpackRelease, ProcessSpec, Procfile, SLUG_MANIFEST_VERSION, SlugManifest};

use crate::buildpack::{Buildpack, ScriptEnv, run_script};
use crate::inspect::{InspectError, process_kind};
use crate::slug::{SlugError, SlugStore};

/// Where build output goes: each line reaches the pusher's terminal as `remote: ...`.
#[derive(Debug, Clone)]
pub struct BuildLog(tokio::sync::mpsc::UnboundedSender<String>);

impl BuildLog {
    /// A log and the receiving end the caller streams from.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Emits one line; a gone receiver (pusher hung up) does not stop the build.
    pub fn line(&self, text: impl Into<String>) {
        let _ = self.0.send(text.into());
    }

    /// A Heroku-style step header: `-----> text`.
    pub fn step(&self, text: impl std::fmt::Display) {
        self.line(format!("-----> {text}"));
    }

    /// An indented detail line under a step.
    pub fn detail(&self, text: impl std::fmt::Display) {
        self.line(format!("       {text}"));
    }
}

/// Why a build failed. Each message is shown to the pusher as is.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No buildpack's `bin/detect` accepted the source.
    #[error(
        "no buildpack detected this app; looked for: {0}. Add the files your language needs, or set a BUILDPACK config var / .buildpacks file"
    )]
    NoBuildpack(String),
    /// `BUILDPACK` or `.buildpacks` named something that is not an installed buildpack.
    #[error("unknown buildpack {0:?}; installed: {1}")]
    UnknownBuildpack(String, String),
    /// A user buildpack folder is missing scripts.
    #[error("invalid buildpack: {0}")]
    BadBuildpack(String),
    /// A script could not be started.
    #[error("buildpack {buildpack}: bin/{script} could not run: {message}")]
    Script {
        /// Buildpack name.
        buildpack: String,
        /// Script name.
        script: String,
        /// OS error.
        message: String,
    },
    /// `bin/compile` exited non-zero.
    #[error("failed to compile {0} app")]
    CompileFailed(String),
    /// A script overran the build time limit.
    #[error("buildpack {buildpack}: bin/{script} ran longer than {}s and was stopped", limit.as_secs())]
    TimedOut {
        /// Buildpack name.
        buildpack: String,
        /// Script name.
        script: String,
        /// The limit.
        limit: Duration,
    },
    /// `bin/release` failed or printed something unusable.
    #[error("buildpack {0}: bin/release failed: {1}")]
    Release(String, String),
    /// The app's Procfile could not be parsed.
    #[error(transparent)]
    Procfile(#[from] skiff_core::ProcfileError),
    /// No process types at all.
    #[error(
        "no process types: add a Procfile (e.g. `web: bin/app.wasm`) or use a buildpack that declares defaults"
    )]
    NoProcessTypes,
    /// A process type names a file that is missing or is not a usable component.
    #[error("process type {process:?} ({command}): {source}")]
    Component {
        /// Process type.
        process: String,
        /// Its command line.
        command: String,
        /// What is wrong with the component.
        source: InspectError,
    },
    /// Packing or storing the slug failed.
    #[error(transparent)]
    Slug(#[from] SlugError),
    /// Local I/O while preparing the build.
    #[error("build I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// One build's inputs.
#[derive(Debug)]
pub struct BuildRequest<'a> {
    /// The app's source tree (a checkout of the pushed commit); buildpacks modify it in place.
    pub build_dir: &'a Path,
    /// The app's cache dir, kept between builds.
    pub cache_dir: &'a Path,
    /// The app's config vars; written to ENV_DIR as one file per var.
    pub config: &'a BTreeMap<String, String>,
    /// The pushed commit, recorded in the manifest.
    pub commit: Option<String>,
}

/// A slug that was built and stored.
#[derive(Debug, Clone)]
pub struct BuiltSlug {
    /// sha256 of the archive, hex.
    pub digest: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// The manifest inside it.
    pub manifest: SlugManifest,
}

/// Runs builds with a fixed set of installed buildpacks.
#[derive(Debug, Clone)]
pub struct Builder {
    buildpacks: Vec<Buildpack>,
    slugs: SlugStore,
    env: Vec<(String, String)>,
    limit: Duration,
}

/// Host variables passed through to buildpacks; everything else is withheld.
const PASSED_VARS: &[&str] = &[
    "PATH",
    "HOME",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "LANG",
    "TMPDIR",
    "JAVA_HOME",
];

impl Builder {
    /// A builder using `buildpacks` in detection order, storing slugs in `slugs`, stopping
    /// any buildpack script after `limit`.
    pub fn new(buildpacks: Vec<Buildpack>, slugs: SlugStore, limit: Duration) -> Self {
        let env = PASSED_VARS
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
            .collect();
        Self {
            buildpacks,
            slugs,
            env,
            limit,
        }
    }

    /// Passes `key=value` to every buildpack script (e.g. where per-machine toolchains live).
    #[must_use]
    pub fn with_var(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
        self
    }

    /// The installed buildpacks in detection order.
    pub fn buildpacks(&self) -> &[Buildpack] {
        &self.buildpacks
    }

    /// Builds `req.build_dir` into a stored slug, writing progress to `log`.
    pub async fn build(
        &self,
        req: BuildRequest<'_>,
        log: &BuildLog,
    ) -> Result<BuiltSlug, BuildError> {
        let env = ScriptEnv {
            vars: self.env.clone(),
            limit: self.limit,
        };
        let (selected, label) = self.select(&req, &env, log).await?;

        std::fs::create_dir_all(req.cache_dir)?;
        let env_dir = tempfile::tempdir()?;
        for (key, value) in req.config {
            std::fs::write(env_dir.path().join(key), value)?;
        }

        let mut defaults = BTreeMap::new();
        for bp in &selected {
            let out = run_script(
                bp,
                "compile",
                &[req.build_dir, req.cache_dir, env_dir.path()],
                &env,
                log,
                true,
            )
            .await?;
            if !out.success {
                return Err(BuildError::CompileFailed(label.clone()));
            }
            let out = run_script(bp, "release", &[req.build_dir], &env, log, false).await?;
            if !out.success {
                return Err(BuildError::Release(
                    bp.name.clone(),
                    "exited with an error".into(),
                ));
            }
            let release = BuildpackRelease::parse(&out.stdout)
                .map_err(|e| BuildError::Release(bp.name.clone(), e.to_string()))?;
            defaults.extend(release.default_process_types);
        }

        // Reading and wrapping components is CPU work (a Go binary is several MB).
        let process_types = {
            let dir = req.build_dir.to_owned();
            let log = log.clone();
            tokio::task::spawn_blocking(move || resolve_process_types(&dir, defaults, &log))
                .await
                .map_err(|e| BuildError::Io(std::io::Error::other(e)))??
        };
        log.step("Compressing...");
        let manifest = SlugManifest {
            version: SLUG_MANIFEST_VERSION,
            buildpacks: selected.iter().map(|b| b.name.clone()).collect(),
            process_types,
            commit: req.commit.clone(),
            unpacked_bytes: 0,
        };
        let slugs = self.slugs.clone();
        let dir = req.build_dir.to_owned();
        let built = tokio::task::spawn_blocking(move || slugs.pack(&dir, manifest))
            .await
            .map_err(|e| BuildError::Io(std::io::Error::other(e)))??;
        log.detail(format!("Done: {}", human_size(built.size)));
        Ok(built)
    }

    /// Chooses the buildpacks: forced by `BUILDPACK` / `.buildpacks`, else first to detect.
    async fn select(
        &self,
        req: &BuildRequest<'_>,
        env: &ScriptEnv,
        log: &BuildLog,
    ) -> Result<(Vec<Buildpack>, String), BuildError> {
        let forced: Vec<String> = if let Some(bp) = req.config.get("BUILDPACK") {
            vec![bp.trim().to_owned()]
        } else {
            match std::fs::read_to_string(req.build_dir.join(".buildpacks")) {
                Ok(text) => text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        if !forced.is_empty() {
            let mut chosen = Vec::new();
            for name in forced {
                let bp = self.find(&name)?;
                log.step(format!(
                    "Using buildpack {} (set by BUILDPACK or .buildpacks)",
                    bp.name
                ));
                chosen.push(bp);
            }
            let label = chosen
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>()
                .join("+");
            return Ok((chosen, label));
        }
        let detect_env = ScriptEnv {
            vars: env.vars.clone(),
            limit: env.limit.min(Duration::from_secs(60)),
        };
        for bp in &self.buildpacks {
            let out = run_script(bp, "detect", &[req.build_dir], &detect_env, log, false).await?;
            if out.success {
                let name = out
                    .stdout
                    .lines()
                    .next()
                    .unwrap_or(&bp.name)
                    .trim()
                    .to_owned();
                log.step(format!("{name} app detected"));
                return Ok((vec![bp.clone()], name));
            }
        }
        let looked_for: Vec<String> = self
            .buildpacks
            .iter()
            .map(|b| match crate::buildpack::detects(&b.name) {
                Some(files) => format!("{} ({files})", b.name),
                None => b.name.clone(),
            })
            .collect();
        Err(BuildError::NoBuildpack(looked_for.join(", ")))
    }

    fn find(&self, name: &str) -> Result<Buildpack, BuildError> {
        if let Some(bp) = self.buildpacks.iter().find(|b| b.name == name) {
            return Ok(bp.clone());
        }
        let path = Path::new(name);
        if path.is_absolute() && path.is_dir() {
            return Buildpack::from_dir(path);
        }
        Err(BuildError::UnknownBuildpack(name.to_owned(), self.names()))
    }

    fn names(&self) -> String {
        self.buildpacks
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Merges Procfile entries over buildpack defaults and checks each names a component.
fn resolve_process_types(
    build_dir: &Path,
    defaults: BTreeMap<String, String>,
    log: &BuildLog,
) -> Result<BTreeMap<String, ProcessSpec>, BuildError> {
    log.step("Discovering process types");
    let mut commands = defaults;
    let procfile_path = build_dir.join("Procfile");
    if procfile_path.exists() {
        let text = std::fs::read_to_string(&procfile_path)?;
        let procfile = Procfile::parse(&text)?;
        let names: Vec<_> = procfile.processes.keys().cloned().collect();
        log.detail(format!("Procfile declares types -> {}", names.join(", ")));
        commands.extend(procfile.processes);
    } else if !commands.is_empty() {
        let names: Vec<_> = commands.keys().cloned().collect();
        log.detail(format!(
            "Default types for buildpack -> {}",
            names.join(", ")
        ));
    }
    if commands.is_empty() {
        return Err(BuildError::NoProcessTypes);
    }
    let mut resolved = BTreeMap::new();
    for (name, command) in commands {
        let (component, args) = split_command(&command);
        let fail = |source| BuildError::Component {
            process: name.clone(),
            command: command.clone(),
            source,
        };
        let rel = skiff_core::text::app_relative(&component)
            .ok_or_else(|| fail(InspectError::OutsideApp))?;
        let path = build_dir.join(&rel);
        let mut bytes = std::fs::read(&path).map_err(|e| fail(InspectError::Read(e)))?;
        if crate::adapt::is_core_module(&bytes) {
            // Go and C toolchains emit preview 1 modules; every buildpack gets the same wrap.
            log.step(format!(
                "Wrapping {} (a WASI preview 1 module) into a component",
                rel.display()
            ));
            bytes =
                crate::adapt::preview1_command(&bytes).map_err(|e| fail(InspectError::Adapt(e)))?;
            std::fs::write(&path, &bytes)?;
        }
        let kind = process_kind(&bytes).map_err(fail)?;
        resolved.insert(
            name,
            ProcessSpec {
                command,
                component: rel.to_string_lossy().into_owned(),
                args,
                kind,
            },
        );
    }
    Ok(resolved)
}

/// Sizes as Heroku prints them (`1.2M`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "K", "M", "G"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(10), "10B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(3 * 1024 * 1024), "3.0M");
    }
}
