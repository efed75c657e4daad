//! Slugs: a tar + zstd archive of the built app (`app/...`) and its `manifest.json`, stored
//! once under its sha256. Writing goes to a temporary file that is renamed into place only
//! when complete, so a crash never leaves a half-written slug under a real name.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use skiff_core::SlugManifest;
use skiff_core::manifest::ManifestError;

use crate::pipeline::BuiltSlug;

/// Why a slug could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SlugError {
    /// Over the configured limit.
    #[error(
        "slug is too large: over the {limit_mb} MiB limit (compressed). Remove build artefacts or large assets"
    )]
    TooLarge {
        /// The limit in MiB.
        limit_mb: u64,
    },
    /// Unpacked content larger than any slug may be: a decompression bomb or a corrupt file.
    #[error("slug unpacks to more than {0} bytes; refusing it")]
    Bomb(u64),
    /// An entry that would land outside the slug directory.
    #[error("slug entry {0:?} points outside the app")]
    Escape(String),
    /// No slug with that digest.
    #[error("slug {0} is not stored (it may have been pruned)")]
    Missing(String),
    /// The digest does not match the content.
    #[error("slug {0} is corrupt: its content does not match its digest")]
    Corrupt(String),
    /// The archive has no manifest.
    #[error("slug has no manifest.json")]
    NoManifest,
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The slug store's disk is full; nothing was stored.
    #[error(
        "no space left on the Skiff host to store the slug ({0}); nothing was deployed. Free disk space on the host and push again"
    )]
    NoSpace(io::Error),
    /// Disk errors.
    #[error("slug I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The folder of stored slugs.
#[derive(Debug, Clone)]
pub struct SlugStore {
    dir: PathBuf,
    max_bytes: u64,
}

/// The unpacked size no slug may exceed, whatever its compressed size.
const MAX_UNPACKED: u64 = 4 << 30;

impl SlugStore {
    /// A store in `dir` refusing compressed slugs over `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, max_bytes })
    }

    /// Path of the archive for `digest`.
    pub fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.tar.zst"))
    }

    /// Whether the slug is stored.
    pub fn contains(&self, digest: &str) -> bool {
        is_digest(digest) && self.path(digest).is_file()
    }

    /// Packs `app_dir` and `manifest` into a stored slug. On any error (a full disk included)
    /// the temporary file is removed and nothing is stored.
    pub fn pack(&self, app_dir: &Path, manifest: SlugManifest) -> Result<BuiltSlug, SlugError> {
        self.pack_inner(app_dir, manifest).map_err(|e| match e {
            SlugError::Io(e) if e.kind() == io::ErrorKind::StorageFull => SlugError::NoSpace(e),
            other => other,
        })
    }

    fn pack_inner(
        &self,
        app_dir: &Path,
        mut manifest: SlugManifest,
    ) -> Result<BuiltSlug, SlugError> {
        manifest.unpacked_bytes = tree_size(app_dir)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        let (digest, size) = write_archive(tmp.as_file(), app_dir, &manifest, self.max_bytes)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::FileTooLarge {
                    SlugError::TooLarge {
                        limit_mb: self.max_bytes >> 20,
                    }
                } else {
                    SlugError::Io(e)
                }
            })?;
        tmp.as_file().sync_all()?;
        let dest = self.path(&digest);
        if dest.exists() {
            // Same content, already stored: the temp file is dropped.
            return Ok(BuiltSlug {
                digest,
                size,
                manifest,
            });
        }
        tmp.persist(&dest).map_err(|e| SlugError::Io(e.error))?;
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(BuiltSlug {
            digest,
            size,
            manifest,
        })
    }

    /// Unpacks the slug into `dest` (created; must not exist), verifying its digest and
    /// refusing entries that escape, links that point out, and decompression bombs.
    pub fn unpack(&self, digest: &str, dest: &Path) -> Result<SlugManifest, SlugError> {
        if !self.contains(digest) {
            return Err(SlugError::Missing(digest.to_owned()));
        }
        let path = self.path(digest);
        let mut hasher = Sha256::new();
        let mut file = File::open(&path)?;
        io::copy(&mut file, &mut hasher)?;
        if hex::encode(hasher.finalize()) != digest {
            return Err(SlugError::Corrupt(digest.to_owned()));
        }
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let staging = tempfile::tempdir_in(parent)?;
        let manifest = unpack_into(File::open(&path)?, staging.path())?;
        let staged = staging.keep();
        std::fs::rename(&staged, dest).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&staged);
        })?;
        Ok(manifest)
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Writes the archive to `file`; returns its sha256 (hex) and compressed size.
fn write_archive(
    file: &File,
    app_dir: &Path,
    manifest: &SlugManifest,
    limit: u64,
) -> io::Result<(String, u64)> {
    let counting = CountingHasher {
        inner: BufWriter::new(file.try_clone()?),
        hasher: Sha256::new(),
        written: 0,
        limit,
    };
    let mut archive = tar::Builder::new(zstd::Encoder::new(counting, 3)?);
    archive.follow_symlinks(false);
    archive.mode(tar::HeaderMode::Deterministic);
    let manifest_json = manifest.to_json();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest_json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    archive.append_data(&mut header, "manifest.json", manifest_json.as_slice())?;
    append_tree(&mut archive, app_dir, Path::new("app"))?;
    let mut counting = archive.into_inner()?.finish()?;
    counting.inner.flush()?;
    Ok((hex::encode(counting.hasher.finalize()), counting.written))
}

