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
    /// A device, FIFO or other entry kind a slug never holds (the packer writes files,
    /// directories and links only).
    #[error("slug entry {entry:?} is a {kind}, which a slug may not contain")]
    Unsupported {
        /// The entry's path.
        entry: String,
        /// What the header says it is.
        kind: String,
    },
    /// The same path twice: the second would silently replace the first.
    #[error("slug entry {0:?} appears twice")]
    Duplicate(String),
    /// More entries than any app tree has: a flood of empty files or a corrupt archive.
    #[error("slug has more than {0} entries; refusing it")]
    TooManyEntries(u64),
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

/// Entries no slug may exceed: a large `node_modules` has tens of thousands.
const MAX_ENTRIES: u64 = 1 << 20;

/// Symlinks followed while resolving one link, as Linux's own limit.
const MAX_LINK_HOPS: usize = 40;

/// What [`unpack_into_limited`] allows; [`unpack_into`] uses the store's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of file content, summed over entries (sparse files count their full size).
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_UNPACKED,
            max_entries: MAX_ENTRIES,
        }
    }
}

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
    unpack_into_limited(reader, dest, UnpackLimits::default())
}

/// Unpacks a slug archive into `dest` (an existing directory), refusing paths and links that
/// leave it, entry kinds other than files, directories and links, duplicate paths, and
/// archives past `limits`. On an error `dest` may hold part of the slug but nothing outside it
/// was written; the caller removes it.
pub fn unpack_into_limited(
    reader: impl Read,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<SlugManifest, SlugError> {
    // Headers and padding take up to 1 KiB per entry on top of the content: bounding the raw
    // stream too means a lying header cannot make the decoder run on.
    let stream_limit = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(1024))
        .saturating_add(1 << 20);
    let tripped = std::rc::Rc::new(std::cell::Cell::new(false));
    let decoder = Bounded {
        inner: zstd::Decoder::new(reader)?,
        left: stream_limit,
        tripped: tripped.clone(),
    };
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    let result = unpack_entries(&mut archive, dest, limits);
    if tripped.get() {
        return Err(SlugError::Bomb(limits.max_bytes));
    }
    result
}

fn unpack_entries<R: Read>(
    archive: &mut tar::Archive<R>,
    dest: &Path,
    limits: UnpackLimits,
) -> Result<SlugManifest, SlugError> {
    let mut total = 0u64;
    let mut count = 0u64;
    let mut manifest = None;
    let mut seen = std::collections::HashSet::new();
    let mut links = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        count += 1;
        if count > limits.max_entries {
            return Err(SlugError::TooManyEntries(limits.max_entries));
        }
        let path = entry.path()?.into_owned();
        let name = path.display().to_string();
        if !is_inside(&path) {
            return Err(SlugError::Escape(name));
        }
        // A GNU sparse header's size is the file's full size; a pax `size` record replaces
        // the header's. Either may be the larger claim, so both count.
        let size = entry.header().size()?.max(entry.size());
        total = total.saturating_add(size);
        if total > limits.max_bytes {
            return Err(SlugError::Bomb(limits.max_bytes));
        }
        let kind = entry.header().entry_type();
        let is_link = kind.is_symlink() || kind.is_hard_link();
        if !(kind.is_file() || kind.is_dir() || is_link || kind.is_gnu_sparse()) {
            return Err(SlugError::Unsupported {
                entry: name,
                kind: kind_name(kind),
            });
        }
        if !seen.insert(normalized(&path)) {
            return Err(SlugError::Duplicate(name));
        }
        if is_link {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            // A symlink's target is relative to its directory, a hard link's to the root.
            let resolved = if kind.is_symlink() {
                path.parent().unwrap_or(Path::new("")).join(&target)
            } else {
                target.clone()
            };
            // Lexically inside is not enough once earlier links are followed (`a -> .` then
            // `b -> a/../..`): resolve through what is on disk so far.
            if target.as_os_str().is_empty()
                || target.is_absolute()
                || !is_inside(&resolved)
                || !resolves_inside(dest, &resolved)
            {
                return Err(SlugError::Escape(name));
            }
        }
        if normalized(&path) == Path::new("manifest.json") {
            let mut bytes = Vec::new();
            entry.by_ref().take(1 << 20).read_to_end(&mut bytes)?;
            manifest = Some(SlugManifest::from_json(&bytes)?);
            continue;
        }
        if !entry.unpack_in(dest)? {
            return Err(SlugError::Escape(name));
        }
        if is_link {
            links.push(path);
        }
    }
    // A later link can change where an earlier one leads (`b -> a/..` written before
    // `a -> ..`): check every link against the finished tree.
    for link in &links {
        let on_disk = dest.join(link);
        let is_symlink = std::fs::symlink_metadata(&on_disk).is_ok_and(|m| m.is_symlink());
        if !is_symlink {
            continue;
        }
        let target = std::fs::read_link(&on_disk)?;
        let base = link.parent().unwrap_or(Path::new(""));
        if target.is_absolute() || !resolves_inside(dest, &base.join(&target)) {
            return Err(SlugError::Escape(link.display().to_string()));
        }
    }
    manifest.ok_or(SlugError::NoManifest)
}

