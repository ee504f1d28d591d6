//! The progress record of a file run, and the resume it allows after an interruption (Ctrl-C,
//! SIGKILL, a crash, an LLM outage that outlasted `max_outage_secs`).
//!
//! A file run writes its outputs as `<output>.partial` and `<rejects>.partial`, its dedup indexes
//! under `<output>.state/`, and beside them `<output>.progress.json`: the input's identity, a
//! fingerprint of the settings, the line up to which every output and dead letter is durable, and
//! the byte lengths of both partial files at that point. The record is replaced atomically
//! (written aside, synced, renamed) after each checkpoint, which the sinks make possible by
//! writing whole epochs in input order ([`webscale_rl_connectors::file_sink`]).
//!
//! Run again with the same arguments, the engine finds the record, checks that the input and the
//! settings are the same, cuts both partial files back to their recorded lengths and reads on
//! from the line after the recorded one: the final files equal an uninterrupted run's (the LLM
//! cache answers the calls the interrupted run already paid for). On success the record and the
//! state directory are removed and the partial files renamed into place.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use webscale_rl_records::PIPELINE_VERSION;

use crate::config::PipelineConfig;

/// What to do with the progress record of an earlier run of the same output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResumeMode {
    /// Resume when there is a record (and it matches), else start.
    #[default]
    Auto,
    /// Resume; no record is an error (`--resume`).
    Require,
    /// Discard any record and partial files and start over (`--restart`).
    Restart,
}

/// Identifies an input file: a resume must read the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIdentity {
    pub path: String,
    pub bytes: u64,
    pub modified_ms: u64,
    /// xxh3 of the first MiB.
    pub head_xxh3: String,
}

impl InputIdentity {
    pub fn of(path: &str) -> anyhow::Result<InputIdentity> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read input '{path}'"))?;
        let modified_ms = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let mut head = Vec::with_capacity(1 << 20);
        std::fs::File::open(path)
            .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
            .with_context(|| format!("cannot read input '{path}'"))?;
        Ok(InputIdentity {
            path: path.to_string(),
            bytes: meta.len(),
            modified_ms,
            head_xxh3: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&head)),
        })
    }
}

/// One output's state at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialOutput {
    pub path: String,
    pub bytes: u64,
}

/// `<output>.progress.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressRecord {
    pub version: u32,
    pub input: InputIdentity,
    /// [`settings_fingerprint`] of the run.
    pub settings: String,
    /// Every output and dead letter of input lines 1..=lines_done is in the partial files.
    pub lines_done: u64,
    pub output: PartialOutput,
    pub rejects: PartialOutput,
    /// Both partial files were complete, at the recorded lengths, and the run was renaming them
    /// into place: a run that finds it set finishes those renames instead of starting again.
    #[serde(default)]
    pub finishing: bool,
}

/// Where the progress record of an output lives.
pub fn record_path(output: &str) -> PathBuf {
    PathBuf::from(format!("{output}.progress.json"))
}

/// The dedup indexes' directory of a resumable file run: kept with the partial files, so the
/// resumed run remembers the documents before the checkpoint.
pub fn state_dir(output: &str) -> PathBuf {
    PathBuf::from(format!("{output}.state"))
}

/// Whether a run can be resumed: from a regular file (not stdin, a pipe or a FIFO, which cannot
/// be read again — nor identified without consuming what the run reads), to JSONL files (not
/// stdout or shard directories).
pub fn resumable(input: &str, output: &str, rejects: &str, shards: bool) -> bool {
    use webscale_rl_connectors::file::is_special_file;
    input != "-"
        && output != "-"
        && rejects != "-"
        && !shards
        && std::fs::metadata(input).is_ok_and(|m| m.is_file())
        && !is_special_file(output)
        && !is_special_file(rejects)
}

