//! The slug unpacker's property check, shared by the `slug_unpack` fuzz target and the test
//! suite, and the hostile archives its tests and seed corpus start from.
//!
//! Built for tests, and for the fuzz crate with the `fuzzing` feature; never in a release.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::slug::{UnpackLimits, unpack_into_limited};

/// The limits the check unpacks under: small, so a bomb is cheap to find and to refuse.
pub const LIMITS: UnpackLimits = UnpackLimits {
    max_bytes: 1 << 20,
    max_entries: 512,
};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const CANARY: &[u8] = b"outside the slug";

/// Unpacks `data` (a zstd stream, or a bare tar that is compressed first so the fuzzer can
/// work on tar structure) into a fresh directory beside a canary and asserts that nothing
/// outside the destination changed, and that an accepted slug holds only files, directories
/// and links that resolve inside it, within the size limit.
pub fn check_slug_unpack(data: &[u8]) {
    let archive = if data.starts_with(&ZSTD_MAGIC) {
        data.to_vec()
    } else {
        zstd::encode_all(data, 1).expect("compressing in memory")
    };
    let sandbox = tempfile::tempdir().expect("temp dir");
    let dest = sandbox.path().join("dest");
    let outside = sandbox.path().join("outside");
    std::fs::create_dir(&dest).expect("dest");
    std::fs::create_dir(&outside).expect("outside");
    std::fs::write(outside.join("canary"), CANARY).expect("canary");

    let result = unpack_into_limited(archive.as_slice(), &dest, LIMITS);

    let mut top: Vec<_> = std::fs::read_dir(sandbox.path())
        .expect("ls sandbox")
        .map(|e| e.expect("entry").file_name())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["dest", "outside"],
        "something was written beside the slug"
    );
    let beside: Vec<_> = std::fs::read_dir(&outside)
        .expect("ls outside")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, ["canary"], "something was written outside the slug");
    assert_eq!(
        std::fs::read(outside.join("canary")).expect("canary"),
        CANARY,
        "a file outside the slug changed"
    );
    let canary = std::fs::metadata(outside.join("canary")).expect("stat canary");
    assert_eq!(
        canary.nlink(),
        1,
        "a file outside the slug was hard-linked into it"
    );

    if let Ok(manifest) = result {
        assert_eq!(manifest.version, skiff_core::SLUG_MANIFEST_VERSION);
        let root = dest.canonicalize().expect("canonical dest");
        let mut inodes = HashSet::new();
        let mut bytes = 0u64;
        walk(&dest, &mut |path, meta| {
            let kind = meta.file_type();
            if kind.is_symlink() {
                let target = std::fs::read_link(path).expect("read link");
                assert!(!target.is_absolute(), "{} -> {target:?}", path.display());
                if let Ok(real) = path.canonicalize() {
                    assert!(real.starts_with(&root), "{} leads out", path.display());
                }
            } else if kind.is_file() {
                if inodes.insert(meta.ino()) {
                    bytes += meta.len();
                }
            } else {
                assert!(kind.is_dir(), "{} is a special file", path.display());
            }
        });
        assert!(bytes <= LIMITS.max_bytes, "{bytes} bytes unpacked");
    }
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    for entry in std::fs::read_dir(dir).expect("ls") {
        let path = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        visit(&path, &meta);
        if meta.is_dir() {
            walk(&path, visit);
        }
    }
}

/// One entry of a hand-made archive; the path and link name go into the header as raw bytes,
/// so archives the `tar` crate's builder refuses to write (`..`, absolute paths) can be made.
pub struct RawEntry<'a> {
    /// Path bytes, at most 100.
    pub path: &'a [u8],
    /// The header's type flag.
    pub kind: tar::EntryType,
    /// Link target bytes, at most 100.
    pub link: &'a [u8],
    /// Content.
    pub data: &'a [u8],
    /// The size the header claims; `None` for the content's length.
    pub claimed_size: Option<u64>,
}

