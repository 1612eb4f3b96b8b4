//! How a split of `n` samples is cut into `shards` contiguous index ranges. Master and workers both
//! use this one rule, so a shard id names the same samples everywhere.

use std::ops::Range;

/// Samples of shard `s` of `shards` over `n` samples: `s*n/shards .. (s+1)*n/shards`.
/// Sizes differ by at most one; `s >= shards` gives an empty range.
pub fn shard_range(n: usize, shards: usize, s: usize) -> Range<usize> {
    if shards == 0 || s >= shards {
        return n..n;
    }
    let n128 = n as u128;
    let (k, s) = (shards as u128, s as u128);
    ((s * n128 / k) as usize)..(((s + 1) * n128 / k) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_sample_once_with_sizes_within_one() {
        for n in [0, 1, 7, 100, 1001] {
            for shards in 1..9 {
                let ranges: Vec<_> = (0..shards).map(|s| shard_range(n, shards, s)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[shards - 1].end, n);
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
                let sizes: Vec<_> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }
}
