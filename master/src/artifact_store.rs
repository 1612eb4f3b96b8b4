//! The content-addressed artifact store: model weights, adversarial shards and data shards, each a
//! file named by the sha256 of its bytes under `<state dir>/artifacts/`.
//!
//! Writes are atomic (a temp file in the same directory, fsync, rename, fsync of the directory), so
//! a crash leaves either the whole artifact or nothing, and a name always matches its content. The
//! index of names is kept in memory so that checking a result's references costs no I/O.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ccsrp_proto::artifact_chunks::{is_sha256_hex, sha256_hex};

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("artifact store {path}: {error}")]
    Io { path: String, error: std::io::Error },
    /// The name as given, quoted and cut by `ccsrp_proto::quote::quote`.
    #[error("artifact name {0}: expected 64 lowercase hex digits (a sha256)")]
    BadName(String),
    #[error("artifact {0} is not in the store")]
    Missing(String),
    #[error("artifact {name} on disk has sha256 {actual}: the file is corrupt")]
    Corrupt { name: String, actual: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.display().to_string(),
        error,
    }
}

/// Artifacts on disk, indexed by name.
#[derive(Debug)]
pub struct ArtifactStore {
    dir: PathBuf,
    sizes: Mutex<HashMap<String, u64>>,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store in `dir`, indexing the artifacts already there and
    /// removing temp files a crash left behind.
    pub fn open(dir: &Path) -> Result<ArtifactStore, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut sizes = HashMap::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_sha256_hex(&name) {
                let len = entry.metadata().map_err(io(&entry.path()))?.len();
                sizes.insert(name, len);
            } else if name.starts_with(".tmp-") {
                fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            sizes: Mutex::new(sizes),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the store holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index().contains_key(name)
    }

    /// Size in bytes of `name`, if held.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.index().get(name).copied()
    }

    /// Number of artifacts held.
    pub fn len(&self) -> usize {
        self.index().len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Path of `name` in the store (whether or not it is held); refuses names that are not sha256s,
    /// so a hostile name never escapes the directory.
    pub fn path(&self, name: &str) -> Result<PathBuf, StoreError> {
        if !is_sha256_hex(name) {
            return Err(StoreError::BadName(ccsrp_proto::quote::quote(name)));
        }
        Ok(self.dir.join(name))
    }

    /// Stores `bytes` under their sha256 (atomically; a no-op when already held) and returns the name.
    /// The caller has checked the digest it was promised; the name is computed here regardless.
    pub fn put(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let name = sha256_hex(bytes);
        if self.contains(&name) {
            return Ok(name);
        }
        let path = self.path(&name)?;
        write_atomic(&path, bytes)?;
        self.index().insert(name.clone(), bytes.len() as u64);
        Ok(name)
    }

    /// Copies the file at `source` into the store and returns its name.
    pub fn import(&self, source: &Path) -> Result<String, StoreError> {
        let bytes = fs::read(source).map_err(io(source))?;
        self.put(&bytes)
    }

    /// The bytes of `name`, checked against their name.
    pub fn get(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(name)?;
        if !self.contains(name) {
            return Err(StoreError::Missing(name.to_string()));
        }
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io(&path))?;
        let actual = sha256_hex(&bytes);
        if actual != name {
            return Err(StoreError::Corrupt {
                name: name.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

/// Writes `bytes` to `path` so that readers see either the old state or all of `bytes`: a temp file
/// beside it, fsync, rename over `path`, fsync of the directory (so the rename itself is durable).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per write, so that two writers of the same file (the checkpointer and the end of
    // the job) never share a temporary file; the last rename wins, each file is whole.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}-{}", std::process::id(), file_name));
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_artifact_is_named_by_its_sha256_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let name = store.put(b"weights").unwrap();
        assert_eq!(name, sha256_hex(b"weights"));
        assert_eq!(store.get(&name).unwrap(), b"weights");
        let reopened = ArtifactStore::open(dir.path()).unwrap();
        assert!(reopened.contains(&name));
        assert_eq!(reopened.size(&name), Some(7));
    }

    #[test]
    fn hostile_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.get("../../etc/passwd"),
            Err(StoreError::BadName(_))
        ));
        assert!(matches!(
            store.get(&sha256_hex(b"absent")),
            Err(StoreError::Missing(_))
        ));
    }

    #[test]
    fn corrupted_file_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let name = store.put(b"shard").unwrap();
        fs::write(dir.path().join(&name), b"shard!").unwrap();
        assert!(matches!(store.get(&name), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn leftover_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".tmp-1-abc"), b"half").unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        assert!(!dir.path().join(".tmp-1-abc").exists());
    }
}
