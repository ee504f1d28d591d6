//! Persistent response cache of the LLM client (a redb file).
//!
//! The key is the xxh3-128 hash of a canonical serialization (object keys
//! sorted, no whitespace) of everything that determines an answer: model,
//! messages, sampling parameters, response schema and any extra parameters
//! (see `ChatRequest::cache_key`). The value is the answer's text and the
//! usage it cost, so a restart or a replay never pays twice for one call.
//!
//! Reads go straight to the database (redb readers never block the writer).
//! Writes are queued to one writer thread that commits whatever has piled up
//! in a single transaction, so a busy pipeline pays one fsync per batch, not
//! per answer; until committed, entries are served from an in-memory map.
//! [`ResponseCache::flush`] waits for the queue to be committed, and dropping
//! the cache commits the rest before closing the file.
//!
//! The cache is bounded: entries are numbered in the order they were first
//! stored (table `llm_order_v1`), their sizes summed (`llm_meta_v1`), and each
//! commit evicts the oldest until the total is within `max_bytes`. A service
//! that runs for months keeps the recent answers — the ones a crash or a
//! replay of recent input asks for again — in a file of bounded size. The
//! bound counts key and value bytes; redb's own overhead comes on top (the
//! file stays within about twice the bound).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webscale_rl_records::changelog::{
    Change, Changelog, LLM_CACHE, LLM_CACHE_PARTITIONS, Restored,
};

/// Table of answers: key = xxh3-128 of the canonical request, value = JSON of
/// a [`CachedAnswer`].
const ANSWERS: TableDefinition<u128, &[u8]> = TableDefinition::new("llm_answers_v1");
/// Insertion order: sequence number -> key (oldest first, for eviction).
const ORDER: TableDefinition<u64, u128> = TableDefinition::new("llm_order_v1");
/// Bookkeeping: `bytes` (sum of entry sizes) and `next_seq`.
const META: TableDefinition<&str, u64> = TableDefinition::new("llm_meta_v1");
/// Who wrote under which model identity: `namespace \n endpoint` -> Unix seconds of the last
/// run that did. Read at start to say when answers stored for another endpoint answer this one.
const WRITERS: TableDefinition<&str, u64> = TableDefinition::new("llm_writers_v1");
/// Bytes counted per entry besides its value: the key, its order entry and
/// redb's per-entry bookkeeping, roughly.
const ENTRY_OVERHEAD: u64 = 64;

/// What the cache keeps of one successful call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The answer's text, as the server returned it.
    pub content: String,
    /// Model named by the server's answer.
    pub model: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of the prompt tokens, those the server had in its prefix cache (0 in older entries).
    #[serde(default)]
    pub cached_prompt_tokens: u64,
    pub finish_reason: Option<String>,
    /// The response-cache partition of the document the call was about, when known: where the
    /// entry is changelogged, and tombstoned when evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

/// Failure to open, read or write the cache file.
#[derive(Debug)]
pub struct CacheError(String);

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "llm response cache: {}", self.0)
    }
}

impl std::error::Error for CacheError {}

fn err(context: &str, e: impl std::fmt::Display) -> CacheError {
    CacheError(format!("{context}: {e}"))
}

enum Msg {
    Put(u128, Arc<CachedAnswer>),
    Flush(mpsc::Sender<Result<(), String>>),
}

type Pending = Arc<Mutex<HashMap<u128, Arc<CachedAnswer>>>>;

/// Handle on the cache file; share it behind an `Arc`.
pub struct ResponseCache {
    path: PathBuf,
    max_bytes: u64,
    db: Arc<Database>,
    pending: Pending,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    changelog: Logged,
}

/// Kafka mode: the changelog the entries of this process's partitions are written to, and the
/// partitions it owns (restored by it); shared with the writer thread.
#[derive(Clone, Default)]
struct Logged(Arc<(OnceLock<Changelog>, Mutex<BTreeSet<u32>>)>);

impl Logged {
    fn changelog(&self) -> Option<&Changelog> {
        self.0.0.get()
    }

    /// Whether `partition` is one this process owns: only those are written and tombstoned
    /// (an entry of a partition another process owns now is a local leftover).
    fn owns(&self, partition: Option<u32>) -> Option<(&Changelog, u32)> {
        let (log, p) = (self.changelog()?, partition?);
        let owned = self.0.1.lock().unwrap_or_else(|e| e.into_inner());
        owned.contains(&p).then_some((log, p))
    }
}