/// Reads at most `left` bytes from the decompressor, then fails and records that it did.
struct Bounded<R> {
    inner: R,
    left: u64,
    tripped: std::rc::Rc<std::cell::Cell<bool>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One more byte would show whether the stream really goes on; refusing here is
            // simpler and only costs a slug that ends exactly at the limit.
            self.tripped.set(true);
            return Err(io::Error::other("slug unpacks past its size limit"));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The path as a set key: `.` parts and trailing slashes do not make a different entry.
fn normalized(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn kind_name(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "FIFO".into(),
        tar::EntryType::Continuous => "contiguous file".into(),
        tar::EntryType::GNULongName | tar::EntryType::GNULongLink => "GNU long name".into(),
        tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => "pax header".into(),
        other => format!("entry of type {:?}", other.as_byte() as char),
    }
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

/// True when `rel` (relative to `root`) stays under `root` with every symlink already on disk
/// followed, the way the kernel would walk it; parts that do not exist yet are taken lexically.
/// Too many hops (a loop) counts as leaving.
fn resolves_inside(root: &Path, rel: &Path) -> bool {
    enum Part {
        Up,
        Name(std::ffi::OsString),
    }
    fn parts(path: &Path) -> Option<Vec<Part>> {
        let mut out = Vec::new();
        for c in path.components() {
            match c {
                Component::Normal(n) => out.push(Part::Name(n.to_owned())),
                Component::ParentDir => out.push(Part::Up),
                Component::CurDir => {}
                Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        Some(out)
    }
    let Some(mut queue) = parts(rel) else {
        return false;
    };
    queue.reverse();
    let mut here = root.to_path_buf();
    let mut depth = 0usize;
    let mut hops = 0usize;
    while let Some(part) = queue.pop() {
        match part {
            Part::Up => {
                if depth == 0 {
                    return false;
                }
                here.pop();
                depth -= 1;
            }
            Part::Name(name) => {
                here.push(&name);
                let Ok(target) = std::fs::read_link(&here) else {
                    depth += 1;
                    continue;
                };
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return false;
                }
                here.pop();
                let Some(mut more) = parts(&target) else {
                    return false;
                };
                more.reverse();
                queue.extend(more);
            }
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
        } else if kind.is_file() || kind.is_symlink() {
            archive.append_path_with_name(&path, &name)?;
        } else {
            // Sockets and FIFOs left by a build mean nothing in a slug, and unpacking refuses
            // them.
            tracing::warn!(path = %path.display(), "not packing a special file into the slug");
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

    fn unpack_named(name: &str) -> Result<SlugManifest, SlugError> {
        let (_, raw) = crate::fuzzing::corpus()
            .into_iter()
            .find(|(n, _)| *n == name)
            .expect("known archive");
        let bytes = if name.ends_with(".zst") {
            raw
        } else {
            zstd::encode_all(raw.as_slice(), 1).expect("compress")
        };
        let tmp = tempfile::tempdir().expect("tmp");
        let dest = tmp.path().join("dest");
        std::fs::create_dir(&dest).expect("mkdir");
        let result = unpack_into_limited(bytes.as_slice(), &dest, crate::fuzzing::LIMITS);
        let mut top: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["dest"], "{name} wrote beside its destination");
        result
    }

    #[test]
    fn unpacks_valid_slugs_with_inner_links() {
        for name in ["valid.tar.zst", "valid.tar"] {
            let manifest = unpack_named(name).expect(name);
            assert_eq!(manifest.version, SLUG_MANIFEST_VERSION);
        }
    }

    #[test]
    fn refuses_parent_and_absolute_paths() {
        for name in ["traversal.tar", "absolute.tar"] {
            assert!(
                matches!(unpack_named(name), Err(SlugError::Escape(_))),
                "{name}"
            );
        }
    }

    #[test]
    fn refuses_symlinks_that_lead_out() {
        for name in [
            "symlink-out.tar",
            "symlink-absolute.tar",
            "symlink-chain.tar",
            "symlink-later.tar",
            "symlink-then-file.tar",
        ] {
            let result = unpack_named(name);
            assert!(
                matches!(result, Err(SlugError::Escape(_))),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn refuses_hard_links_that_lead_out() {
        for name in ["hardlink-out.tar", "hardlink-through-symlink.tar"] {
            let result = unpack_named(name);
            assert!(
                matches!(result, Err(SlugError::Escape(_))),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn refuses_devices_and_fifos() {
        for name in ["fifo.tar", "device.tar"] {
            let result = unpack_named(name);
            assert!(
                matches!(result, Err(SlugError::Unsupported { .. })),
                "{name}: {result:?}"
            );
        }
    }

    #[test]
    fn refuses_duplicate_entries() {
        for name in ["duplicate.tar", "duplicate-manifest.tar"] {
            let result = unpack_named(name);
            assert!(
                matches!(result, Err(SlugError::Duplicate(_))),
                "{name}: {result:?}"
            );
        }
        assert!(matches!(
            unpack_named("no-manifest.tar"),
            Err(SlugError::NoManifest)
        ));
    }

    #[test]
    fn refuses_bombs_before_writing_them() {
        let bomb = crate::fuzzing::zero_bomb(16 << 20);
        assert!(bomb.len() < 64 << 10, "{} bytes compressed", bomb.len());
        let tmp = tempfile::tempdir().expect("tmp");
        let result = unpack_into_limited(bomb.as_slice(), tmp.path(), crate::fuzzing::LIMITS);
        assert!(matches!(result, Err(SlugError::Bomb(_))), "{result:?}");
        assert!(
            !tmp.path().join("app/zeros").exists(),
            "the bomb's content reached the disk"
        );
        for name in ["bomb.tar.zst", "lying-size.tar"] {
            let result = unpack_named(name);
            assert!(
                matches!(result, Err(SlugError::Bomb(_))),
                "{name}: {result:?}"
            );
        }
        // Too many entries is refused the same way, before the flood lands.
        let names: Vec<String> = (0..=crate::fuzzing::LIMITS.max_entries)
            .map(|i| format!("app/{i}"))
            .collect();
        let entries: Vec<_> = names
            .iter()
            .map(|n| crate::fuzzing::RawEntry::file(n.as_bytes(), b""))
            .collect();
        let raw = crate::fuzzing::slug(&entries);
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(matches!(
            unpack_into_limited(raw.as_slice(), tmp.path(), crate::fuzzing::LIMITS),
            Err(SlugError::TooManyEntries(_))
        ));
    }
}
