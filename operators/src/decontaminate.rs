//! Decontamination: drops records that share an n-gram with a benchmark test item, so the data
//! never teaches a model the evaluation it will be measured on.
//!
//! Text is normalized as dedup does (lowercase, punctuation stripped, whitespace folded;
//! [`crate::normalize`]), then so that the usual variants of a copy agree — dashes split words,
//! split clitics rejoin their word, number words become digits ([`normalize_for_overlap`]) — and
//! split into words. A record overlaps an item when they share `ngram`
//! consecutive words (13 by default, as GPT-3 and lm-evaluation-harness did). An item shorter than
//! that matches only as a whole (its every word, in order); one shorter than `min_item_tokens` is
//! not indexed at all, because a few words ("which of the following is true") occur in ordinary
//! text. A window is keyed by the xxh3 of its normalized words, so a whole short item and a window
//! of the same length have the same key.
//!
//! The benchmark n-grams are partitioned: worker `w` of `p` keeps the keys with `key % p == w`
//! ([`NgramIndex`]), so memory per worker shrinks as workers are added. The files are read once
//! per process ([`Benchmarks`]) and each worker keeps its share. In the stage:
//! 1. At the record's worker (its home) the record is parked; its window keys (every `ngram`-word
//!    window, and every window of each short-item length present) travel, batched by owner, to
//!    the workers owning them.
//! 2. An owner looks each key up and sends the hits home. The index is read-only, so no epoch
//!    needs to be complete for this.
//! 3. Home waits until the epoch is complete on both inputs, then drops each record with a hit
//!    (`benchmark_overlap`, naming the benchmark, the item and the overlapping words; the hit
//!    reported is the first in the text), and passes the rest in arrival order.
//!
//! A key maps to the first item (in load order) that has it, whatever the partitioning, so
//! verdicts and details do not depend on the number of workers.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use xxhash_rust::xxh3::xxh3_64;

use crate::benchmarks::{BenchmarkError, BenchmarkSet, BenchmarkSpec, load_all};
use crate::epoch::EpochStash;
use crate::normalize::{NormalizeConfig, normalize_words_into};
use crate::verdicts::{Epoch, Verdicts};
use webscale_rl_records::{DeadLetter, Document, Origin, QaPair, Stage};

/// Settings of decontamination (`[decontaminate]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecontaminateConfig {
    /// When false, nothing is checked and no benchmark is loaded.
    pub enabled: bool,
    /// Words in a shared window that count as an overlap. Default 13 (GPT-3, lm-eval-harness).
    pub ngram: usize,
    /// Items (fields) with fewer words are not indexed. Default 8: GPT-3's floor for its
    /// per-benchmark n, below which common phrases, not copied items, make the matches.
    pub min_item_tokens: usize,
    /// Also check whole documents before any LLM stage, dropping a contaminated page before
    /// money is spent on it. QA pairs are always checked.
    pub check_documents: bool,
    /// The test sets (a file or a folder each).
    pub benchmarks: Vec<BenchmarkSpec>,
    /// QA pairs only: items are also indexed by these shorter n-grams ("fragments"), so a copy
    /// with a blanked or replaced word is still caught by the rules below. 0 = off.
    pub fragment_ngram: usize,
    /// A pair is dropped when it shares a run of this many consecutive words with one item...
    pub fragment_run_words: usize,
    /// ...or this share of one item's fragments (a copy with words replaced here and there).
    pub fragment_share: f64,
}

impl Default for DecontaminateConfig {
    fn default() -> Self {
        DecontaminateConfig {
            enabled: true,
            ngram: 13,
            min_item_tokens: 8,
            check_documents: true,
            benchmarks: Vec::new(),
            fragment_ngram: 6,
            fragment_run_words: 9,
            fragment_share: 0.3,
        }
    }
}

impl DecontaminateConfig {
    /// Rejects settings the stage cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        if self.ngram == 0 || self.ngram > 1000 {
            return Err(format!(
                "decontaminate.ngram must be in 1..=1000, got {}",
                self.ngram
            ));
        }
        if self.fragment_ngram > self.ngram {
            return Err(format!(
                "decontaminate.fragment_ngram must be at most ngram ({}), got {}",
                self.ngram, self.fragment_ngram
            ));
        }
        if self.fragment_ngram > 0 && self.fragment_run_words < self.fragment_ngram {
            return Err(format!(
                "decontaminate.fragment_run_words must be at least fragment_ngram ({}), got {}",
                self.fragment_ngram, self.fragment_run_words
            ));
        }
        if !(self.fragment_share > 0.0 && self.fragment_share <= 1.0) {
            return Err(format!(
                "decontaminate.fragment_share must be in (0, 1], got {}",
                self.fragment_share
            ));
        }
        if self.min_item_tokens == 0 || self.min_item_tokens > self.ngram {
            return Err(format!(
                "decontaminate.min_item_tokens must be in 1..=ngram ({}), got {}",
                self.ngram, self.min_item_tokens
            ));
        }
        Ok(())
    }
}

/// How n-gram text is normalized: dedup's rules, digits kept (numbers are content here).
const NORMALIZE: NormalizeConfig = NormalizeConfig {
    lowercase: true,
    strip_punctuation: true,
    fold_digits: false,
};

/// Clitics a tokenizer splits off (`Lloyd 's`, `don 't`): joined back onto their word, so
/// `Lloyd's`, `Lloyd’s` and `Lloyd 's` all give `lloyds`.
const CLITICS: [&str; 7] = ["s", "t", "d", "ll", "re", "ve", "m"];

/// The digits of a number word, so `seven apples` and `7 apples` share their n-grams.
fn number_word(w: &str) -> Option<&'static str> {
    Some(match w {
        "zero" => "0",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        "eleven" => "11",
        "twelve" => "12",
        "thirteen" => "13",
        "fourteen" => "14",
        "fifteen" => "15",
        "sixteen" => "16",
        "seventeen" => "17",
        "eighteen" => "18",
        "nineteen" => "19",
        "twenty" => "20",
        "thirty" => "30",
        "forty" => "40",
        "fifty" => "50",
        "sixty" => "60",
        "seventy" => "70",
        "eighty" => "80",
        "ninety" => "90",
        _ => return None,
    })
}

