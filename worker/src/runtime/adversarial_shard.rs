//! The byte form of one shard of the shared adversarial set, as stored in the master's artifact
//! store and cached by workers.
//!
//! Layout (little-endian): the 8-byte magic `CCSRPADV`, a u32 format version (1), u32 image count
//! n, u32 channels, u32 height, u32 width, then n u32 labels, then n * C * H * W u8 pixels in CHW
//! order per image (the [`ImageSet`] contract). Images are quantised to u8 by the attack, so the
//! artifact is exact and its sha256 identical whichever worker built it.

use crate::data::ImageSet;

const MAGIC: &[u8; 8] = b"CCSRPADV";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 5 * 4;

/// An artifact that is not a well-formed adversarial shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardFormatError {
    #[error("adversarial shard: {0}")]
    Malformed(String),
}

/// Encodes `images` (labels and pixels; class names are not stored).
pub fn encode(images: &ImageSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + images.labels.len() * 4 + images.pixels.len());
    out.extend_from_slice(MAGIC);
    for v in [
        VERSION,
        images.len() as u32,
        images.channels as u32,
        images.height as u32,
        images.width as u32,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for label in &images.labels {
        out.extend_from_slice(&label.to_le_bytes());
    }
    out.extend_from_slice(&images.pixels);
    out
}

/// Decodes an artifact, checking every size against the bytes present (a hostile header cannot
/// cause a large allocation). `class_names` are attached to the result.
pub fn decode(bytes: &[u8], class_names: &[String]) -> Result<ImageSet, ShardFormatError> {
    let bad = |m: String| ShardFormatError::Malformed(m);
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err(bad("missing the CCSRPADV header".into()));
    }
    let word = |i: usize| {
        let at = 8 + 4 * i;
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
    };
    let version = word(0);
    if version != VERSION {
        return Err(bad(format!("format version {version}, expected {VERSION}")));
    }
    let [n, c, h, w] = [word(1), word(2), word(3), word(4)].map(|v| v as u64);
    let expected = (HEADER_BYTES as u64)
        .checked_add(n.saturating_mul(4))
        .and_then(|b| b.checked_add(n.checked_mul(c)?.checked_mul(h)?.checked_mul(w)?));
    if expected != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "{n} images of {c}x{h}x{w} do not fit the artifact's {} bytes",
            bytes.len()
        )));
    }
    let n = n as usize;
    let labels_end = HEADER_BYTES + 4 * n;
    let labels: Vec<u32> = bytes[HEADER_BYTES..labels_end]
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(bad_label) = labels.iter().find(|&&l| l as usize >= class_names.len()) {
        return Err(bad(format!(
            "label {bad_label} outside the {} classes",
            class_names.len()
        )));
    }
    Ok(ImageSet {
        channels: c as usize,
        height: h as usize,
        width: w as usize,
        pixels: bytes[labels_end..].to_vec(),
        labels,
        class_names: class_names.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> ImageSet {
        ImageSet {
            channels: 1,
            height: 2,
            width: 3,
            pixels: (0..12).collect(),
            labels: vec![1, 0],
            class_names: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn shard_round_trips_exactly() {
        let set = images();
        assert_eq!(decode(&encode(&set), &set.class_names), Ok(set));
    }

    #[test]
    fn truncated_or_inflated_shards_are_refused() {
        let set = images();
        let bytes = encode(&set);
        assert!(decode(&bytes[..bytes.len() - 1], &set.class_names).is_err());
        let mut huge = bytes.clone();
        huge[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge, &set.class_names).is_err());
        assert!(decode(b"not a shard at all!!!!!!!!!!", &set.class_names).is_err());
    }

    #[test]
    fn label_outside_the_classes_is_refused() {
        let set = images();
        assert!(decode(&encode(&set), &set.class_names[..1]).is_err());
    }
}