/// A fingerprint of what decides the run's outputs: the pipeline settings (less where state and
/// caches live), the output format, the rejects path, whether the LLM runs, the build.
pub fn settings_fingerprint(cfg: &PipelineConfig, rejects: &str, with_llm: bool) -> String {
    let mut cfg = cfg.clone();
    cfg.exact_dedup.state_dir = None;
    cfg.near_dedup.state_dir = None;
    // The count in use, never "unset": an earlier build wrote the number (32 by default), so a
    // run it started still resumes.
    cfg.exact_dedup.partitions = Some(cfg.exact_dedup.partitions());
    cfg.near_dedup.partitions = Some(cfg.near_dedup.partitions());
    cfg.source.checkpoint_ms = 0;
    if let Some(llm) = cfg.llm.as_mut() {
        llm.cache_path = None;
    }
    let mut text = format!(
        "{}\n{rejects}\n{with_llm}\n{PIPELINE_VERSION}",
        serde_json::to_string(&cfg).expect("the config serializes")
    );
    // The files the config names decide the outputs as much as the config: an edited prompt,
    // few-shot library or benchmark set must not resume into a mix of old and new outputs.
    let files = [
        &cfg.llm_filter.prompt_file,
        &cfg.classify.prompt_file,
        &cfg.generate.prompt_file,
        &cfg.verify.prompt_file,
        &cfg.generate.fewshot_dir,
    ]
    .into_iter()
    .flatten()
    .chain(cfg.decontaminate.benchmarks.iter().map(|b| &b.path));
    for path in files {
        text.push('\n');
        content_hash(path, &mut text);
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// Appends what `path` holds to `out`: a file's content hash, a folder's files' names and
/// hashes (in name order, one level, as the stages read them), or that it is missing.
fn content_hash(path: &Path, out: &mut String) {
    use std::fmt::Write as _;
    let file_hash = |p: &Path| match std::fs::read(p) {
        Ok(bytes) => format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)),
        Err(e) => format!("unreadable: {}", e.kind()),
    };
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for e in entries {
            let _ = write!(out, "{}={};", e.display(), file_hash(&e));
        }
    } else {
        let _ = write!(out, "{}={}", path.display(), file_hash(path));
    }
}

impl ProgressRecord {
    /// The record of an earlier run of `output`, if any.
    pub fn load(output: &str) -> anyhow::Result<Option<ProgressRecord>> {
        let path = record_path(output);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", path.display())),
        };
        let record: ProgressRecord = serde_json::from_str(&text).with_context(|| {
            format!(
                "'{}' is not a progress record of this engine; remove it, or run with --restart",
                path.display()
            )
        })?;
        Ok(Some(record))
    }

    /// Why this record cannot resume a run of `input` with `settings`, if it cannot.
    pub fn mismatch(&self, input: &InputIdentity, settings: &str) -> Option<String> {
        if self.version != 1 {
            return Some(format!(
                "it has version {}, this build writes 1",
                self.version
            ));
        }
        if self.input != *input {
            return Some(format!(
                "it records input '{}' ({} bytes), not '{}' ({} bytes) as it is now",
                self.input.path, self.input.bytes, input.path, input.bytes
            ));
        }
        if self.settings != settings {
            return Some("the settings (config, LLM, --rejects or the build) differ".into());
        }
        None
    }

    /// Replaces the record atomically: written aside, synced, renamed over the old one.
    pub fn store(&self, output: &str) -> anyhow::Result<()> {
        let path = record_path(output);
        let aside = PathBuf::from(format!("{}.new", path.display()));
        let write = || -> std::io::Result<()> {
            // A new file, never through what lies at its name: a link planted there would have
            // its target overwritten (`create_new` is O_EXCL, which follows no link).
            match std::fs::remove_file(&aside) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let file = std::fs::File::create_new(&aside)?;
            serde_json::to_writer_pretty(&file, self)?;
            file.sync_all()?;
            std::fs::rename(&aside, &path)
        };
        write().with_context(|| format!("cannot write the progress record '{}'", path.display()))
    }
}