/// Base of the window keys' polynomial hash (odd, so powers of it are invertible mod 2^64). For
/// windows of random word hashes two distinct windows collide as rarely as random 64-bit values;
/// structured ones (a Thue–Morse sequence of two words and its complement) collide from 1,024
/// words on, which is why `ngram` is capped at 1,000.
const BASE: u64 = 0x9e37_79b9_7f4a_7c15;

/// murmur3's 64-bit finalizer over a window's polynomial hash, its length and a family seed.
fn window_key(poly: u64, len: usize, family: u64) -> u64 {
    let mut h = poly ^ family ^ (len as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Seed of the fragment keys' hash family.
const FRAGMENT_SEED: u64 = 0x6672_6167_6d65_6e74;
/// Marks a probed window as a fragment (in its length field).
const FRAGMENT: u16 = 0x8000;

/// A text normalized, with where its words start.
#[derive(Default)]
struct Words {
    norm: String,
    starts: Vec<usize>,
    /// `prefix[i]`: the polynomial hash of words `0..i` (each word's xxh3, base [`BASE`]), so a
    /// window's key costs a multiply and a subtraction instead of hashing its bytes.
    prefix: Vec<u64>,
    /// Scratch for the dash and word passes.
    scratch: String,
    spare_starts: Vec<usize>,
}

impl Words {
    /// Normalizes `text` as dedup does, then makes the common variants of one text agree:
    /// dashes split words, clitics join their word, number words become digits. Both the
    /// benchmark items and the checked records go through here.
    fn fill(&mut self, text: &str) {
        // Byte-level: ASCII '-' or a UTF-8 sequence starting 0xE2 (where the Unicode dashes
        // live) is all that can be a dash; most of the text is copied as it is.
        // Dashes and hyphens split words here, so `well-known`, `well – known` and `well known`
        // agree (dedup's normalization would join the first into `wellknown`). Byte-level:
        // ASCII '-', or U+2010..U+2015 (E2 80 90..95) and U+2212 (E2 88 92).
        let bytes = text.as_bytes();
        let dash_at = |i: usize| -> usize {
            match bytes[i] {
                b'-' => 1,
                0xE2 if matches!(
                    bytes.get(i + 1..i + 3),
                    Some([0x80, 0x90..=0x95] | [0x88, 0x92])
                ) =>
                {
                    3
                }
                _ => 0,
            }
        };
        if let Some(first) = (0..bytes.len()).find(|&i| dash_at(i) > 0) {
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.reserve(text.len());
            let (mut copied, mut i) = (0, first);
            while i < bytes.len() {
                let len = dash_at(i);
                if len == 0 {
                    i += 1;
                    continue;
                }
                // Dashes are whole UTF-8 sequences: the slices between them are valid text.
                scratch.push_str(&text[copied..i]);
                scratch.push(' ');
                i += len;
                copied = i;
            }
            scratch.push_str(&text[copied..]);
            normalize_words_into(&scratch, &NORMALIZE, &mut self.norm, &mut self.starts);
            self.scratch = scratch;
        } else {
            normalize_words_into(text, &NORMALIZE, &mut self.norm, &mut self.starts);
        }
        self.canonicalize();
        self.prefix.clear();
        self.prefix.push(0);
        let mut h = 0u64;
        for i in 0..self.starts.len() {
            let word = self.window(i, 1);
            h = h.wrapping_mul(BASE).wrapping_add(xxh3_64(word.as_bytes()));
            self.prefix.push(h);
        }
    }

    /// The clitic and number-word pass, in place: the text is rebuilt from the first word that
    /// changes (into a reused buffer), and left alone when none does.
    fn canonicalize(&mut self) {
        let n = self.starts.len();
        let end = |starts: &[usize], norm: &str, i: usize| {
            starts.get(i + 1).map_or(norm.len(), |next| next - 1)
        };
        let Some(first) = (0..n).find(|&i| {
            let w = &self.norm[self.starts[i]..end(&self.starts, &self.norm, i)];
            (i > 0 && CLITICS.contains(&w)) || number_word(w).is_some()
        }) else {
            return;
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        // Words before the first change are copied as they are, with their starts.
        let kept = if first == 0 {
            0
        } else {
            self.starts[first] - 1
        };
        out.push_str(&self.norm[..kept]);
        let mut starts = std::mem::take(&mut self.spare_starts);
        starts.clear();
        starts.extend_from_slice(&self.starts[..first]);
        for i in first..n {
            let w = &self.norm[self.starts[i]..end(&self.starts, &self.norm, i)];
            if i > 0 && CLITICS.contains(&w) {
                out.push_str(w);
                continue;
            }
            if !out.is_empty() {
                out.push(' ');
            }
            starts.push(out.len());
            out.push_str(number_word(w).unwrap_or(w));
        }
        self.scratch = std::mem::replace(&mut self.norm, out);
        self.spare_starts = std::mem::replace(&mut self.starts, starts);
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Starts of the windows of `len` words.
    fn positions(&self, len: usize) -> std::ops::Range<usize> {
        0..(self.len() + 1).saturating_sub(len)
    }

    /// The normalized text of `len` words from word `pos`.
    fn window(&self, pos: usize, len: usize) -> &str {
        let last = pos + len - 1;
        let end = self
            .starts
            .get(last + 1)
            .map_or(self.norm.len(), |next| next - 1);
        &self.norm[self.starts[pos]..end]
    }

    /// The polynomial hash of `len` words from word `pos` (`BASE^len` is `pow`).
    fn poly(&self, pos: usize, len: usize, pow: u64) -> u64 {
        self.prefix[pos + len].wrapping_sub(self.prefix[pos].wrapping_mul(pow))
    }

    /// A window's key: a function of its words alone (so a whole short item and a window of the
    /// same words agree), mixed so that its bits spread over buckets and owners.
    fn key(&self, pos: usize, len: usize) -> u64 {
        window_key(self.poly(pos, len, BASE.wrapping_pow(len as u32)), len, 0)
    }

    /// A fragment's key: another hash family, so fragments never answer a window lookup.
    fn fragment_key(&self, pos: usize, len: usize) -> u64 {
        window_key(
            self.poly(pos, len, BASE.wrapping_pow(len as u32)),
            len,
            FRAGMENT_SEED,
        )
    }

    /// Every window key of `len` words, in text order.
    fn keys(&self, len: usize, family: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let pow = BASE.wrapping_pow(len as u32);
        self.positions(len)
            .map(move |pos| (pos, window_key(self.poly(pos, len, pow), len, family)))
    }
}

/// A text as the overlap check sees it: dedup's normalization, then dashes as spaces, clitics
/// joined to their word and number words as digits (`"Wendi's twenty-one hens"` →
/// `"wendis 20 1 hens"`).
///
/// ```
/// use webscale_rl_operators::decontaminate::normalize_for_overlap;
/// assert_eq!(normalize_for_overlap("Lloyd’s well-known SEVEN"), "lloyds well known 7");
/// assert_eq!(normalize_for_overlap("Lloyd 's well – known 7"), "lloyds well known 7");
/// ```
pub fn normalize_for_overlap(text: &str) -> String {
    let mut w = Words::default();
    w.fill(text);
    w.norm
}

/// Benchmark names and item ids, shared by a process's workers.
#[derive(Debug, Default)]
pub struct Catalog {
    names: Vec<String>,
    /// The global number of each benchmark's first item.
    starts: Vec<u32>,
    /// Item ids back to back; `id_ends[i]` is where item i's ends.
    ids: String,
    id_ends: Vec<u32>,
    /// Fragments indexed per item (for the share rule).
    fragments: Vec<u32>,
}

impl Catalog {
    /// (benchmark name, item id) of a global item number.
    pub fn item(&self, item: u32) -> (&str, &str) {
        let set = self.starts.partition_point(|&s| s <= item) - 1;
        let i = item as usize;
        let start = if i == 0 {
            0
        } else {
            self.id_ends[i - 1] as usize
        };
        (&self.names[set], &self.ids[start..self.id_ends[i] as usize])
    }

    /// Items in all benchmarks.
    pub fn len(&self) -> usize {
        self.id_ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id_ends.is_empty()
    }

    /// Benchmark names, in load order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.names.iter().map(|n| n.capacity()).sum::<usize>()
            + self.names.capacity() * size_of::<String>()
            + self.starts.capacity() * 4
            + self.ids.capacity()
            + self.id_ends.capacity() * 4
    }
}

/// What went into the benchmark index.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BenchmarkStats {
    pub benchmarks: usize,
    pub items: usize,
    /// Indexed fields with text.
    pub segments: usize,
    /// Segments with at least `ngram` words, indexed by their n-grams.
    pub long_segments: usize,
    /// Segments of `min_item_tokens..ngram` words, indexed whole.
    pub whole_segments: usize,
    /// Segments under `min_item_tokens` words, not indexed.
    pub skipped_segments: usize,
    /// Keys before merging repeats.
    pub keys_total: usize,
    /// Distinct keys: the entries of all partitions together.
    pub keys_distinct: usize,
    /// Of the keys before merging, fragment keys (QA pairs only).
    pub fragment_keys: usize,
}

/// The benchmark sets of a process, hashed once: every key with the first item that has it.
/// Build each worker's [`NgramIndex`] from it, then drop it.
pub struct Benchmarks {
    catalog: Arc<Catalog>,
    ngram: usize,
    fragments: FragmentRule,
    /// The short items by their first words: where a record's window can be one.
    short: Arc<ShortItems>,
    /// (key, global item), sorted by key, one entry per key.
    entries: Vec<(u64, u32)>,
    /// The fragment keys likewise, kept apart: the document stage never probes them, and its
    /// table stays as small (and as fast) as without them.
    fragment_entries: Vec<(u64, u32)>,
    stats: BenchmarkStats,
}

impl Benchmarks {
    /// Reads the configured files and hashes their items.
    pub fn load(cfg: &DecontaminateConfig) -> Result<Benchmarks, BenchmarkError> {
        let sets = load_all(&cfg.benchmarks)?;
        Ok(Benchmarks::from_sets(&sets, cfg))
    }

    /// Hashes already loaded sets; item numbers follow the order of `sets`.
    pub fn from_sets(sets: &[BenchmarkSet], cfg: &DecontaminateConfig) -> Benchmarks {
        if let Err(e) = cfg.validate() {
            panic!("{e}");
        }
        let n = cfg.ngram;
        let mut catalog = Catalog::default();
        let mut stats = BenchmarkStats {
            benchmarks: sets.len(),
            ..BenchmarkStats::default()
        };
        let mut entries: Vec<(u64, u32)> = Vec::new();
        let mut fragment_entries: Vec<(u64, u32)> = Vec::new();
        let mut short_prefixes: Vec<(u64, u16)> = Vec::new();
        let mut words = Words::default();
        for set in sets {
            catalog.names.push(set.name.clone());
            catalog.starts.push(catalog.id_ends.len() as u32);
            for item in &set.items {
                let global = catalog.id_ends.len() as u32;
                catalog.ids.push_str(&item.id);
                catalog.id_ends.push(catalog.ids.len() as u32);
                catalog.fragments.push(0);
                for segment in &item.segments {
                    words.fill(segment);
                    stats.segments += 1;
                    let len = words.len();
                    let f = cfg.fragment_ngram;
                    if f > 0 && len >= cfg.min_item_tokens.max(f) {
                        for pos in words.positions(f) {
                            fragment_entries.push((words.fragment_key(pos, f), global));
                            catalog.fragments[global as usize] += 1;
                            stats.fragment_keys += 1;
                        }
                    }
                    if len >= n {
                        stats.long_segments += 1;
                        for pos in words.positions(n) {
                            entries.push((words.key(pos, n), global));
                        }
                    } else if len >= cfg.min_item_tokens {
                        stats.whole_segments += 1;
                        short_prefixes.push((words.key(0, cfg.min_item_tokens), len as u16));
                        entries.push((words.key(0, len), global));
                    } else {
                        stats.skipped_segments += 1;
                    }
                }
            }
        }
        stats.items = catalog.id_ends.len();
        stats.keys_total = entries.len();
        // Sorting by (key, item) and keeping each key's first entry keeps its lowest item.
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        entries.shrink_to_fit();
        stats.keys_distinct = entries.len();
        fragment_entries.sort_unstable();
        fragment_entries.dedup_by_key(|e| e.0);
        fragment_entries.shrink_to_fit();
        catalog.ids.shrink_to_fit();
        Benchmarks {
            catalog: Arc::new(catalog),
            ngram: n,
            fragments: FragmentRule {
                ngram: cfg.fragment_ngram,
                run_words: cfg.fragment_run_words,
                share: cfg.fragment_share,
            },
            short: Arc::new(ShortItems::new(cfg.min_item_tokens, short_prefixes)),
            entries,
            fragment_entries,
            stats,
        }
    }

    pub fn stats(&self) -> &BenchmarkStats {
        &self.stats
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Heap bytes of the whole hashed set (transient: what one process holds until its workers
    /// have built their indexes).
    pub fn heap_bytes(&self) -> usize {
        (self.entries.capacity() + self.fragment_entries.capacity()) * size_of::<(u64, u32)>()
            + self.catalog.heap_bytes()
    }
}

/// Which worker owns a key.
fn owner_of(key: u64, peers: usize) -> usize {
    (key % peers as u64) as usize
}

/// One worker's share of the benchmark keys: sorted keys and their items in two arrays (12 bytes
/// an entry), with a directory on the keys' top bits so a lookup searches a handful of entries,
/// behind a filter that turns most absent keys away (about 15 bytes an entry in all).
#[derive(Debug)]
struct Table {
    keys: Vec<u64>,
    items: Vec<u32>,
    /// `dir[b]..dir[b + 1]`: the entries whose top `bits` bits are `b`.
    dir: Vec<u32>,
    bits: u32,
    /// A blocked Bloom filter over the keys, a byte an entry: two bits in one 64-bit word per
    /// key. Almost every window of a record is in no benchmark; the filter answers those from a
    /// few MB that stay in cache (about 5 % pass it by chance) instead of two reads into the
    /// arrays.
    filter: Vec<u64>,
}

impl Table {
    fn new(keys: Vec<u64>, items: Vec<u32>) -> Table {
        // About two entries a bucket: the directory adds 2 bytes an entry.
        let bits = (keys.len() / 2).max(1).ilog2().min(28);
        let buckets = 1usize << bits;
        let mut dir = Vec::with_capacity(buckets + 1);
        let mut at = 0;
        for b in 0..buckets {
            while at < keys.len() && Self::bucket(keys[at], bits) < b {
                at += 1;
            }
            dir.push(at as u32);
        }
        dir.push(keys.len() as u32);
        let mut filter = vec![0u64; (keys.len() / 8).max(1).next_power_of_two()];
        for &key in &keys {
            let (word, mask) = Self::filter_bits(key, filter.len());
            filter[word] |= mask;
        }
        Table {
            keys,
            items,
            dir,
            bits,
            filter,
        }
    }

    /// A key's filter word and its two bits there, from bits no other rule fixes: `owner_of`
    /// takes `key % workers`, which with a power-of-two worker count fixes a worker's keys' low
    /// bits (a filter word from those would leave most words unused), and the directory uses the
    /// top ones. Keys are well mixed, so these bits are independent.
    fn filter_bits(key: u64, words: usize) -> (usize, u64) {
        let word = (key >> 8) as usize & (words - 1);
        (word, 1 << ((key >> 40) & 63) | 1 << ((key >> 46) & 63))
    }

    fn bucket(key: u64, bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            (key >> (64 - bits)) as usize
        }
    }

    fn get(&self, key: u64) -> Option<u32> {
        let (word, mask) = Self::filter_bits(key, self.filter.len());
        if self.filter[word] & mask != mask {
            return None;
        }
        let b = Self::bucket(key, self.bits);
        let (lo, hi) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        self.keys[lo..hi]
            .iter()
            .position(|&k| k == key)
            .map(|i| self.items[lo + i])
    }

    fn heap_bytes(&self) -> usize {
        self.keys.capacity() * 8
            + self.items.capacity() * 4
            + self.dir.capacity() * 4
            + self.filter.capacity() * 8
    }
}

/// The short items (fewer words than `ngram`, matched only whole) by the key of their first
/// `prefix` words (`min_item_tokens`, which every short item has), with the lengths of the items
/// that start so. A record's window of a short length can only be such an item if its first
/// words are such a prefix; so a record probes a short length only where its prefix is in this
/// table, not at every word for every short length present. Shared by a process's workers.
#[derive(Debug)]
struct ShortItems {
    prefix: usize,
    /// Prefix key -> index into `lengths`.
    table: Table,
    lengths: Vec<Box<[u16]>>,
}

impl ShortItems {
    fn new(prefix: usize, mut entries: Vec<(u64, u16)>) -> ShortItems {
        entries.sort_unstable();
        entries.dedup();
        let (mut keys, mut groups, mut lengths) = (Vec::new(), Vec::new(), Vec::new());
        for group in entries.chunk_by(|a, b| a.0 == b.0) {
            keys.push(group[0].0);
            groups.push(lengths.len() as u32);
            lengths.push(group.iter().map(|e| e.1).collect::<Box<[u16]>>());
        }
        ShortItems {
            prefix,
            table: Table::new(keys, groups),
            lengths,
        }
    }
}

/// Memory of one worker's index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IndexStats {
    pub worker: usize,
    pub peers: usize,
    /// Keys this worker owns.
    pub entries: usize,
    /// Heap bytes of this worker's partition.
    pub index_bytes: usize,
    /// Heap bytes of the names and ids, shared by the workers of a process.
    pub catalog_bytes: usize,
}

/// A worker's partition of the benchmark keys, with what the stage needs to probe it. Cloning is
/// cheap (the partition is shared), so one index serves the document and the QA-pair stages.
#[derive(Clone, Debug)]
pub struct NgramIndex {
    worker: usize,
    peers: usize,
    ngram: usize,
    fragments: FragmentRule,
    short: Arc<ShortItems>,
    /// Keys of all partitions: with none, every worker skips the stage alike.
    total_keys: usize,
    table: Arc<Table>,
    /// This worker's share of the fragment keys (QA pairs only).
    fragment_table: Arc<Table>,
    catalog: Arc<Catalog>,
}

impl NgramIndex {
    /// Worker `worker` of `peers`'s share of `benchmarks`.
    pub fn build(benchmarks: &Benchmarks, worker: usize, peers: usize) -> NgramIndex {
        assert!(worker < peers, "worker {worker} of {peers}");
        let share = |entries: &[(u64, u32)]| {
            let owned = entries
                .iter()
                .filter(|(k, _)| owner_of(*k, peers) == worker);
            let (mut keys, mut items): (Vec<u64>, Vec<u32>) = owned.copied().unzip();
            // The filter's size is unknown up front: without this a quarter of the arrays is
            // slack.
            keys.shrink_to_fit();
            items.shrink_to_fit();
            Table::new(keys, items)
        };
        NgramIndex {
            worker,
            peers,
            ngram: benchmarks.ngram,
            fragments: benchmarks.fragments,
            short: benchmarks.short.clone(),
            total_keys: benchmarks.entries.len(),
            table: Arc::new(share(&benchmarks.entries)),
            fragment_table: Arc::new(share(&benchmarks.fragment_entries)),
            catalog: benchmarks.catalog.clone(),
        }
    }

    /// Every window of `words` that can be an indexed key, as (first word, words, key): each
    /// `ngram`-word window, and each window of a short item's length that starts with a short
    /// item's first words.
    fn windows(&self, words: &Words, mut each: impl FnMut(usize, usize, u64)) {
        for (pos, key) in words.keys(self.ngram, 0) {
            each(pos, self.ngram, key);
        }
        if self.short.lengths.is_empty() {
            return;
        }
        for (pos, prefix) in words.keys(self.short.prefix, 0) {
            if let Some(group) = self.short.table.get(prefix) {
                for &len in self.short.lengths[group as usize].iter() {
                    let len = len as usize;
                    if pos + len <= words.len() {
                        each(pos, len, words.key(pos, len));
                    }
                }
            }
        }
    }

    /// The first item whose key this is, if this worker owns it.
    pub fn lookup(&self, key: u64) -> Option<u32> {
        self.table.get(key)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn stats(&self) -> IndexStats {
        IndexStats {
            worker: self.worker,
            peers: self.peers,
            entries: self.table.keys.len() + self.fragment_table.keys.len(),
            index_bytes: self.table.heap_bytes() + self.fragment_table.heap_bytes(),
            catalog_bytes: self.catalog.heap_bytes(),
        }
    }
}

/// The fragment rule of QA pairs ([`DecontaminateConfig::fragment_ngram`]).
#[derive(Clone, Copy, Debug, PartialEq)]
struct FragmentRule {
    ngram: usize,
    run_words: usize,
    share: f64,
}

impl FragmentRule {
    /// The item a record's fragment hits (`(item, position)`, any order) make it a copy of, if
    /// any: the longest run of consecutive matching fragments of one item covering at least
    /// `run_words` words, or at least `share` of one item's fragments. Returns (item, first word
    /// of the run, words in the run); ties go to the longer run, then the lower item.
    fn judge(&self, hits: &mut [(u32, u32)], counts: &[u32]) -> Option<(u32, u32, usize)> {
        hits.sort_unstable();
        let mut best: Option<(usize, std::cmp::Reverse<u32>, u32)> = None;
        for group in hits.chunk_by(|a, b| a.0 == b.0) {
            let item = group[0].0;
            let (mut run_start, mut run_len) = (group[0].1, 0usize);
            let (mut best_start, mut best_len, mut distinct) = (group[0].1, 0usize, 0usize);
            let mut prev: Option<u32> = None;
            for &(_, pos) in group {
                match prev {
                    Some(p) if p == pos => continue,
                    Some(p) if p + 1 == pos => run_len += 1,
                    _ => {
                        run_start = pos;
                        run_len = 1;
                    }
                }
                distinct += 1;
                prev = Some(pos);
                if run_len > best_len {
                    (best_start, best_len) = (run_start, run_len);
                }
            }
            let run_words = best_len + self.ngram - 1;
            let total = counts.get(item as usize).copied().unwrap_or(0).max(1) as f64;
            if run_words >= self.run_words || distinct as f64 / total >= self.share {
                let candidate = (run_words, std::cmp::Reverse(item), best_start);
                if best.is_none_or(|b| candidate > b) {
                    best = Some(candidate);
                }
            }
        }
        best.map(|(words, item, start)| (item.0, start, words))
    }
}

/// A record's overlap with a benchmark item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub benchmark: String,
    pub item: String,
    /// The shared words, normalized.
    pub span: String,
    /// Words in the span.
    pub words: usize,
    /// The span is a whole item shorter than `ngram`.
    pub whole_item: bool,
}

impl Overlap {
    /// The dead-letter detail: `benchmark=gsm8k item=17 words=13 whole_item=false span="..."`.
    pub fn detail(&self) -> String {
        format!(
            "benchmark={} item={} words={} whole_item={} span=\"{}\"",
            self.benchmark, self.item, self.words, self.whole_item, self.span
        )
    }
}

/// Finds the first overlap of `text` with the benchmarks by probing every window against one
/// index, which must hold every key (built for 1 peer). The reference the stage must agree with,
/// and a check outside a dataflow.
pub fn find_overlap(text: &str, index: &NgramIndex) -> Option<Overlap> {
    assert_eq!(index.peers, 1, "find_overlap needs the whole index");
    let mut words = Words::default();
    words.fill(text);
    let mut best: Option<(u32, std::cmp::Reverse<u16>, u32)> = None;
    index.windows(&words, |pos, len, key| {
        if let Some(item) = index.lookup(key) {
            let hit = (pos as u32, std::cmp::Reverse(len as u16), item);
            if best.is_none_or(|b| hit < b) {
                best = Some(hit);
            }
        }
    });
    best.map(|(pos, len, item)| overlap(text, pos, len.0, item, index))
}

/// The overlap a hit names, its span cut again from the record's text.
fn overlap(text: &str, pos: u32, len: u16, item: u32, index: &NgramIndex) -> Overlap {
    let mut words = Words::default();
    words.fill(text);
    let (pos, len) = (pos as usize, len as usize);
    let span = words.window(pos, len).to_string();
    let (benchmark, id) = index.catalog.item(item);
    Overlap {
        benchmark: benchmark.to_string(),
        item: id.to_string(),
        span,
        words: len,
        whole_item: len < index.ngram,
    }
}

/// A record's windows owned by one worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Probe {
    owner: u32,
    home: u32,
    local: u64,
    /// (key, first word, words).
    windows: Vec<(u64, u32, u16)>,
}

/// A window of a record matched an item.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hit {
    home: u32,
    local: u64,
    pos: u32,
    len: u16,
    item: u32,
}

