//! MinHash signatures for near-duplicate detection.
//!
//! Text goes through the normalization exact dedup uses ([`normalize_into`]) and is cut into word
//! n-grams ("shingles"); every word is hashed with xxh3 and a shingle's 32-bit hash chains those of
//! its words.
//! A signature keeps, for each of `bands × rows` hash functions, the minimum over the shingles:
//! two documents agree on a position with probability equal to the Jaccard similarity of their
//! shingle sets. LSH banding hashes each run of `rows` positions into one band key, so documents
//! whose Jaccard is above roughly `(1/bands)^(1/rows)` share at least one band key.
//!
//! Everything is derived from the configured seed, so every worker and every process computes the
//! same signature for the same text, and band keys persisted yesterday still match today.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::lsh_index::DEFAULT_PARTITIONS;
use crate::normalize::{NormalizeConfig, normalize_into, normalize_words_into};
use crate::words::normalized;
use webscale_rl_records::Document;

/// Bits kept per signature value in a [`sketch`]: 4 estimate Jaccard about as well as the full
/// values (the chance agreement of 1/16 is corrected for) at an eighth of the bytes, which is what
/// the index stores per band and what travels with every band message.
pub const SKETCH_BITS: u32 = 4;

/// Settings of the near-duplicate stage (`[near_dedup]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearDedupConfig {
    pub enabled: bool,
    /// The same normalization exact dedup uses.
    pub normalize: NormalizeConfig,
    /// Words per shingle.
    pub ngram: usize,
    /// LSH bands; `bands × rows` hash functions make a signature.
    pub bands: usize,
    /// Signature values per band.
    pub rows: usize,
    /// Seeds the shingle hash and the hash functions; changing it invalidates a persisted index.
    pub seed: u64,
    /// A band collision only counts when the Jaccard estimated from the two signatures reaches
    /// this value; 0 drops on any band collision (plain LSH).
    pub verify_jaccard: f64,
    /// Where the index persists (`<state_dir>/near_dedup/`); unset keeps it in memory only.
    pub state_dir: Option<PathBuf>,
    /// The index is split into this many files, each owned by one worker; fixed for the lifetime
    /// of a `state_dir`. More partitions than workers lets any worker count share them. Unset:
    /// [`DEFAULT_PARTITIONS`], except for a run's own state, which the engine sizes (README).
    pub partitions: Option<u32>,
    /// Cap on indexed documents (enforced per partition, oldest first); 0 = unbounded.
    pub max_documents: u64,
    /// Index entries older than this (in epoch time, i.e. wall-clock) expire; 0 = never.
    pub ttl_hours: f64,
    /// Index writes reach the disk (fsync) at least this often; 0 = at every epoch.
    pub sync_interval_ms: u64,
    /// Page cache of the persisted index, in MiB, shared by all partitions of a process.
    pub cache_mb: usize,
    /// Not a setting: set by a run that syncs the index itself ([`crate::lsh_index::IndexSync`]).
    #[serde(skip)]
    pub index_sync: Option<crate::lsh_index::IndexSync>,
    /// Not a setting: set by a Kafka run whose state has changelog topics ([`webscale_rl_records::changelog`]).
    #[serde(skip)]
    pub changelog: Option<webscale_rl_records::changelog::Changelog>,
    /// Not a setting: set by a Kafka run without changelogs whose group has history; a
    /// partition this process would create empty is then an error with this cause.
    #[serde(skip)]
    pub refuse_new_partitions: Option<String>,
}

impl Default for NearDedupConfig {
    fn default() -> Self {
        NearDedupConfig {
            enabled: true,
            normalize: NormalizeConfig::default(),
            ngram: 5,
            bands: 14,
            rows: 8,
            seed: 0x5eed_0f1e_a54a_11d5,
            verify_jaccard: 0.7,
            state_dir: None,
            partitions: None,
            max_documents: 20_000_000,
            ttl_hours: 0.0,
            sync_interval_ms: 5000,
            cache_mb: 64,
            index_sync: None,
            changelog: None,
            refuse_new_partitions: None,
        }
    }
}

