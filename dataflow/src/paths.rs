//! The files of a file-mode run, checked before anything is written: no two of them may be the
//! same file, and no two runs may write the same output.
//!
//! A run writes `OUTPUT.partial` and `REJECTS.partial`, renames them over `OUTPUT` and `REJECTS`,
//! and keeps `OUTPUT.progress.json` (and `.new`) beside them. Were the input one of those files
//! (`--output` equal to `--input`, or an input named like the default rejects file), the rename
//! would replace the input, and the documents whose dead letters carry no payload would be gone;
//! were the rejects the output, both streams would interleave in one file. Names are compared as
//! files, not strings: device and inode after following links, or, for a file not created yet,
//! the canonical directory and the name.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// What a path names: an existing file, or a name not yet taken in a canonical directory.
#[derive(Debug, PartialEq, Eq)]
enum FileId {
    Inode(u64, u64),
    Name(PathBuf),
}

/// `None` for what is written in place and never renamed over (a device, a FIFO), and for a
/// path whose directory does not exist (creating it fails later, with its own error).
fn identity(path: &Path) -> Option<FileId> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.is_dir() => Some(FileId::Inode(m.dev(), m.ino())),
        Ok(_) => None,
        Err(_) => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()?;
            Some(FileId::Name(dir.join(path.file_name()?)))
        }
    }
}

/// Refuses a run any two of whose files (the input; the output, the rejects, their partial files
/// and the progress record) are the same file. `-` (standard input or output) is never compared.
pub fn check_distinct(
    input: &str,
    output: &str,
    rejects: &str,
    shards: bool,
) -> anyhow::Result<()> {
    let mut files: Vec<(String, &str)> = Vec::new();
    if input != "-" {
        files.push((input.to_owned(), "--input"));
    }
    // A device or FIFO is written in place: it has no partial file or record beside it.
    let renamed = |p: &str| identity(Path::new(p)).is_some();
    if output != "-" {
        files.push((output.to_owned(), "--output"));
        if !shards && renamed(output) {
            files.push((format!("{output}.partial"), "the output's partial file"));
            let record = crate::resume::record_path(output);
            files.push((record.display().to_string(), "the progress record"));
            files.push((
                format!("{}.new", record.display()),
                "the progress record's next version",
            ));
        }
    }
    files.push((rejects.to_owned(), "the rejects file"));
    if renamed(rejects) {
        files.push((format!("{rejects}.partial"), "the rejects' partial file"));
    }
    let ids: Vec<_> = files.iter().map(|(p, _)| identity(Path::new(p))).collect();
    for i in 0..files.len() {
        for j in i + 1..files.len() {
            if let (Some(a), Some(b)) = (&ids[i], &ids[j])
                && a == b
            {
                bail!(
                    "{} '{}' and {} '{}' are the same file: the run would overwrite it. Choose \
                     another --output or --rejects",
                    files[i].1,
                    files[i].0,
                    files[j].1,
                    files[j].0
                );
            }
        }
    }
    Ok(())
}

/// An exclusive lock on `OUTPUT.lock`, held while a run writes `OUTPUT`: a second run of the same
/// output (another shell, a second process started with the same `-p`) is refused before it
/// touches the partial files. The lock file is removed when the lock is dropped.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl OutputLock {
    /// Takes the lock of `output`; `None` for standard output.
    pub fn take(output: &str, shards: bool) -> anyhow::Result<Option<OutputLock>> {
        if output == "-" || (!shards && identity(Path::new(output)).is_none()) {
            return Ok(None);
        }
        let path = PathBuf::from(format!("{output}.lock"));
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("cannot create the lock file '{}'", path.display()))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => bail!(
                    "'{output}' is being written by another run (it holds '{}'): wait for it to \
                     end, or choose another --output",
                    path.display()
                ),
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("cannot lock '{}'", path.display()));
                }
            }
            // The run before may have removed the file between our open and our lock: the lock
            // is then on a name no one else sees. Take it again on the file the name holds now.
            let locked = file.metadata()?;
            match std::fs::metadata(&path) {
                Ok(m) if m.dev() == locked.dev() && m.ino() == locked.ino() => {
                    return Ok(Some(OutputLock { file, path }));
                }
                _ => continue,
            }
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still held, so no one can lock the name's old file after us.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_file_under_two_names_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(p("in.jsonl"), "{}\n").unwrap();
        std::os::unix::fs::symlink(p("in.jsonl"), p("link.jsonl")).unwrap();
        let err = |input: &str, output: &str, rejects: &str| {
            format!(
                "{:#}",
                check_distinct(input, output, rejects, false).unwrap_err()
            )
        };
        // The output is the input, by name, through a link, or through `..`.
        let e = err(&p("in.jsonl"), &p("in.jsonl"), &p("r.jsonl"));
        assert!(
            e.contains("--input") && e.contains("--output") && e.contains("same file"),
            "{e}"
        );
        assert!(err(&p("in.jsonl"), &p("link.jsonl"), &p("r.jsonl")).contains("same file"));
        let dotted = format!(
            "{}/../{}/in.jsonl",
            p(""),
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        assert!(err(&p("in.jsonl"), &dotted, &p("r.jsonl")).contains("same file"));
        // An input named like the default rejects of the output.
        std::fs::write(p("out.rejects.jsonl"), "{}\n").unwrap();
        let e = err(
            &p("out.rejects.jsonl"),
            &p("out.jsonl"),
            &p("out.rejects.jsonl"),
        );
        assert!(e.contains("--input") && e.contains("rejects file"), "{e}");
        // The rejects are the output (neither exists yet).
        let e = err(&p("in.jsonl"), &p("new.jsonl"), &p("new.jsonl"));
        assert!(e.contains("--output") && e.contains("rejects file"), "{e}");
        // The input is the output's partial file.
        std::fs::write(p("o.jsonl.partial"), "").unwrap();
        assert!(err(&p("o.jsonl.partial"), &p("o.jsonl"), &p("r.jsonl")).contains("partial"));
        // Distinct files pass, and devices are written in place, never compared.
        check_distinct(&p("in.jsonl"), &p("out.jsonl"), &p("r.jsonl"), false).unwrap();
        check_distinct(&p("in.jsonl"), "/dev/null", "/dev/null", false).unwrap();
        check_distinct("-", "-", &p("r.jsonl"), false).unwrap();
    }

    #[test]
    fn a_second_writer_of_an_output_is_refused_until_the_first_ends() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl").display().to_string();
        let first = OutputLock::take(&out, false).unwrap().expect("a lock");
        let e = format!("{:#}", OutputLock::take(&out, false).unwrap_err());
        assert!(e.contains("being written by another run"), "{e}");
        drop(first);
        assert!(
            !Path::new(&format!("{out}.lock")).exists(),
            "removed with the lock"
        );
        let again = OutputLock::take(&out, false).unwrap();
        assert!(again.is_some());
        assert!(OutputLock::take("-", false).unwrap().is_none());
    }
}