/// `meta` key of the changelog offset after the last one partition `p`'s entries hold.
fn changelog_next_key(p: u32) -> String {
    format!("changelog_next/{p}")
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// Opens the cache file, creating it (and its tables) when absent, and
    /// evicts the oldest entries beyond `max_bytes`. A file written before the
    /// cache was bounded gets its order table built once, in key order.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, CacheError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err("creating its directory", e))?;
        }
        let db = Database::create(path).map_err(|e| err("opening", e))?;
        let txn = db.begin_write().map_err(|e| err("opening", e))?;
        {
            let answers = txn.open_table(ANSWERS).map_err(|e| err("opening", e))?;
            let mut order = txn.open_table(ORDER).map_err(|e| err("opening", e))?;
            let mut meta = txn.open_table(META).map_err(|e| err("opening", e))?;
            let counted = meta
                .get("next_seq")
                .map_err(|e| err("opening", e))?
                .is_some();
            if !counted {
                let (mut seq, mut bytes) = (0u64, 0u64);
                for entry in answers.iter().map_err(|e| err("opening", e))? {
                    let (k, v) = entry.map_err(|e| err("opening", e))?;
                    order
                        .insert(seq, k.value())
                        .map_err(|e| err("opening", e))?;
                    bytes += v.value().len() as u64 + ENTRY_OVERHEAD;
                    seq += 1;
                }
                meta.insert("next_seq", seq)
                    .map_err(|e| err("opening", e))?;
                meta.insert("bytes", bytes).map_err(|e| err("opening", e))?;
            }
        }
        evict(&txn, max_bytes).map_err(|e| err("evicting", e))?;
        txn.commit().map_err(|e| err("opening", e))?;
        let db = Arc::new(db);
        let pending: Pending = Arc::default();
        let changelog = Logged::default();
        let (tx, rx) = mpsc::channel();
        let writer = {
            let db = Arc::clone(&db);
            let pending = Arc::clone(&pending);
            let changelog = changelog.clone();
            std::thread::Builder::new()
                .name("llm-cache-writer".to_owned())
                .spawn(move || writer_loop(&db, &pending, &rx, max_bytes, &changelog))
                .map_err(|e| err("starting the writer thread", e))?
        };
        Ok(ResponseCache {
            path: path.to_owned(),
            max_bytes,
            db,
            pending,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            changelog,
        })
    }

    /// Kafka mode: from now on, the entries of the partitions this process restores
    /// ([`ResponseCache::restore_partition`]) are written to `changelog` after their commit, and
    /// tombstoned when evicted.
    pub fn attach_changelog(&self, changelog: Changelog) {
        let _ = self.changelog.0.0.set(changelog);
    }

    /// Takes partition `partition` of the cache (one of [`LLM_CACHE_PARTITIONS`]) into this
    /// process's care: replays its changelog from the offset this file holds (from the beginning
    /// on a new disk), so that the answers the cluster paid for are here before the documents of
    /// that partition are; then owns it (its new entries are changelogged).
    pub fn restore_partition(&self, partition: u32) -> Result<Restored, CacheError> {
        let Some(log) = self.changelog.changelog().cloned() else {
            return Ok(Restored::default());
        };
        debug_assert!(partition < LLM_CACHE_PARTITIONS);
        // What is queued goes first, so the restore's commits are ordered after it.
        self.flush()?;
        let from = {
            let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
            let meta = txn.open_table(META).map_err(|e| err("reading", e))?;
            meta.get(changelog_next_key(partition).as_str())
                .map_err(|e| err("reading", e))?
                .map_or(0, |v| v.value())
        };
        let mut batch: Vec<(u128, Arc<CachedAnswer>)> = Vec::new();
        let mut failure = None;
        let mut next = from;
        let db = &self.db;
        let max_bytes = self.max_bytes;
        let restored = log.0.restore(LLM_CACHE, partition, from as i64, &mut |c: Change<'_>| {
            next = c.offset as u64 + 1;
            // A tombstone: the entry was evicted where it was written; the bound evicts here.
            if let (Some(value), Ok(key)) = (c.value, <[u8; 16]>::try_from(c.key)) {
                match serde_json::from_slice::<CachedAnswer>(value) {
                    Ok(a) => batch.push((u128::from_be_bytes(key), Arc::new(a))),
                    Err(e) => tracing::warn!(offset = c.offset, error = %e, "skipping an unreadable cache changelog record"),
                }
            }
            if batch.len() >= 1024 {
                if let Err(e) = commit(db, &batch, max_bytes, Some((partition, next)), None) {
                    failure = Some(e);
                    return Err("stopped".into());
                }
                batch.clear();
            }
            Ok(())
        });
        if let Some(e) = failure {
            return Err(err("restoring", e));
        }
        let restored = restored.map_err(|e| err("restoring from the changelog", e))?;
        if next > from {
            commit(db, &batch, max_bytes, Some((partition, next)), None)
                .map_err(|e| err("restoring", e))?;
        }
        self.changelog
            .0
            .1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition);
        log.0.restore_finished(LLM_CACHE, partition, restored);
        Ok(restored)
    }

    /// Path of the cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bound on the entries' bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Bytes of the committed entries, as counted against the bound.
    pub fn bytes(&self) -> Result<u64, CacheError> {
        let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
        let meta = txn.open_table(META).map_err(|e| err("reading", e))?;
        Ok(meta
            .get("bytes")
            .map_err(|e| err("reading", e))?
            .map_or(0, |v| v.value()))
    }

    /// The answer stored under `key`, if any.
    pub fn get(&self, key: u128) -> Result<Option<CachedAnswer>, CacheError> {
        if let Some(a) = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(CachedAnswer::clone(a)));
        }
        let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
        let table = txn.open_table(ANSWERS).map_err(|e| err("reading", e))?;
        let Some(v) = table.get(key).map_err(|e| err("reading", e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| err("decoding an entry", e))
    }

    /// Queues `answer` for storage under `key`; visible to [`get`] at once,
    /// durable after the writer's next commit.
    ///
    /// [`get`]: ResponseCache::get
    pub fn put(&self, key: u128, answer: CachedAnswer) {
        let answer = Arc::new(answer);
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = tx.as_ref() else { return };
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::clone(&answer));
        if tx.send(Msg::Put(key, answer)).is_err() {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
    }

    /// Blocks until every answer queued so far is committed to the file.
    pub fn flush(&self) -> Result<(), CacheError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        {
            let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let Some(tx) = tx.as_ref() else {
                return Err(CacheError("closed".to_owned()));
            };
            tx.send(Msg::Flush(ack_tx))
                .map_err(|_| CacheError("writer thread is gone".to_owned()))?;
        }
        match ack_rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CacheError(e)),
            Err(_) => Err(CacheError("writer thread is gone".to_owned())),
        }
    }

    /// Records that `endpoints` use the cache under `namespace` (the model's identity), and
    /// returns the other endpoints that did: their answers answer these endpoints' calls.
    pub fn note_writers(
        &self,
        namespace: &str,
        endpoints: &[&str],
    ) -> Result<Vec<String>, CacheError> {
        let txn = self.db.begin_write().map_err(|e| err("writing", e))?;
        let mut others = Vec::new();
        {
            let mut writers = txn.open_table(WRITERS).map_err(|e| err("writing", e))?;
            let prefix = format!("{namespace}\n");
            for entry in writers.iter().map_err(|e| err("reading", e))? {
                let (k, _) = entry.map_err(|e| err("reading", e))?;
                if let Some(endpoint) = k.value().strip_prefix(&prefix)
                    && !endpoints.contains(&endpoint)
                {
                    others.push(endpoint.to_owned());
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for ep in endpoints {
                writers
                    .insert(format!("{prefix}{ep}").as_str(), now)
                    .map_err(|e| err("writing", e))?;
            }
        }
        txn.commit().map_err(|e| err("writing", e))?;
        Ok(others)
    }

    /// Number of committed entries.
    pub fn len(&self) -> Result<u64, CacheError> {
        let txn = self.db.begin_read().map_err(|e| err("reading", e))?;
        let table = txn.open_table(ANSWERS).map_err(|e| err("reading", e))?;
        table.len().map_err(|e| err("reading", e))
    }

    /// Whether no entry is committed.
    pub fn is_empty(&self) -> Result<bool, CacheError> {
        Ok(self.len()? == 0)
    }
}

impl Drop for ResponseCache {
    fn drop(&mut self) {
        // Closing the channel makes the writer commit what is queued and exit.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

fn writer_loop(
    db: &Database,
    pending: &Pending,
    rx: &mpsc::Receiver<Msg>,
    max_bytes: u64,
    changelog: &Logged,
) {
    while let Ok(first) = rx.recv() {
        let mut puts: Vec<(u128, Arc<CachedAnswer>)> = Vec::new();
        let mut acks: Vec<mpsc::Sender<Result<(), String>>> = Vec::new();
        let mut take = |m: Msg| match m {
            Msg::Put(k, a) => puts.push((k, a)),
            Msg::Flush(ack) => acks.push(ack),
        };
        take(first);
        while let Ok(m) = rx.try_recv() {
            take(m);
        }
        let result = if puts.is_empty() {
            Ok(())
        } else {
            commit(db, &puts, max_bytes, None, Some(changelog))
        };
        if let Err(e) = &result {
            tracing::warn!(entries = puts.len(), "llm response cache: {e}");
        }
        {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            for (k, a) in &puts {
                // Keep a newer answer queued meanwhile under the same key.
                if p.get(k).is_some_and(|cur| Arc::ptr_eq(cur, a)) {
                    p.remove(k);
                }
            }
        }
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
}

/// Commits `puts`, evicting beyond `max_bytes`. A restore passes `restored` (partition, the
/// changelog offset after its last record) to keep in the same commit. The writer passes the
/// changelog: after the commit, the new entries of owned partitions are written to it and the
/// evicted ones tombstoned. The offset each owned partition holds is the one after its highest
/// acknowledged, read before the commit: a record is written only after the commit that stores
/// it, so every acknowledged one is in an earlier commit.
fn commit(
    db: &Database,
    puts: &[(u128, Arc<CachedAnswer>)],
    max_bytes: u64,
    restored: Option<(u32, u64)>,
    changelog: Option<&Logged>,
) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let acknowledged: Vec<(u32, u64)> = match changelog.and_then(Logged::changelog) {
        Some(log) => {
            let owned = changelog
                .map(|c| c.0.1.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .unwrap_or_default();
            owned
                .into_iter()
                .filter_map(|p| Some((p, log.0.acknowledged(LLM_CACHE, p)? as u64 + 1)))
                .collect()
        }
        None => Vec::new(),
    };
    {
        let mut table = txn.open_table(ANSWERS).map_err(|e| e.to_string())?;
        let mut order = txn.open_table(ORDER).map_err(|e| e.to_string())?;
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let get = |meta: &redb::Table<&str, u64>, k| {
            meta.get(k)
                .map(|v| v.map_or(0, |v| v.value()))
                .map_err(|e| e.to_string())
        };
        let (mut seq, mut total) = (get(&meta, "next_seq")?, get(&meta, "bytes")?);
        for (k, a) in puts {
            let bytes = serde_json::to_vec(&**a).map_err(|e| e.to_string())?;
            let old = table
                .insert(*k, bytes.as_slice())
                .map_err(|e| e.to_string())?
                .map(|v| v.value().len() as u64);
            match old {
                // A rewrite keeps its place in the order; only its size changes.
                Some(old) => total = total - old.min(total) + bytes.len() as u64,
                None => {
                    order.insert(seq, *k).map_err(|e| e.to_string())?;
                    seq += 1;
                    total += bytes.len() as u64 + ENTRY_OVERHEAD;
                }
            }
        }
        meta.insert("next_seq", seq).map_err(|e| e.to_string())?;
        meta.insert("bytes", total).map_err(|e| e.to_string())?;
        for (p, next) in restored.into_iter().chain(acknowledged) {
            meta.insert(changelog_next_key(p).as_str(), next)
                .map_err(|e| e.to_string())?;
        }
    }
    let evicted = evict_keys(&txn, max_bytes).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    if let Some(logged) = changelog {
        for (key, answer) in puts {
            if let Some((log, p)) = logged.owns(answer.partition) {
                let value = serde_json::to_vec(&**answer).map_err(|e| e.to_string())?;
                log.0
                    .write(LLM_CACHE, p, 0, &key.to_be_bytes(), Some(&value));
            }
        }
        for (key, partition) in evicted {
            if let Some((log, p)) = logged.owns(partition) {
                log.0.write(LLM_CACHE, p, 0, &key.to_be_bytes(), None);
            }
        }
    }
    Ok(())
}

/// Removes the oldest entries until the counted bytes are within `max_bytes`.
fn evict(txn: &redb::WriteTransaction, max_bytes: u64) -> Result<u64, redb::Error> {
    Ok(evict_keys(txn, max_bytes)?.len() as u64)
}

/// [`evict`], returning the keys removed with their entries' partitions.
fn evict_keys(
    txn: &redb::WriteTransaction,
    max_bytes: u64,
) -> Result<Vec<(u128, Option<u32>)>, redb::Error> {
    let mut table = txn.open_table(ANSWERS)?;
    let mut order = txn.open_table(ORDER)?;
    let mut meta = txn.open_table(META)?;
    let mut total = meta.get("bytes")?.map_or(0, |v| v.value());
    let mut evicted = Vec::new();
    while total > max_bytes {
        let Some((_, key)) = order.pop_first()?.map(|(s, k)| (s.value(), k.value())) else {
            break;
        };
        let mut partition = None;
        if let Some(v) = table.remove(key)? {
            total = total.saturating_sub(v.value().len() as u64 + ENTRY_OVERHEAD);
            partition = serde_json::from_slice::<CachedAnswer>(v.value())
                .ok()
                .and_then(|a| a.partition);
        }
        evicted.push((key, partition));
    }
    meta.insert("bytes", total)?;
    Ok(evicted)
}

/// Writes `v` canonically: object keys sorted, no insignificant whitespace.
/// Independent of serde_json's `preserve_order` feature.
pub fn write_canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_json_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json_string(k, out);
                out.push(':');
                write_canonical_json(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_json_string(s: &str, out: &mut String) {
    // serde_json's string escaping is canonical (shortest form).
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// Cache key of a canonical request text.
pub fn key_of(canonical: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(canonical.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(s: &str) -> CachedAnswer {
        CachedAnswer {
            content: s.to_owned(),
            model: "m".to_owned(),
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_prompt_tokens: 0,
            finish_reason: Some("stop".to_owned()),
            partition: None,
        }
    }

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": null, "c": "x\"y"}], "x": true}});
        let mut out = String::new();
        write_canonical_json(&a, &mut out);
        assert_eq!(
            out,
            r#"{"a":{"x":true,"y":[1,{"c":"x\"y","d":null}]},"b":1}"#
        );
        let b: Value =
            serde_json::from_str(r#"{"a":{"y":[1,{"c":"x\"y","d":null}],"x":true},"b":1}"#)
                .unwrap();
        let mut out2 = String::new();
        write_canonical_json(&b, &mut out2);
        assert_eq!(out, out2);
        assert_eq!(key_of(&out), key_of(&out2));
        assert_ne!(key_of(&out), key_of("{}"));
    }

    #[test]
    fn the_oldest_entries_are_evicted_beyond_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let size = serde_json::to_vec(&answer("x0")).unwrap().len() as u64 + ENTRY_OVERHEAD;
        {
            let c = ResponseCache::open(&path, 10 * size).unwrap();
            for i in 0..25u128 {
                c.put(i, answer(&format!("x{}", i % 10)));
                c.flush().unwrap();
            }
            assert_eq!(c.len().unwrap(), 10);
            assert!(c.bytes().unwrap() <= 10 * size);
            assert_eq!(c.get(14).unwrap(), None, "old entries are gone");
            assert_eq!(c.get(15).unwrap(), Some(answer("x5")), "recent ones stay");
            // Rewriting an entry keeps its place.
            c.put(15, answer("x5"));
            c.flush().unwrap();
            assert_eq!(c.len().unwrap(), 10);
        }
        // Reopened with a smaller bound: trimmed at once, oldest first.
        let c = ResponseCache::open(&path, 4 * size).unwrap();
        assert_eq!(c.len().unwrap(), 4);
        assert_eq!(c.get(20).unwrap(), None);
        assert_eq!(c.get(21).unwrap(), Some(answer("x1")));
        assert_eq!(c.get(24).unwrap(), Some(answer("x4")));
    }

    #[test]
    fn put_get_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.redb");
        {
            let c = ResponseCache::open(&path, u64::MAX).unwrap();
            assert_eq!(c.get(1).unwrap(), None);
            c.put(1, answer("one"));
            // Visible before the commit.
            assert_eq!(c.get(1).unwrap(), Some(answer("one")));
            c.flush().unwrap();
            assert_eq!(c.len().unwrap(), 1);
            c.put(2, answer("two"));
            // Not flushed: dropping commits it.
        }
        let c = ResponseCache::open(&path, u64::MAX).unwrap();
        assert_eq!(c.get(1).unwrap(), Some(answer("one")));
        assert_eq!(c.get(2).unwrap(), Some(answer("two")));
        assert_eq!(c.len().unwrap(), 2);
        assert!(!c.is_empty().unwrap());
    }

    #[test]
    fn many_puts_from_threads_are_batched_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let c = Arc::new(ResponseCache::open(&path, u64::MAX).unwrap());
        let threads: Vec<_> = (0..4u128)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for i in 0..250u128 {
                        c.put(t * 1000 + i, answer(&format!("{t}-{i}")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        c.flush().unwrap();
        assert_eq!(c.len().unwrap(), 1000);
        assert_eq!(c.get(3249).unwrap(), Some(answer("3-249")));
        assert!(c.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn open_fails_cleanly_on_a_non_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-a-db");
        std::fs::write(&path, b"this is not a redb file, just some text").unwrap();
        let e = ResponseCache::open(&path, u64::MAX).unwrap_err();
        assert!(
            e.to_string().starts_with("llm response cache: opening"),
            "{e}"
        );
    }
}
