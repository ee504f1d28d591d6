//! The near-duplicate LSH index: band key → the first document that produced it.
//!
//! The key space is split into a fixed number of partitions (by the key's high bits); each is a
//! redb file `<state_dir>/near_dedup/part-PPPP-of-NNNN.redb` owned by exactly one worker, the one
//! the band keys of that partition are exchanged to (`partition % workers`). A restart with any
//! number of workers therefore reloads every partition, each worker opening only its own.
//!
//! Per partition, redb holds:
//! - `bands`: key → (origin hash, epoch, signature sketch, document id) of the first document;
//! - `age`: epoch → the keys first inserted in it, oldest first, so expiry and the size cap evict
//!   oldest-first with one range scan and no per-entry timestamp index;
//! - `meta`: the format, the MinHash parameters' fingerprint and the partitioning, checked on open.
//!
//! In memory a partition keeps only a filter of the keys' low 32 bits (4 bytes per key in buckets
//! of 8, 60–90 % full, so 4.4–6.7 bytes per band and at most ~93 bytes per document with 14 bands).
//! A key absent from the filter is new without touching redb; a filter hit (a duplicate, or one
//! false positive in 2^32 / keys) reads redb, which settles it exactly. The filter is rebuilt from
//! `bands` on open.
//!
//! Writes commit once per epoch and partition without fsync; every `sync_interval_ms`, and when
//! the stage shuts down, a commit is made durable. A crash loses at most that interval of index
//! entries: the restarted engine then lets a copy of those documents through, nothing worse.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::backends::InMemoryBackend;
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use crate::minhash::{MinHasher, NearDedupConfig};

const BANDS: TableDefinition<u64, &[u8]> = TableDefinition::new("bands");
const AGE: TableDefinition<u64, &[u8]> = TableDefinition::new("age");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT_VERSION: u64 = 1;
/// Bytes before the sketch in a `bands` value: origin hash and epoch.
const VALUE_HEADER: usize = 16;

/// Why the index could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("near_dedup index {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("near_dedup index: {0}")]
    Layout(String),
    #[error("near_dedup index {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The partition a band key belongs to: its high 32 bits scaled to `0..partitions`.
pub fn partition_of(key: u64, partitions: u32) -> u32 {
    (((key >> 32) * partitions as u64) >> 32) as u32
}

/// Where a partition lives under `state_dir`.
pub fn partition_path(state_dir: &Path, partition: u32, partitions: u32) -> PathBuf {
    state_dir
        .join("near_dedup")
        .join(format!("part-{partition:04}-of-{partitions:04}.redb"))
}

/// Checks a configuration against its `state_dir` before workers start, so a bad setting is one
/// clear error instead of a panic in every worker: the directory must be creatable and must not
/// hold partitions written with another partition count.
pub fn check_state_dir(cfg: &NearDedupConfig) -> Result<(), IndexError> {
    cfg.validate().map_err(IndexError::Layout)?;
    let Some(dir) = &cfg.state_dir else {
        return Ok(());
    };
    let dir = dir.join("near_dedup");
    let io = |source| IndexError::Io {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let suffix = format!("-of-{:04}.redb", cfg.partitions);
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("part-") && name.ends_with(".redb") && !name.ends_with(&suffix) {
            return Err(IndexError::Layout(format!(
                "{} holds {name}, written with another `partitions` setting than {}; \
                 restore that setting or move the directory away",
                dir.display(),
                cfg.partitions
            )));
        }
    }
    Ok(())
}

/// What a partition needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct IndexParams {
    pub state_dir: Option<PathBuf>,
    pub partitions: u32,
    /// [`MinHasher::params_fingerprint`]: keys made with other parameters must not be mixed in.
    pub fingerprint: u64,
    pub sketch_len: usize,
    /// Entries a partition keeps before evicting its oldest; 0 = unbounded.
    pub max_entries: u64,
    /// Entries older than this many epoch units (ms) expire; 0 = never.
    pub ttl: u64,
    pub sync_interval: Duration,
    pub cache_bytes: usize,
}