impl Hit {
    /// Hits are ranked by position in the text, then longer first, then lower item.
    fn rank(&self) -> (u32, std::cmp::Reverse<u16>, u32) {
        (self.pos, std::cmp::Reverse(self.len), self.item)
    }
}

/// Epoch state at a record's home.
struct HomeEpoch<R> {
    records: Vec<(u64, R)>,
    hits: HashMap<u64, Hit>,
    /// Fragment hits per record: (item, position).
    fragments: HashMap<u64, Vec<(u32, u32)>>,
}

impl<R> Default for HomeEpoch<R> {
    fn default() -> Self {
        HomeEpoch {
            records: Vec::new(),
            hits: HashMap::new(),
            fragments: HashMap::new(),
        }
    }
}

/// Benchmark decontamination: drops records whose text overlaps an item of a benchmark test set
/// (`benchmark_overlap` dead letters, naming the set, the item and the overlapping words).
/// `index` is this worker's share ([`NgramIndex::build`] with the scope's index and peers).
pub trait Decontaminate<'s, R> {
    /// Documents are checked on their text; QA pairs `(origin, pair)` on question and answer,
    /// with the fragment rules too (a copied question with a word blanked or replaced).
    ///
    /// ```
    /// use webscale_rl_operators::benchmarks::{BenchmarkItem, BenchmarkSet};
    /// use webscale_rl_operators::decontaminate::{Benchmarks, Decontaminate, DecontaminateConfig, NgramIndex};
    /// use webscale_rl_operators::testing::{document, run_stage};
    ///
    /// let item = "Natalia sold clips to forty eight of her friends in April and then half as many in May";
    /// let set = BenchmarkSet {
    ///     name: "gsm8k".into(),
    ///     path: "gsm8k.jsonl".into(),
    ///     fields: vec!["question".into()],
    ///     items: vec![BenchmarkItem { id: "train/0".into(), segments: vec![item.into()] }],
    /// };
    /// let benchmarks = Benchmarks::from_sets(&[set], &DecontaminateConfig::default());
    /// let input = vec![
    ///     document("copied", &format!("Homework help: {item}. How many clips?")),
    ///     document("clean", "A recipe for bread with flour, water, salt and yeast, baked for an hour."),
    /// ];
    /// let (kept, dropped) = run_stage(input, move |docs| {
    ///     docs.decontaminate(NgramIndex::build(&benchmarks, 0, 1))
    /// });
    /// assert_eq!(kept[0].id, "clean");
    /// assert_eq!(dropped[0].reason, "benchmark_overlap");
    /// ```
    fn decontaminate(self, index: NgramIndex) -> Verdicts<'s, R>;
}

