//! The near-duplicate LSH index: band key → the first document that produced it.
//!
//! The key space is split into a fixed number of partitions (by the key's high bits); each is a
//! redb file `<state_dir>/near_dedup/part-PPPP-of-NNNN.redb` owned by exactly one worker, the one
//! the band keys of that partition are exchanged to (`partition % workers`). A restart with any
//! number of workers therefore reloads every partition, each worker opening only its own.
//!
//! A partition is an append-only log of records in redb, `record number → (band key, origin hash,
//! epoch, signature sketch, document id)`, plus an in-memory table from band key to record number.
//! The log stores records in chunks of up to [`CHUNK_RECORDS`] consecutive numbers, one redb entry
//! per chunk under the number of its first record: one B-tree insert per chunk rather than per key
//! (inserting key by key took a fifth of a whole `run --no-llm`, measured), while reading one
//! record back reads one chunk (about 8 KB for near dedup).
//! A partition at its key limit evicts one key per insert, which copies the first chunk each
//! time (not measured at that size: 16.7 M keys). Record numbers only grow, so every chunk appends to the B-tree's
//! last leaf and eviction (oldest first: expiry by epoch, or the size cap) moves the `oldest`
//! number forward, dropping a chunk once all its records are behind it: the disk sees about one
//! page write per page of new records, whatever the size of the index.
//!
//! The in-memory table holds 4 bytes per key, 8 bits of the key's hash and the low 24 bits of its
//! record number, in buckets of 8 slots kept 60–90 % full: 4.4–6.7 bytes per key, 62–93 bytes per
//! document with 14 bands. A lookup reads from redb only the records whose 8 bits match (the real
//! copy, or a few percent of lookups by chance) and compares the full key. The table is rebuilt
//! from the log on open, and when it grows (the log holds the keys it does not).
//!
//! Writes commit once per epoch and partition without fsync; every `sync_interval_ms`, and when
//! the stage shuts down, a commit is made durable. A crash loses at most that interval of index
//! entries: the restarted engine then lets a copy of those documents through, nothing worse.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::ops::Bound;

use redb::backends::{FileBackend, InMemoryBackend};
use redb::{
    BackendError, Builder, Database, Durability, ReadableDatabase, ReadableTable, StorageBackend,
    TableDefinition,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::minhash::{MinHasher, NearDedupConfig, sketch_len};
use webscale_rl_records::changelog::{Change, Changelog, Restored};

/// The log: the number of a chunk's first record → the chunk ([`push_record`]'s encoding).
const CHUNKS: TableDefinition<u64, &[u8]> = TableDefinition::new("chunks");
/// Format 2's log, one record per entry; read once to migrate a partition written by it.
const LEGACY_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `meta` key of the first record number still in use (records before it are evicted, though
/// their chunk may remain until all its records are).
const OLDEST: &str = "oldest";
/// `meta` key of the changelog offset after the last one this partition holds (0: none).
const CHANGELOG_NEXT: &str = "changelog_next";
/// Records restored from a changelog per write transaction.
const RESTORE_BATCH: usize = 16 * CHUNK_RECORDS;
const FORMAT_VERSION: u64 = 3;
/// Records per stored chunk (see the module doc).
pub const CHUNK_RECORDS: usize = 64;
/// Bytes before the sketch in a record: band key, origin hash, epoch.
const RECORD_HEADER: usize = 24;
/// The in-memory table keeps 24 bits of record numbers, so a partition holds at most this many
/// keys (16.7 M; about 38 M documents over 32 partitions); the oldest go first beyond it.
pub const MAX_KEYS_PER_PARTITION: u64 = (1 << SLOT_BITS) - 1;

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

/// Index files per dedup stage when the config does not say: enough for a long-lived state
/// directory to be shared by up to 32 workers, and reopened by any number of them.
pub const DEFAULT_PARTITIONS: u32 = 32;

/// The partition a band key belongs to: its high 32 bits scaled to `0..partitions`.
pub fn partition_of(key: u64, partitions: u32) -> u32 {
    (((key >> 32) * partitions as u64) >> 32) as u32
}

/// Where a near-dedup partition lives under `state_dir`.
pub fn partition_path(state_dir: &Path, partition: u32, partitions: u32) -> PathBuf {
    partition_path_in(state_dir, "near_dedup", partition, partitions)
}

/// Where partition `partition` of the index `name` (`near_dedup`, `exact_dedup`) lives.
pub fn partition_path_in(state_dir: &Path, name: &str, partition: u32, partitions: u32) -> PathBuf {
    state_dir
        .join(name)
        .join(format!("part-{partition:04}-of-{partitions:04}.redb"))
}

/// The partitions worker `worker` of `peers` owns (`p % peers == worker`), opened, and `slot`
/// with `slot[p]` = where partition `p` sits among them (`usize::MAX` if another worker owns it).
/// Panics naming the stage when a partition cannot be opened: the stages check their state
/// directory before the workers start ([`check_layout`]), so this is a fault of the machine.
pub fn open_owned(params: &IndexParams, worker: u32, peers: u32) -> (Vec<usize>, Vec<Partition>) {
    let mut slot = vec![usize::MAX; params.partitions as usize];
    let mut parts = Vec::new();
    if let Some(changelog) = &params.changelog {
        let owned = (0..params.partitions)
            .filter(|p| p % peers == worker)
            .count();
        changelog.0.restore_expected(owned);
    }
    for p in (0..params.partitions).filter(|p| p % peers == worker) {
        slot[p as usize] = parts.len();
        parts.push(
            Partition::open(p, params)
                .unwrap_or_else(|e| panic!("{} worker {worker}: {e}", params.name)),
        );
    }
    (slot, parts)
}

/// Checks a configuration against its `state_dir` before workers start, so a bad setting is one
/// clear error instead of a panic in every worker: the directory must be creatable and must not
/// hold partitions written with another partition count.
pub fn check_state_dir(cfg: &NearDedupConfig) -> Result<(), IndexError> {
    cfg.validate().map_err(IndexError::Layout)?;
    check_layout(cfg.state_dir.as_deref(), "near_dedup", cfg.partitions())
}

/// The partition count an index under `<state_dir>/<name>/` was written with, if it holds one.
pub fn existing_partitions(state_dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_dir(state_dir.join(name))
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let name = name.to_str()?;
            name.strip_prefix("part-")?
                .strip_suffix(".redb")?
                .split_once("-of-")?
                .1
                .parse()
                .ok()
        })
        .next()
}

/// [`check_state_dir`] for any index kept in partitions under `<state_dir>/<name>/`.
pub fn check_layout(
    state_dir: Option<&Path>,
    name: &str,
    partitions: u32,
) -> Result<(), IndexError> {
    let Some(dir) = state_dir else {
        return Ok(());
    };
    let dir = dir.join(name);
    let io = |source| IndexError::Io {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let suffix = format!("-of-{partitions:04}.redb");
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("part-") && name.ends_with(".redb") && !name.ends_with(&suffix) {
            return Err(IndexError::Layout(format!(
                "{} holds {name}, written with another `partitions` setting than {}; \
                 restore that setting or move the directory away",
                dir.display(),
                partitions
            )));
        }
    }
    Ok(())
}

