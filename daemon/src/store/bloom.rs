//! Per-block Bloom filters of the payload keys that are nearly unique
//! (paths, their directories, socket addresses): `block_blooms`, one 2 kB
//! row per block of 1024 ids (migration 10), instead of one `event_blocks`
//! row per distinct key per block.
//!
//! Why: those keys were ~64 % of the block index's rows and ~28 B per event
//! with the index's second B-tree (BENCHMARKS.md, "Forensic filters"); a
//! filter costs 2 B per event. A lookup tests every block's filter in the
//! window (10k blocks for 10M events, 20 MB) instead of reading a key's
//! rows; a false positive only costs a block scan, as a hash collision
//! already did, since every row is re-checked.

use super::BlockCol;

/// Bytes per block filter. 1024 events name ~500-1,500 distinct keys on
/// realistic hosts (a path, its directories, an address): 1-5 % false
/// positives at k = 4; a block of deep unique paths degrades to a scan.
/// 2,000 rather than 2,048 so that two rows fit a 4 KiB page.
pub(crate) const BYTES: usize = 2000;
const BITS: usize = BYTES * 8;
const K: u64 = 4;

/// The payload columns a block filter holds; the others (Port) keep rows.
pub(crate) fn holds(col: BlockCol) -> bool {
    matches!(col, BlockCol::Path | BlockCol::PathDir | BlockCol::Addr)
}

/// splitmix64's finaliser: the stored key is already a hash, but col must
/// change every bit position.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The K bit positions of a key (double hashing).
fn positions(col: BlockCol, value: i64) -> impl Iterator<Item = usize> {
    let h1 = mix(value as u64 ^ (col as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let h2 = mix(h1) | 1;
    (0..K).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BITS as u64) as usize)
}

pub(crate) fn insert(bits: &mut [u8], col: BlockCol, value: i64) {
    for p in positions(col, value) {
        bits[p / 8] |= 1 << (p % 8);
    }
}

/// Whether the block may hold the key (false: it certainly does not). A
/// filter of another size (a corrupt row) answers true: scanned, not lost.
pub(crate) fn may_hold(bits: &[u8], col: BlockCol, value: i64) -> bool {
    bits.len() != BYTES || positions(col, value).all(|p| bits[p / 8] & (1 << (p % 8)) != 0)
}

/// OR `other` into `bits` (same size).
pub(crate) fn merge(bits: &mut [u8], other: &[u8]) {
    if other.len() == bits.len() {
        bits.iter_mut().zip(other).for_each(|(a, b)| *a |= b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut bits = vec![0u8; BYTES];
        for v in 0..1000i64 {
            insert(&mut bits, BlockCol::Path, v * 7919);
        }
        assert!((0..1000i64).all(|v| may_hold(&bits, BlockCol::Path, v * 7919)));
        // Another column's key of the same value is another key.
        let fp = (0..10_000i64)
            .filter(|v| may_hold(&bits, BlockCol::Addr, v * 7919))
            .count();
        assert!(fp < 500, "{fp} false positives of 10,000");
        assert!(
            may_hold(&[1, 2, 3], BlockCol::Path, 1),
            "unknown size: scan"
        );
    }
}
