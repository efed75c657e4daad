//! Ahead-of-time compiled components on disk, keyed by slug digest, component path and the
//! engine's compatibility hash, so a wasmtime upgrade or a config change never loads stale code.
//! A slug whose component is byte for byte one compiled before (a push that changed only
//! other files, or a rebuild from the same sources) reuses that compiled code: for apps that
//! carry an interpreter, compiling takes minutes in a debug build.

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
        let tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(tmp.path(), &compiled)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&entry).map_err(|e| RuntimeError::Io(e.error))?;
        let _ = std::fs::remove_file(&same_bytes);
        let _ = std::fs::hard_link(&entry, &same_bytes);
        deserialize(engine, &entry)
    }
}

fn deserialize(engine: &Engine, path: &Path) -> Result<Component, RuntimeError> {
    #[expect(
        unsafe_code,
        reason = "the file was written by this engine's precompile_component into Skiff's own data dir, atomically; wasmtime checks its header and engine compatibility"
    )]
    // SAFETY: see the expect reason above; nothing else writes into the cache folder.
    let component = unsafe { Component::deserialize_file(engine, path) };
    component.map_err(|e| RuntimeError::wasm("loading a precompiled component", e))
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
}