/// Durability on demand. Partitions opened with it commit every epoch without syncing, and
/// whoever records progress that relies on them (a resumable file run, before it stores a
/// checkpoint) calls [`IndexSync::sync_all`] first: one sync per partition per checkpoint
/// instead of one per partition per epoch. The handle keeps every partition's database open
/// until the last clone of it drops or [`IndexSync::release`], so a worker that stops first
/// (Ctrl-C) leaves its commits for the checkpoint that counts them; closing a database makes its
/// commits durable, unless its syncs are skipped (below).
///
/// The files can skip their syncs while nothing relies on them, for a state that lives and dies
/// with its run (a file run's own `OUTPUT.state/`, not a `state_dir` the config names). A run
/// that starts from nothing says so ([`IndexSync::skip_syncs_until_checkpoint`]): until its
/// first checkpoint a crash starts it over and removes the state, and creating 16 partitions
/// took 87 syncs in a traced run, each file's growth more (48). A run about to remove its state says so
/// ([`IndexSync::discard`]): closing a database writes its pages and syncs them, and those syncs
/// were a tenth of a short run's time (16 partitions, 64 syncs, about 0.05 s with every worker
/// done and waiting).
#[derive(Clone, Default)]
pub struct IndexSync {
    partitions: Arc<Mutex<Vec<Registered>>>,
    discard: Arc<Discard>,
}

/// A partition's database, whether it committed since the last sync, and its path (for errors).
type Registered = (Arc<Database>, Arc<AtomicBool>, String);

/// Shared by an [`IndexSync`] and the files of its partitions.
#[derive(Debug, Default)]
struct Discard {
    /// [`SYNCED`], [`UNTIL_CHECKPOINT`] or [`DISCARDED`]: the files skip their syncs unless
    /// [`SYNCED`].
    state: std::sync::atomic::AtomicU8,
    /// Syncs skipped.
    skipped: std::sync::atomic::AtomicU64,
}

/// The files sync as redb asks.
const SYNCED: u8 = 0;
/// Nothing relies on the state before the first checkpoint ([`IndexSync::sync_all`]).
const UNTIL_CHECKPOINT: u8 = 1;
/// The state is about to be removed.
const DISCARDED: u8 = 2;

/// A partition file that skips its syncs while nothing relies on them: redb's own file backend,
/// with `sync_data` skipped unless its [`Discard`] state is [`SYNCED`]. Every other call, the
/// locks that keep two processes out of one partition included, is the file backend's.
#[derive(Debug)]
struct DiscardableFile {
    file: FileBackend,
    discard: Arc<Discard>,
}

impl StorageBackend for DiscardableFile {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if self.discard.state.load(Ordering::Acquire) != SYNCED {
            self.discard.skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

impl IndexSync {
    /// The run's state is thrown away when it ends (its outputs are complete): from now on no
    /// partition file waits for the disk. A partition closing still writes its pages, to files
    /// about to be removed; a crash now leaves them torn, which matters to no one.
    pub fn discard(&self) {
        self.discard.state.store(DISCARDED, Ordering::Release);
    }

    /// The run starts from nothing, and its state is its own: until its first checkpoint
    /// ([`IndexSync::sync_all`]) a crash starts it over and removes the state, so no partition
    /// file waits for the disk before then. That first sync makes every commit durable, the
    /// skipped ones' too. Not for a state that outlives a crashed run.
    pub fn skip_syncs_until_checkpoint(&self) {
        self.discard
            .state
            .store(UNTIL_CHECKPOINT, Ordering::Release);
    }

    /// Lets go of the partitions' databases: each closes now, unless its partition is still
    /// open (then it closes with it). For the end of a run, when no checkpoint is left to take.
    pub fn release(&self) {
        let all = std::mem::take(&mut *self.partitions.lock().unwrap_or_else(|e| e.into_inner()));
        drop(all);
    }

    /// Syncs the partition files skipped, before the first checkpoint and after the discard.
    pub fn syncs_skipped(&self) -> u64 {
        self.discard.skipped.load(Ordering::Relaxed)
    }

    /// Makes every commit so far of every registered partition durable (an fsync each, for
    /// those with commits since the last). Returns how many it synced.
    pub fn sync_all(&self) -> Result<usize, IndexError> {
        // From the first checkpoint on, the state is what a record counts on (a discarded one
        // stays discarded).
        let _ = self.discard.state.compare_exchange(
            UNTIL_CHECKPOINT,
            SYNCED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let partitions = self
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut synced = 0;
        for (db, dirty, path) in partitions {
            // Cleared before the commit: a commit made meanwhile sets it again for the next.
            if dirty.swap(false, Ordering::AcqRel) {
                let err = db_err(&path);
                let synced_now = db
                    .begin_write()
                    .map_err(|e| err(e.into()))
                    .and_then(|mut txn| {
                        set_durability(&mut txn, true).map_err(&err)?;
                        txn.commit().map_err(|e| err(e.into()))
                    });
                if let Err(e) = synced_now {
                    dirty.store(true, Ordering::Release);
                    return Err(e);
                }
                synced += 1;
            }
        }
        Ok(synced)
    }

    fn register(&self, db: Arc<Database>, path: String) -> Arc<AtomicBool> {
        let dirty = Arc::new(AtomicBool::new(true));
        let mut all = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        all.push((db, dirty.clone(), path));
        dirty
    }
}

impl std::fmt::Debug for IndexSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IndexSync")
    }
}

/// Handles compare equal: which one a run syncs through is not a setting.
impl PartialEq for IndexSync {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What a partition needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct IndexParams {
    /// The index's name, its subdirectory of `state_dir`.
    pub name: &'static str,
    pub state_dir: Option<PathBuf>,
    pub partitions: u32,
    /// [`MinHasher::params_fingerprint`]: keys made with other parameters must not be mixed in.
    pub fingerprint: u64,
    pub sketch_len: usize,
    /// Keys a partition keeps before evicting its oldest.
    pub max_keys: u64,
    /// Keys older than this many epoch units (ms) expire; 0 = never.
    pub ttl: u64,
    pub sync_interval: Duration,
    pub cache_bytes: usize,
    /// Set: commits are never synced here, only through it ([`IndexSync`]).
    pub on_demand: Option<IndexSync>,
    /// Set: every stored record and eviction is also written here, and a partition restores
    /// itself from it when opened ([`webscale_rl_records::changelog`]).
    pub changelog: Option<Changelog>,
    /// Set (changelogs off, a group with history): a partition that has to be created is an
    /// error, with this as its cause — its state is elsewhere, and starting it empty would
    /// silently forget.
    pub refuse_new: Option<String>,
}

impl IndexParams {
    pub fn new(cfg: &NearDedupConfig) -> Self {
        let partitions = cfg.partitions().max(1);
        let max_keys = if cfg.max_documents == 0 {
            MAX_KEYS_PER_PARTITION
        } else {
            // Every document inserts one key per band; keys spread evenly over partitions.
            (cfg.max_documents * cfg.bands as u64)
                .div_ceil(partitions as u64)
                .min(MAX_KEYS_PER_PARTITION)
        };
        IndexParams {
            name: "near_dedup",
            state_dir: cfg.state_dir.clone(),
            partitions,
            fingerprint: MinHasher::new(cfg).params_fingerprint(),
            sketch_len: sketch_len(cfg.num_hashes()),
            max_keys,
            ttl: cfg.ttl_millis(),
            sync_interval: Duration::from_millis(cfg.sync_interval_ms),
            // The budget is per process, which holds every partition once over its workers.
            cache_bytes: (cfg.cache_mb << 20) / partitions as usize,
            on_demand: cfg.index_sync.clone(),
            changelog: cfg.changelog.clone(),
            refuse_new: cfg.refuse_new_partitions.clone(),
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
    /// Records read because 8 bits matched but the key did not.
    pub false_reads: u64,
    /// Chunks written to redb (each up to [`CHUNK_RECORDS`] inserted keys).
    pub chunks_written: u64,
}

/// One partition of the index: its redb log and in-memory table.
pub struct Partition {
    db: Arc<Database>,
    /// With [`IndexParams::on_demand`]: set at every commit, cleared by the sync.
    on_demand: Option<Arc<AtomicBool>>,
    path: String,
    table: Slots,
    /// Record numbers in use: `oldest..next`.
    oldest: u64,
    next: u64,
    /// The last records, `next - pending_at.len()..next`, not yet stored as a chunk: encoded as
    /// a chunk, with where each record starts in it.
    pending: Vec<u8>,
    pending_at: Vec<u32>,
    params: IndexParams,
    last_sync: Instant,
    dirty: bool,
    /// With a changelog: this epoch's changes, in the order made (an eviction and a new record
    /// of the same key must reach the compacted topic in that order).
    changes: Vec<(u64, Option<Vec<u8>>)>,
    partition: u32,
}

/// What a record is in the changelog: the index's fingerprint (keys made with other parameters
/// must not be mixed in), then the record.
fn changelog_value(fingerprint: u64, record: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + record.len());
    v.extend_from_slice(&fingerprint.to_le_bytes());
    v.extend_from_slice(record);
    v
}

fn db_err(path: &str) -> impl Fn(redb::Error) -> IndexError + '_ {
    move |e| IndexError::Db {
        path: path.to_string(),
        source: Box::new(e),
    }
}

type Chunks<'t> = redb::Table<'t, u64, &'static [u8]>;

/// Appends `record` to a chunk: its length (u32, little-endian), then its bytes. Returns where the
/// record's bytes start.
fn push_record(chunk: &mut Vec<u8>, record: &[u8]) -> u32 {
    chunk.extend_from_slice(&(record.len() as u32).to_le_bytes());
    let at = chunk.len() as u32;
    chunk.extend_from_slice(record);
    at
}

/// The records of a chunk, in order; a malformed tail ends them.
fn chunk_records(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let record = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(record)
    })
}