impl IndexParams {
    pub fn new(cfg: &NearDedupConfig) -> Self {
        let partitions = cfg.partitions.max(1);
        let max_entries = if cfg.max_documents == 0 {
            0
        } else {
            // Every document inserts one key per band; keys spread evenly over partitions.
            (cfg.max_documents * cfg.bands as u64).div_ceil(partitions as u64)
        };
        IndexParams {
            state_dir: cfg.state_dir.clone(),
            partitions,
            fingerprint: MinHasher::new(cfg).params_fingerprint(),
            sketch_len: cfg.num_hashes(),
            max_entries,
            ttl: cfg.ttl_millis(),
            sync_interval: Duration::from_millis(cfg.sync_interval_ms),
            // The budget is per process, which holds every partition once over its workers.
            cache_bytes: (cfg.cache_mb << 20) / partitions as usize,
        }
    }
}

/// One band key of a document, as the index is asked about it.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a> {
    pub key: u64,
    /// Hash of the document's origin: the same message replayed is not a copy of itself.
    pub origin: u64,
    pub id: &'a str,
    pub sketch: &'a [u8],
}

/// The earlier document a query collided with.
#[derive(Clone, Copy, Debug)]
pub struct Earlier<'a> {
    pub id: &'a str,
    pub epoch: u64,
    pub sketch: &'a [u8],
}

/// Counts of one [`Partition::apply_epoch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpochStats {
    pub inserted: u64,
    pub collisions: u64,
    pub replays: u64,
    pub evicted: u64,
}

/// One partition of the index: its redb database and in-memory filter.
pub struct Partition {
    db: Database,
    path: String,
    filter: Fingerprints,
    entries: u64,
    params: IndexParams,
    last_sync: Instant,
    dirty: bool,
}

fn db_err(path: &str) -> impl Fn(redb::Error) -> IndexError + '_ {
    move |e| IndexError::Db {
        path: path.to_string(),
        source: Box::new(e),
    }
}

