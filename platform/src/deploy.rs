//! Every change that moves an app to a new release goes through here: a push (build, then
//! release), a config change (same slug, new config), and a platform restart (run what was
//! last released). The order is always: prepare and start the new dynos, record the release,
//! switch the routes, stop the old dynos. A failure before the record leaves the app as it was.

use std::collections::BTreeMap;
use std::path::Path;

use skiff_builder::{BuildLog, BuildRequest};
use skiff_runtime::LoadedComponent;

use crate::logs::Source;
use crate::state::ReleaseRow;
use crate::{Platform, PlatformError};

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

/// Brings back the app's last release after a restart.
pub(crate) async fn restore(p: &Platform, app: &str) -> Result<(), PlatformError> {
    skiff_builder::git::init_repo(&skiff_builder::git::repo_path(&p.repos_dir(), app)).await?;
    match p.state.current_release(app)? {
        Some(release) => launch(p, &release).await,
        None => {
            p.dynos.route_without_dynos(app);
            Ok(())
        }
    }
}

/// Makes an already-recorded release the serving one.
pub(crate) async fn launch(p: &Platform, release: &ReleaseRow) -> Result<(), PlatformError> {
    let (component, count) = prepare(p, release).await?;
    let dynos = match component {
        Some(component) if count > 0 => p.dynos.start_web(release, &component, count).await?,
        _ => Vec::new(),
    };
    p.dynos.activate(&release.app, release.version, dynos);
    Ok(())
}

/// Unpacks the slug and loads its web component.
async fn prepare(
    p: &Platform,
    release: &ReleaseRow,
) -> Result<(Option<LoadedComponent>, u32), PlatformError> {
    ensure_unpacked(p, &release.slug).await?;
    let component = p.dynos.load_web(release).await?;
    let count = p.state.quantity(&release.app, "web")?;
    Ok((component, count))
}

async fn ensure_unpacked(p: &Platform, slug: &str) -> Result<(), PlatformError> {
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
    let (component, count) = prepare(p, &draft).await?;
    let dynos = match component {
        Some(component) if count > 0 => p.dynos.start_web(&draft, &component, count).await?,
        _ => Vec::new(),
    };
    let release = match p
        .state
        .add_release(app, &built.digest, &built.manifest, &description, by)
    {
        Ok(r) => r,
        Err(e) => {
            for d in &dynos {
                d.stop();
            }
            return Err(e);
        }
    };
    log_release(p, &release);
    p.dynos.activate(app, release.version, dynos);
    Ok(release)
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
    let release = p.state.change_config(app, changes, &parts.join("; "), by)?;
    if let Some(release) = &release {
        log_release(p, release);
        launch(p, release).await?;
    }
    Ok(release)
}