impl Partition {
    /// Opens (or creates) partition `partition`, in `params.state_dir` or in memory.
    pub fn open(partition: u32, params: &IndexParams) -> Result<Partition, IndexError> {
        let (db, path) = match &params.state_dir {
            Some(dir) => {
                let path = partition_path_in(dir, params.name, partition, params.partitions);
                let shown = path.display().to_string();
                if let Some(cause) = &params.refuse_new
                    && !path.exists()
                {
                    return Err(IndexError::Layout(format!(
                        "partition {partition} of {partitions} is not on this disk ({shown} does \
                         not exist): {cause}",
                        partitions = params.partitions
                    )));
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| IndexError::Io {
                        path: shown.clone(),
                        source,
                    })?;
                }
                let mut builder = Builder::new();
                builder.set_cache_size(params.cache_bytes.max(1 << 20));
                let db = match &params.on_demand {
                    // As `Builder::create` opens it, behind the backend that can skip syncs.
                    Some(sync) => std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(redb::DatabaseError::from)
                        .and_then(FileBackend::new)
                        .and_then(|file| {
                            builder.create_with_backend(DiscardableFile {
                                file,
                                discard: sync.discard.clone(),
                            })
                        }),
                    None => builder.create(&path),
                }
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
        check_meta(&db, &path, params, partition)?;
        let db = Arc::new(db);
        let on_demand = params
            .on_demand
            .as_ref()
            .map(|sync| sync.register(db.clone(), path.clone()));
        let (table, oldest, next) = {
            let err = db_err(&path);
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let chunks = txn.open_table(CHUNKS).map_err(|e| err(e.into()))?;
            let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let first = chunks.first().map_err(|e| err(e.into()))?;
            let last = chunks.last().map_err(|e| err(e.into()))?;
            let recorded = meta
                .get(OLDEST)
                .map_err(|e| err(e.into()))?
                .map_or(0, |v| v.value());
            let (oldest, next) = match (first, last) {
                (Some((first, _)), Some((start, chunk))) => {
                    let next = start.value() + chunk_records(chunk.value()).count() as u64;
                    (recorded.max(first.value()).min(next), next)
                }
                // Everything evicted: numbering goes on from where it stopped, so that the
                // recorded `oldest` never lies ahead of records written later.
                _ => (recorded, recorded),
            };
            let table = stored_keys(&chunks, oldest, next - oldest).map_err(&err)?;
            (table, oldest, next)
        };
        let mut part = Partition {
            db,
            on_demand,
            path,
            table,
            oldest,
            next,
            pending: Vec::new(),
            pending_at: Vec::new(),
            params: params.clone(),
            last_sync: Instant::now(),
            // The metadata commit is not durable yet.
            dirty: true,
            changes: Vec::new(),
            partition,
        };
        if let Some(changelog) = params.changelog.clone() {
            part.restore(&changelog)?;
        }
        Ok(part)
    }

    /// Replays the changelog from the offset after the last one this partition holds (from the
    /// beginning for a new one), before anything is judged. A record whose key is stored is
    /// skipped (a replay after a crash may repeat records the disk kept); a tombstone is skipped
    /// too, since the size cap evicts oldest first here as it did where the record was evicted,
    /// and expiry reads the epochs kept in the records.
    fn restore(&mut self, changelog: &Changelog) -> Result<Restored, IndexError> {
        let path = self.path.clone();
        let err = db_err(&path);
        let from = {
            let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
            let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.get(CHANGELOG_NEXT)
                .map_err(|e| err(e.into()))?
                .map_or(0, |v| v.value())
        };
        let (name, partition) = (self.params.name, self.partition);
        let mut batch: Vec<(i64, Option<Vec<u8>>)> = Vec::new();
        let mut failure: Option<IndexError> = None;
        let fingerprint = self.params.fingerprint;
        let restored = changelog
            .0
            .restore(name, partition, from as i64, &mut |c: Change<'_>| {
                let record = match c.value {
                    None => None,
                    Some(v) if v.len() >= 8 + RECORD_HEADER => {
                        let written_with = le_u64(v, 0).unwrap_or_default();
                        if written_with != fingerprint {
                            return Err(format!(
                                "record {} of the changelog was written with other parameters \
                             (fingerprint {written_with:#x}, this configuration has \
                             {fingerprint:#x}): MinHash parameters, normalization or partitions \
                             changed; use a new group, or the old parameters",
                                c.offset
                            ));
                        }
                        Some(v[8..].to_vec())
                    }
                    Some(_) => {
                        return Err(format!("record {} of the changelog is malformed", c.offset));
                    }
                };
                batch.push((c.offset, record));
                if batch.len() >= RESTORE_BATCH
                    && let Err(e) = self.apply_restored(std::mem::take(&mut batch))
                {
                    failure = Some(e);
                    return Err("stopped".into());
                }
                Ok(())
            });
        if let Some(e) = failure {
            return Err(e);
        }
        let restored = restored.map_err(|e| {
            IndexError::Layout(format!("{path}: restoring from the changelog: {e}"))
        })?;
        self.apply_restored(batch)?;
        changelog.0.restore_finished(name, partition, restored);
        Ok(restored)
    }