impl Partition {
    /// Opens (or creates) partition `partition`, in `params.state_dir` or in memory.
    pub fn open(partition: u32, params: &IndexParams) -> Result<Partition, IndexError> {
        let (db, path) = match &params.state_dir {
            Some(dir) => {
                let path = partition_path(dir, partition, params.partitions);
                let shown = path.display().to_string();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| IndexError::Io {
                        path: shown.clone(),
                        source,
                    })?;
                }
                let db = Builder::new()
                    .set_cache_size(params.cache_bytes.max(1 << 20))
                    .create(&path)
                    .map_err(|e| db_err(&shown)(e.into()))?;
                (db, shown)
            }
            None => {
                let db = Builder::new()
                    .create_with_backend(InMemoryBackend::new())
                    .map_err(|e| db_err("(memory)")(e.into()))?;
                (db, format!("(memory partition {partition})"))
            }
        };
        let mut part = Partition {
            db,
            path,
            filter: Fingerprints::with_capacity(0),
            entries: 0,
            params: params.clone(),
            last_sync: Instant::now(),
            dirty: false,
        };
        part.check_meta(partition)?;
        part.load_filter()?;
        Ok(part)
    }

    fn check_meta(&mut self, partition: u32) -> Result<(), IndexError> {
        let err = db_err(&self.path);
        let expected = [
            ("format", FORMAT_VERSION),
            ("params", self.params.fingerprint),
            ("partitions", self.params.partitions as u64),
            ("partition", partition as u64),
        ];
        let txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            for (name, want) in expected {
                let found = meta
                    .get(name)
                    .map_err(|e| err(e.into()))?
                    .map(|v| v.value());
                match found {
                    Some(have) if have != want => {
                        return Err(IndexError::Layout(format!(
                            "{}: `{name}` is {have:#x}, this configuration needs {want:#x} \
                             (MinHash parameters, normalization or partitions changed); \
                             move the directory away to start a new index",
                            self.path
                        )));
                    }
                    Some(_) => {}
                    None => {
                        meta.insert(name, want).map_err(|e| err(e.into()))?;
                    }
                }
            }
            // Create the data tables so read transactions always find them.
            txn.open_table(BANDS).map_err(|e| err(e.into()))?;
            txn.open_table(AGE).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        Ok(())
    }

    fn load_filter(&mut self) -> Result<(), IndexError> {
        let err = db_err(&self.path);
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let bands = txn.open_table(BANDS).map_err(|e| err(e.into()))?;
        self.entries = bands.len().map_err(|e| err(e.into()))?;
        self.filter = Fingerprints::with_capacity(self.entries as usize);
        for entry in bands.iter().map_err(|e| err(e.into()))? {
            let (key, _) = entry.map_err(|e| err(e.into()))?;
            self.filter.insert(key.value());
        }
        Ok(())
    }

    /// Keys stored.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Bytes of memory the partition holds per its keys (the filter; redb's cache is bounded
    /// separately by `cache_mb`).
    pub fn memory_bytes(&self) -> usize {
        self.filter.memory_bytes()
    }

    /// Judges one epoch's queries, in the given order: a key seen before (with another origin)
    /// calls `on_hit(query index, earlier document)`; a new key is inserted, so later queries of
    /// the same epoch see it. Expiry runs before the queries, the size cap after them.
    pub fn apply_epoch(
        &mut self,
        epoch: u64,
        queries: &[Query<'_>],
        mut on_hit: impl FnMut(usize, Earlier<'_>),
    ) -> Result<EpochStats, IndexError> {
        let path = self.path.clone();
        let err = db_err(&path);
        let durable = self.params.sync_interval.is_zero()
            || self.last_sync.elapsed() >= self.params.sync_interval;
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        set_durability(&mut txn, durable).map_err(&err)?;
        let mut stats = EpochStats::default();
        {
            let mut bands = txn.open_table(BANDS).map_err(|e| err(e.into()))?;
            let mut age = txn.open_table(AGE).map_err(|e| err(e.into()))?;
            if self.params.ttl > 0 && epoch > self.params.ttl {
                let cutoff = epoch - self.params.ttl;
                stats.evicted += self
                    .evict(&mut bands, &mut age, |e, _| e < cutoff, u64::MAX)
                    .map_err(&err)?;
            }
            let mut added: Vec<u8> = Vec::new();
            for (i, q) in queries.iter().enumerate() {
                debug_assert_eq!(q.sketch.len(), self.params.sketch_len);
                if self.filter.contains(q.key)
                    && let Some(found) = bands.get(q.key).map_err(|e| err(e.into()))?
                {
                    let value = found.value();
                    let earlier = decode(value, self.params.sketch_len).ok_or_else(|| {
                        IndexError::Layout(format!("{path}: corrupt entry for key {:#x}", q.key))
                    })?;
                    if earlier.0 == q.origin {
                        stats.replays += 1;
                    } else {
                        stats.collisions += 1;
                        on_hit(i, earlier.1);
                    }
                    continue;
                }
                bands
                    .insert(q.key, encode(q, epoch).as_slice())
                    .map_err(|e| err(e.into()))?;
                self.filter.insert(q.key);
                self.entries += 1;
                stats.inserted += 1;
                added.extend_from_slice(&q.key.to_le_bytes());
            }
            if !added.is_empty() {
                // A restarted engine may reuse an epoch number: append, never overwrite.
                let mut keys = age
                    .get(epoch)
                    .map_err(|e| err(e.into()))?
                    .map(|v| v.value().to_vec())
                    .unwrap_or_default();
                keys.extend_from_slice(&added);
                age.insert(epoch, keys.as_slice())
                    .map_err(|e| err(e.into()))?;
            }
            let cap = self.params.max_entries;
            if cap > 0 && self.entries > cap {
                let excess = self.entries - cap;
                stats.evicted += self
                    .evict(&mut bands, &mut age, |_, _| true, excess)
                    .map_err(&err)?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        if durable {
            self.last_sync = Instant::now();
            self.dirty = false;
        } else {
            self.dirty = true;
        }
        Ok(stats)
    }

    /// Removes the oldest keys, epoch by epoch while `whole_epoch(epoch, ..)` holds, at most
    /// `limit` keys (a partly evicted epoch keeps the rest of its list).
    fn evict(
        &mut self,
        bands: &mut redb::Table<'_, u64, &[u8]>,
        age: &mut redb::Table<'_, u64, &[u8]>,
        whole_epoch: impl Fn(u64, usize) -> bool,
        limit: u64,
    ) -> Result<u64, redb::Error> {
        let mut evicted = 0u64;
        while evicted < limit {
            let Some((epoch, keys)) = age.first()?.map(|(k, v)| (k.value(), v.value().to_vec()))
            else {
                break;
            };
            if !whole_epoch(epoch, keys.len() / 8) {
                break;
            }
            age.remove(epoch)?;
            let mut rest = keys.chunks_exact(8);
            for chunk in rest.by_ref() {
                let key = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
                if bands.remove(key)?.is_some() {
                    self.filter.remove(key);
                    self.entries -= 1;
                }
                evicted += 1;
                if evicted >= limit {
                    break;
                }
            }
            let remaining: Vec<u8> = rest.flatten().copied().collect();
            if !remaining.is_empty() {
                age.insert(epoch, remaining.as_slice())?;
            }
        }
        Ok(evicted)
    }

    /// Makes every commit so far durable (an fsync), if any is not yet.
    pub fn sync(&mut self) -> Result<(), IndexError> {
        if !self.dirty {
            return Ok(());
        }
        let err = db_err(&self.path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        set_durability(&mut txn, true).map_err(&err)?;
        txn.commit().map_err(|e| err(e.into()))?;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the interval has passed since the last durable commit (for idle streams).
    pub fn sync_if_due(&mut self) -> Result<(), IndexError> {
        if self.dirty && self.last_sync.elapsed() >= self.params.sync_interval {
            self.sync()?;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Best effort: a failure here is a crash as far as the index is concerned, which it
        // tolerates (it loses the last interval).
        let _ = self.sync();
    }
}

fn set_durability(txn: &mut redb::WriteTransaction, durable: bool) -> Result<(), redb::Error> {
    if durable {
        txn.set_durability(Durability::Immediate)?;
        // Stores allocator state with the commit, so opening after a crash needs no full repair.
        txn.set_quick_repair(true);
    } else {
        txn.set_durability(Durability::None)?;
    }
    Ok(())
}

fn encode(q: &Query<'_>, epoch: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER + q.sketch.len() + q.id.len());
    v.extend_from_slice(&q.origin.to_le_bytes());
    v.extend_from_slice(&epoch.to_le_bytes());
    v.extend_from_slice(q.sketch);
    v.extend_from_slice(q.id.as_bytes());
    v
}

fn decode(value: &[u8], sketch_len: usize) -> Option<(u64, Earlier<'_>)> {
    if value.len() < VALUE_HEADER + sketch_len {
        return None;
    }
    let origin = u64::from_le_bytes(value[0..8].try_into().ok()?);
    let epoch = u64::from_le_bytes(value[8..16].try_into().ok()?);
    let sketch = &value[VALUE_HEADER..VALUE_HEADER + sketch_len];
    let id = std::str::from_utf8(&value[VALUE_HEADER + sketch_len..]).ok()?;
    Some((origin, Earlier { id, epoch, sketch }))
}

const BUCKET: usize = 8;
const EMPTY: u32 = 0;
const TOMBSTONE: u32 = 1;

/// A set of 32-bit key fingerprints with no false negatives: open addressing over buckets of 8
/// slots. A key's home bucket is derived from its fingerprint alone, so the table can be rebuilt
/// at another size without the full keys. A lookup scans buckets from home until one that has an
/// empty slot (tombstones do not stop it); equal fingerprints of different keys are both "maybe".
struct Fingerprints {
    slots: Vec<u32>,
    live: usize,
    dead: usize,
}

impl Fingerprints {
    fn with_capacity(keys: usize) -> Self {
        let buckets = (keys * 10 / 6).div_ceil(BUCKET).max(1);
        Fingerprints {
            slots: vec![EMPTY; buckets * BUCKET],
            live: 0,
            dead: 0,
        }
    }

    fn fingerprint(key: u64) -> u32 {
        // The low half: the partition is chosen by the high half, so these bits are still random.
        let v = key as u32;
        if v <= TOMBSTONE { v + 2 } else { v }
    }

    fn buckets(&self) -> usize {
        self.slots.len() / BUCKET
    }

    fn home(&self, fp: u32) -> usize {
        ((fp as u64 * self.buckets() as u64) >> 32) as usize
    }

    fn contains(&self, key: u64) -> bool {
        let fp = Self::fingerprint(key);
        let mut b = self.home(fp);
        loop {
            let bucket = &self.slots[b * BUCKET..(b + 1) * BUCKET];
            if bucket.contains(&fp) {
                return true;
            }
            if bucket.contains(&EMPTY) {
                return false;
            }
            b = (b + 1) % self.buckets();
        }
    }

    fn insert(&mut self, key: u64) {
        if (self.live + self.dead + 1) * 10 > self.slots.len() * 9 {
            self.rebuild();
        }
        let fp = Self::fingerprint(key);
        let mut b = self.home(fp);
        loop {
            let bucket = &mut self.slots[b * BUCKET..(b + 1) * BUCKET];
            if let Some(slot) = bucket.iter_mut().find(|s| **s <= TOMBSTONE) {
                if *slot == TOMBSTONE {
                    self.dead -= 1;
                }
                *slot = fp;
                self.live += 1;
                return;
            }
            b = (b + 1) % self.buckets();
        }
    }

    fn remove(&mut self, key: u64) {
        let fp = Self::fingerprint(key);
        let mut b = self.home(fp);
        loop {
            let bucket = &mut self.slots[b * BUCKET..(b + 1) * BUCKET];
            if let Some(slot) = bucket.iter_mut().find(|s| **s == fp) {
                *slot = TOMBSTONE;
                self.live -= 1;
                self.dead += 1;
                return;
            }
            if bucket.contains(&EMPTY) {
                return;
            }
            b = (b + 1) % self.buckets();
        }
    }

    /// Reinserts the live fingerprints into a table sized for 60 % load, dropping tombstones.
    fn rebuild(&mut self) {
        let old = std::mem::take(&mut self.slots);
        *self = Fingerprints::with_capacity(self.live + 1);
        for fp in old.into_iter().filter(|&s| s > TOMBSTONE) {
            let mut b = self.home(fp);
            loop {
                let bucket = &mut self.slots[b * BUCKET..(b + 1) * BUCKET];
                if let Some(slot) = bucket.iter_mut().find(|s| **s == EMPTY) {
                    *slot = fp;
                    break;
                }
                b = (b + 1) % self.buckets();
            }
            self.live += 1;
        }
    }

    fn memory_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spread-out keys (splitmix64's finalizer), as band hashes are.
    fn key(i: u64) -> u64 {
        let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn params(dir: Option<&Path>) -> IndexParams {
        let cfg = NearDedupConfig {
            state_dir: dir.map(Path::to_path_buf),
            partitions: 1,
            ..NearDedupConfig::default()
        };
        IndexParams::new(&cfg)
    }

    fn query(k: u64, origin: u64, id: &str) -> Query<'_> {
        static SKETCH: [u8; 112] = [7; 112];
        Query {
            key: k,
            origin,
            id,
            sketch: &SKETCH,
        }
    }

    #[test]
    fn filter_has_no_false_negatives_through_growth_and_removal() {
        let mut f = Fingerprints::with_capacity(0);
        for i in 0..50_000 {
            f.insert(key(i));
        }
        assert!((0..50_000).all(|i| f.contains(key(i))));
        for i in (0..50_000).step_by(2) {
            f.remove(key(i));
        }
        assert!((1..50_000).step_by(2).all(|i| f.contains(key(i))));
        let false_pos = (0..50_000)
            .step_by(2)
            .filter(|&i| f.contains(key(i)))
            .count();
        assert!(false_pos < 5, "{false_pos}");
        for i in 50_000..100_000 {
            f.insert(key(i));
        }
        assert!((50_000..100_000).all(|i| f.contains(key(i))));
        assert!((1..50_000).step_by(2).all(|i| f.contains(key(i))));
        // 4 bytes per key at 60-90 % load.
        let per_key = f.memory_bytes() as f64 / f.live as f64;
        assert!((4.4..=6.8).contains(&per_key), "{per_key}");
    }

    #[test]
    fn first_seen_wins_and_replays_are_not_copies() {
        let mut p = Partition::open(0, &params(None)).unwrap();
        let mut hits = Vec::new();
        let stats = p
            .apply_epoch(
                1,
                &[query(10, 1, "a"), query(11, 1, "a"), query(10, 2, "b")],
                |i, e| hits.push((i, e.id.to_string(), e.epoch)),
            )
            .unwrap();
        assert_eq!(hits, vec![(2, "a".to_string(), 1)]);
        assert_eq!((stats.inserted, stats.collisions), (2, 1));
        hits.clear();
        let stats = p
            .apply_epoch(2, &[query(11, 1, "a"), query(12, 3, "c")], |i, e| {
                hits.push((i, e.id.to_string(), e.epoch))
            })
            .unwrap();
        assert!(hits.is_empty());
        assert_eq!((stats.replays, stats.inserted), (1, 1));
        assert_eq!(p.entries(), 3);
    }

    #[test]
    fn persists_across_reopen_and_refuses_other_parameters() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut p = Partition::open(0, &params(Some(dir.path()))).unwrap();
            p.apply_epoch(5, &[query(key(1), 1, "first")], |_, _| {})
                .unwrap();
        }
        let mut p = Partition::open(0, &params(Some(dir.path()))).unwrap();
        assert_eq!(p.entries(), 1);
        let mut hits = Vec::new();
        p.apply_epoch(6, &[query(key(1), 2, "copy")], |_, e| {
            hits.push(e.id.to_string())
        })
        .unwrap();
        assert_eq!(hits, vec!["first".to_string()]);
        drop(p);
        let mut other = params(Some(dir.path()));
        other.fingerprint ^= 1;
        assert!(matches!(
            Partition::open(0, &other),
            Err(IndexError::Layout(_))
        ));
        let cfg = NearDedupConfig {
            state_dir: Some(dir.path().to_path_buf()),
            partitions: 2,
            ..NearDedupConfig::default()
        };
        assert!(check_state_dir(&cfg).is_err());
        assert!(
            check_state_dir(&NearDedupConfig {
                partitions: 1,
                ..cfg
            })
            .is_ok()
        );
    }

    #[test]
    fn ttl_and_cap_evict_oldest_first() {
        let mut prm = params(None);
        prm.ttl = 100;
        let mut p = Partition::open(0, &prm).unwrap();
        p.apply_epoch(1000, &[query(key(1), 1, "old")], |_, _| {})
            .unwrap();
        p.apply_epoch(1050, &[query(key(2), 2, "mid")], |_, _| {})
            .unwrap();
        // At 1120 the entry of epoch 1000 has expired, that of 1050 has not.
        let mut hits = Vec::new();
        let stats = p
            .apply_epoch(
                1120,
                &[query(key(1), 3, "x"), query(key(2), 4, "y")],
                |_, e| hits.push(e.id.to_string()),
            )
            .unwrap();
        assert_eq!(hits, vec!["mid".to_string()]);
        assert_eq!(stats.evicted, 1);

        let mut prm = params(None);
        prm.max_entries = 3;
        let mut p = Partition::open(0, &prm).unwrap();
        for i in 0..5u64 {
            p.apply_epoch(i, &[query(key(100 + i), i, "d")], |_, _| {})
                .unwrap();
        }
        assert_eq!(p.entries(), 3);
        let mut hits = 0;
        p.apply_epoch(
            9,
            &[query(key(100), 50, "z"), query(key(104), 51, "z")],
            |_, _| hits += 1,
        )
        .unwrap();
        // key 100 was evicted (and is now re-inserted), key 104 is still there.
        assert_eq!(hits, 1);
    }
}
