//! Every change that moves an app to a new release goes through here: a push (build, then
//! release), a config change (same slug, new config), a rollback (an old slug and config), and
//! a platform restart (run what was last released). The order is always: prepare the new
//! release (unpack, compile), run its release phase, start its dynos, record it, switch the
//! routes, stop the old dynos. A failure before the record leaves the app as it was.

use std::collections::BTreeMap;
use std::path::Path;

use skiff_builder::{BuildLog, BuildRequest};
use skiff_runtime::LoadedComponent;

use crate::logs::Source;
use crate::state::{AddonChange, ReleaseRow};
use crate::{Platform, PlatformError, oneoff};

/// How many releases keep their slugs, as Heroku keeps a rollback window.
pub(crate) const KEEP_SLUGS: usize = 10;

/// Tells the app's logs about a recorded release, as Heroku's API does.
fn log_release(p: &Platform, release: &ReleaseRow) {
    p.logs.push(
        &release.app,
        Source::Platform,
        "api",
        &format!(
            "Release v{} created by {}",
            release.version, release.created_by
        ),
    );
}

/// Once dynos are live, a failure to refresh the router's settings must not undo the release:
/// the previous settings stay in force and the error is logged.
fn sync_routing(p: &Platform, app: &str) {
    if let Err(e) = crate::routing::sync(p, app) {
        tracing::error!(app, error = %e, "could not update the router's settings for the app");
    }
}

/// Brings back the app's last release after a restart.
pub(crate) async fn restore(p: &Platform, app: &str) -> Result<(), PlatformError> {
    skiff_builder::git::init_repo(&skiff_builder::git::repo_path(&p.repos_dir(), app)).await?;
    match p.state.current_release(app)? {
        Some(release) => launch(p, &release).await,
        None => {
            p.dynos.route_without_dynos(app);
            crate::routing::sync(p, app)
        }
    }
}

/// While an app with no web dyno routed gets its first ones (first deploy, restart of the
/// platform, scale from zero), the router holds its requests (H20 after the boot timeout)
/// instead of answering H14 at once. Dropping the guard ends that, whatever the outcome.
struct Booting<'a> {
    p: &'a Platform,
    app: &'a str,
}

impl<'a> Booting<'a> {
    fn begin(p: &'a Platform, release: &'a ReleaseRow) -> Option<Self> {
        let app = release.app.as_str();
        let wants_web = release.manifest.process_types.contains_key("web")
            && p.state.quantity(app, "web").is_ok_and(|n| n > 0);
        let idle = p.routes.backends(app).is_none_or(|b| b.is_empty());
        (wants_web && idle).then(|| {
            p.routes.set_booting(app, true);
            Self { p, app }
        })
    }
}

impl Drop for Booting<'_> {
    fn drop(&mut self) {
        self.p.routes.set_booting(self.app, false);
    }
}

/// Starts the dynos of an already-recorded release and routes to them.
pub(crate) async fn launch(p: &Platform, release: &ReleaseRow) -> Result<(), PlatformError> {
    let _booting = Booting::begin(p, release);
    let (component, quantities) = prepare(p, release).await?;
    let formation = p.dynos.start(release, component, &quantities).await?;
    p.dynos.activate(&release.app, formation);
    sync_routing(p, &release.app);
    Ok(())
}

/// Unpacks the slug, loads its web component and reads the formation.
async fn prepare(
    p: &Platform,
    release: &ReleaseRow,
) -> Result<(Option<LoadedComponent>, BTreeMap<String, Scale>), PlatformError> {
    ensure_unpacked(p, &release.slug).await?;
    let component = p.dynos.load_web(release).await?;
    Ok((component, quantities(p, release)?))
}

/// How many dynos of each of the release's process types should run, and their size
/// (never `release`, which runs once per release).
pub(crate) fn quantities(
    p: &Platform,
    release: &ReleaseRow,
) -> Result<BTreeMap<String, Scale>, PlatformError> {
    let mut out = BTreeMap::new();
    for process_type in release.manifest.process_types.keys() {
        if process_type != "release" {
            out.insert(
                process_type.clone(),
                Scale {
                    quantity: p.state.quantity(&release.app, process_type)?,
                    size: p.state.size(&release.app, process_type)?,
                },
            );
        }
    }
    Ok(out)
}