/// Unpacks a slug archive read from `reader` into `dest`.
pub fn unpack_into(reader: impl Read, dest: &Path) -> Result<SlugManifest, SlugError> {
    let decoder = zstd::Decoder::new(reader)?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    let mut total = 0u64;
    let mut manifest = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.display().to_string();
        if !is_inside(&path) {
            return Err(SlugError::Escape(name));
        }
        total = total.saturating_add(entry.header().size()?);
        if total > MAX_UNPACKED {
            return Err(SlugError::Bomb(MAX_UNPACKED));
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            let base = path.parent().unwrap_or(Path::new(""));
            if target.is_absolute() || !is_inside(&base.join(&target)) {
                return Err(SlugError::Escape(name));
            }
        }
        if path == Path::new("manifest.json") {
            let mut bytes = Vec::new();
            entry.by_ref().take(1 << 20).read_to_end(&mut bytes)?;
            manifest = Some(SlugManifest::from_json(&bytes)?);
            continue;
        }
        if !entry.unpack_in(dest)? {
            return Err(SlugError::Escape(name));
        }
    }
    manifest.ok_or(SlugError::NoManifest)
}

/// True when `path` stays under its root once `..` are resolved lexically.
fn is_inside(path: &Path) -> bool {
    let mut depth: i64 = 0;
    for part in path.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn tree_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if entry.file_name() == ".git" {
            continue;
        }
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Adds `dir` under `prefix`, sorted for reproducible archives, skipping `.git`.
fn append_tree<W: Write>(
    archive: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &Path,
) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name() == ".git" {
            continue;
        }
        let path = entry.path();
        let name = prefix.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            archive.append_dir(&name, &path)?;
            append_tree(archive, &path, &name)?;
        } else {
            archive.append_path_with_name(&path, &name)?;
        }
    }
    Ok(())
}

/// Hashes and counts what the compressor writes, failing once past the size limit.
struct CountingHasher<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for CountingHasher<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "slug size limit",
            ));
        }
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::SLUG_MANIFEST_VERSION;

    fn manifest() -> SlugManifest {
        SlugManifest {
            version: SLUG_MANIFEST_VERSION,
            buildpacks: vec![],
            process_types: Default::default(),
            commit: None,
            unpacked_bytes: 0,
        }
    }

    #[test]
    fn pack_unpack_round_trip_is_content_addressed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let app = tmp.path().join("src");
        std::fs::create_dir_all(app.join("bin")).expect("mkdir");
        std::fs::create_dir_all(app.join(".git")).expect("mkdir");
        std::fs::write(app.join("bin/x.wasm"), b"hello").expect("write");
        std::fs::write(app.join(".git/HEAD"), b"ref").expect("write");
        let store = SlugStore::new(tmp.path().join("slugs"), 1 << 20).expect("store");
        let a = store.pack(&app, manifest()).expect("pack");
        let b = store.pack(&app, manifest()).expect("pack again");
        assert_eq!(a.digest, b.digest, "same tree, same slug");
        assert_eq!(a.manifest.unpacked_bytes, 5);
        let out = tmp.path().join("out");
        store.unpack(&a.digest, &out).expect("unpack");
        assert_eq!(
            std::fs::read(out.join("app/bin/x.wasm")).expect("read"),
            b"hello"
        );
        assert!(!out.join("app/.git").exists());
    }

    #[test]
    fn refuses_oversized_and_corrupt_slugs() {
        let tmp = tempfile::tempdir().expect("tmp");
        let app = tmp.path().join("src");
        std::fs::create_dir_all(&app).expect("mkdir");
        let noise: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(app.join("noise"), noise).expect("write");
        let small = SlugStore::new(tmp.path().join("small"), 10_000).expect("store");
        assert!(matches!(
            small.pack(&app, manifest()),
            Err(SlugError::TooLarge { .. })
        ));
        assert_eq!(
            std::fs::read_dir(tmp.path().join("small"))
                .expect("ls")
                .count(),
            0,
            "no temp left"
        );

        let store = SlugStore::new(tmp.path().join("slugs"), 1 << 30).expect("store");
        let built = store.pack(&app, manifest()).expect("pack");
        std::fs::write(store.path(&built.digest), b"garbage").expect("corrupt");
        assert!(matches!(
            store.unpack(&built.digest, &tmp.path().join("o")),
            Err(SlugError::Corrupt(_))
        ));
    }

    #[test]
    fn refuses_entries_that_escape() {
        let mut raw = Vec::new();
        {
            let enc = zstd::Encoder::new(&mut raw, 1).expect("enc").auto_finish();
            let mut b = tar::Builder::new(enc);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "app/evil", "../../etc/passwd")
                .expect("link");
            b.finish().expect("finish");
        }
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            unpack_into(raw.as_slice(), tmp.path()),
            Err(SlugError::Escape(_))
        ));
        assert!(is_inside(Path::new("app/a/../b")));
        assert!(!is_inside(Path::new("app/../../b")));
        assert!(!is_inside(Path::new("/abs")));
    }
}