impl NearDedupConfig {
    /// The partition count: [`NearDedupConfig::partitions`], or [`DEFAULT_PARTITIONS`].
    pub fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(DEFAULT_PARTITIONS)
    }

    /// Hash functions in a signature.
    pub fn num_hashes(&self) -> usize {
        self.bands * self.rows
    }

    /// The Jaccard similarity at which a pair is proposed by LSH with probability about 1/2:
    /// `(1/bands)^(1/rows)`.
    pub fn threshold(&self) -> f64 {
        (1.0 / self.bands as f64).powf(1.0 / self.rows as f64)
    }

    /// Probability that two documents of Jaccard `j` share at least one band.
    pub fn candidate_probability(&self, j: f64) -> f64 {
        1.0 - (1.0 - j.powi(self.rows as i32)).powi(self.bands as i32)
    }

    /// Rejects settings the stage cannot run with.
    pub fn validate(&self) -> Result<(), String> {
        if self.ngram == 0 {
            return Err("near_dedup.ngram must be at least 1".into());
        }
        if self.bands == 0 || self.rows == 0 {
            return Err("near_dedup.bands and near_dedup.rows must be at least 1".into());
        }
        if self.bands > 255 || self.num_hashes() > 1024 {
            return Err("near_dedup: at most 255 bands and 1024 hashes (bands × rows)".into());
        }
        if !(0.0..=1.0).contains(&self.verify_jaccard) {
            return Err("near_dedup.verify_jaccard must be within 0..=1".into());
        }
        if !(1..=4096).contains(&self.partitions()) {
            return Err("near_dedup.partitions must be within 1..=4096".into());
        }
        if !(self.ttl_hours >= 0.0 && self.ttl_hours.is_finite()) {
            return Err("near_dedup.ttl_hours must be a non-negative number".into());
        }
        Ok(())
    }

    /// One line for the start-up log: the parameters and the implied threshold.
    pub fn summary(&self) -> String {
        let verify = if self.verify_jaccard > 0.0 {
            format!("verify_jaccard {:.2}", self.verify_jaccard)
        } else {
            "no verification".to_string()
        };
        let store = match &self.state_dir {
            Some(dir) => format!("index in {}", dir.join("near_dedup").display()),
            None => "index in memory only".to_string(),
        };
        format!(
            "near_dedup: {}-word shingles, {} bands x {} rows = {} hashes, LSH threshold ~{:.3}, {verify}, {store}",
            self.ngram,
            self.bands,
            self.rows,
            self.num_hashes(),
            self.threshold(),
        )
    }

    /// Index entry expiry in epoch units (milliseconds); 0 = never.
    pub fn ttl_millis(&self) -> u64 {
        (self.ttl_hours * 3_600_000.0) as u64
    }
}

/// splitmix64: a tiny, well-mixed stream that expands the seed into hash-function parameters.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Computes signatures and band keys. Holds scratch buffers: keep one per worker.
pub struct MinHasher {
    ngram: usize,
    bands: usize,
    rows: usize,
    seed: u64,
    normalize: NormalizeConfig,
    /// Multiply-add-shift hash functions `h_i(x) = (a_i·x + b_i) >> 32` (2-universal for 32-bit x).
    mul: Box<[u64]>,
    add: Box<[u64]>,
    text: String,
    word_starts: Vec<usize>,
    word_hashes: Vec<u64>,
    shingles: Vec<u32>,
}

impl MinHasher {
    pub fn new(cfg: &NearDedupConfig) -> Self {
        let n = cfg.num_hashes();
        let mut state = cfg.seed;
        let mut mul = Vec::with_capacity(n);
        let mut add = Vec::with_capacity(n);
        for _ in 0..n {
            mul.push(splitmix64(&mut state) | 1);
            add.push(splitmix64(&mut state));
        }
        MinHasher {
            ngram: cfg.ngram.max(1),
            bands: cfg.bands,
            rows: cfg.rows,
            seed: cfg.seed,
            normalize: cfg.normalize.clone(),
            mul: mul.into(),
            add: add.into(),
            text: String::new(),
            word_starts: Vec::new(),
            word_hashes: Vec::new(),
            shingles: Vec::new(),
        }
    }

    /// Hash functions per signature.
    pub fn num_hashes(&self) -> usize {
        self.mul.len()
    }