/// One process type's scale: how many dynos, of which size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Scale {
    pub quantity: u32,
    pub size: String,
}

pub(crate) async fn ensure_unpacked(p: &Platform, slug: &str) -> Result<(), PlatformError> {
    let dir = p.dynos.slug_dir(slug);
    if dir.join("app").is_dir() {
        return Ok(());
    }
    let slugs = p.slugs.clone();
    let slug = slug.to_owned();
    tokio::task::spawn_blocking(move || {
        // A directory without `app/` is a leftover of an interrupted unpack.
        let _ = std::fs::remove_dir_all(&dir);
        slugs.unpack(&slug, &dir)
    })
    .await
    .map_err(|e| PlatformError::Io(std::io::Error::other(e)))??;
    Ok(())
}

/// Takes `draft` live: prepare, release phase, start dynos, `record`, switch, stop the old.
async fn roll_out(
    p: &Platform,
    draft: &ReleaseRow,
    log: &(dyn Fn(String) + Send + Sync),
    record: impl FnOnce() -> Result<ReleaseRow, PlatformError>,
) -> Result<ReleaseRow, PlatformError> {
    let _booting = Booting::begin(p, draft);
    let (component, quantities) = prepare(p, draft).await?;
    oneoff::release_phase(p, draft, log).await?;
    let formation = p.dynos.start(draft, component, &quantities).await?;
    let release = match record() {
        Ok(r) => r,
        Err(e) => {
            formation.abandon();
            return Err(e);
        }
    };
    log_release(p, &release);
    p.dynos.activate(&release.app, formation);
    // Config vars may have changed the router's limits for the app.
    sync_routing(p, &release.app);
    prune_slugs(p, &release.app);
    Ok(release)
}

/// Builds the source in `build_dir` and releases it. Output goes to `log`.
pub(crate) async fn build_and_release(
    p: &Platform,
    app: &str,
    build_dir: &Path,
    commit: Option<String>,
    by: &str,
    log: &BuildLog,
) -> Result<ReleaseRow, PlatformError> {
    let lock = p.app_lock(app);
    let _guard = lock.lock().await;
    let config = p.state.config(app)?;
    let cache_dir = p.config.data_dir.join("cache").join(app);
    let built = p
        .builder
        .build(
            BuildRequest {
                build_dir,
                cache_dir: &cache_dir,
                config: &config,
                commit: commit.clone(),
            },
            log,
        )
        .await?;

    let description = match &commit {
        Some(c) => format!("Deploy {}", &c[..c.len().min(7)]),
        None => "Deploy".to_owned(),
    };
    let draft = ReleaseRow {
        app: app.to_owned(),
        version: p.state.next_version(app)?,
        slug: built.digest.clone(),
        manifest: built.manifest.clone(),
        config,
        description: description.clone(),
        created_by: by.to_owned(),
        created_at: 0,
    };
    let write = |line: String| log.line(line);
    roll_out(p, &draft, &write, || {
        p.state
            .add_release(app, &built.digest, &built.manifest, &description, by)
    })
    .await
}

/// Applies config changes; if the app is deployed, cuts a release and rolls the dynos.
pub(crate) async fn change_config(
    p: &Platform,
    app: &str,
    changes: &BTreeMap<String, Option<String>>,
    by: &str,
) -> Result<Option<ReleaseRow>, PlatformError> {
    let lock = p.app_lock(app);
    let _guard = lock.lock().await;
    let set: Vec<_> = changes
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k.as_str())
        .collect();
    let unset: Vec<_> = changes
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k.as_str())
        .collect();
    let mut parts = Vec::new();
    if !set.is_empty() {
        parts.push(format!("Set {} config vars", set.join(", ")));
    }
    if !unset.is_empty() {
        parts.push(format!("Remove {} config vars", unset.join(", ")));
    }
    let description = parts.join("; ");
    change_config_locked(p, app, changes, &AddonChange::None, &description, by).await
}