    /// Stores restored records (offset, record; `None` a tombstone) in one transaction, with the
    /// offset after the last as the partition's changelog position.
    fn apply_restored(&mut self, batch: Vec<(i64, Option<Vec<u8>>)>) -> Result<(), IndexError> {
        let Some(&(last, _)) = batch.last() else {
            return Ok(());
        };
        let path = self.path.clone();
        let err = db_err(&path);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        set_durability(&mut txn, false).map_err(&err)?;
        let mut stats = EpochStats::default();
        let mut earlier_record = Vec::new();
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(|e| err(e.into()))?;
            for (_, record) in &batch {
                let Some(record) = record else { continue };
                let Some(key) = record_key(record) else {
                    continue;
                };
                if self
                    .stored_number(&chunks, key, &mut earlier_record)
                    .map_err(&err)?
                    .is_some()
                {
                    continue;
                }
                self.append(&mut chunks, key, record, &mut stats)
                    .map_err(&err)?;
            }
            self.flush(&mut chunks, &mut stats).map_err(&err)?;
            if self.entries() > self.params.max_keys {
                let mut excess = self.entries() - self.params.max_keys;
                self.evict(&mut chunks, |_| {
                    let more = excess > 0;
                    excess = excess.saturating_sub(1);
                    more
                })
                .map_err(&err)?;
            }
        }
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(OLDEST, self.oldest)
                .map_err(|e| err(e.into()))?;
            meta.insert(CHANGELOG_NEXT, last as u64 + 1)
                .map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))?;
        // What a restore evicted was evicted where the records were written: no tombstones.
        self.changes.clear();
        self.dirty = true;
        Ok(())
    }

    /// The number of the stored record with `key`, if any (its bytes left in `into`).
    fn stored_number(
        &self,
        chunks: &Chunks<'_>,
        key: u64,
        into: &mut Vec<u8>,
    ) -> Result<Option<u64>, redb::Error> {
        for slot in self.table.candidates(key) {
            let number = self.resolve(slot);
            if self.read_record(chunks, number, into)? && record_key(into) == Some(key) {
                return Ok(Some(number));
            }
        }
        Ok(None)
    }

    /// Appends `record` (whose key is `key`) as the next record.
    fn append(
        &mut self,
        chunks: &mut Chunks<'_>,
        key: u64,
        record: &[u8],
        stats: &mut EpochStats,
    ) -> Result<(), redb::Error> {
        if self.entries() >= MAX_KEYS_PER_PARTITION {
            // Record numbers must stay within a 2^24 window even inside an epoch.
            let mut one = true;
            stats.evicted += self.evict(chunks, |_| std::mem::take(&mut one))?;
        }
        if self.table.needs_rebuild() {
            self.rebuild_table(chunks)?;
        }
        let number = self.next;
        self.pending_at.push(push_record(&mut self.pending, record));
        self.table.insert(key, number);
        self.next += 1;
        stats.inserted += 1;
        if self.pending_at.len() == CHUNK_RECORDS {
            self.flush(chunks, stats)?;
        }
        Ok(())
    }

    /// Keys stored.
    pub fn entries(&self) -> u64 {
        self.next - self.oldest
    }

    /// Bytes of memory the partition holds for its keys (the table; redb's cache is bounded
    /// separately by `cache_mb`).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// Judges one epoch's queries, in the given order: a key seen before (with another origin)
    /// calls `on_hit(query index, earlier document)`; a new key is appended, so later queries of
    /// the same epoch see it. Expiry runs before the queries, the size cap after them.
    pub fn apply_epoch(
        &mut self,
        epoch: u64,
        queries: &[Query<'_>],
        mut on_hit: impl FnMut(usize, Earlier<'_>),
    ) -> Result<EpochStats, IndexError> {
        let path = self.path.clone();
        let err = db_err(&path);
        let durable = self.on_demand.is_none()
            && (self.params.sync_interval.is_zero()
                || self.last_sync.elapsed() >= self.params.sync_interval);
        let mut txn = self.db.begin_write().map_err(|e| err(e.into()))?;
        set_durability(&mut txn, durable).map_err(&err)?;
        let mut stats = EpochStats::default();
        let oldest_before = self.oldest;
        let mut record = Vec::with_capacity(RECORD_HEADER + self.params.sketch_len + 64);
        let mut earlier_record = Vec::new();
        {
            let mut chunks = txn.open_table(CHUNKS).map_err(|e| err(e.into()))?;
            if self.params.ttl > 0 && epoch > self.params.ttl {
                let cutoff = epoch - self.params.ttl;
                stats.evicted += self
                    .evict(&mut chunks, |record| record_epoch(record) < cutoff)
                    .map_err(&err)?;
            }
            for (i, q) in queries.iter().enumerate() {
                debug_assert_eq!(q.sketch.len(), self.params.sketch_len);
                let mut found = false;
                for slot in self.table.candidates(q.key) {
                    let number = self.resolve(slot);
                    if !self
                        .read_record(&chunks, number, &mut earlier_record)
                        .map_err(&err)?
                    {
                        continue;
                    }
                    let (key, origin, earlier) = decode(&earlier_record, self.params.sketch_len)
                        .ok_or_else(|| {
                            IndexError::Layout(format!("{path}: corrupt record {number}"))
                        })?;
                    if key != q.key {
                        stats.false_reads += 1;
                        continue;
                    }
                    found = true;
                    if origin == q.origin {
                        stats.replays += 1;
                        if self.params.changelog.is_some() {
                            // A replay after a crash: the disk may have kept a record whose
                            // changelog write was never acknowledged. Written again (the same
                            // key and value, which compaction collapses), the changelog has it.
                            self.changes.push((key, Some(earlier_record.clone())));
                        }
                    } else {
                        stats.collisions += 1;
                        on_hit(i, earlier);
                    }
                    break;
                }
                if found {
                    continue;
                }
                encode_into(&mut record, q, epoch);
                self.append(&mut chunks, q.key, &record, &mut stats)
                    .map_err(&err)?;
                if self.params.changelog.is_some() {
                    self.changes.push((q.key, Some(record.clone())));
                }
            }
            self.flush(&mut chunks, &mut stats).map_err(&err)?;
            if self.entries() > self.params.max_keys {
                let mut excess = self.entries() - self.params.max_keys;
                stats.evicted += self
                    .evict(&mut chunks, |_| {
                        let more = excess > 0;
                        excess = excess.saturating_sub(1);
                        more
                    })
                    .map_err(&err)?;
            }
        }
        // Every changelog record acknowledged so far was stored here by an earlier commit (a
        // change is written to the changelog after its commit), so this commit may say the
        // partition holds them: if it survives a crash, so do they.
        let changelog_next = self.params.changelog.as_ref().and_then(|c| {
            c.0.acknowledged(self.params.name, self.partition)
                .map(|o| o as u64 + 1)
        });
        if self.oldest != oldest_before || changelog_next.is_some() {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            meta.insert(OLDEST, self.oldest)
                .map_err(|e| err(e.into()))?;
            if let Some(next) = changelog_next {
                meta.insert(CHANGELOG_NEXT, next)
                    .map_err(|e| err(e.into()))?;
            }
        }
        txn.commit().map_err(|e| err(e.into()))?;
        if let Some(changelog) = &self.params.changelog {
            for (key, record) in self.changes.drain(..) {
                let value = record.map(|r| changelog_value(self.params.fingerprint, &r));
                changelog.0.write(
                    self.params.name,
                    self.partition,
                    epoch,
                    &key.to_be_bytes(),
                    value.as_deref(),
                );
            }
        }
        if durable {
            self.last_sync = Instant::now();
            self.dirty = false;
        } else if let Some(dirty) = &self.on_demand {
            dirty.store(true, Ordering::Release);
        } else {
            self.dirty = true;
        }
        Ok(stats)
    }

    /// The record number a slot's 24 bits stand for: the one in `oldest..next` (a window shorter
    /// than 2^24) with those low bits.
    fn resolve(&self, slot: u32) -> u64 {
        self.oldest + ((slot as u64).wrapping_sub(self.oldest) & SLOT_MASK)
    }

    /// Record `number`, copied into `into`; false if it is not in the log.
    fn read_record(
        &self,
        chunks: &Chunks<'_>,
        number: u64,
        into: &mut Vec<u8>,
    ) -> Result<bool, redb::Error> {
        into.clear();
        let pending_start = self.next - self.pending_at.len() as u64;
        if number >= pending_start {
            let at = self.pending_at[(number - pending_start) as usize] as usize;
            let len = u32::from_le_bytes(self.pending[at - 4..at].try_into().expect("4 bytes"));
            into.extend_from_slice(&self.pending[at..at + len as usize]);
            return Ok(true);
        }
        let Some(entry) = chunks.range(..=number)?.next_back() else {
            return Ok(false);
        };
        let (start, chunk) = entry?;
        let index = (number - start.value()) as usize;
        if index >= CHUNK_RECORDS {
            return Ok(false);
        }
        Ok(match chunk_records(chunk.value()).nth(index) {
            Some(record) => {
                into.extend_from_slice(record);
                true
            }
            None => false,
        })
    }

    /// Stores the pending records as one chunk.
    fn flush(
        &mut self,
        chunks: &mut Chunks<'_>,
        stats: &mut EpochStats,
    ) -> Result<(), redb::Error> {
        if self.pending_at.is_empty() {
            return Ok(());
        }
        let start = self.next - self.pending_at.len() as u64;
        chunks.insert(start, self.pending.as_slice())?;
        self.pending.clear();
        self.pending_at.clear();
        stats.chunks_written += 1;
        Ok(())
    }

    /// The table rebuilt for the keys of `oldest..next`, sized for them (the log holds the keys
    /// the table does not).
    fn rebuild_table(&mut self, chunks: &Chunks<'_>) -> Result<(), redb::Error> {
        let mut table = stored_keys(chunks, self.oldest, self.entries())?;
        let pending_start = self.next - self.pending_at.len() as u64;
        for (i, &at) in self.pending_at.iter().enumerate() {
            if let Some(key) = le_u64(&self.pending[at as usize..], 0) {
                table.insert(key, pending_start + i as u64);
            }
        }
        self.table = table;
        Ok(())
    }

    /// Moves `oldest` past the oldest records while `evict(record)` says so, dropping each chunk
    /// whose records are all behind it.
    fn evict(
        &mut self,
        chunks: &mut Chunks<'_>,
        mut evict: impl FnMut(&[u8]) -> bool,
    ) -> Result<u64, redb::Error> {
        let mut evicted = 0;
        let mut chunk = Vec::new();
        while self.oldest < self.next {
            let first = chunks.first()?.map(|(start, value)| {
                chunk.clear();
                chunk.extend_from_slice(value.value());
                start.value()
            });
            let start = match first {
                Some(start) => start,
                // Pending records are evicted only once stored: the size cap runs after the
                // epoch's last chunk is stored, expiry before its first insert, and a partition
                // at its key limit has millions of stored records to evict first.
                None => break,
            };
            // A gap cannot happen (numbers are dense); step over one all the same.
            self.oldest = self.oldest.max(start);
            let mut end = start;
            let mut stopped = false;
            for record in chunk_records(&chunk) {
                let number = end;
                end += 1;
                if number < self.oldest {
                    continue;
                }
                if !evict(record) {
                    stopped = true;
                    break;
                }
                if let Some(key) = record_key(record) {
                    self.table.remove(key, number);
                    if self.params.changelog.is_some() {
                        // A tombstone, so that compaction drops the record from the changelog.
                        self.changes.push((key, None));
                    }
                }
                self.oldest = number + 1;
                evicted += 1;
            }
            if stopped {
                break;
            }
            chunks.remove(start)?;
            self.oldest = self.oldest.max(end);
        }
        Ok(evicted)
    }

    /// Makes every commit so far durable (an fsync), if any is not yet. A partition synced on
    /// demand is left to its [`IndexSync`].
    pub fn sync(&mut self) -> Result<(), IndexError> {
        if !self.dirty || self.on_demand.is_some() {
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

/// The table of the stored records numbered `from` or later, sized for `keys` of them.
fn stored_keys(
    chunks: &impl ReadableTable<u64, &'static [u8]>,
    from: u64,
    keys: u64,
) -> Result<Slots, redb::Error> {
    let mut table = Slots::with_capacity(keys as usize);
    // The chunk holding `from` starts at or before it.
    let first = match chunks.range(..=from)?.next_back() {
        Some(entry) => entry?.0.value(),
        None => from,
    };
    for entry in chunks.range(first..)? {
        let (start, chunk) = entry?;
        for (i, record) in chunk_records(chunk.value()).enumerate() {
            let number = start.value() + i as u64;
            if let Some(key) = record_key(record).filter(|_| number >= from) {
                table.insert(key, number);
            }
        }
    }
    Ok(table)
}

/// Rewrites format 2's log (one redb entry per record) as chunks, in the caller's transaction.
/// Returns how many records it moved.
fn migrate_from_format_2(txn: &redb::WriteTransaction) -> Result<u64, redb::Error> {
    let mut moved = 0;
    {
        let legacy = txn.open_table(LEGACY_RECORDS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut chunk = Vec::new();
        // (first number, records) of the chunk being filled.
        let mut filling: Option<(u64, u64)> = None;
        for entry in legacy.range::<u64>(..)? {
            let (number, record) = entry?;
            let number = number.value();
            // Numbers were dense; a gap (or a full chunk) starts a new chunk all the same.
            if let Some((start, count)) = filling
                && (count as usize == CHUNK_RECORDS || start + count != number)
            {
                chunks.insert(start, chunk.as_slice())?;
                chunk.clear();
                filling = None;
            }
            let (_, count) = filling.get_or_insert((number, 0));
            *count += 1;
            push_record(&mut chunk, record.value());
            moved += 1;
        }
        if let Some((start, _)) = filling {
            chunks.insert(start, chunk.as_slice())?;
        }
    }
    txn.delete_table(LEGACY_RECORDS)?;
    Ok(moved)
}

/// Records the layout in a new partition, or checks that an existing one matches it.
fn check_meta(
    db: &Database,
    path: &str,
    params: &IndexParams,
    partition: u32,
) -> Result<(), IndexError> {
    let err = db_err(path);
    let expected = [
        ("format", FORMAT_VERSION),
        ("params", params.fingerprint),
        ("partitions", params.partitions as u64),
        ("partition", partition as u64),
    ];
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    // Durable with the first periodic sync: opening many partitions costs no fsync each.
    set_durability(&mut txn, false).map_err(&err)?;
    {
        let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        let format = meta
            .get("format")
            .map_err(|e| err(e.into()))?
            .map(|v| v.value());
        if format == Some(2) {
            // Same records, stored one per entry: moved into chunks once, in this commit.
            migrate_from_format_2(&txn).map_err(&err)?;
            meta.insert("format", FORMAT_VERSION)
                .map_err(|e| err(e.into()))?;
        }
        for (name, want) in expected {
            let found = meta
                .get(name)
                .map_err(|e| err(e.into()))?
                .map(|v| v.value());
            match found {
                Some(have) if have != want => {
                    return Err(IndexError::Layout(format!(
                        "{}: `{name}` is {have:#x}, this configuration needs {want:#x} \
                             (MinHash parameters, normalization, partitions or the format \
                             changed); move the directory away to start a new index",
                        path
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert(name, want).map_err(|e| err(e.into()))?;
                }
            }
        }
        txn.open_table(CHUNKS).map_err(|e| err(e.into()))?;
    }
    txn.commit().map_err(|e| err(e.into()))?;
    Ok(())
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

/// A record in `v` (cleared first; reused from one record to the next).
fn encode_into(v: &mut Vec<u8>, q: &Query<'_>, epoch: u64) {
    v.clear();
    v.extend_from_slice(&q.key.to_le_bytes());
    v.extend_from_slice(&q.origin.to_le_bytes());
    v.extend_from_slice(&epoch.to_le_bytes());
    v.extend_from_slice(q.sketch);
    v.extend_from_slice(q.id.as_bytes());
}

fn le_u64(record: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(record.get(at..at + 8)?.try_into().ok()?))
}

fn record_key(record: &[u8]) -> Option<u64> {
    le_u64(record, 0)
}

fn record_epoch(record: &[u8]) -> u64 {
    le_u64(record, 16).unwrap_or(0)
}

/// (band key, origin hash, the document).
fn decode(record: &[u8], sketch_len: usize) -> Option<(u64, u64, Earlier<'_>)> {
    let sketch = record.get(RECORD_HEADER..RECORD_HEADER + sketch_len)?;
    let id = std::str::from_utf8(&record[RECORD_HEADER + sketch_len..]).ok()?;
    Some((
        le_u64(record, 0)?,
        le_u64(record, 8)?,
        Earlier {
            id,
            epoch: le_u64(record, 16)?,
            sketch,
        },
    ))
}

const BUCKET: usize = 8;
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const EMPTY: u32 = 0;
const TOMBSTONE: u32 = u32::MAX;

/// Band key → record number, 4 bytes a key: the top byte is 8 bits of the key (never 0 or 255, so
/// that empty and tombstone slots are not keys), the rest the record number's low 24 bits. Open
/// addressing over buckets of 8 slots; the home bucket comes from other bits of the key. A lookup
/// scans buckets from home up to one with an empty slot (tombstones do not stop it).
struct Slots {
    slots: Vec<u32>,
    live: usize,
    dead: usize,
}

impl Slots {
    fn with_capacity(keys: usize) -> Self {
        let buckets = (keys * 10 / 6).div_ceil(BUCKET).max(1);
        Slots {
            slots: vec![EMPTY; buckets * BUCKET],
            live: 0,
            dead: 0,
        }
    }

    fn tag(key: u64) -> u32 {
        // The home bucket and the partition are the high bits of each half of the key (scaled
        // down); the lowest bits of the high half are independent of both.
        ((key >> 32) as u32 & 0xff).clamp(1, 254) << SLOT_BITS
    }

    fn buckets(&self) -> usize {
        self.slots.len() / BUCKET
    }

    fn home(&self, key: u64) -> usize {
        ((key as u32 as u64 * self.buckets() as u64) >> 32) as usize
    }

    /// The 24-bit record numbers of the slots whose tag matches `key`.
    fn candidates(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let tag = Self::tag(key);
        let mut b = self.home(key);
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let bucket = &self.slots[b * BUCKET..(b + 1) * BUCKET];
            done = bucket.contains(&EMPTY);
            b = (b + 1) % self.buckets();
            Some(
                bucket
                    .iter()
                    .filter(move |&&s| s & !(SLOT_MASK as u32) == tag && s != TOMBSTONE),
            )
        })
        .flatten()
        .map(|&s| s & SLOT_MASK as u32)
    }

    /// Whether the next insert would pass 90 % load (counting tombstones).
    fn needs_rebuild(&self) -> bool {
        (self.live + self.dead + 1) * 10 > self.slots.len() * 9
    }

    fn insert(&mut self, key: u64, number: u64) {
        let value = Self::tag(key) | (number & SLOT_MASK) as u32;
        let mut b = self.home(key);
        loop {
            let bucket = &mut self.slots[b * BUCKET..(b + 1) * BUCKET];
            if let Some(slot) = bucket.iter_mut().find(|s| **s == EMPTY || **s == TOMBSTONE) {
                if *slot == TOMBSTONE {
                    self.dead -= 1;
                }
                *slot = value;
                self.live += 1;
                return;
            }
            b = (b + 1) % self.buckets();
        }
    }

    fn remove(&mut self, key: u64, number: u64) {
        let value = Self::tag(key) | (number & SLOT_MASK) as u32;
        let mut b = self.home(key);
        loop {
            let bucket = &mut self.slots[b * BUCKET..(b + 1) * BUCKET];
            if let Some(slot) = bucket.iter_mut().find(|s| **s == value) {
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
            partitions: Some(1),
            ..NearDedupConfig::default()
        };
        IndexParams::new(&cfg)
    }

    /// [`params`] for partitions synced on demand through `sync`.
    fn synced_by(dir: &Path, sync: &IndexSync) -> IndexParams {
        IndexParams {
            on_demand: Some(sync.clone()),
            ..params(Some(dir))
        }
    }

    /// Commits key `i` in epoch `4 + i` (one key an epoch).
    fn add_key(p: &mut Partition, i: u64) {
        p.apply_epoch(4 + i, &[query(key(i), i, "doc")], |_, _| {})
            .unwrap();
    }

    fn query(k: u64, origin: u64, id: &str) -> Query<'_> {
        static SKETCH: [u8; 56] = [7; 56];
        Query {
            key: k,
            origin,
            id,
            sketch: &SKETCH,
        }
    }

    /// The ids `queries` collide with, in order (`None`: new).
    fn verdicts(p: &mut Partition, epoch: u64, keys: &[(u64, u64)]) -> Vec<Option<String>> {
        let ids: Vec<String> = keys.iter().map(|(k, _)| format!("doc-{k}")).collect();
        let queries: Vec<Query<'_>> = keys
            .iter()
            .zip(&ids)
            .map(|((k, origin), id)| query(key(*k), *origin, id))
            .collect();
        let mut found = vec![None; keys.len()];
        p.apply_epoch(epoch, &queries, |i, earlier| {
            found[i] = Some(earlier.id.to_string())
        })
        .unwrap();
        found
    }

    #[test]
    fn a_partition_on_an_empty_disk_is_restored_from_its_changelog() {
        let log = webscale_rl_records::changelog::MemoryChangelog::default();
        let first = tempfile::tempdir().unwrap();
        let with_log = |dir: &Path| IndexParams {
            changelog: Some(log.handle()),
            ..params(Some(dir))
        };
        {
            let mut p = Partition::open(0, &with_log(first.path())).unwrap();
            let keys: Vec<(u64, u64)> = (0..300).map(|i| (i, i)).collect();
            assert!(verdicts(&mut p, 5, &keys).iter().all(Option::is_none));
        }
        assert_eq!(log.len("near_dedup", 0), 300);
        // Another machine: nothing on its disk, the same changelog.
        let second = tempfile::tempdir().unwrap();
        let mut p = Partition::open(0, &with_log(second.path())).unwrap();
        assert_eq!(p.entries(), 300);
        let copies: Vec<(u64, u64)> = (0..300).map(|i| (i, 1000 + i)).collect();
        let found = verdicts(&mut p, 6, &copies);
        assert!(
            found
                .iter()
                .enumerate()
                .all(|(i, f)| f.as_deref() == Some(format!("doc-{i}").as_str())),
            "every copy names the document it copies"
        );
        // The same message replayed is itself, and its record is logged again (the disk that
        // kept it may have lost the changelog write).
        assert!(verdicts(&mut p, 7, &[(3, 3)])[0].is_none());
        assert_eq!(log.len("near_dedup", 0), 301);
        drop(p);
        // Reopened on its own disk: only what it does not hold is read again.
        let p = Partition::open(0, &with_log(second.path())).unwrap();
        assert_eq!(p.entries(), 300);
    }

    #[test]
    fn a_restore_cut_short_by_a_crash_is_completed_by_the_next_open() {
        use webscale_rl_records::changelog::{Change, MemoryChangelog, Restored, StateChangelog};
        struct Cut {
            log: MemoryChangelog,
            limit: u64,
        }
        impl StateChangelog for Cut {
            fn write(&self, i: &str, p: u32, e: u64, k: &[u8], v: Option<&[u8]>) {
                self.log.write(i, p, e, k, v)
            }
            fn acknowledged(&self, i: &str, p: u32) -> Option<i64> {
                self.log.acknowledged(i, p)
            }
            fn restore(
                &self,
                i: &str,
                p: u32,
                from: i64,
                apply: &mut dyn FnMut(Change<'_>) -> Result<(), String>,
            ) -> Result<Restored, String> {
                let mut n = 0;
                self.log.restore(i, p, from, &mut |c| {
                    n += 1;
                    if n > self.limit {
                        return Err("killed".into());
                    }
                    apply(c)
                })
            }
        }
        let log = MemoryChangelog::default();
        let first = tempfile::tempdir().unwrap();
        {
            let mut p = Partition::open(
                0,
                &IndexParams {
                    changelog: Some(log.handle()),
                    ..params(Some(first.path()))
                },
            )
            .unwrap();
            // More than one restore transaction's worth.
            let keys: Vec<(u64, u64)> = (0..3000).map(|i| (i, i)).collect();
            verdicts(&mut p, 5, &keys);
        }
        let second = tempfile::tempdir().unwrap();
        let cut = Changelog(std::sync::Arc::new(Cut {
            log: log.clone(),
            limit: 2500,
        }));
        let err = Partition::open(
            0,
            &IndexParams {
                changelog: Some(cut),
                ..params(Some(second.path()))
            },
        )
        .err()
        .expect("the restore is cut");
        assert!(err.to_string().contains("killed"), "{err}");
        // Restarted: the restore goes on from what the disk kept, and nothing is missing.
        let mut p = Partition::open(
            0,
            &IndexParams {
                changelog: Some(log.handle()),
                ..params(Some(second.path()))
            },
        )
        .unwrap();
        assert_eq!(p.entries(), 3000);
        let copies: Vec<(u64, u64)> = (0..3000).map(|i| (i, 10_000 + i)).collect();
        assert!(verdicts(&mut p, 6, &copies).iter().all(Option::is_some));
    }

    #[test]
    fn evictions_are_tombstones_and_a_restore_keeps_the_same_newest_keys() {
        let log = webscale_rl_records::changelog::MemoryChangelog::default();
        let capped = |dir: &Path| IndexParams {
            changelog: Some(log.handle()),
            max_keys: 100,
            ..params(Some(dir))
        };
        let first = tempfile::tempdir().unwrap();
        {
            let mut p = Partition::open(0, &capped(first.path())).unwrap();
            for e in 0..3u64 {
                let keys: Vec<(u64, u64)> = (e * 80..(e + 1) * 80).map(|i| (i, i)).collect();
                verdicts(&mut p, 10 + e, &keys);
            }
            assert_eq!(p.entries(), 100);
        }
        assert_eq!(log.tombstones("near_dedup", 0), 140);
        let second = tempfile::tempdir().unwrap();
        let mut p = Partition::open(0, &capped(second.path())).unwrap();
        assert_eq!(p.entries(), 100);
        // The newest 100 (140..240) are remembered, the oldest forgotten, as on the first disk.
        let found = verdicts(&mut p, 20, &[(139, 9000), (140, 9001), (239, 9002)]);
        assert_eq!(
            found,
            vec![None, Some("doc-140".into()), Some("doc-239".into())]
        );
    }

    #[test]
    fn a_changelog_of_other_parameters_is_refused() {
        let log = webscale_rl_records::changelog::MemoryChangelog::default();
        let dir = tempfile::tempdir().unwrap();
        {
            let mut p = Partition::open(
                0,
                &IndexParams {
                    changelog: Some(log.handle()),
                    ..params(Some(dir.path()))
                },
            )
            .unwrap();
            verdicts(&mut p, 1, &[(1, 1)]);
        }
        let other = tempfile::tempdir().unwrap();
        let err = Partition::open(
            0,
            &IndexParams {
                changelog: Some(log.handle()),
                fingerprint: 42,
                ..params(Some(other.path()))
            },
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("other parameters"), "{err}");
    }

    #[test]
    fn a_partition_not_on_this_disk_is_refused_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let err = Partition::open(
            0,
            &IndexParams {
                refuse_new: Some("the group has committed offsets".into()),
                ..params(Some(dir.path()))
            },
        )
        .err()
        .expect("refused");
        let text = err.to_string();
        assert!(
            text.contains("partition 0 of 1 is not on this disk"),
            "{text}"
        );
        assert!(text.contains("the group has committed offsets"), "{text}");
    }

    #[test]
    fn slots_find_every_key_through_growth_and_removal() {
        let n = 50_000u64;
        let mut t = Slots::with_capacity(0);
        for i in 0..n {
            if t.needs_rebuild() {
                // What Partition does from its log: a table sized for the keys, all reinserted.
                t = Slots::with_capacity(t.live + 1);
                for j in 0..i {
                    t.insert(key(j), j);
                }
            }
            t.insert(key(i), i);
        }
        let finds = |t: &Slots, i: u64| t.candidates(key(i)).any(|s| s as u64 == i & SLOT_MASK);
        assert!((0..n).all(|i| finds(&t, i)));
        for i in (0..n).step_by(2) {
            t.remove(key(i), i);
        }
        assert!((1..n).step_by(2).all(|i| finds(&t, i)));
        assert!((0..n).step_by(2).all(|i| !finds(&t, i)));
        // 8 bits of tag: few lookups of absent keys see a candidate at all.
        let misses = (n..2 * n)
            .filter(|&i| t.candidates(key(i)).next().is_some())
            .count();
        assert!(misses < (n / 5) as usize, "{misses}");
        let per_key = t.memory_bytes() as f64 / t.live as f64;
        assert!(per_key <= 6.8 * 2.0, "{per_key}");
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
    fn many_keys_grow_the_table_and_stay_exact() {
        let mut p = Partition::open(0, &params(None)).unwrap();
        let ids: Vec<String> = (0..20_000).map(|i| format!("d{i}")).collect();
        let first: Vec<Query<'_>> = (0..20_000)
            .map(|i| query(key(i), i, &ids[i as usize]))
            .collect();
        let stats = p.apply_epoch(1, &first, |_, _| {}).unwrap();
        assert_eq!(stats.inserted, 20_000);
        // One redb insert per chunk, not per key.
        assert_eq!(
            stats.chunks_written,
            20_000u64.div_ceil(CHUNK_RECORDS as u64)
        );
        // Copies of every other key, and as many new keys.
        let second: Vec<Query<'_>> = (0..20_000)
            .map(|i| query(key(i * 2), 1_000_000 + i, "copy"))
            .collect();
        let mut hits = Vec::new();
        let stats = p
            .apply_epoch(2, &second, |i, e| hits.push((i, e.id.to_string())))
            .unwrap();
        assert_eq!(stats.collisions, 10_000);
        assert_eq!(stats.inserted, 10_000);
        assert!(hits.iter().all(|(i, id)| *id == ids[i * 2]));
        assert!(stats.false_reads < 2_000, "{stats:?}");
        assert!(p.memory_bytes() as f64 / p.entries() as f64 <= 6.8);
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
            partitions: Some(2),
            ..NearDedupConfig::default()
        };
        assert!(check_state_dir(&cfg).is_err());
        assert!(
            check_state_dir(&NearDedupConfig {
                partitions: Some(1),
                ..cfg
            })
            .is_ok()
        );
    }

    #[test]
    fn partitions_synced_on_demand_sync_only_through_their_handle() {
        let dir = tempfile::tempdir().unwrap();
        let sync = IndexSync::default();
        {
            let mut p = Partition::open(0, &synced_by(dir.path(), &sync)).unwrap();
            // Opening left the metadata commit to sync.
            assert_eq!(sync.sync_all().unwrap(), 1);
            assert_eq!(sync.sync_all().unwrap(), 0);
            add_key(&mut p, 1);
            // The epoch committed without syncing, and the partition's own sync leaves it be.
            p.sync().unwrap();
            assert_eq!(sync.sync_all().unwrap(), 1);
            assert_eq!(sync.sync_all().unwrap(), 0);
            add_key(&mut p, 2);
        }
        // The partition is gone, its database is not: the handle syncs it still.
        assert_eq!(sync.sync_all().unwrap(), 1);
        drop(sync);
        let p = Partition::open(0, &params(Some(dir.path()))).unwrap();
        assert_eq!(p.entries(), 2, "what was synced is kept");
    }

    #[test]
    fn a_new_state_skips_its_syncs_until_the_first_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let sync = IndexSync::default();
        sync.skip_syncs_until_checkpoint();
        let mut p = Partition::open(0, &synced_by(dir.path(), &sync)).unwrap();
        // Creating the file is a durable commit of redb's own: its syncs were skipped.
        let at_open = sync.syncs_skipped();
        assert!(at_open > 0);
        add_key(&mut p, 1);
        // The first checkpoint syncs for real, and so does everything after it.
        assert_eq!(sync.sync_all().unwrap(), 1);
        add_key(&mut p, 2);
        assert_eq!(sync.sync_all().unwrap(), 1);
        assert_eq!(sync.syncs_skipped(), at_open);
        drop((p, sync));
        let p = Partition::open(0, &params(Some(dir.path()))).unwrap();
        assert_eq!(p.entries(), 2);
    }

    #[test]
    fn a_discarded_state_closes_without_waiting_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let sync = IndexSync::default();
        let mut p = Partition::open(0, &synced_by(dir.path(), &sync)).unwrap();
        add_key(&mut p, 1);
        assert_eq!(sync.sync_all().unwrap(), 1);
        assert_eq!(sync.syncs_skipped(), 0, "syncs are real until the discard");
        add_key(&mut p, 2);
        sync.discard();
        // The last handle on the database goes: redb closes it with a durable commit.
        drop(p);
        sync.release();
        assert!(sync.syncs_skipped() > 0, "the close's syncs were skipped");
        drop(sync);
        // Written all the same (only not waited for): with no crash, the file reopens whole.
        let p = Partition::open(0, &params(Some(dir.path()))).unwrap();
        assert_eq!(p.entries(), 2);
    }

    #[test]
    fn keys_are_found_in_the_pending_chunk_the_stored_ones_and_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * CHUNK_RECORDS as u64 + 5;
        let ids: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
        // Each key followed by a copy of the key inserted CHUNK_RECORDS / 2 + 1 keys before it:
        // some copies find their original still pending, others in a chunk already stored.
        let mut queries = Vec::new();
        for i in 0..n {
            queries.push(query(key(i), i, &ids[i as usize]));
            if let Some(j) = i.checked_sub(CHUNK_RECORDS as u64 / 2 + 1) {
                queries.push(query(key(j), 10_000 + i, "copy"));
            }
        }
        let mut hits = Vec::new();
        {
            let mut p = Partition::open(0, &params(Some(dir.path()))).unwrap();
            let stats = p
                .apply_epoch(1, &queries, |qi, e| hits.push((qi, e.id.to_string())))
                .unwrap();
            assert_eq!(stats.inserted, n);
            assert_eq!(stats.chunks_written, 4);
        }
        let expected: Vec<(usize, String)> = queries
            .iter()
            .enumerate()
            .filter(|(_, q)| q.id == "copy")
            .map(|(qi, q)| {
                (
                    qi,
                    ids[(0..n).find(|&j| key(j) == q.key).unwrap() as usize].clone(),
                )
            })
            .collect();
        assert_eq!(hits, expected);
        let mut p = Partition::open(0, &params(Some(dir.path()))).unwrap();
        assert_eq!(p.entries(), n);
        let again: Vec<Query<'_>> = (0..n).map(|i| query(key(i), 20_000 + i, "late")).collect();
        let mut found = Vec::new();
        p.apply_epoch(2, &again, |qi, e| found.push((qi, e.id.to_string())))
            .unwrap();
        let all: Vec<(usize, String)> = (0..n as usize).map(|i| (i, ids[i].clone())).collect();
        assert_eq!(found, all);
    }

    #[test]
    fn eviction_inside_a_chunk_holds_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut prm = params(Some(dir.path()));
        prm.max_keys = 3;
        {
            let mut p = Partition::open(0, &prm).unwrap();
            // Five keys in one chunk; the cap evicts the first two, and the chunk stays.
            let q: Vec<Query<'_>> = (0..5).map(|i| query(key(100 + i), i, "d")).collect();
            let stats = p.apply_epoch(1, &q, |_, _| {}).unwrap();
            assert_eq!((stats.inserted, stats.evicted), (5, 2));
        }
        let mut p = Partition::open(0, &prm).unwrap();
        assert_eq!(p.entries(), 3);
        let mut hits = Vec::new();
        p.apply_epoch(
            2,
            &[query(key(101), 50, "z"), query(key(102), 51, "z")],
            |qi, _| hits.push(qi),
        )
        .unwrap();
        // key 101 was evicted before the reopen and stays so; key 102 was not.
        assert_eq!(hits, vec![1]);
    }

    #[test]
    fn a_partition_written_by_format_2_is_migrated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let prm = params(Some(dir.path()));
        let path = partition_path(dir.path(), 0, 1);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let ids: Vec<String> = (0..150).map(|i| format!("old{i}")).collect();
        {
            // Format 2: one entry per record, numbered from where its evictions left it (40).
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("format", 2).unwrap();
                meta.insert("params", prm.fingerprint).unwrap();
                meta.insert("partitions", 1).unwrap();
                meta.insert("partition", 0).unwrap();
                let mut records = txn.open_table(LEGACY_RECORDS).unwrap();
                let mut v = Vec::new();
                for i in 0..150u64 {
                    encode_into(&mut v, &query(key(i), i, &ids[i as usize]), 7);
                    records.insert(40 + i, v.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let mut p = Partition::open(0, &prm).unwrap();
        assert_eq!(p.entries(), 150);
        let q: Vec<Query<'_>> = (0..150).map(|i| query(key(i), 1_000 + i, "new")).collect();
        let mut hits = Vec::new();
        p.apply_epoch(8, &q, |qi, e| hits.push((qi, e.id.to_string(), e.epoch)))
            .unwrap();
        let all: Vec<(usize, String, u64)> = (0..150).map(|i| (i, ids[i].clone(), 7)).collect();
        assert_eq!(hits, all);
        drop(p);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(META)
                .unwrap()
                .get("format")
                .unwrap()
                .unwrap()
                .value(),
            FORMAT_VERSION
        );
        assert!(
            txn.open_table(LEGACY_RECORDS).is_err(),
            "the old table is gone"
        );
    }

    #[test]
    fn numbering_goes_on_after_everything_expired_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut prm = params(Some(dir.path()));
        prm.ttl = 100;
        {
            let mut p = Partition::open(0, &prm).unwrap();
            let q: Vec<Query<'_>> = (0..5).map(|i| query(key(i), i, "old")).collect();
            p.apply_epoch(1000, &q, |_, _| {}).unwrap();
            // An epoch with nothing to ask: expiry empties the partition.
            let stats = p.apply_epoch(2000, &[], |_, _| {}).unwrap();
            assert_eq!((stats.evicted, p.entries()), (5, 0));
        }
        {
            let mut p = Partition::open(0, &prm).unwrap();
            assert_eq!(p.entries(), 0);
            p.apply_epoch(2001, &[query(key(7), 7, "new")], |_, _| {})
                .unwrap();
        }
        // The key written after the reopen is not taken for one evicted before it.
        let mut p = Partition::open(0, &prm).unwrap();
        assert_eq!(p.entries(), 1);
        let mut hits = Vec::new();
        p.apply_epoch(2002, &[query(key(7), 8, "copy")], |_, e| {
            hits.push(e.id.to_string())
        })
        .unwrap();
        assert_eq!(hits, vec!["new".to_string()]);
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
        // At 1120 the key of epoch 1000 has expired, that of 1050 has not.
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
        prm.max_keys = 3;
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
        // key 100 was evicted (and is now inserted again), key 104 is still there.
        assert_eq!(hits, 1);
    }
}