/// Completes the finish of a run that stopped between its renames (`record.finishing`): each
/// partial file still there is cut to its recorded length (a crash may have left the start of a
/// trailing frame) and renamed into place; then the record and the state go.
pub fn complete_finish(record: &ProgressRecord, output: &str) -> anyhow::Result<()> {
    for part in [&record.output, &record.rejects] {
        let partial = webscale_rl_connectors::file::partial_path(Path::new(&part.path));
        if !partial.exists() {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial)
            .with_context(|| format!("cannot open '{}'", partial.display()))?;
        file.set_len(part.bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&partial, &part.path)
            .with_context(|| format!("cannot rename '{}' into place", partial.display()))?;
    }
    let _ = std::fs::remove_file(record_path(output));
    let _ = std::fs::remove_dir_all(state_dir(output));
    Ok(())
}

/// Removes what a run of `output` left for a resume: the record, the partial files, the state.
pub fn discard(output: &str, rejects: &str) -> anyhow::Result<()> {
    let partial = |p: &str| webscale_rl_connectors::file::partial_path(Path::new(p));
    for file in [record_path(output), partial(output), partial(rejects)] {
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove '{}'", file.display())),
        }
    }
    let state = state_dir(output);
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .with_context(|| format!("cannot remove '{}'", state.display()))?;
    }
    Ok(())
}