impl<'a> RawEntry<'a> {
    /// A regular file.
    pub fn file(path: &'a [u8], data: &'a [u8]) -> Self {
        Self {
            path,
            kind: tar::EntryType::Regular,
            link: b"",
            data,
            claimed_size: None,
        }
    }

    /// A link of `kind` (symlink or hard link).
    pub fn link(kind: tar::EntryType, path: &'a [u8], link: &'a [u8]) -> Self {
        Self {
            path,
            kind,
            link,
            data: b"",
            claimed_size: None,
        }
    }

    /// A directory, FIFO, device or other content-less entry.
    pub fn other(kind: tar::EntryType, path: &'a [u8]) -> Self {
        Self {
            path,
            kind,
            link: b"",
            data: b"",
            claimed_size: None,
        }
    }
}

/// A valid manifest, as the builder writes it.
pub fn manifest_json() -> Vec<u8> {
    skiff_core::SlugManifest {
        version: skiff_core::SLUG_MANIFEST_VERSION,
        buildpacks: vec!["static".into()],
        process_types: Default::default(),
        commit: None,
        unpacked_bytes: 5,
    }
    .to_json()
}

/// A bare tar of `entries`, without the end-of-archive blocks when `finish` is false.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_old();
        let old = header.as_old_mut();
        let path_len = e.path.len().min(old.name.len());
        old.name[..path_len].copy_from_slice(&e.path[..path_len]);
        let link_len = e.link.len().min(old.linkname.len());
        old.linkname[..link_len].copy_from_slice(&e.link[..link_len]);
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.claimed_size.unwrap_or(e.data.len() as u64));
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// `raw_tar` compressed as a slug is.
pub fn slug(entries: &[RawEntry<'_>]) -> Vec<u8> {
    zstd::encode_all(raw_tar(entries).as_slice(), 3).expect("compressing in memory")
}

/// A compressed stream of `len` zero bytes after a file header claiming them: a few KiB that
/// unpack to `len`.
pub fn zero_bomb(len: u64) -> Vec<u8> {
    let mut header = tar::Header::new_gnu();
    header.set_path("app/zeros").expect("path");
    header.set_size(len);
    header.set_mode(0o644);
    header.set_cksum();
    let manifest = manifest_json();
    let mut enc = zstd::Encoder::new(Vec::new(), 3).expect("encoder");
    let mut first = raw_tar(&[RawEntry::file(b"manifest.json", &manifest)]);
    first.truncate(first.len() - 1024);
    enc.write_all(&first).expect("write");
    enc.write_all(header.as_bytes()).expect("write");
    let block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        enc.write_all(&block[..n]).expect("write");
        left -= n as u64;
    }
    enc.write_all(&[0u8; 1024]).expect("write");
    enc.finish().expect("finish")
}

