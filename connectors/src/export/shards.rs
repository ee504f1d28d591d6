//! Output shards rolled by record count or size, each complete before it becomes visible.
//!
//! A [`ShardedWriter`] writes `PREFIX-00000.EXT`, `PREFIX-00001.EXT`, ... in one directory. Each
//! shard is written under a hidden temporary name (`.PREFIX-00000.EXT.tmp-<pid>`), synced, and
//! renamed to its final name when it is full or on [`ShardedWriter::finish`]. A rename within a
//! directory is atomic, so a trainer that lists the directory (a `PREFIX-*.parquet` glob,
//! `pyarrow.dataset`, which skips names starting with `.`) sees only whole shards, even while the
//! export runs or after it crashed. A crash leaves at most one hidden temporary file behind.
//!
//! The format of a shard is behind [`ShardFile`]; [`super::sharded_writer`] picks it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use webscale_rl_records::QaPair;

/// When a shard is full: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardLimits {
    /// Records per shard (at least 1).
    pub max_records: u64,
    /// Bytes per shard (at least 1), checked after each record against [`ShardFile::bytes`]: a
    /// shard ends with the record that reaches the limit, so it may pass it by one record (and,
    /// for formats that buffer, by the error of their size estimate).
    pub max_bytes: u64,
}

/// One shard being written in some format, at the temporary path it was opened with.
pub trait ShardFile {
    /// Appends one record.
    fn write(&mut self, qa: QaPair) -> anyhow::Result<()>;
    /// The shard's size so far; an estimate of the encoded size where the format buffers.
    fn bytes(&self) -> u64;
    /// Completes the file at its temporary path, flushed and synced to disk. The caller renames
    /// it into place. A shard dropped without `finish` may leave its file; the caller removes it.
    fn finish(self: Box<Self>) -> anyhow::Result<()>;
}

/// Opens a shard of one format at the given (temporary) path.
pub type OpenShard = Box<dyn FnMut(&Path) -> anyhow::Result<Box<dyn ShardFile>>>;

/// The shard being written.
struct OpenFile {
    file: Box<dyn ShardFile>,
    tmp: PathBuf,
    target: PathBuf,
    records: u64,
}

/// Writes records into size- and count-limited shards, each renamed into place when complete.
pub struct ShardedWriter {
    dir: PathBuf,
    prefix: String,
    extension: String,
    limits: ShardLimits,
    open: OpenShard,
    current: Option<OpenFile>,
    shards: Vec<PathBuf>,
    records: u64,
}

impl std::fmt::Debug for ShardedWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedWriter")
            .field("dir", &self.dir)
            .field("prefix", &self.prefix)
            .field("extension", &self.extension)
            .field("limits", &self.limits)
            .field("shards", &self.shards.len())
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl ShardedWriter {
    /// A writer of `dir/PREFIX-NNNNN.EXTENSION` shards; `dir` is created if missing. Shards are
    /// opened lazily, so writing no record leaves no file.
    ///
    /// Complete shards of an earlier export with the same prefix and extension would mix with the
    /// new ones (a shorter export leaves old shards behind), so they are an error, unless
    /// `overwrite`: then they are removed first. Either way, two exports must not write the same
    /// prefix into one directory at once.
    pub fn new(
        dir: &Path,
        prefix: &str,
        extension: &str,
        limits: ShardLimits,
        overwrite: bool,
        open: OpenShard,
    ) -> anyhow::Result<ShardedWriter> {
        if prefix.is_empty() || prefix.starts_with('.') || prefix.contains(['/', '\\']) {
            bail!("invalid shard prefix '{prefix}': it must be a plain, non-hidden file name part");
        }
        if limits.max_records == 0 || limits.max_bytes == 0 {
            bail!("shard limits must be at least 1 record and 1 byte, got {limits:?}");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output directory '{}'", dir.display()))?;
        let existing = existing_shards(dir, prefix, extension)?;
        if !existing.is_empty() {
            if !overwrite {
                bail!(
                    "output directory '{}' already holds {} '{prefix}-*.{extension}' shard(s) \
                     (e.g. '{}'); remove them, choose another prefix, or overwrite them",
                    dir.display(),
                    existing.len(),
                    existing[0].display()
                );
            }
            for path in &existing {
                std::fs::remove_file(path)
                    .with_context(|| format!("cannot remove old shard '{}'", path.display()))?;
            }
            sync_dir(dir);
        }
        Ok(ShardedWriter {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            extension: extension.to_string(),
            limits,
            open,
            current: None,
            shards: Vec::new(),
            records: 0,
        })
    }

    /// The final name of shard `index`.
    pub fn shard_name(prefix: &str, index: usize, extension: &str) -> String {
        format!("{prefix}-{index:05}.{extension}")
    }

    /// Appends a record, opening a shard if none is open and closing it once it is full.
    pub fn write(&mut self, qa: QaPair) -> anyhow::Result<()> {
        if self.current.is_none() {
            self.current = Some(self.open_next()?);
        }
        let current = self.current.as_mut().expect("a shard is open");
        current.file.write(qa)?;
        current.records += 1;
        self.records += 1;
        if current.records >= self.limits.max_records
            || current.file.bytes() >= self.limits.max_bytes
        {
            self.close_current()?;
        }
        Ok(())
    }

    /// Closes the last shard; returns the paths of all shards written, in order.
    pub fn finish(mut self) -> anyhow::Result<Vec<PathBuf>> {
        self.close_current()?;
        Ok(std::mem::take(&mut self.shards))
    }

    /// Shards completed so far.
    pub fn shards(&self) -> &[PathBuf] {
        &self.shards
    }

    /// Records written so far, in complete shards and the open one.
    pub fn records(&self) -> u64 {
        self.records
    }

    fn open_next(&mut self) -> anyhow::Result<OpenFile> {
        let name = Self::shard_name(&self.prefix, self.shards.len(), &self.extension);
        let target = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = (self.open)(&tmp)
            .with_context(|| format!("cannot create shard '{}'", target.display()))?;
        Ok(OpenFile {
            file,
            tmp,
            target,
            records: 0,
        })
    }

    fn close_current(&mut self) -> anyhow::Result<()> {
        let Some(OpenFile {
            file, tmp, target, ..
        }) = self.current.take()
        else {
            return Ok(());
        };
        let result = file
            .finish()
            .and_then(|()| std::fs::rename(&tmp, &target).context("cannot rename it into place"))
            .with_context(|| format!("cannot complete shard '{}'", target.display()));
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        sync_dir(&self.dir);
        tracing::debug!(shard = %target.display(), "shard complete");
        self.shards.push(target);
        Ok(())
    }
}

impl Drop for ShardedWriter {
    /// An unfinished shard is discarded: its temporary file is removed, complete shards stay.
    fn drop(&mut self) {
        if let Some(OpenFile { file, tmp, .. }) = self.current.take() {
            drop(file);
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Complete shards `PREFIX-<digits>.EXTENSION` in `dir`, sorted.
fn existing_shards(dir: &Path, prefix: &str, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list output directory '{}'", dir.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let digits = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(extension))
            .and_then(|r| r.strip_suffix('.'));
        if digits.is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Makes renames and removals in `dir` durable. Best effort: not every platform syncs a directory.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}
