//! The worker's on-disk cache of content-addressed artifacts (models, adversarial shards).
//!
//! An artifact is named by the sha256 of its bytes (lower-case hex), the same name the master's
//! store uses, so a cached file is valid for any job and any master. Every read re-checks the hash:
//! a file damaged on disk is deleted and reported as missing, never handed to the model loader.
//! Writes go to a temporary file in the same directory and are renamed into place, so a worker
//! killed mid-write leaves no half artifact under a valid name.

use std::io::Write;
use std::path::{Path, PathBuf};

use ccsrp_proto::artifact_chunks::{is_sha256_hex, sha256_hex};

/// What can go wrong with the cache directory or an artifact's content.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("artifact name {name:?} is not a sha256 hex digest (64 lower-case hex digits)")]
    BadName { name: String },
    #[error("artifact {expected}: received bytes hash to {got}")]
    HashMismatch { expected: String, got: String },
    #[error("artifact cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks `bytes` hash to `name`.
pub fn verify(name: &str, bytes: &[u8]) -> Result<(), CacheError> {
    let got = sha256_hex(bytes);
    if got == name {
        Ok(())
    } else {
        Err(CacheError::HashMismatch {
            expected: name.to_string(),
            got,
        })
    }
}

/// A directory of artifacts named by their sha256.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// Opens (creating it if needed) the cache at `dir`.
    pub fn open(dir: &Path) -> Result<ArtifactCache, CacheError> {
        std::fs::create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(ArtifactCache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, CacheError> {
        if !is_sha256_hex(name) {
            return Err(CacheError::BadName {
                name: name.to_string(),
            });
        }
        Ok(self.dir.join(name))
    }

    /// The bytes of artifact `name` when cached and intact; `None` when absent. A cached file whose
    /// content no longer hashes to its name is deleted and reported as absent.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let path = self.path_of(name)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                if verify(name, &bytes).is_ok() {
                    Ok(Some(bytes))
                } else {
                    tracing::warn!(artifact = name, path = %path.display(), "cached artifact is damaged: deleting it");
                    let _ = std::fs::remove_file(&path);
                    Ok(None)
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CacheError::Io { path, source }),
        }
    }

    /// Names of every intact-looking artifact held (file names only; contents are checked on read).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| is_sha256_hex(n))
            .collect();
        names.sort();
        names
    }

    /// Stores `bytes` under `name` after checking they hash to it.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<(), CacheError> {
        let path = self.path_of(name)?;
        verify(name, bytes)?;
        if path.exists() {
            return Ok(());
        }
        let io = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir).map_err(io)?;
        tmp.write_all(bytes).map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Stores `bytes` under their own hash and returns it.
    pub fn insert(&self, bytes: &[u8]) -> Result<String, CacheError> {
        let name = sha256_hex(bytes);
        self.put(&name, bytes)?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_artifact_reads_back_under_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let name = cache.insert(b"weights").unwrap();
        assert_eq!(name, sha256_hex(b"weights"));
        assert_eq!(cache.get(&name).unwrap().as_deref(), Some(&b"weights"[..]));
    }

    #[test]
    fn bytes_under_the_wrong_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let wrong = sha256_hex(b"other");
        assert!(matches!(
            cache.put(&wrong, b"weights"),
            Err(CacheError::HashMismatch { .. })
        ));
        assert_eq!(cache.get(&wrong).unwrap(), None);
    }

    #[test]
    fn damaged_cached_file_is_deleted_and_reported_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        let name = cache.insert(b"weights").unwrap();
        std::fs::write(dir.path().join(&name), b"weightz").unwrap();
        assert_eq!(cache.get(&name).unwrap(), None);
        assert!(!dir.path().join(&name).exists());
    }

    #[test]
    fn names_that_could_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        assert!(matches!(
            cache.get("../etc/passwd"),
            Err(CacheError::BadName { .. })
        ));
    }
}