    /// Identifies everything that determines band keys; a persisted index records it so that it
    /// is never matched against keys computed with other parameters.
    pub fn params_fingerprint(&self) -> u64 {
        let n = &self.normalize;
        let desc = format!(
            "minhash-v1 ngram={} bands={} rows={} seed={} lowercase={} strip_punctuation={} fold_digits={}",
            self.ngram,
            self.bands,
            self.rows,
            self.seed,
            n.lowercase,
            n.strip_punctuation,
            n.fold_digits
        );
        xxh3_64(desc.as_bytes())
    }

    /// The 32-bit hashes of the text's shingles (in text order, repeats kept). A text with fewer
    /// than `ngram` words is one shingle; an empty one has none.
    pub fn shingle_hashes(&mut self, text: &str) -> &[u32] {
        normalize_words_into(text, &self.normalize, &mut self.text, &mut self.word_starts);
        let norm = std::mem::take(&mut self.text);
        let ends = self.word_starts.iter().skip(1).map(|&next| next - 1);
        let ends = ends.chain((!self.word_starts.is_empty()).then_some(norm.len()));
        let words = self.word_starts.iter().zip(ends).map(|(&a, b)| &norm[a..b]);
        hash_shingles(
            words,
            self.seed,
            self.ngram,
            &mut self.word_hashes,
            &mut self.shingles,
        );
        self.text = norm;
        &self.shingles
    }

    /// Writes the signature of `text` into `sig` (resized to `bands × rows`). Returns false, leaving
    /// `sig` empty, when the text has no shingle: such a text has nothing to compare.
    pub fn signature_into(&mut self, text: &str, sig: &mut Vec<u32>) -> bool {
        self.shingle_hashes(text);
        self.min_hashes_into(sig)
    }

    /// [`MinHasher::signature_into`] for a document: from the normalized words it carries when
    /// they were made with this hasher's rules (the quality filter's pass), else from its text.
    pub fn signature_of(&mut self, doc: &Document, sig: &mut Vec<u32>) -> bool {
        match normalized(doc, &self.normalize) {
            Some(words) => {
                hash_shingles(
                    words.words(),
                    self.seed,
                    self.ngram,
                    &mut self.word_hashes,
                    &mut self.shingles,
                );
                self.min_hashes_into(sig)
            }
            None => self.signature_into(&doc.text, sig),
        }
    }

    fn min_hashes_into(&self, sig: &mut Vec<u32>) -> bool {
        sig.clear();
        if self.shingles.is_empty() {
            return false;
        }
        sig.resize(self.mul.len(), u32::MAX);
        min_hashes(&self.mul, &self.add, &self.shingles, sig);
        true
    }

    /// The signature of `text`, or `None` when it has no shingle.
    pub fn signature(&mut self, text: &str) -> Option<Vec<u32>> {
        let mut sig = Vec::new();
        self.signature_into(text, &mut sig).then_some(sig)
    }

