//! Chunked transfer of content-addressed artifacts, shared by both ends of `ccsrp.v1.Artifacts`.
//!
//! An artifact travels as [`ArtifactChunk`]s of at most [`CHUNK_BYTES`]: the first names the
//! sha256 and the total size, every chunk carries its offset. [`chunks`] cuts bytes into that
//! form; [`Assembler`] rebuilds them on the other end, refusing anything out of order, larger
//! than announced or than the receiver's limit, and checks the digest before handing bytes out.

use crate::v1::ArtifactChunk;
use sha2::{Digest, Sha256};

/// Bytes per chunk: 1 MiB, a quarter of gRPC's default 4 MiB message limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Lowercase hex sha256 of `bytes`: the artifact's name.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `s` looks like a sha256 name (64 lowercase hex digits); checked before a name is used
/// as a file name or a map key.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The chunks of `bytes`, in order; the first carries `sha256` and the total size. An empty
/// artifact is one empty chunk, so the receiver always learns the header.
pub fn chunks(bytes: &[u8], sha256: &str) -> Vec<ArtifactChunk> {
    let mut out: Vec<ArtifactChunk> = bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, data)| ArtifactChunk {
            sha256: String::new(),
            total_bytes: 0,
            offset: (i * CHUNK_BYTES) as u64,
            data: data.to_vec(),
        })
        .collect();
    if out.is_empty() {
        out.push(ArtifactChunk::default());
    }
    out[0].sha256 = sha256.to_string();
    out[0].total_bytes = bytes.len() as u64;
    out
}

/// Why a chunked transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("first chunk must name the artifact's sha256 as 64 lowercase hex digits, got {0:?}")]
    BadName(String),
    #[error("artifact of {announced} bytes exceeds the limit of {limit} bytes")]
    TooLarge { announced: u64, limit: u64 },
    #[error("chunk of {got} bytes exceeds the {CHUNK_BYTES}-byte chunk size")]
    ChunkTooLarge { got: usize },
    #[error("chunk at offset {got}, expected offset {expected} (chunks must arrive in order)")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("received {got} bytes, the first chunk announced {announced}")]
    SizeMismatch { announced: u64, got: u64 },
    #[error("content has sha256 {actual}, expected {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("no chunk received")]
    Empty,
}

/// Rebuilds one artifact from its chunks, hashing as bytes arrive.
pub struct Assembler {
    limit: u64,
    header: Option<(String, u64)>,
    bytes: Vec<u8>,
    hasher: Sha256,
}

impl Assembler {
    /// An assembler refusing artifacts larger than `limit` bytes.
    pub fn new(limit: u64) -> Assembler {
        Assembler {
            limit,
            header: None,
            bytes: Vec::new(),
            hasher: Sha256::new(),
        }
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: ArtifactChunk) -> Result<(), TransferError> {
        if chunk.data.len() > CHUNK_BYTES {
            return Err(TransferError::ChunkTooLarge {
                got: chunk.data.len(),
            });
        }
        let announced = match &self.header {
            Some((_, total)) => *total,
            None => {
                if !is_sha256_hex(&chunk.sha256) {
                    return Err(TransferError::BadName(chunk.sha256));
                }
                if chunk.total_bytes > self.limit {
                    return Err(TransferError::TooLarge {
                        announced: chunk.total_bytes,
                        limit: self.limit,
                    });
                }
                self.bytes.reserve_exact(chunk.total_bytes as usize);
                self.header = Some((chunk.sha256.clone(), chunk.total_bytes));
                chunk.total_bytes
            }
        };
        let expected = self.bytes.len() as u64;
        if chunk.offset != expected {
            return Err(TransferError::OutOfOrder {
                expected,
                got: chunk.offset,
            });
        }
        let got = expected + chunk.data.len() as u64;
        if got > announced {
            return Err(TransferError::SizeMismatch { announced, got });
        }
        self.hasher.update(&chunk.data);
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The artifact's name and bytes, once every byte arrived and the digest matches.
    pub fn finish(self) -> Result<(String, Vec<u8>), TransferError> {
        let Some((expected, announced)) = self.header else {
            return Err(TransferError::Empty);
        };
        if self.bytes.len() as u64 != announced {
            return Err(TransferError::SizeMismatch {
                announced,
                got: self.bytes.len() as u64,
            });
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != expected {
            return Err(TransferError::DigestMismatch { expected, actual });
        }
        Ok((expected, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(
        chunks: Vec<ArtifactChunk>,
        limit: u64,
    ) -> Result<(String, Vec<u8>), TransferError> {
        let mut a = Assembler::new(limit);
        for c in chunks {
            a.push(c)?;
        }
        a.finish()
    }

    #[test]
    fn multi_chunk_artifact_round_trips() {
        let bytes: Vec<u8> = (0..(2 * CHUNK_BYTES + 17))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sha = sha256_hex(&bytes);
        let cs = chunks(&bytes, &sha);
        assert_eq!(cs.len(), 3);
        assert!(cs.iter().all(|c| c.data.len() <= CHUNK_BYTES));
        let (name, back) = assemble(cs, u64::MAX).unwrap();
        assert_eq!(name, sha);
        assert_eq!(back, bytes);
    }

    #[test]
    fn empty_artifact_is_one_header_chunk() {
        let sha = sha256_hex(&[]);
        let cs = chunks(&[], &sha);
        assert_eq!(cs.len(), 1);
        assert_eq!(assemble(cs, 10).unwrap().1, Vec::<u8>::new());
    }

    #[test]
    fn corrupted_byte_is_a_digest_mismatch() {
        let bytes = vec![1u8; 1000];
        let mut cs = chunks(&bytes, &sha256_hex(&bytes));
        cs[0].data[500] = 2;
        assert!(matches!(
            assemble(cs, u64::MAX),
            Err(TransferError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn artifact_over_the_limit_is_refused_at_the_header() {
        let bytes = vec![0u8; 100];
        let cs = chunks(&bytes, &sha256_hex(&bytes));
        assert_eq!(
            assemble(cs, 99),
            Err(TransferError::TooLarge {
                announced: 100,
                limit: 99
            })
        );
    }

    #[test]
    fn reordered_or_truncated_chunks_are_refused() {
        let bytes = vec![3u8; CHUNK_BYTES + 5];
        let sha = sha256_hex(&bytes);
        let mut cs = chunks(&bytes, &sha);
        cs.swap(0, 1);
        assert!(matches!(
            assemble(cs, u64::MAX),
            Err(TransferError::BadName(_))
        ));
        let mut cs = chunks(&bytes, &sha);
        cs.pop();
        assert!(matches!(
            assemble(cs, u64::MAX),
            Err(TransferError::SizeMismatch { .. })
        ));
        let mut cs = chunks(&bytes, &sha);
        cs[1].offset += 1;
        assert!(matches!(
            assemble(cs, u64::MAX),
            Err(TransferError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn names_must_be_lowercase_sha256_hex() {
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&sha256_hex(b"x").to_uppercase()));
    }
}