impl<'s> Decontaminate<'s, Document> for StreamVec<'s, Epoch, Document> {
    fn decontaminate(self, index: NgramIndex) -> Verdicts<'s, Document> {
        decontaminate_with(
            self,
            index,
            false,
            |doc: &Document, out: &mut String| out.push_str(&doc.text),
            |doc: &Document, overlap: &Overlap| {
                DeadLetter::for_document(
                    doc,
                    Stage::Decontaminate,
                    "benchmark_overlap",
                    overlap.detail(),
                )
            },
        )
    }
}

impl<'s> Decontaminate<'s, (Origin, QaPair)> for StreamVec<'s, Epoch, (Origin, QaPair)> {
    fn decontaminate(self, index: NgramIndex) -> Verdicts<'s, (Origin, QaPair)> {
        decontaminate_with(
            self,
            index,
            // Pairs get the fragment rules: a copied question with a word blanked or replaced.
            true,
            |(_, pair): &(Origin, QaPair), out: &mut String| {
                out.push_str(&pair.question);
                out.push('\n');
                out.push_str(&pair.answer);
            },
            |(origin, pair): &(Origin, QaPair), overlap: &Overlap| {
                DeadLetter::for_qa(
                    origin,
                    pair,
                    Stage::Decontaminate,
                    "benchmark_overlap",
                    overlap.detail(),
                )
            },
        )
    }
}