    /// One 64-bit key per band. The band index is part of the hash, so keys of different bands
    /// never meet, and one key space serves every band.
    pub fn band_hashes(&self, sig: &[u32]) -> Vec<u64> {
        assert_eq!(sig.len(), self.bands * self.rows, "signature length");
        let mut buf = Vec::with_capacity(self.rows * 4);
        sig.chunks_exact(self.rows)
            .enumerate()
            .map(|(band, values)| {
                buf.clear();
                for v in values {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                let band_seed = self.seed ^ (band as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                xxh3_64_with_seed(&buf, band_seed)
            })
            .collect()
    }
}

/// Hashes each word once with xxh3 (seeded) into `word_hashes`, and each run of `ngram` words
/// into `shingles` by chaining its words' hashes (order-sensitive): a few multiplies instead of
/// rehashing n words of bytes per shingle.
fn hash_shingles<'w>(
    words: impl Iterator<Item = &'w str>,
    seed: u64,
    ngram: usize,
    word_hashes: &mut Vec<u64>,
    shingles: &mut Vec<u32>,
) {
    word_hashes.clear();
    shingles.clear();
    word_hashes.extend(words.map(|w| xxh3_64_with_seed(w.as_bytes(), seed)));
    if word_hashes.is_empty() {
        return;
    }
    let n = ngram.min(word_hashes.len());
    shingles.extend(word_hashes.windows(n).map(chain_hash));
}

/// The 32-bit hash of a shingle from the xxh3 hashes of its words.
#[inline]
fn chain_hash(words: &[u64]) -> u32 {
    let mut h = 0x2545_f491_4f6c_dd1du64;
    for &w in words {
        h = (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(31);
    }
    // murmur3's finalizer: every output bit depends on every word.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h ^ (h >> 32)) as u32
}

/// `out[i] = min over x of (mul[i]·x + add[i]) >> 32`. The inner loop runs over shingles with the
/// hash function fixed, which compilers vectorize; AVX-512 or AVX2 builds are picked at run time.
fn min_hashes(mul: &[u64], add: &[u64], xs: &[u32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { min_hashes_avx512(mul, add, xs, out) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            unsafe { min_hashes_avx2(mul, add, xs, out) };
            return;
        }
    }
    min_hashes_portable(mul, add, xs, out);
}

/// With AVX-512 the loops turn around: up to 64 functions' running minima stay in registers
/// (eight 8-lane vectors) while the shingles stream past, each broadcast once, then per 8
/// functions one 64-bit multiply, add and unsigned minimum (`vpminuq`, which AVX2 lacks). The
/// `>> 32` is taken once at the end: a shift keeps order, so the minimum of the shifted values is
/// the shifted minimum. No widening or narrowing shuffles are left: 0.046 s instead of 0.084 s for
/// 6 M shingles × 112 functions in isolation (BENCHMARKS.md, "Third round"). AVX2 keeps the
/// function-outer loop, which measured faster there than emulating the 64-bit minimum.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2")]
fn min_hashes_avx512(mul: &[u64], add: &[u64], xs: &[u32], out: &mut [u32]) {
    let mut at = 0;
    while at < mul.len() {
        let (m, a, o) = (&mul[at..], &add[at..], &mut out[at..]);
        at += match m.len() {
            64.. => min_hashes_block::<64>(m, a, xs, o),
            32.. => min_hashes_block::<32>(m, a, xs, o),
            16.. => min_hashes_block::<16>(m, a, xs, o),
            8.. => min_hashes_block::<8>(m, a, xs, o),
            _ => min_hashes_block::<1>(m, a, xs, o),
        };
    }
}

/// The minima of the first `N` functions, shingle-outer (see [`min_hashes_avx512`]); returns `N`.
#[inline(always)]
fn min_hashes_block<const N: usize>(
    mul: &[u64],
    add: &[u64],
    xs: &[u32],
    out: &mut [u32],
) -> usize {
    let mul: &[u64; N] = mul[..N].try_into().expect("N functions");
    let add: &[u64; N] = add[..N].try_into().expect("N functions");
    let mut least = [u64::MAX; N];
    for &x in xs {
        let x = x as u64;
        for i in 0..N {
            least[i] = least[i].min(mul[i].wrapping_mul(x).wrapping_add(add[i]));
        }
    }
    for (o, m) in out[..N].iter_mut().zip(least) {
        *o = (m >> 32) as u32;
    }
    N
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn min_hashes_avx2(mul: &[u64], add: &[u64], xs: &[u32], out: &mut [u32]) {
    min_hashes_portable(mul, add, xs, out)
}

#[inline(always)]
fn min_hashes_portable(mul: &[u64], add: &[u64], xs: &[u32], out: &mut [u32]) {
    for ((o, &a), &b) in out.iter_mut().zip(mul).zip(add) {
        let mut m = u32::MAX;
        for &x in xs {
            let v = (a.wrapping_mul(x as u64).wrapping_add(b) >> 32) as u32;
            m = m.min(v);
        }
        *o = m;
    }
}

/// The low [`SKETCH_BITS`] of every signature value, two per byte: what the index keeps to verify
/// collisions.
pub fn sketch(sig: &[u32]) -> Vec<u8> {
    sig.chunks(2)
        .map(|pair| (pair[0] & 0xf) as u8 | ((pair.get(1).copied().unwrap_or(0) & 0xf) << 4) as u8)
        .collect()
}

/// Bytes of the sketch of a signature of `hashes` values.
pub fn sketch_len(hashes: usize) -> usize {
    hashes.div_ceil(2)
}

/// Jaccard estimated from two full signatures: the fraction of equal positions.
pub fn signature_jaccard(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len(), "signatures of different lengths");
    if a.is_empty() {
        return 0.0;
    }
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len() as f64
}

/// Jaccard estimated from the sketches of two signatures of `hashes` values. Unequal values still
/// agree on their low bits with probability 2^-bits, so `P(equal) = J + (1 - J)/2^bits`; this
/// inverts that.
pub fn sketch_jaccard(a: &[u8], b: &[u8], hashes: usize) -> f64 {
    assert_eq!(a.len(), b.len(), "sketches of different lengths");
    if hashes == 0 {
        return 0.0;
    }
    let mut equal = 0usize;
    for (x, y) in a.iter().zip(b) {
        let d = x ^ y;
        equal += (d & 0xf == 0) as usize + (d >> 4 == 0) as usize;
    }
    // An odd count pads the last byte with two equal zero nibbles.
    equal -= hashes % 2;
    let chance = 1.0 / (1u32 << SKETCH_BITS) as f64;
    let p = equal as f64 / hashes as f64;
    ((p - chance) / (1.0 - chance)).clamp(0.0, 1.0)
}

/// The exact shingle set of a text, as the signature sees it (normalized, `cfg.ngram` words each).
/// For tests and audits: it allocates per shingle.
pub fn shingle_set(text: &str, cfg: &NearDedupConfig) -> HashSet<String> {
    let mut norm = String::new();
    normalize_into(text, &cfg.normalize, &mut norm);
    let words: Vec<&str> = norm.split(' ').filter(|w| !w.is_empty()).collect();
    let n = cfg.ngram.max(1);
    if words.is_empty() {
        HashSet::new()
    } else if words.len() < n {
        HashSet::from([words.join(" ")])
    } else {
        words.windows(n).map(|w| w.join(" ")).collect()
    }
}

/// The exact Jaccard similarity of two texts' shingle sets (0 when both are empty).
pub fn exact_jaccard(a: &str, b: &str, cfg: &NearDedupConfig) -> f64 {
    let (sa, sb) = (shingle_set(a, cfg), shingle_set(b, cfg));
    let union = sa.union(&sb).count();
    if union == 0 {
        return 0.0;
    }
    sa.intersection(&sb).count() as f64 / union as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: u64) -> Vec<String> {
        let mut s = salt;
        (0..n)
            .map(|_| format!("w{}", splitmix64(&mut s) % 5000))
            .collect()
    }

    #[test]
    fn defaults_match_datatrove_and_threshold_is_printed() {
        let cfg = NearDedupConfig::default();
        assert_eq!((cfg.bands, cfg.rows, cfg.ngram), (14, 8, 5));
        assert_eq!(cfg.num_hashes(), 112);
        assert!(
            (cfg.threshold() - 0.719).abs() < 0.001,
            "{}",
            cfg.threshold()
        );
        assert!(cfg.summary().contains("~0.719"), "{}", cfg.summary());
        assert!(cfg.validate().is_ok());
        assert!(
            NearDedupConfig {
                bands: 0,
                ..cfg.clone()
            }
            .validate()
            .is_err()
        );
        // At the threshold LSH proposes a pair about half of the time.
        let p = cfg.candidate_probability(cfg.threshold());
        assert!((0.5..0.7).contains(&p), "{p}");
    }

    #[test]
    fn config_rejects_unknown_fields_and_fills_defaults() {
        let cfg: NearDedupConfig = toml_like(r#"{"bands": 20, "rows": 5}"#).unwrap();
        assert_eq!((cfg.bands, cfg.rows, cfg.ngram), (20, 5, 5));
        assert!(toml_like(r#"{"band": 20}"#).is_err());
    }

    fn toml_like(json: &str) -> Result<NearDedupConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The `[near_dedup]` section as documented for pipeline.toml: every setting at its default.
    const DOCUMENTED: &str = r#"
[near_dedup]
enabled = true
ngram = 5                  # words per shingle
bands = 14                 # LSH bands: 14 x 8 = 112 hashes, threshold (1/14)^(1/8) ~ 0.719
rows = 8                   # signature values per band
seed = 0x5eed0f1ea54a11d5  # hash functions; changing it invalidates a persisted index
verify_jaccard = 0.7       # a band collision counts if the estimated Jaccard reaches this; 0 = plain LSH
# state_dir = "/var/lib/webscale-rl"  # index under <state_dir>/near_dedup/; the engine's default: see the README
# partitions = 32          # index files, each owned by one worker; fixed for a state_dir (unset: README)
max_documents = 20000000   # cap on indexed documents, oldest evicted first (bounds memory); 0 = the index's limit
ttl_hours = 0.0            # index entries older than this expire (epochs are wall-clock ms); 0 = never
sync_interval_ms = 5000    # the index is fsynced at least this often; 0 = every epoch
cache_mb = 64              # redb page cache of the index, per process

[near_dedup.normalize]     # the same settings as [exact_dedup.normalize]
lowercase = true
strip_punctuation = true
fold_digits = false
"#;

    #[test]
    fn the_documented_toml_is_the_default() {
        #[derive(Deserialize)]
        struct File {
            near_dedup: NearDedupConfig,
        }
        let file: File = toml::from_str(DOCUMENTED).unwrap();
        assert_eq!(file.near_dedup, NearDedupConfig::default());
        let typo = DOCUMENTED.replace("ttl_hours", "ttl_hour");
        assert!(toml::from_str::<File>(&typo).is_err());
    }

    #[test]
    fn signatures_are_deterministic_and_seeded() {
        let text = words(300, 1).join(" ");
        let cfg = NearDedupConfig::default();
        let a = MinHasher::new(&cfg).signature(&text).unwrap();
        let b = MinHasher::new(&cfg).signature(&text).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 112);
        let other = MinHasher::new(&NearDedupConfig {
            seed: 7,
            ..cfg.clone()
        })
        .signature(&text)
        .unwrap();
        assert_ne!(a, other);
        // Normalization is the shared one: case, punctuation and spacing do not matter.
        let shouted = format!("  {}!!  ", text.to_uppercase().replace(' ', ",\n "));
        assert_eq!(MinHasher::new(&cfg).signature(&shouted).unwrap(), a);
    }

    #[test]
    fn the_kernel_is_the_multiply_add_shift_hash() {
        let mut state = 7u64;
        let mul: Vec<u64> = (0..16).map(|_| splitmix64(&mut state) | 1).collect();
        let add: Vec<u64> = (0..16).map(|_| splitmix64(&mut state)).collect();
        let xs: Vec<u32> = (0..500)
            .map(|_| splitmix64(&mut state) as u32)
            .chain([0, 1, u32::MAX])
            .collect();
        let mut out = vec![0; 16];
        min_hashes(&mul, &add, &xs, &mut out);
        for i in 0..16 {
            let direct = xs
                .iter()
                .map(|&x| (mul[i].wrapping_mul(x as u64).wrapping_add(add[i]) >> 32) as u32)
                .min()
                .unwrap();
            assert_eq!(out[i], direct);
        }
    }

    #[test]
    fn the_portable_kernel_agrees_with_the_dispatched_one() {
        let cfg = NearDedupConfig::default();
        let mut h = MinHasher::new(&cfg);
        let xs: Vec<u32> = h.shingle_hashes(&words(777, 3).join(" ")).to_vec();
        let mut fast = vec![0; 112];
        let mut slow = vec![0; 112];
        min_hashes(&h.mul, &h.add, &xs, &mut fast);
        min_hashes_portable(&h.mul, &h.add, &xs, &mut slow);
        assert_eq!(fast, slow);
    }

    #[test]
    fn every_kernel_agrees_at_every_signature_size() {
        // The AVX-512 kernel cuts the functions into blocks of 64, 32, 16, 8 and 1: sizes on
        // both sides of each cut, and shingle values at the edges of the range.
        let mut state = 11u64;
        let xs: Vec<u32> = (0..300)
            .map(|_| splitmix64(&mut state) as u32)
            .chain([0, 1, u32::MAX])
            .collect();
        for n in [
            1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 112, 127, 128, 1024,
        ] {
            let mul: Vec<u64> = (0..n).map(|_| splitmix64(&mut state) | 1).collect();
            let add: Vec<u64> = (0..n).map(|_| splitmix64(&mut state)).collect();
            for len in [1, 2, xs.len()] {
                let (mut fast, mut slow) = (vec![0; n], vec![0; n]);
                min_hashes(&mul, &add, &xs[..len], &mut fast);
                min_hashes_portable(&mul, &add, &xs[..len], &mut slow);
                assert_eq!(fast, slow, "{n} functions, {len} shingles");
            }
        }
    }

    #[test]
    fn short_and_empty_texts() {
        let cfg = NearDedupConfig::default();
        let mut h = MinHasher::new(&cfg);
        assert!(h.signature("").is_none());
        assert!(h.signature(" ... !! ").is_none());
        assert_eq!(h.shingle_hashes("three short words").len(), 1);
        assert_eq!(h.shingle_hashes("one two three four five six").len(), 2);
        assert_eq!(shingle_set("one two three four five six", &cfg).len(), 2);
        assert!(h.signature("three short words").is_some());
    }

    #[test]
    fn estimates_track_exact_jaccard() {
        let cfg = NearDedupConfig::default();
        let mut h = MinHasher::new(&cfg);
        let base = words(2000, 11);
        for edits in [0usize, 20, 60, 150, 400] {
            let mut variant = base.clone();
            let mut s = edits as u64;
            for _ in 0..edits {
                let i = (splitmix64(&mut s) % variant.len() as u64) as usize;
                variant[i] = format!("x{}", splitmix64(&mut s));
            }
            let (a, b) = (base.join(" "), variant.join(" "));
            let exact = exact_jaccard(&a, &b, &cfg);
            let sa = h.signature(&a).unwrap();
            let sb = h.signature(&b).unwrap();
            let est = signature_jaccard(&sa, &sb);
            let est_sketch = sketch_jaccard(&sketch(&sa), &sketch(&sb), 112);
            // 112 samples: the standard error is at most 0.047.
            assert!((est - exact).abs() < 0.15, "{edits}: {est} vs {exact}");
            // Chance agreements of the low bits add about 0.02 of noise.
            assert!((est_sketch - est).abs() < 0.07, "{est_sketch} vs {est}");
            let bands_a = h.band_hashes(&sa);
            let bands_b = h.band_hashes(&sb);
            let shared = bands_a.iter().zip(&bands_b).filter(|(x, y)| x == y).count();
            if edits == 0 {
                assert_eq!(shared, 14);
            }
        }
    }

    #[test]
    fn sketches_pack_two_values_per_byte() {
        let sig: Vec<u32> = (0..7).map(|i| 0x100 + i).collect();
        let sk = sketch(&sig);
        assert_eq!(sk, vec![0x10, 0x32, 0x54, 0x06]);
        assert_eq!(sk.len(), sketch_len(7));
        assert_eq!(sketch_jaccard(&sk, &sk, 7), 1.0);
        let other: Vec<u32> = sig.iter().map(|v| v + 1).collect();
        assert_eq!(sketch_jaccard(&sk, &sketch(&other), 7), 0.0);
    }

    #[test]
    fn band_keys_differ_across_bands() {
        let cfg = NearDedupConfig::default();
        let h = MinHasher::new(&cfg);
        let sig = vec![42u32; 112];
        let keys: HashSet<u64> = h.band_hashes(&sig).into_iter().collect();
        assert_eq!(keys.len(), 14);
    }

    #[test]
    fn unrelated_texts_rarely_share_a_band() {
        let cfg = NearDedupConfig::default();
        let mut h = MinHasher::new(&cfg);
        let mut seen = HashSet::new();
        let mut collisions = 0;
        for doc in 0..300 {
            let sig = h.signature(&words(200, 1000 + doc).join(" ")).unwrap();
            for key in h.band_hashes(&sig) {
                if !seen.insert(key) {
                    collisions += 1;
                }
            }
        }
        assert_eq!(collisions, 0);
    }
}
