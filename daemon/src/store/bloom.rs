//! Per-block Bloom filters of the payload keys that are nearly unique
//! (paths, their directories, socket addresses): `block_blooms` (migration
//! 10) instead of one `event_blocks` row per distinct key per block.
//!
//! Why: those keys were ~64 % of the block index's rows and ~28 B per event
//! with the index's second B-tree (BENCHMARKS.md, "Forensic filters"); the
//! filters cost ~2 B per event. A false positive only costs a block scan,
//! as a hash collision already did, since every row is re-checked.
//!
//! Each block's filter is split into SLICES, and a key sets its K bits in
//! one slice only (chosen by its hash), stored as row (slice, block): a
//! lookup reads one slice of every block in the window (10k blocks for 10M
//! events: 2.5 MB) instead of whole filters. An all-zero slice has no row.

use super::BlockCol;

pub(crate) const SLICES: usize = 8;
/// Bytes per slice; a block's whole filter is SLICES * SLICE_BYTES (2 kB).
/// 1024 events name ~500-1,500 distinct keys on realistic hosts (a path,
/// its directories, an address): 1-5 % false positives at K = 4; a block
/// of deep unique paths degrades to a scan.
pub(crate) const SLICE_BYTES: usize = 250;
pub(crate) const BYTES: usize = SLICES * SLICE_BYTES;
const SLICE_BITS: u64 = SLICE_BYTES as u64 * 8;
const K: u64 = 4;

/// The payload columns a block filter holds; the others (Port) keep rows.
pub(crate) fn holds(col: BlockCol) -> bool {
    matches!(
        col,
        BlockCol::Path | BlockCol::PathDir | BlockCol::Addr | BlockCol::AddrNet
    )
}

/// splitmix64's finaliser: the stored key is already a hash, but col must
/// change every bit position.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slice of a key, and its K bit positions within the slice (double
/// hashing).
fn place(col: BlockCol, value: i64) -> (usize, impl Iterator<Item = usize>) {
    let h1 = mix(value as u64 ^ (col as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let h2 = mix(h1) | 1;
    let slice = (h1 >> 56) as usize % SLICES;
    let bits = (0..K).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % SLICE_BITS) as usize);
    (slice, bits)
}

/// The slice a lookup of this key reads.
pub(crate) fn slice_of(col: BlockCol, value: i64) -> usize {
    place(col, value).0
}

/// Add a key to a whole filter (BYTES).
pub(crate) fn insert(filter: &mut [u8], col: BlockCol, value: i64) {
    let (s, bits) = place(col, value);
    let slice = &mut filter[s * SLICE_BYTES..(s + 1) * SLICE_BYTES];
    for p in bits {
        slice[p / 8] |= 1 << (p % 8);
    }
}

/// Whether the block may hold the key, given the key's slice of its filter
/// (false: it certainly does not). A slice of another size (a corrupt row)
/// answers true: scanned, not lost.
pub(crate) fn may_hold(slice: &[u8], col: BlockCol, value: i64) -> bool {
    slice.len() != SLICE_BYTES
        || place(col, value)
            .1
            .all(|p| slice[p / 8] & (1 << (p % 8)) != 0)
}

/// The non-zero slices of a whole filter, as stored.
pub(crate) fn slices(filter: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    filter
        .chunks(SLICE_BYTES)
        .enumerate()
        .filter(|(_, s)| s.iter().any(|&b| b != 0))
}

/// OR a stored slice into a whole filter.
pub(crate) fn merge(filter: &mut [u8], slice: usize, bits: &[u8]) {
    if slice < SLICES && bits.len() == SLICE_BYTES {
        let dst = &mut filter[slice * SLICE_BYTES..(slice + 1) * SLICE_BYTES];
        dst.iter_mut().zip(bits).for_each(|(a, b)| *a |= b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut filter = vec![0u8; BYTES];
        for v in 0..1000i64 {
            insert(&mut filter, BlockCol::Path, v * 7919);
        }
        let slice = |col, v| {
            let s = slice_of(col, v);
            filter[s * SLICE_BYTES..(s + 1) * SLICE_BYTES].to_vec()
        };
        assert!((0..1000i64).all(|v| may_hold(
            &slice(BlockCol::Path, v * 7919),
            BlockCol::Path,
            v * 7919
        )));
        // Another column's key of the same value is another key.
        let fp = (0..10_000i64)
            .filter(|v| may_hold(&slice(BlockCol::Addr, v * 7919), BlockCol::Addr, v * 7919))
            .count();
        assert!(fp < 500, "{fp} false positives of 10,000");
        assert!(
            may_hold(&[1, 2, 3], BlockCol::Path, 1),
            "unknown size: scan"
        );
        // Stored as slices and read back, the filter is the same.
        let mut back = vec![0u8; BYTES];
        for (s, bits) in slices(&filter) {
            merge(&mut back, s, bits);
        }
        assert_eq!(back, filter);
        assert_eq!(
            slices(&filter).count(),
            SLICES,
            "1000 keys fill every slice"
        );
    }
}
