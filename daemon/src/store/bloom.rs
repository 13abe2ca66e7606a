//! Per-block Bloom filters of the payload keys that are nearly unique
//! (paths, their directories, socket addresses, and the trigrams of exec
//! command lines): `block_blooms` (migration 10) instead of one
//! `event_blocks` row per distinct key per block.
//!
//! Why: those keys were ~64 % of the block index's rows and ~28 B per event
//! with the index's second B-tree (BENCHMARKS.md, "Forensic filters"); the
//! filters cost ~2 B per event. A false positive only costs a block scan,
//! as a hash collision already did, since every row is re-checked.
//!
//! Each block's filter is split into slices, in two groups (payload keys,
//! command-line trigrams), and a key sets its K bits in one slice of its
//! group only (chosen by its hash), stored as row (slice, block): a
//! lookup reads one slice of every block in the window (10k blocks for 10M
//! events: 2.5 MB) instead of whole filters. An all-zero slice has no row.

use super::BlockCol;

/// A run of slices of one size, holding some columns' keys.
struct Group {
    /// Global index of its first slice (block_blooms.slice).
    first: usize,
    /// Byte offset of its first slice in a whole filter.
    offset: usize,
    /// Bytes per slice.
    bytes: usize,
}

const GROUP_SLICES: usize = 8;

/// Paths, directories, addresses, networks: 8 slices of 250 B (2 kB).
/// 1024 events name ~500-1,500 distinct keys on realistic hosts (a path,
/// its directories, an address): 1-5 % false positives at K = 4; a block
/// of deep unique paths degrades to a scan.
const PAYLOAD: Group = Group {
    first: 0,
    offset: 0,
    bytes: 250,
};

/// The trigrams of exec command lines (`--cmdline`): a filter of their
/// own, so that long command lines cannot crowd out the paths. 8 slices
/// of 256 B (2 kB): ~100 execs of a block name a few hundred to a few
/// thousand distinct trigrams, and a lookup tests every trigram of the
/// text that falls in one slice (see `cmdline_keys`).
const CMDLINE: Group = Group {
    first: GROUP_SLICES,
    offset: GROUP_SLICES * 250,
    bytes: 256,
};

const GROUPS: [Group; 2] = [PAYLOAD, CMDLINE];

/// Slices of a whole filter (block_blooms.slice is below this).
pub(crate) const SLICES: usize = 2 * GROUP_SLICES;
/// Bytes of a block's whole filter.
pub(crate) const BYTES: usize = CMDLINE.offset + GROUP_SLICES * CMDLINE.bytes;
const K: u64 = 4;

/// The payload columns a block filter holds; the others (Port) keep rows.
pub(crate) fn holds(col: BlockCol) -> bool {
    matches!(
        col,
        BlockCol::Path | BlockCol::PathDir | BlockCol::Addr | BlockCol::AddrNet | BlockCol::CmdGram
    )
}

fn group(col: BlockCol) -> &'static Group {
    if col == BlockCol::CmdGram {
        &CMDLINE
    } else {
        &PAYLOAD
    }
}

/// A slice's group and its bytes in a whole filter; None past SLICES.
fn bounds(slice: usize) -> Option<(&'static Group, std::ops::Range<usize>)> {
    let g = GROUPS.iter().rev().find(|g| slice >= g.first)?;
    let i = slice - g.first;
    (i < GROUP_SLICES).then(|| (g, g.offset + i * g.bytes..g.offset + (i + 1) * g.bytes))
}