/// Named archives for the seed corpus: one valid slug, then one per refusal.
pub fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    use tar::EntryType::{Block, Char, Directory, Fifo, Link, Symlink};
    let m = manifest_json();
    let m = m.as_slice();
    let manifest = || RawEntry::file(b"manifest.json", m);
    vec![
        (
            "valid.tar.zst",
            slug(&[
                manifest(),
                RawEntry::other(Directory, b"app/"),
                RawEntry::other(Directory, b"app/bin/"),
                RawEntry::file(b"app/bin/web.wasm", b"\0asm"),
                RawEntry::link(Symlink, b"app/current", b"bin"),
                RawEntry::link(Link, b"app/bin/again.wasm", b"app/bin/web.wasm"),
            ]),
        ),
        (
            "valid.tar",
            raw_tar(&[
                manifest(),
                RawEntry::file(b"app/index.html", b"hello"),
                RawEntry::link(Symlink, b"app/home.html", b"index.html"),
            ]),
        ),
        (
            "traversal.tar",
            raw_tar(&[manifest(), RawEntry::file(b"app/../../evil", b"x")]),
        ),
        (
            "absolute.tar",
            raw_tar(&[manifest(), RawEntry::file(b"/tmp/evil", b"x")]),
        ),
        (
            "symlink-out.tar",
            raw_tar(&[manifest(), RawEntry::link(Symlink, b"app/out", b"../../..")]),
        ),
        (
            "symlink-absolute.tar",
            raw_tar(&[manifest(), RawEntry::link(Symlink, b"app/etc", b"/etc")]),
        ),
        (
            "symlink-chain.tar",
            raw_tar(&[
                manifest(),
                RawEntry::link(Symlink, b"app/here", b"."),
                RawEntry::link(Symlink, b"app/up", b"here/../.."),
                RawEntry::file(b"app/up/evil", b"x"),
            ]),
        ),
        (
            "symlink-later.tar",
            raw_tar(&[
                manifest(),
                RawEntry::link(Symlink, b"app/up", b"later/../.."),
                RawEntry::link(Symlink, b"app/later", b"."),
            ]),
        ),
        (
            "symlink-then-file.tar",
            raw_tar(&[
                manifest(),
                RawEntry::link(Symlink, b"app/out", b"../../outside"),
                RawEntry::file(b"app/out/evil", b"x"),
            ]),
        ),
        (
            "hardlink-out.tar",
            raw_tar(&[
                manifest(),
                RawEntry::link(Link, b"app/canary", b"../outside/canary"),
            ]),
        ),
        (
            "hardlink-through-symlink.tar",
            raw_tar(&[
                manifest(),
                RawEntry::link(Symlink, b"app/here", b"."),
                RawEntry::link(Link, b"app/canary", b"app/here/../../outside/canary"),
            ]),
        ),
        (
            "fifo.tar",
            raw_tar(&[manifest(), RawEntry::other(Fifo, b"app/pipe")]),
        ),
        (
            "device.tar",
            raw_tar(&[
                manifest(),
                RawEntry::other(Char, b"app/null"),
                RawEntry::other(Block, b"app/disk"),
            ]),
        ),
        (
            "duplicate.tar",
            raw_tar(&[
                manifest(),
                RawEntry::file(b"app/a", b"first"),
                RawEntry::file(b"app/./a", b"second"),
            ]),
        ),
        ("duplicate-manifest.tar", raw_tar(&[manifest(), manifest()])),
        (
            "no-manifest.tar",
            raw_tar(&[RawEntry::file(b"app/a", b"x")]),
        ),
        (
            "lying-size.tar",
            raw_tar(&[
                manifest(),
                RawEntry {
                    claimed_size: Some(LIMITS.max_bytes + 1),
                    ..RawEntry::file(b"app/big", b"tiny")
                },
            ]),
        ),
        ("bomb.tar.zst", zero_bomb(LIMITS.max_bytes + (64 << 10))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_core::fuzzing::{XorShift, mutate, seeds};

    fn corpus_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/slug_unpack")
    }

    #[test]
    fn slug_unpack_corpus_and_mutations() {
        let seeds = seeds(&corpus_dir());
        assert!(seeds.len() >= corpus().len(), "run write_slug_corpus");
        let mut rng = XorShift::new(0x51u64);
        for seed in &seeds {
            check_slug_unpack(seed);
        }
        // Each run touches the disk, so fewer than the pure parsers get.
        for _ in 0..600 {
            let seed = &seeds[rng.below(seeds.len())];
            let input = mutate(seed, &mut rng);
            check_slug_unpack(&input);
        }
    }

    /// Regenerates `fuzz/corpus/slug_unpack/` from [`corpus`].
    #[test]
    #[ignore = "writes the seed corpus; run by hand after changing the hostile archives"]
    fn write_slug_corpus() {
        let dir = corpus_dir();
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, bytes) in corpus() {
            std::fs::write(dir.join(name), bytes).expect("write");
        }
    }
}
