//! Ahead-of-time compiled components on disk, keyed by slug digest, component path and the
//! engine's compatibility hash, so a wasmtime upgrade or a config change never loads stale code.
//! A slug whose component is byte for byte one compiled before (a push that changed only
//! other files, or a rebuild from the same sources) reuses that compiled code: for apps that
//! carry an interpreter, compiling takes minutes in a debug build.
//!
//! Each file ends with the SHA-256 of the native code before it. wasmtime checks a file's header
//! and engine, not its body, and runs what it maps; a file damaged on disk (a bad sector, a
//! partial copy, a hand edit) is therefore found by its digest and compiled again, never loaded.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::RuntimeError;

/// The folder of `.cwasm` files.
pub(crate) struct PrecompiledCache {
    dir: PathBuf,
    engine_key: String,
}

impl PrecompiledCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn entry(&self, slug: &str, component: &Path) -> PathBuf {
        let mut h = Sha256::new();
        h.update(slug.as_bytes());
        h.update([0]);
        h.update(component.as_os_str().as_encoded_bytes());
        h.update([0]);
        h.update(self.engine_key.as_bytes());
        self.dir
            .join(format!("{}.cwasm", hex::encode(h.finalize())))
    }

    fn content_entry(&self, component: &[u8]) -> PathBuf {
        let mut h = Sha256::new();
        h.update(component);
        h.update([0]);
        h.update(self.engine_key.as_bytes());
        self.dir
            .join(format!("bytes-{}.cwasm", hex::encode(h.finalize())))
    }

    /// Loads the precompiled form of `path`, compiling and storing it when missing or unreadable.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        slug: &str,
        path: &Path,
    ) -> Result<Component, RuntimeError> {
        let entry = self.entry(slug, path);
        if entry.is_file() {
            match deserialize(engine, &entry) {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %entry.display(), error = %e, "precompiled component unusable; compiling again");
                    let _ = std::fs::remove_file(&entry);
                }
            }
        }
        let bytes = std::fs::read(path)?;
        let same_bytes = self.content_entry(&bytes);
        if same_bytes.is_file() {
            match deserialize(engine, &same_bytes) {
                Ok(c) => {
                    // A second name for the same file; without it the next load hashes again.
                    let _ = std::fs::hard_link(&same_bytes, &entry);
                    tracing::info!(component = %path.display(), "reused the compiled code of an identical component");
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(path = %same_bytes.display(), error = %e, "precompiled component unusable; compiling again");
                    let _ = std::fs::remove_file(&same_bytes);
                }
            }
        }
        let started = std::time::Instant::now();
        let compiled = engine
            .precompile_component(&bytes)
            .map_err(|e| RuntimeError::wasm("compiling the component", e))?;
        tracing::info!(
            component = %path.display(),
            wasm_bytes = bytes.len(),
            compiled_bytes = compiled.len(),
            ms = started.elapsed().as_millis() as u64,
            "precompiled component"
        );
        let sealed = seal(compiled);
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(tmp.path(), &sealed)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&entry).map_err(|e| RuntimeError::Io(e.error))?;
        let _ = std::fs::remove_file(&same_bytes);
        let _ = std::fs::hard_link(&entry, &same_bytes);
        // The code is still in memory: no need to read back and hash what was just written.
        load_code(engine, &sealed[..sealed.len() - DIGEST_LEN])
    }
}

/// Length of the digest that ends every cache file.
const DIGEST_LEN: usize = 32;

/// The native code with its digest appended.
fn seal(mut compiled: Vec<u8>) -> Vec<u8> {
    let digest = Sha256::digest(&compiled);
    compiled.extend_from_slice(&digest);
    compiled
}

fn deserialize(engine: &Engine, path: &Path) -> Result<Component, RuntimeError> {
    let bytes = std::fs::read(path)?;
    let body_len = bytes
        .len()
        .checked_sub(DIGEST_LEN)
        .ok_or_else(|| corrupt(path))?;
    let (body, digest) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != digest {
        return Err(corrupt(path));
    }
    load_code(engine, body)
}

fn load_code(engine: &Engine, code: &[u8]) -> Result<Component, RuntimeError> {
    #[expect(
        unsafe_code,
        reason = "the code was made by this engine's precompile_component and is either fresh from it or checked against the digest Skiff wrote beside it in its own data dir; wasmtime checks the header and engine compatibility"
    )]
    // SAFETY: see the expect reason above. Deserialising from memory, not the file, means what
    // was checked is what runs, whatever happens to the file meanwhile.
    let component = unsafe { Component::deserialize(engine, code) };
    component.map_err(|e| RuntimeError::wasm("loading a precompiled component", e))
}

fn corrupt(path: &Path) -> RuntimeError {
    RuntimeError::CorruptCache {
        path: path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// The smallest component: the preamble alone.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn identical_components_in_different_slugs_share_native_code() -> anyhow::Result<()> {
        let engine = Engine::default();
        let dir = tempfile::tempdir()?;
        let cache = PrecompiledCache::new(dir.path().join("precompiled"), &engine)?;
        let (one, two) = (dir.path().join("one.wasm"), dir.path().join("two.wasm"));
        std::fs::write(&one, EMPTY_COMPONENT)?;
        std::fs::write(&two, EMPTY_COMPONENT)?;

        cache.load(&engine, "slug-a", &one)?;
        let shared = cache.content_entry(EMPTY_COMPONENT);
        let compiled = std::fs::metadata(&shared)?.ino();
        // Compiling again would replace the shared file; reusing it gives the second slug's
        // entry the very same file.
        cache.load(&engine, "slug-b", &two)?;
        assert_eq!(std::fs::metadata(&shared)?.ino(), compiled);
        assert_eq!(
            std::fs::metadata(cache.entry("slug-b", &two))?.ino(),
            compiled
        );
        Ok(())
    }

    #[test]
    fn damaged_native_code_is_compiled_again_not_loaded() -> anyhow::Result<()> {
        let engine = Engine::default();
        let dir = tempfile::tempdir()?;
        let cache = PrecompiledCache::new(dir.path().join("precompiled"), &engine)?;
        let wasm = dir.path().join("app.wasm");
        std::fs::write(&wasm, EMPTY_COMPONENT)?;
        cache.load(&engine, "slug", &wasm)?;
        let entry = cache.entry("slug", &wasm);
        let good = std::fs::read(&entry)?;

        // One flipped bit in the code, a truncated file, a file of the wrong size: each is
        // refused by its digest, and the next load writes a sound file in its place.
        let mut flipped = good.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x10;
        for damaged in [flipped, good[..good.len() - 7].to_vec(), vec![0u8; 5]] {
            std::fs::remove_file(cache.content_entry(EMPTY_COMPONENT))?;
            std::fs::write(&entry, &damaged)?;
            assert!(matches!(
                deserialize(&engine, &entry),
                Err(RuntimeError::CorruptCache { .. })
            ));
            cache.load(&engine, "slug", &wasm)?;
            assert_eq!(std::fs::read(&entry)?, good);
        }
        Ok(())
    }
}
