//! Packing and checking of [`Mask`]: the wire form of a keep-mask over one layer's filters.

use crate::v1::Mask;

/// A mask that cannot be used for the layer it is meant for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    #[error("mask covers {got} filters, the layer has {expected}")]
    Length { expected: u32, got: u32 },
    #[error("mask of {filters} filters needs {expected} bytes, got {got}")]
    Bytes {
        filters: u32,
        expected: usize,
        got: usize,
    },
    #[error("mask has bits set past its {filters} filters")]
    Trailing { filters: u32 },
    #[error("mask keeps no filter")]
    Empty,
}

impl Mask {
    /// Packs one bool per filter (true = keep).
    pub fn from_keep(keep: &[bool]) -> Mask {
        let mut bits = vec![0u8; keep.len().div_ceil(8)];
        for (i, _) in keep.iter().enumerate().filter(|(_, &k)| k) {
            bits[i / 8] |= 1 << (i % 8);
        }
        Mask {
            filters: keep.len() as u32,
            bits,
        }
    }

    /// A mask keeping all `filters` filters.
    pub fn all(filters: u32) -> Mask {
        Mask::from_keep(&vec![true; filters as usize])
    }

    /// Checks the mask is well formed for a layer of `filters` filters and keeps at least one.
    pub fn validate(&self, filters: u32) -> Result<(), MaskError> {
        if self.filters != filters {
            return Err(MaskError::Length {
                expected: filters,
                got: self.filters,
            });
        }
        let expected = (filters as usize).div_ceil(8);
        if self.bits.len() != expected {
            return Err(MaskError::Bytes {
                filters,
                expected,
                got: self.bits.len(),
            });
        }
        if !filters.is_multiple_of(8) {
            if let Some(last) = self.bits.last() {
                if last >> (filters % 8) != 0 {
                    return Err(MaskError::Trailing { filters });
                }
            }
        }
        if self.bits.iter().all(|&b| b == 0) {
            return Err(MaskError::Empty);
        }
        Ok(())
    }

    /// Whether filter `i` is kept (false past the end).
    pub fn keeps(&self, i: usize) -> bool {
        i < self.filters as usize && self.bits.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)
    }

    /// One bool per filter.
    pub fn to_keep(&self) -> Vec<bool> {
        (0..self.filters as usize).map(|i| self.keeps(i)).collect()
    }

    /// Indices of the kept filters, ascending.
    pub fn kept_indices(&self) -> Vec<usize> {
        (0..self.filters as usize)
            .filter(|&i| self.keeps(i))
            .collect()
    }

    /// Number of kept filters.
    pub fn kept(&self) -> u32 {
        (0..self.filters as usize)
            .filter(|&i| self.keeps(i))
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_least_significant_bit_first_and_round_trips() {
        let keep = [
            true, false, true, true, false, false, false, false, true, false,
        ];
        let m = Mask::from_keep(&keep);
        assert_eq!(m.bits, vec![0b0000_1101, 0b0000_0001]);
        assert_eq!(m.to_keep(), keep);
        assert_eq!(m.kept_indices(), vec![0, 2, 3, 8]);
        assert_eq!(m.kept(), 4);
        assert!(m.validate(10).is_ok());
    }

    #[test]
    fn malformed_masks_are_rejected_with_the_reason() {
        let m = Mask::from_keep(&[true, false, true]);
        assert_eq!(
            m.validate(4),
            Err(MaskError::Length {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            Mask::from_keep(&[false; 3]).validate(3),
            Err(MaskError::Empty)
        );
        let trailing = Mask {
            filters: 3,
            bits: vec![0b1000_0001],
        };
        assert_eq!(
            trailing.validate(3),
            Err(MaskError::Trailing { filters: 3 })
        );
        let short = Mask {
            filters: 9,
            bits: vec![1],
        };
        assert_eq!(
            short.validate(9),
            Err(MaskError::Bytes {
                filters: 9,
                expected: 2,
                got: 1
            })
        );
    }
}