/// splitmix64's finaliser: the stored key is already a hash, but col must
/// change every bit position.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slice of a key (global), and its K bit positions within the slice
/// (double hashing).
fn place(col: BlockCol, value: i64) -> (usize, impl Iterator<Item = usize>) {
    let g = group(col);
    let h1 = mix(value as u64 ^ (col as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let h2 = mix(h1) | 1;
    let slice = g.first + (h1 >> 56) as usize % GROUP_SLICES;
    let bits = g.bytes as u64 * 8;
    let pos = (0..K).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize);
    (slice, pos)
}

/// The slice a lookup of this key reads.
pub(crate) fn slice_of(col: BlockCol, value: i64) -> usize {
    place(col, value).0
}

/// Add a key to a whole filter (BYTES).
pub(crate) fn insert(filter: &mut [u8], col: BlockCol, value: i64) {
    let (s, pos) = place(col, value);
    let Some((_, range)) = bounds(s) else { return };
    let slice = &mut filter[range];
    for p in pos {
        slice[p / 8] |= 1 << (p % 8);
    }
}

/// Distinct command-line trigrams past which a block's command-line
/// filter is filled instead: 4 bits each into 16,384 leave 99.75 % of
/// them set by then, so every lookup would scan the block anyway.
const GRAMS_SATURATED: usize = 24_576;

/// The command-line trigrams already in the current block's filter, so
/// that each goes in once per block. A 32 KiB command line is 32k
/// trigrams, mostly repeats (the same flags, the same directories): set
/// one by one they were most of the writer's time under a burst of such
/// execs. A bitmap of every possible trigram (2 MiB of address space,
/// allocated at the first command line; only the pages its trigrams land
/// on are touched), cleared word by word for the next block.
#[derive(Default)]
pub(crate) struct Grams {
    seen: Vec<u64>,
    touched: Vec<u32>,
    distinct: usize,
}

impl Grams {
    /// Add trigram `g` to the block's `filter` (BYTES), once.
    pub(crate) fn insert(&mut self, filter: &mut [u8], g: i64) {
        if self.distinct > GRAMS_SATURATED {
            return;
        }
        if self.seen.is_empty() {
            self.seen = vec![0; 1 << 18];
        }
        let (w, bit) = ((g as usize >> 6) & ((1 << 18) - 1), 1u64 << (g & 63));
        let word = &mut self.seen[w];
        if *word & bit != 0 {
            return;
        }
        if *word == 0 {
            self.touched.push(w as u32);
        }
        *word |= bit;
        self.distinct += 1;
        if self.distinct > GRAMS_SATURATED {
            filter[CMDLINE.offset..BYTES].fill(0xff);
        } else {
            insert(filter, BlockCol::CmdGram, g);
        }
    }

    /// A new block: nothing seen.
    pub(crate) fn clear(&mut self) {
        for w in self.touched.drain(..) {
            self.seen[w as usize] = 0;
        }
        self.distinct = 0;
    }
}

/// Whether the block may hold the key, given the key's slice of its filter
/// (false: it certainly does not). A slice of another size (a corrupt row)
/// answers true: scanned, not lost.
pub(crate) fn may_hold(slice: &[u8], col: BlockCol, value: i64) -> bool {
    slice.len() != group(col).bytes
        || place(col, value)
            .1
            .all(|p| slice[p / 8] & (1 << (p % 8)) != 0)
}

/// The non-zero slices of a whole filter, as stored (global index).
pub(crate) fn slices(filter: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    (0..SLICES)
        .filter_map(|s| Some((s, filter.get(bounds(s)?.1)?)))
        .filter(|(_, bits)| bits.iter().any(|&b| b != 0))
}

/// OR a stored slice into a whole filter.
pub(crate) fn merge(filter: &mut [u8], slice: usize, bits: &[u8]) {
    if let Some((g, range)) = bounds(slice) {
        if bits.len() == g.bytes {
            let dst = &mut filter[range];
            dst.iter_mut().zip(bits).for_each(|(a, b)| *a |= b);
        }
    }
}

/// The keys of a command line: its trigrams, 3 bytes in one integer.
pub(crate) fn trigrams(text: &str) -> impl Iterator<Item = i64> + '_ {
    text.as_bytes()
        .windows(3)
        .map(|w| i64::from(w[0]) << 16 | i64::from(w[1]) << 8 | i64::from(w[2]))
}

