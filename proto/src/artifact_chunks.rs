//! Chunked transfer of content-addressed artifacts, shared by both ends of `ccsrp.v1.Artifacts`.
//!
//! An artifact travels as [`ArtifactChunk`]s of at most [`CHUNK_BYTES`]: the first names the
//! sha256 and the total size, every chunk carries its offset. [`chunks`] cuts bytes into that
//! form; [`Assembler`] rebuilds them on the other end, refusing anything out of order, larger
//! than announced or than the receiver's limit, and checks the digest before handing bytes out.
//! The announced size is never trusted for memory: the buffer grows with the bytes that arrive
//! (at most doubling, never past the announcement), so a header announcing gigabytes followed by
//! one byte costs one byte.

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
    /// The name as sent, quoted and cut by [`crate::quote::quote`].
    #[error("first chunk must name the artifact's sha256 as 64 lowercase hex digits, got {0}")]
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
                    return Err(TransferError::BadName(crate::quote::quote(&chunk.sha256)));
                }
                if chunk.total_bytes > self.limit {
                    return Err(TransferError::TooLarge {
                        announced: chunk.total_bytes,
                        limit: self.limit,
                    });
                }
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
        let needed = self.bytes.len() + chunk.data.len();
        if needed > self.bytes.capacity() {
            // Grow with what arrived: double what is held, at least what this chunk needs, never
            // past the announced size (which `got <= announced` above keeps honest).
            let announced = usize::try_from(announced).unwrap_or(usize::MAX);
            let target = needed.max(self.bytes.len().saturating_mul(2).min(announced));
            self.bytes.reserve_exact(target - self.bytes.len());
        }
        self.bytes.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Bytes of memory the partial artifact holds now (its buffer's capacity).
    pub fn buffered(&self) -> usize {
        self.bytes.capacity()
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
    fn announced_size_is_not_allocated_before_the_bytes_arrive() {
        // A header announcing 4 GiB, then one byte: the buffer holds what arrived, not 4 GiB.
        let mut a = Assembler::new(u64::MAX);
        a.push(ArtifactChunk {
            sha256: sha256_hex(b"x"),
            total_bytes: 4 << 30,
            offset: 0,
            data: vec![7],
        })
        .unwrap();
        assert_eq!(a.received(), 1);
        assert!(
            a.buffered() < CHUNK_BYTES,
            "{} bytes buffered",
            a.buffered()
        );
        assert_eq!(
            a.finish(),
            Err(TransferError::SizeMismatch {
                announced: 4 << 30,
                got: 1
            })
        );
    }

    #[test]
    fn buffer_grows_with_the_data_and_never_past_the_announcement() {
        let bytes: Vec<u8> = (0..(5 * CHUNK_BYTES + 3)).map(|i| i as u8).collect();
        let sha = sha256_hex(&bytes);
        let mut a = Assembler::new(u64::MAX);
        for c in chunks(&bytes, &sha) {
            let after = a.received() as usize + c.data.len();
            a.push(c).unwrap();
            assert!(a.buffered() >= after);
            assert!(
                a.buffered() <= (2 * after).min(bytes.len()).max(after),
                "{} bytes buffered after {after} received",
                a.buffered()
            );
        }
        assert_eq!(a.buffered(), bytes.len());
        assert_eq!(a.finish().unwrap().1, bytes);
    }

    #[test]
    fn more_bytes_than_announced_are_refused_at_the_chunk() {
        let mut a = Assembler::new(u64::MAX);
        let first = ArtifactChunk {
            sha256: sha256_hex(b"ab"),
            total_bytes: 1,
            offset: 0,
            data: b"ab".to_vec(),
        };
        assert_eq!(
            a.push(first),
            Err(TransferError::SizeMismatch {
                announced: 1,
                got: 2
            })
        );
    }

    #[test]
    fn a_huge_bad_name_is_quoted_short() {
        let mut a = Assembler::new(u64::MAX);
        let err = a
            .push(ArtifactChunk {
                sha256: "z".repeat(3 << 20),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(err.len() < 512, "{} bytes: {}", err.len(), &err[..200]);
        assert!(err.contains(&format!("{} bytes", 3 << 20)), "{err}");
    }

    #[test]
    fn names_must_be_lowercase_sha256_hex() {
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&sha256_hex(b"x").to_uppercase()));
    }
}