/// Fails when `mode` asks for a resume there is no record for.
pub fn require(
    mode: ResumeMode,
    record: Option<&ProgressRecord>,
    output: &str,
) -> anyhow::Result<()> {
    if mode == ResumeMode::Require && record.is_none() {
        bail!(
            "--resume: nothing to resume, no '{}' (run without --resume to start)",
            record_path(output).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_to_jsonl_files_can_be_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let input = input.to_str().unwrap();
        assert!(resumable(input, "out.jsonl", "rejects.jsonl", false));
        assert!(!resumable("-", "out.jsonl", "rejects.jsonl", false));
        assert!(!resumable(input, "-", "rejects.jsonl", false));
        assert!(!resumable(input, "out.jsonl", "-", false));
        assert!(!resumable(input, "out", "rejects.jsonl", true));
        // A device or pipe (`/dev/stdin`, `<(zcat ...)`): read once, never identified by hashing
        // what the run is about to read.
        assert!(!resumable("/dev/null", "out.jsonl", "rejects.jsonl", false));
        // Nor one writing to a device: it is written in place, not renamed into.
        assert!(!resumable(input, "/dev/null", "rejects.jsonl", false));
        assert!(!resumable(input, "out.jsonl", "/dev/null", false));
        assert!(!resumable(
            dir.path().to_str().unwrap(),
            "out.jsonl",
            "r.jsonl",
            false
        ));
    }

    #[test]
    fn an_unset_partition_count_fingerprints_as_the_count_in_use() {
        let unset = PipelineConfig::default();
        let mut set = PipelineConfig::default();
        set.near_dedup.partitions = Some(32);
        set.exact_dedup.partitions = Some(32);
        let print = |cfg: &PipelineConfig| settings_fingerprint(cfg, "r", false);
        // As an earlier build, whose default was the number 32, fingerprinted it.
        assert_eq!(print(&unset), print(&set));
        set.near_dedup.partitions = Some(8);
        assert_ne!(print(&unset), print(&set));
    }

    #[test]
    fn an_edited_prompt_few_shot_or_benchmark_file_changes_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let prompt = dir.path().join("generate.md");
        let fewshot = dir.path().join("fewshot");
        let bench = dir.path().join("bench.jsonl");
        std::fs::create_dir(&fewshot).unwrap();
        std::fs::write(&prompt, "Ask {{document}}").unwrap();
        std::fs::write(fewshot.join("math.jsonl"), "{}\n").unwrap();
        std::fs::write(&bench, "{\"question\": \"q\"}\n").unwrap();
        let mut cfg = PipelineConfig::default();
        cfg.generate.prompt_file = Some(prompt.clone());
        cfg.generate.fewshot_dir = Some(fewshot.clone());
        cfg.decontaminate
            .benchmarks
            .push(webscale_rl_operators::benchmarks::BenchmarkSpec::path(
                bench.clone(),
            ));
        let fp = || settings_fingerprint(&cfg, "r", true);
        let before = fp();
        assert_eq!(fp(), before, "stable while nothing changes");
        for (file, edit) in [
            (prompt.clone(), "Ask again {{document}}"),
            (fewshot.join("math.jsonl"), "{\"q\": 1}\n"),
            (bench.clone(), "{\"question\": \"other\"}\n"),
        ] {
            let was = fp();
            std::fs::write(&file, edit).unwrap();
            assert_ne!(fp(), was, "{}", file.display());
        }
        // A file added to the few-shot folder counts too.
        let was = fp();
        std::fs::write(fewshot.join("coding.jsonl"), "{}\n").unwrap();
        assert_ne!(fp(), was);
    }

    #[test]
    fn a_finish_cut_between_its_renames_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl").display().to_string();
        let rej = dir.path().join("out.rejects.jsonl").display().to_string();
        // The output was renamed; the rejects' partial file is still there, with the start of a
        // frame a crash left after the recorded length.
        std::fs::write(&out, "{\"a\":1}\n").unwrap();
        std::fs::write(format!("{rej}.partial"), "{\"r\":1}\nGARBAGE").unwrap();
        std::fs::create_dir(state_dir(&out)).unwrap();
        let record = ProgressRecord {
            version: 1,
            input: InputIdentity {
                path: "in".into(),
                bytes: 1,
                modified_ms: 0,
                head_xxh3: String::new(),
            },
            settings: "s".into(),
            lines_done: 2,
            output: PartialOutput {
                path: out.clone(),
                bytes: 8,
            },
            rejects: PartialOutput {
                path: rej.clone(),
                bytes: 8,
            },
            finishing: true,
        };
        record.store(&out).unwrap();
        assert!(ProgressRecord::load(&out).unwrap().unwrap().finishing);
        complete_finish(&record, &out).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"a\":1}\n");
        assert_eq!(std::fs::read_to_string(&rej).unwrap(), "{\"r\":1}\n");
        assert!(!Path::new(&format!("{rej}.partial")).exists());
        assert!(!record_path(&out).exists() && !state_dir(&out).exists());
    }

    #[test]
    fn a_record_names_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{\"text\": \"a\"}\n").unwrap();
        let identity = InputIdentity::of(input.to_str().unwrap()).unwrap();
        let output = dir.path().join("out.jsonl");
        let output = output.to_str().unwrap();
        let record = ProgressRecord {
            version: 1,
            input: identity.clone(),
            settings: "s".into(),
            lines_done: 5,
            output: PartialOutput {
                path: output.into(),
                bytes: 10,
            },
            rejects: PartialOutput {
                path: "r".into(),
                bytes: 0,
            },
            finishing: false,
        };
        // A link planted at the record's next version: its target must stay as it is.
        let victim = dir.path().join("victim.txt");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, format!("{output}.progress.json.new")).unwrap();
        record.store(output).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let loaded = ProgressRecord::load(output).unwrap().unwrap();
        assert_eq!(loaded, record);
        assert_eq!(loaded.mismatch(&identity, "s"), None);
        assert!(
            loaded
                .mismatch(&identity, "t")
                .unwrap()
                .contains("settings")
        );
        std::fs::write(&input, "{\"text\": \"b\"}\n{}\n").unwrap();
        let changed = InputIdentity::of(input.to_str().unwrap()).unwrap();
        assert!(loaded.mismatch(&changed, "s").unwrap().contains("input"));
        assert!(require(ResumeMode::Require, None, output).is_err());
        discard(output, "r").unwrap();
        assert!(ProgressRecord::load(output).unwrap().is_none());
    }
}