/// Drops records whose text overlaps a benchmark item, for any record type: `text` appends the
/// text to check (for a QA pair: question, a newline, answer) and `dead_letter` names a dropped
/// record. Records never leave their worker; only window keys and hits are exchanged. With
/// `fragments` (QA pairs) the shorter fragment n-grams are probed too and judged by the run and
/// share rules: a generated question that copies an item with a word blanked or replaced.
// The verdict results live only between the operator and the split.
#[allow(clippy::result_large_err)]
pub fn decontaminate_with<'s, R, F, D>(
    records: StreamVec<'s, Epoch, R>,
    index: NgramIndex,
    fragments: bool,
    text: F,
    dead_letter: D,
) -> Verdicts<'s, R>
where
    R: Clone + 'static,
    F: Fn(&R, &mut String) + 'static,
    D: Fn(&R, &Overlap) -> DeadLetter + 'static,
{
    let scope = records.scope();
    let (worker, peers) = (scope.index(), scope.peers());
    assert_eq!(
        (index.worker, index.peers),
        (worker, peers),
        "decontaminate: the index was built for another worker"
    );
    if index.total_keys == 0 {
        return Verdicts::all_passed(records);
    }

    let probing = index.clone();
    let fragment_len = if fragments { index.fragments.ngram } else { 0 };
    let text = std::rc::Rc::new(text);
    let text_at_home = text.clone();
    let (mut buf, mut words) = (String::new(), Words::default());
    let mut by_owner: Vec<Vec<(u64, u32, u16)>> = vec![Vec::new(); peers];
    let mut next_local = 0u64;
    let text_probe = move |record: R| {
        let local = next_local;
        next_local += 1;
        buf.clear();
        text(&record, &mut buf);
        words.fill(&buf);
        probing.windows(&words, |pos, len, key| {
            by_owner[owner_of(key, peers)].push((key, pos as u32, len as u16));
        });
        if fragment_len > 0 {
            for (pos, key) in words.keys(fragment_len, FRAGMENT_SEED) {
                by_owner[owner_of(key, peers)].push((
                    key,
                    pos as u32,
                    fragment_len as u16 | FRAGMENT,
                ));
            }
        }
        let mut out: Vec<Result<(u64, R), Probe>> = Vec::new();
        for (owner, windows) in by_owner.iter_mut().enumerate() {
            if !windows.is_empty() {
                out.push(Err(Probe {
                    owner: owner as u32,
                    home: worker as u32,
                    local,
                    windows: std::mem::take(windows),
                }));
            }
        }
        out.push(Ok((local, record)));
        out
    };
    let (parked, probes) = records
        .flat_map(text_probe)
        .container::<Vec<Result<(u64, R), Probe>>>()
        .ok_err(|v| v);

    let (table, fragment_table) = (index.table.clone(), index.fragment_table.clone());
    let hits = probes.unary(
        Exchange::new(|p: &Probe| p.owner as u64),
        "DecontaminateLookup",
        move |_default_cap, _info| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for batch in data {
                        for probe in batch.drain(..) {
                            for &(key, pos, len) in &probe.windows {
                                let table = if len & FRAGMENT != 0 {
                                    &fragment_table
                                } else {
                                    &table
                                };
                                if let Some(item) = table.get(key) {
                                    session.give(Hit {
                                        home: probe.home,
                                        local: probe.local,
                                        pos,
                                        len,
                                        item,
                                    });
                                }
                            }
                        }
                    }
                });
            }
        },
    );

    let verdicts = parked.binary_frontier(
        hits,
        Pipeline,
        Exchange::new(|h: &Hit| h.home as u64),
        "DecontaminateVerdict",
        move |default_cap, _info| {
            drop(default_cap);
            let mut stash: EpochStash<HomeEpoch<R>> = EpochStash::default();
            let mut buf = String::new();
            move |(records_in, records_frontier), (hits_in, hits_frontier), output| {
                records_in.for_each_stamp(|cap, data| {
                    let (_, entry) = stash.entry(&cap);
                    data.for_each(|batch| entry.records.append(batch));
                });
                hits_in.for_each_stamp(|cap, data| {
                    let (_, entry) = stash.entry(&cap);
                    for batch in data {
                        for hit in batch.drain(..) {
                            if hit.len & FRAGMENT != 0 {
                                entry
                                    .fragments
                                    .entry(hit.local)
                                    .or_default()
                                    .push((hit.item, hit.pos));
                                continue;
                            }
                            match entry.hits.get(&hit.local) {
                                Some(best) if best.rank() <= hit.rank() => {}
                                _ => {
                                    entry.hits.insert(hit.local, hit);
                                }
                            }
                        }
                    }
                });
                let open =
                    |t: &Epoch| records_frontier.less_equal(t) || hits_frontier.less_equal(t);
                while let Some((cap, epoch)) = stash.pop_complete(open) {
                    let HomeEpoch {
                        records,
                        mut hits,
                        mut fragments,
                    } = epoch;
                    let mut session = output.session(&cap);
                    for (local, record) in records {
                        let copied = fragments.remove(&local).and_then(|mut f| {
                            index.fragments.judge(&mut f, &index.catalog.fragments)
                        });
                        let verdict = match (hits.remove(&local), copied) {
                            (Some(hit), _) => {
                                buf.clear();
                                text_at_home(&record, &mut buf);
                                let o = overlap(&buf, hit.pos, hit.len, hit.item, &index);
                                Err(dead_letter(&record, &o))
                            }
                            (None, Some((item, pos, words))) => {
                                buf.clear();
                                text_at_home(&record, &mut buf);
                                let mut o = overlap(&buf, pos, words as u16, item, &index);
                                o.whole_item = false;
                                Err(dead_letter(&record, &o))
                            }
                            (None, None) => Ok(record),
                        };
                        session.give(verdict);
                    }
                }
            }
        },
    );
    Verdicts::split(verdicts.container::<Vec<Result<R, DeadLetter>>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::benchmarks::BenchmarkItem;

    #[test]
    fn fragment_rule_runs_and_shares() {
        let rule = FragmentRule {
            ngram: 8,
            run_words: 10,
            share: 0.5,
        };
        // Item 3 has 18 fragments; item 5 has 4.
        let counts = [0, 0, 0, 18, 0, 4];
        // A run of 3 consecutive fragments = 10 words: a copy.
        let mut hits = vec![(3, 7), (3, 5), (3, 6), (5, 1)];
        assert_eq!(rule.judge(&mut hits, &counts), Some((3, 5, 10)));
        // Two consecutive (9 words), scattered elsewhere, 4 of 18: not enough.
        let mut hits = vec![(3, 0), (3, 1), (3, 9), (3, 20)];
        assert_eq!(rule.judge(&mut hits, &counts), None);
        // Half of a short item's fragments, not consecutive: a copy with words replaced.
        let mut hits = vec![(5, 0), (5, 2), (5, 2)];
        assert_eq!(rule.judge(&mut hits, &counts), Some((5, 0, 8)));
        assert_eq!(rule.judge(&mut [], &counts), None);
    }

    fn set(name: &str, texts: &[&str]) -> BenchmarkSet {
        BenchmarkSet {
            name: name.into(),
            path: name.into(),
            fields: vec!["q".into()],
            items: texts
                .iter()
                .enumerate()
                .map(|(i, t)| BenchmarkItem {
                    id: format!("{name}-{i}"),
                    segments: vec![t.to_string()],
                })
                .collect(),
        }
    }

    fn cfg(ngram: usize, min: usize) -> DecontaminateConfig {
        DecontaminateConfig {
            ngram,
            min_item_tokens: min,
            // The window rules alone; the fragment rules have their own tests.
            fragment_ngram: 0,
            ..DecontaminateConfig::default()
        }
    }

    #[test]
    fn ngrams_whole_short_items_and_skips() {
        let sets = [set(
            "b",
            &[
                "one two three four five six",
                "Alpha, beta; gamma delta!",
                "tiny item",
            ],
        )];
        let b = Benchmarks::from_sets(&sets, &cfg(5, 3));
        let s = b.stats();
        assert_eq!(
            (s.long_segments, s.whole_segments, s.skipped_segments),
            (1, 1, 1)
        );
        assert_eq!(s.keys_distinct, 3);
        let ix = NgramIndex::build(&b, 0, 1);
        let o = find_overlap("x y ONE two three four five z", &ix).unwrap();
        // Number words are matched (and shown) as digits.
        assert_eq!((o.item.as_str(), o.span.as_str()), ("b-0", "1 2 3 4 5"));
        assert!(!o.whole_item);
        // Four of the five words are not an overlap.
        assert!(find_overlap("one two three four", &ix).is_none());
        let o = find_overlap("intro alpha beta gamma delta outro", &ix).unwrap();
        assert_eq!((o.item.as_str(), o.words, o.whole_item), ("b-1", 4, true));
        // Part of a short item is not a match; an item under the floor never is.
        assert!(find_overlap("alpha beta gamma", &ix).is_none());
        assert!(find_overlap("a tiny item here", &ix).is_none());
    }

    #[test]
    fn short_items_sharing_their_first_words_are_each_found_whole() {
        // min_item_tokens 3: both short items start "red green blue".
        let sets = [set(
            "b",
            &[
                "red green blue sky",
                "red green blue sea water",
                "a b c d e f g h",
            ],
        )];
        let ix = NgramIndex::build(&Benchmarks::from_sets(&sets, &cfg(8, 3)), 0, 1);
        let o = find_overlap("on the red green blue sea water today", &ix).unwrap();
        assert_eq!((o.item.as_str(), o.words, o.whole_item), ("b-1", 5, true));
        let o = find_overlap("red green blue sky", &ix).unwrap();
        assert_eq!((o.item.as_str(), o.words), ("b-0", 4));
        // The shared first words alone, or followed by other words, are no item; a window
        // running past the end is not probed.
        assert!(find_overlap("the red green blue", &ix).is_none());
        assert!(find_overlap("red green blue sun and red green blue sea", &ix).is_none());
        // Long items are still found by their windows.
        assert!(find_overlap("x a b c d e f g h y", &ix).is_some());
    }

    #[test]
    fn a_key_belongs_to_its_first_item_and_partitions_split_keys() {
        let text = "the same thirteen words appear in two different items of the benchmark";
        let sets = [
            set("a", &["unrelated words only here"]),
            set("b", &[text, text]),
        ];
        let b = Benchmarks::from_sets(&sets, &cfg(13, 8));
        let ix = NgramIndex::build(&b, 0, 1);
        let o = find_overlap(text, &ix).unwrap();
        assert_eq!((o.benchmark.as_str(), o.item.as_str()), ("b", "b-0"));
        assert_eq!(ix.catalog().item(0), ("a", "a-0"));
        let parts: Vec<usize> = (0..3)
            .map(|w| NgramIndex::build(&b, w, 3).stats().entries)
            .collect();
        assert_eq!(parts.iter().sum::<usize>(), b.stats().keys_distinct);
    }

    #[test]
    fn a_workers_filter_turns_most_absent_keys_away_whatever_the_worker_count() {
        let all: Vec<u64> = (0..40_000u64).map(|i| window_key(i, 13, 0)).collect();
        for peers in [1, 2, 4, 8] {
            let mut keys: Vec<u64> = all
                .iter()
                .copied()
                .filter(|&k| owner_of(k, peers) == 0)
                .collect();
            keys.sort_unstable();
            let table = Table::new(keys.clone(), vec![0; keys.len()]);
            // Absent keys this worker would be asked about: those it owns.
            let absent = (40_000..400_000u64)
                .map(|i| window_key(i, 13, 0))
                .filter(|&k| owner_of(k, peers) == 0);
            let (mut asked, mut passed) = (0, 0);
            for k in absent {
                let (word, mask) = Table::filter_bits(k, table.filter.len());
                asked += 1;
                passed += (table.filter[word] & mask == mask) as usize;
            }
            let rate = passed as f64 / asked as f64;
            assert!(
                rate < 0.10,
                "{peers} workers: {rate:.3} of absent keys pass the filter"
            );
        }
    }

    #[test]
    fn the_table_finds_every_key_and_its_filter_turns_most_others_away() {
        let keys: Vec<u64> = (0..20_000u64).map(|i| window_key(i, 13, 0)).collect();
        let mut entries: Vec<(u64, u32)> = keys.iter().map(|&k| (k, k as u32)).collect();
        entries.sort_unstable();
        let (sorted, items): (Vec<u64>, Vec<u32>) = entries.into_iter().unzip();
        let table = Table::new(sorted, items);
        for &k in &keys {
            assert_eq!(table.get(k), Some(k as u32));
        }
        let absent = (20_000..120_000u64).map(|i| window_key(i, 13, 0));
        let passed = absent
            .filter(|&k| {
                let (word, mask) = Table::filter_bits(k, table.filter.len());
                table.filter[word] & mask == mask
            })
            .count();
        // Two bits of 64 in a word holding about 8 keys: about 5 % by chance.
        assert!(
            passed < 10_000,
            "{passed} of 100000 absent keys passed the filter"
        );
    }

    #[test]
    fn window_keys_are_the_words_not_their_place() {
        let mut a = Words::default();
        a.fill("one two three four five six seven eight nine");
        let mut b = Words::default();
        b.fill("zero nine one two three four five six seven eight nine");
        // "one .. eight" (8 words) at 0 in a and at 2 in b.
        assert_eq!(a.key(0, 8), b.key(2, 8));
        assert_ne!(a.key(0, 8), a.key(1, 8));
        assert_ne!(a.key(0, 8), a.key(0, 7));
        assert_ne!(a.key(0, 8), a.fragment_key(0, 8));
        let all: Vec<(usize, u64)> = b.keys(8, 0).collect();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|&(pos, key)| key == b.key(pos, 8)));
    }

    #[test]
    fn config_is_validated() {
        assert!(cfg(13, 8).validate().is_ok());
        assert!(cfg(13, 14).validate().is_err());
        assert!(cfg(0, 0).validate().is_err());
        // Longer windows could meet structured collisions of the polynomial keys.
        assert!(cfg(1000, 8).validate().is_ok());
        assert!(cfg(1001, 8).validate().unwrap_err().contains("1..=1000"));
        let parsed: DecontaminateConfig =
            serde_json::from_str(r#"{"benchmarks": [{"path": "x.jsonl"}]}"#).unwrap();
        assert_eq!(parsed.ngram, 13);
        assert!(serde_json::from_str::<DecontaminateConfig>(r#"{"ngrams": 3}"#).is_err());
        let bad = |f: fn(&mut DecontaminateConfig)| {
            let mut c = DecontaminateConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(DecontaminateConfig::default().validate().is_ok());
        assert!(bad(|c| c.fragment_ngram = 14).contains("fragment_ngram"));
        assert!(bad(|c| c.fragment_run_words = 5).contains("fragment_run_words"));
        assert!(bad(|c| c.fragment_share = 0.0).contains("fragment_share"));
        assert!(bad(|c| c.fragment_share = 1.5).contains("fragment_share"));
    }
}