/// A config change (with an add-on change recorded in the same transaction) under the app's
/// lock, which the caller holds: the same path `config:set` takes, so add-on changes cut
/// releases and roll dynos exactly as config changes do.
pub(crate) async fn change_config_locked(
    p: &Platform,
    app: &str,
    changes: &BTreeMap<String, Option<String>>,
    addon: &AddonChange,
    description: &str,
    by: &str,
) -> Result<Option<ReleaseRow>, PlatformError> {
    let Some(current) = p.state.current_release(app)? else {
        let changed = p
            .state
            .change_config_with(app, changes, addon, description, by)?;
        // No dynos to roll, but the router's limits (e.g. the boot timeout) apply from now.
        sync_routing(p, app);
        return Ok(changed);
    };
    let mut config = p.state.config(app)?;
    for (k, v) in changes {
        match v {
            Some(v) => config.insert(k.clone(), v.clone()),
            None => config.remove(k),
        };
    }
    let draft = ReleaseRow {
        version: p.state.next_version(app)?,
        config,
        description: description.to_owned(),
        created_by: by.to_owned(),
        ..current
    };
    let release = roll_out(p, &draft, &|line| tracing::info!(app, "{line}"), || {
        p.state
            .change_config_with(app, changes, addon, description, by)?
            .ok_or_else(|| PlatformError::BadRequest("the app has no release".into()))
    })
    .await?;
    Ok(Some(release))
}

/// Rolls back to `target` (default: the release before the current one) by cutting a new
/// release with that release's slug and config vars. Nothing is rebuilt.
pub(crate) async fn rollback(
    p: &Platform,
    app: &str,
    target: Option<u64>,
    by: &str,
) -> Result<ReleaseRow, PlatformError> {
    let lock = p.app_lock(app);
    let _guard = lock.lock().await;
    let releases = p.state.releases(app)?;
    let current = releases
        .first()
        .ok_or_else(|| PlatformError::BadRequest(format!("{app} has no releases to roll back")))?;
    let version = match target {
        Some(v) => v,
        None => current
            .version
            .checked_sub(1)
            .filter(|v| *v > 0)
            .ok_or_else(|| {
                PlatformError::BadRequest(format!(
                    "{app} has only one release; nothing to roll back to"
                ))
            })?,
    };
    let old = releases
        .iter()
        .find(|r| r.version == version)
        .ok_or_else(|| PlatformError::BadRequest(format!("{app} has no release v{version}")))?;
    if !p.slugs.contains(&old.slug) {
        return Err(PlatformError::BadRequest(format!(
            "v{version}'s slug is no longer kept (Skiff keeps the slugs of the last {KEEP_SLUGS} releases); deploy that code again instead"
        )));
    }
    let description = format!("Rollback to v{version}");
    let draft = ReleaseRow {
        version: p.state.next_version(app)?,
        description: description.clone(),
        created_by: by.to_owned(),
        ..old.clone()
    };
    roll_out(p, &draft, &|line| tracing::info!(app, "{line}"), || {
        p.state.add_release_with_config(
            app,
            &old.slug,
            &old.manifest,
            &old.config,
            &description,
            by,
        )
    })
    .await
}

/// Deletes slugs that only releases outside every app's rollback window use.
fn prune_slugs(p: &Platform, app: &str) {
    let result = (|| -> Result<(), PlatformError> {
        let releases = p.state.releases(app)?;
        if releases.len() <= KEEP_SLUGS {
            return Ok(());
        }
        let keep = p.state.slugs_in_use(KEEP_SLUGS)?;
        for old in &releases[KEEP_SLUGS..] {
            if !keep.contains(&old.slug) && p.slugs.contains(&old.slug) {
                std::fs::remove_file(p.slugs.path(&old.slug))?;
                let _ = std::fs::remove_dir_all(p.dynos.slug_dir(&old.slug));
                tracing::info!(app, slug = %old.slug, version = old.version, "pruned a slug outside the rollback window");
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(app, error = %e, "could not prune old slugs");
    }
}