/// What a `--cmdline` lookup tests: the text's trigrams in the slice that
/// holds the most of them (a block that holds the text holds them all, so
/// testing some is sound; one slice read per block). None for a text
/// shorter than a trigram.
pub(crate) fn cmdline_keys(text: &str) -> Option<Vec<i64>> {
    let mut by_slice: [Vec<i64>; GROUP_SLICES] = Default::default();
    for g in trigrams(text) {
        let v = &mut by_slice[slice_of(BlockCol::CmdGram, g) - CMDLINE.first];
        if !v.contains(&g) {
            v.push(g);
        }
    }
    by_slice
        .into_iter()
        .max_by_key(Vec::len)
        .filter(|v| !v.is_empty())
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
            filter[bounds(s).unwrap().1].to_vec()
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
            GROUP_SLICES,
            "1000 keys fill every payload slice, and only those"
        );
    }

    #[test]
    fn a_command_line_lookup_tests_one_slice_of_its_trigrams() {
        let mut filter = vec![0u8; BYTES];
        let lines: Vec<String> = (0..100)
            .map(|i| format!("/usr/bin/python3 -m job{i} --config=/etc/app/{i}.toml"))
            .collect();
        for l in &lines {
            trigrams(l).for_each(|g| insert(&mut filter, BlockCol::CmdGram, g));
        }
        assert!(
            slices(&filter).all(|(s, _)| s >= GROUP_SLICES),
            "only the command-line group"
        );
        let holds = |text: &str| {
            let keys = cmdline_keys(text).unwrap();
            let s = slice_of(BlockCol::CmdGram, keys[0]);
            assert!(keys.iter().all(|&k| slice_of(BlockCol::CmdGram, k) == s));
            let bits = &filter[bounds(s).unwrap().1];
            keys.iter().all(|&k| may_hold(bits, BlockCol::CmdGram, k))
        };
        // Any piece of a stored line, across argv boundaries.
        assert!(holds("-m job42 --conf"));
        assert!(holds("python3"));
        assert!(lines.iter().all(|l| holds(l)));
        assert!(!holds("base64 -d"));
        assert!(!holds("curl http://x"));
        assert_eq!(cmdline_keys("ab"), None, "shorter than a trigram");
        // Each trigram once.
        assert_eq!(cmdline_keys("aaaaaa").unwrap().len(), 1);
    }

    /// Through Grams a block's filter is the one every trigram would have
    /// made, until it would be all but full: then it is full.
    #[test]
    fn grams_insert_each_trigram_once_and_saturate() {
        let lines: Vec<String> = (0..300)
            .map(|i| format!("cc -I/usr/include/lib{} -O2 -c f{i}.c -o f{i}.o", i % 7))
            .collect();
        let (mut direct, mut once) = (vec![0u8; BYTES], vec![0u8; BYTES]);
        let mut grams = Grams::default();
        for l in &lines {
            trigrams(l).for_each(|g| insert(&mut direct, BlockCol::CmdGram, g));
            trigrams(l).for_each(|g| grams.insert(&mut once, g));
        }
        assert_eq!(once, direct);
        assert!(grams.distinct < 1000, "{} distinct", grams.distinct);
        // A new block starts empty.
        grams.clear();
        assert!(grams.seen.iter().all(|&w| w == 0));
        let mut next = vec![0u8; BYTES];
        grams.insert(&mut next, 0x61_6263);
        assert_eq!(grams.distinct, 1);
        // Hostile: every trigram distinct. Past the limit the group is
        // full and the payload group untouched.
        let mut full = vec![0u8; BYTES];
        grams.clear();
        for g in 0..(GRAMS_SATURATED as i64 + 100) {
            grams.insert(&mut full, g * 641);
        }
        assert!(full[CMDLINE.offset..].iter().all(|&b| b == 0xff));
        assert!(full[..CMDLINE.offset].iter().all(|&b| b == 0));
        let keys = cmdline_keys("any text at all").unwrap();
        let s = slice_of(BlockCol::CmdGram, keys[0]);
        assert!(keys
            .iter()
            .all(|&k| may_hold(&full[bounds(s).unwrap().1], BlockCol::CmdGram, k)));
    }

    /// Filters already stored keep their meaning: the positions are the
    /// ones they were written with, for both groups.
    #[test]
    fn bit_positions_are_the_stored_ones() {
        for col in [BlockCol::Path, BlockCol::CmdGram] {
            let g = group(col);
            let bits = g.bytes as u64 * 8;
            for v in (0..20_000i64).map(|v| v * 104_729 - 7) {
                let h1 = mix(v as u64 ^ (col as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let h2 = mix(h1) | 1;
                let old: Vec<usize> = (0..K)
                    .map(|i| (h1.wrapping_add(i.wrapping_mul(h2)) % bits) as usize)
                    .collect();
                assert_eq!(place(col, v).1.collect::<Vec<_>>(), old);
            }
        }
    }
}
