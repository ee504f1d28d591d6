//! JSONL files as the engine's source and sink in file mode (`webscale-rl run --input FILE
//! --output FILE`): back-fills, and users without Kafka.
//!
//! * [`JsonlInput`] reads plain, gzip or zstd JSONL (detected by magic bytes, not by the name),
//!   or stdin, one line at a time as raw bytes: lines that are not UTF-8 must still reach the
//!   parser, which dead-letters them with a reason. Memory stays bounded: an over-long line is cut
//!   at `max_line_bytes` and flagged, never read wholly.
//! * [`BackgroundInput`] reads a [`JsonlInput`] that may wait for its writer (stdin, a pipe) on a
//!   thread of its own, so that the caller takes the lines already read without ever blocking.
//! * [`JsonlOutput`] writes JSONL, compressed by the output's extension, to a temporary file
//!   renamed into place by [`JsonlOutput::finish`], so a reader never sees half a file.
//! * [`Progress`] draws a progress bar on stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Default bound on the bytes kept of one input line. Lines longer than this come back truncated
/// and flagged; set the bound above the parser's own size limit so that the parser, not the
/// reader, decides what is too large.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 << 20;

/// Size of the buffer lines are read from.
const READ_BUFFER_BYTES: usize = 256 << 10;

/// An output file's bytes handed to the kernel between two starts of their writeback
/// ([`Encoder::start_writeback`]).
const WRITEBACK_BYTES: u64 = 8 << 20;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression of an input (found from its first bytes) or an output (chosen by extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a stream starting with `head` uses.
    pub fn from_magic(head: &[u8]) -> Compression {
        if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// The compression an output named `path` gets: `.gz` gzip, `.zst` zstd, anything else none.
    pub fn from_extension(path: &str) -> Compression {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".gz") {
            Compression::Gzip
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What [`JsonlInput::next_line`] read besides the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineInfo {
    /// 1-based line number: the offset of the message's origin in file mode.
    pub number: i64,
    /// The line was longer than `max_line_bytes`: only its first `max_line_bytes` bytes were kept
    /// and the rest was skipped, so it must be dead-lettered as too large.
    pub truncated: bool,
}

/// Counts the bytes read from the underlying file (before decompression), for progress.
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// A JSONL input: a file (plain, gzip or zstd) or stdin, read one line at a time.
pub struct JsonlInput {
    path: String,
    /// Concrete, so that [`BackgroundInput`] can see whether a line is buffered.
    reader: BufReader<Box<dyn Read + Send>>,
    compression: Compression,
    bytes_read: Arc<AtomicU64>,
    total_bytes: Option<u64>,
    lines: i64,
    max_line_bytes: usize,
}

impl std::fmt::Debug for JsonlInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlInput")
            .field("path", &self.path)
            .field("compression", &self.compression)
            .field("lines", &self.lines)
            .field("max_line_bytes", &self.max_line_bytes)
            .finish_non_exhaustive()
    }
}

impl JsonlInput {
    /// Opens `path` (`-` is stdin), detecting gzip or zstd from its first bytes. Lines are bounded
    /// by [`DEFAULT_MAX_LINE_BYTES`]; see [`JsonlInput::with_max_line_bytes`].
    pub fn open(path: &str) -> anyhow::Result<JsonlInput> {
        if path == "-" {
            return Self::from_reader_named("-", io::stdin(), None);
        }
        let file = File::open(path).map_err(|e| open_error("cannot open input file", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| open_error("cannot open input file", path, e))?;
        if meta.is_dir() {
            bail!("cannot open input file '{path}': it is a directory");
        }
        // Pipes and devices report no meaningful size.
        let total = meta.is_file().then_some(meta.len());
        Self::from_reader_named(path, file, total)
    }

    /// Reads JSONL from any reader (compression detected as for files); `name` is used in errors.
    pub fn from_reader(name: &str, reader: impl Read + Send + 'static) -> anyhow::Result<Self> {
        Self::from_reader_named(name, reader, None)
    }

    fn from_reader_named(
        name: &str,
        reader: impl Read + Send + 'static,
        total_bytes: Option<u64>,
    ) -> anyhow::Result<Self> {
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut counting = CountingReader {
            inner: reader,
            count: bytes_read.clone(),
        };
        // Peek at the magic bytes by reading them, then put them back in front of the stream;
        // a short read (a pipe) must not make a compressed stream look plain.
        let mut head = [0u8; 4];
        let mut got = 0;
        while got < head.len() {
            match counting.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(open_error("cannot read input file", name, e)),
            }
        }
        let compression = Compression::from_magic(&head[..got]);
        let stream = io::Cursor::new(head[..got].to_vec()).chain(counting);
        let decoded: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(stream),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(stream)
                    .map_err(|e| open_error("cannot start zstd decoder for", name, e))?,
            ),
        };
        Ok(JsonlInput {
            path: name.to_string(),
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, decoded),
            compression,
            bytes_read,
            total_bytes,
            lines: 0,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        })
    }

    /// Sets the bound on the bytes kept of one line (at least 1).
    pub fn with_max_line_bytes(mut self, max_line_bytes: usize) -> Self {
        self.max_line_bytes = max_line_bytes.max(1);
        self
    }

    /// Reads the next line into `buf` (cleared first) without its `\n` or `\r\n`, and returns its
    /// number, or `None` at the end of input. Empty lines are returned too (the parser dead-letters
    /// them); only the empty remainder after a final newline is not a line.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<LineInfo>> {
        self.read_line(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "reading input '{}' at line {}: {e}",
                    self.path,
                    self.lines + 1
                ),
            )
        })
    }

    fn read_line(&mut self, buf: &mut Vec<u8>) -> io::Result<Option<LineInfo>> {
        buf.clear();
        let max = self.max_line_bytes;
        // Room for a line of exactly `max` bytes plus its `\r\n`: anything that fills this
        // without a newline is over-long.
        let limit = max as u64 + 2;
        let n = (&mut self.reader).take(limit).read_until(b'\n', buf)?;
        if n == 0 {
            return Ok(None);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if n as u64 == limit {
            // Discard the rest of the line without holding it.
            self.reader.skip_until(b'\n')?;
        }
        // Otherwise this is the last line, without a final newline.
        let truncated = buf.len() > max;
        buf.truncate(max);
        self.lines += 1;
        Ok(Some(LineInfo {
            number: self.lines,
            truncated,
        }))
    }

    /// Bytes consumed from the underlying file or stdin (compressed bytes for a compressed input).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The size of the input file; `None` for stdin, pipes and devices.
    pub fn total_bytes(&self) -> Option<u64> {
        self.total_bytes
    }

    /// The compression detected from the input's first bytes.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The path the input was opened with (`-` for stdin).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Lines returned so far.
    pub fn lines_read(&self) -> i64 {
        self.lines
    }

    /// Whether a read may wait for a writer: stdin, a pipe, a device (any input of unknown size).
    /// A regular file's reads return as fast as the disk.
    pub fn may_wait(&self) -> bool {
        self.total_bytes.is_none()
    }

    /// Moves the reading to a thread of its own; `wake` is called whenever lines are ready.
    /// See [`BackgroundInput`].
    pub fn read_in_background(
        self,
        batch_lines: usize,
        wake: impl Fn() + Send + 'static,
    ) -> io::Result<BackgroundInput> {
        let (tx, rx) = std::sync::mpsc::sync_channel(BACKGROUND_BATCHES);
        let path = self.path.clone();
        let bytes_read = self.bytes_read.clone();
        std::thread::Builder::new()
            .name("input-reader".into())
            .spawn(move || {
                self.read_batches(batch_lines.max(1), &tx, &wake);
                // The end is the sender gone: wake the caller once more, after that, or it
                // could have taken the last batch, found the channel still open and gone idle.
                drop(tx);
                wake();
            })?;
        Ok(BackgroundInput {
            path,
            bytes_read,
            rx,
            batch: Vec::new().into_iter(),
            lines: 0,
        })
    }

    /// The reader thread of [`JsonlInput::read_in_background`]: sends batches of lines, each one
    /// as soon as the next line is not in the buffer (reading it could wait for the writer), or
    /// once it holds `batch_lines` lines or [`BACKGROUND_BATCH_BYTES`]. Ends at the end of the
    /// input, after a read error (sent), or when the receiver is gone.
    fn read_batches(
        mut self,
        batch_lines: usize,
        tx: &SyncSender<io::Result<LineBatch>>,
        wake: &dyn Fn(),
    ) {
        let send = |item| {
            let sent = tx.send(item).is_ok();
            wake();
            sent
        };
        let mut batch = Vec::new();
        let mut bytes = 0;
        loop {
            let mut buf = Vec::new();
            match self.next_line(&mut buf) {
                Ok(Some(info)) => {
                    bytes += buf.len();
                    batch.push((info, buf));
                    let buffered = self.reader.buffer().contains(&b'\n');
                    if !buffered || batch.len() >= batch_lines || bytes >= BACKGROUND_BATCH_BYTES {
                        bytes = 0;
                        if !send(Ok(std::mem::take(&mut batch))) {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if !batch.is_empty() {
                        send(Ok(batch));
                    }
                    return;
                }
                Err(e) => {
                    if batch.is_empty() || send(Ok(std::mem::take(&mut batch))) {
                        send(Err(e));
                    }
                    return;
                }
            }
        }
    }
}

/// Batches of lines a [`BackgroundInput`]'s thread may have read ahead of its caller. With the
/// batch being filled and the one taken, memory stays within `(BACKGROUND_BATCHES + 2)` batches of
/// at most [`BACKGROUND_BATCH_BYTES`] (plus one line, at most `max_line_bytes`): a reader that is
/// not taken from (the pipeline is full, the LLM is down) stops reading.
const BACKGROUND_BATCHES: usize = 4;

/// Lines, with their numbers, as the reader thread of a [`BackgroundInput`] hands them over.
type LineBatch = Vec<(LineInfo, Vec<u8>)>;

/// Bytes after which a batch is sent even though more lines are buffered.
const BACKGROUND_BATCH_BYTES: usize = 1 << 20;

/// What [`BackgroundInput::try_next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum NextLine {
    Line(LineInfo, Vec<u8>),
    /// No line is read yet: the writer has not written one (the reader's `wake` says when).
    Pending,
    /// The end of the input.
    End,
}

/// A [`JsonlInput`] read on its own thread ([`JsonlInput::read_in_background`]), for inputs whose
/// reads wait on a writer (stdin, a pipe): a timely worker that read them itself would stand
/// still while the writer pauses, holding the lines it already read (and the epochs they could
/// close) until the next line came. The lines and their numbers are those of the input itself;
/// the thread reads ahead within a bound and ends with the input (or when this is dropped and it
/// next has lines to hand over).
pub struct BackgroundInput {
    path: String,
    bytes_read: Arc<AtomicU64>,
    rx: Receiver<io::Result<LineBatch>>,
    /// The batch being taken from.
    batch: std::vec::IntoIter<(LineInfo, Vec<u8>)>,
    lines: i64,
}

impl std::fmt::Debug for BackgroundInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundInput")
            .field("path", &self.path)
            .field("lines", &self.lines)
            .finish_non_exhaustive()
    }
}

impl BackgroundInput {
    /// The next line if one is read, without waiting; a read error of the thread comes back once.
    pub fn try_next_line(&mut self) -> io::Result<NextLine> {
        loop {
            if let Some((info, line)) = self.batch.next() {
                self.lines = info.number;
                return Ok(NextLine::Line(info, line));
            }
            match self.rx.try_recv() {
                Ok(Ok(batch)) => self.batch = batch.into_iter(),
                Ok(Err(e)) => return Err(e),
                Err(TryRecvError::Empty) => return Ok(NextLine::Pending),
                Err(TryRecvError::Disconnected) => return Ok(NextLine::End),
            }
        }
    }

    /// Bytes the thread consumed from the input (compressed bytes for a compressed input).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// The path the input was opened with (`-` for stdin).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Lines returned so far.
    pub fn lines_read(&self) -> i64 {
        self.lines
    }
}

fn open_error(what: &str, path: &str, e: io::Error) -> anyhow::Error {
    anyhow::anyhow!("{what} '{path}': {}", io_reason(&e))
}

/// The error's description without the "(os error N)" suffix, which only adds noise for users.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

enum Encoder {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

impl Encoder {
    /// An encoder for `compression` writing to `file` (at its end).
    fn new(file: File, compression: Compression) -> io::Result<Encoder> {
        let buffered = BufWriter::with_capacity(READ_BUFFER_BYTES, file);
        Ok(match compression {
            Compression::None => Encoder::Plain(buffered),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                buffered,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(buffered, 0)?),
        })
    }

    fn compression(&self) -> Compression {
        match self {
            Encoder::Plain(_) => Compression::None,
            Encoder::Gzip(_) => Compression::Gzip,
            Encoder::Zstd(_) => Compression::Zstd,
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w,
            Encoder::Zstd(w) => w,
        }
    }

    /// Starts writing the file's dirty pages to disk, without waiting for them. A checkpoint
    /// and [`JsonlOutput::finish`] sync the file, and each then waits for every byte the kernel
    /// still holds: at the end of a run, for the whole output (35 MB took 16–18 ms, with the
    /// workers done and waiting). Started as the output grows, most of it is on disk by then,
    /// written while the stages worked. Advisory: whether it started is returned, and a failure
    /// is left to the sync to report. Linux only; elsewhere the sync does it all.
    fn start_writeback(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let file = match self {
                Encoder::Plain(w) => w.get_ref(),
                Encoder::Gzip(w) => w.get_ref().get_ref(),
                Encoder::Zstd(w) => w.get_ref().get_ref(),
            };
            // SAFETY: a plain syscall on an open descriptor; offset 0 and length 0 cover the
            // whole file, and SYNC_FILE_RANGE_WRITE only starts the writeback.
            let started = unsafe {
                libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
            };
            started == 0
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Ends the compressed stream and returns the file with every byte handed to it.
    fn finish(self) -> io::Result<File> {
        let buffered = match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(w) => w.finish()?,
            Encoder::Zstd(w) => w.finish()?,
        };
        buffered.into_inner().map_err(|e| e.into_error())
    }
}

enum Sink {
    /// Standard output, or a path that is no regular file (`/dev/null`, a named pipe): written
    /// as it is, never renamed over.
    Stream(BufWriter<Box<dyn Write + Send>>),
    File {
        /// `None` only for the moment of a checkpoint, which replaces it.
        encoder: Option<Encoder>,
        partial: PathBuf,
        target: PathBuf,
    },
}

/// Whether `path` exists and is neither a regular file nor a directory: a device, a named pipe,
/// a socket. Such an output is written in place, and a run writing to one cannot be resumed.
pub fn is_special_file(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// A JSONL output: a file written atomically (plain, or compressed by its `.gz` / `.zst`
/// extension), or stdout.
///
/// A file grows as `<path>.partial` and is renamed to `<path>` by [`JsonlOutput::finish`].
/// [`JsonlOutput::checkpoint`] makes what was written so far durable and returns its length: the
/// compressed stream is ended there (gzip members and zstd frames may follow one another in one
/// file), so [`JsonlOutput::resume`] can cut the file back to that length and append — the file
/// mode's resume after an interruption.
pub struct JsonlOutput {
    path: String,
    /// `None` once finished.
    sink: Option<Sink>,
    records: u64,
    /// A checkpoint was taken: the partial file is state to resume from, kept when the output is
    /// dropped unfinished. Without one it is removed.
    checkpointed: bool,
    /// Record bytes written since the file's writeback was last started, and how many times it
    /// started.
    since_writeback: u64,
    writebacks: u64,
}

impl std::fmt::Debug for JsonlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlOutput")
            .field("path", &self.path)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl JsonlOutput {
    /// Creates an output at `path` (`-` is stdout). A file is written to `<path>.partial` in the
    /// same directory (replacing one left there) and appears at `path` only on
    /// [`JsonlOutput::finish`].
    pub fn create(path: &str) -> anyhow::Result<JsonlOutput> {
        let stream: Box<dyn Write + Send> = if path == "-" {
            Box::new(io::stdout())
        } else if is_special_file(path) {
            // Written in place: the atomic rename of a regular output would replace the
            // device or pipe itself (as root, `/dev/null` with a regular file).
            Box::new(
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| create_error(path, Path::new(path), e))?,
            )
        } else {
            return Self::open_file(path, None);
        };
        Ok(JsonlOutput {
            path: path.to_string(),
            sink: Some(Sink::Stream(BufWriter::with_capacity(
                READ_BUFFER_BYTES,
                stream,
            ))),
            records: 0,
            checkpointed: false,
            since_writeback: 0,
            writebacks: 0,
        })
    }

    /// Reopens the partial file of an output at `path` after an interruption: cut back to `len`
    /// bytes (the length a [`JsonlOutput::checkpoint`] returned), then appended to.
    pub fn resume(path: &str, len: u64) -> anyhow::Result<JsonlOutput> {
        if path == "-" {
            bail!("standard output cannot be resumed");
        }
        Self::open_file(path, Some(len))
    }

    fn open_file(path: &str, resume_at: Option<u64>) -> anyhow::Result<JsonlOutput> {
        if path.is_empty() {
            bail!("cannot create output file: the path is empty");
        }
        let target = PathBuf::from(path);
        if target.is_dir() {
            bail!("cannot create output file '{path}': it is a directory");
        }
        let partial = partial_path(&target);
        let file = match resume_at {
            None => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&partial)
                .map_err(|e| create_error(path, &target, e))?,
            Some(len) => {
                let mut file = OpenOptions::new().write(true).open(&partial).map_err(|e| {
                    open_error(
                        "cannot reopen the partial output",
                        &partial.to_string_lossy(),
                        e,
                    )
                })?;
                let have = file.metadata().map(|m| m.len()).unwrap_or(0);
                if have < len {
                    bail!(
                        "cannot resume '{path}': its partial file '{}' has {have} bytes, fewer than \
                         the {len} its progress record counts (was it changed?); start over with --restart",
                        partial.display()
                    );
                }
                file.set_len(len)
                    .and_then(|()| file.seek(io::SeekFrom::End(0)).map(|_| ()))
                    .map_err(|e| {
                        open_error(
                            "cannot cut back the partial output",
                            &partial.to_string_lossy(),
                            e,
                        )
                    })?;
                file
            }
        };
        let encoder = Encoder::new(file, Compression::from_extension(path)).map_err(|e| {
            anyhow::anyhow!("cannot start the encoder for '{path}': {}", io_reason(&e))
        })?;
        Ok(JsonlOutput {
            path: path.to_string(),
            sink: Some(Sink::File {
                encoder: Some(encoder),
                partial,
                target,
            }),
            records: 0,
            checkpointed: resume_at.is_some(),
            since_writeback: 0,
            writebacks: 0,
        })
    }

    /// Makes every record written so far durable in the partial file and returns its length in
    /// bytes: the compressed stream is ended (a new gzip member or zstd frame starts after it) and
    /// the file synced. Standard output is only flushed (its length is 0).
    pub fn checkpoint(&mut self) -> anyhow::Result<u64> {
        let path = self.path.clone();
        let fail =
            |e: io::Error| anyhow::anyhow!("cannot write output file '{path}': {}", io_reason(&e));
        match self.sink.as_mut() {
            None => bail!("output '{}' is already finished", self.path),
            Some(Sink::Stream(w)) => {
                w.flush().map_err(fail)?;
                Ok(0)
            }
            Some(Sink::File { encoder, .. }) => {
                let current = encoder.take().expect("an encoder between checkpoints");
                let compression = current.compression();
                let mut file = current.finish().map_err(fail)?;
                file.sync_data().map_err(fail)?;
                let len = file.stream_position().map_err(fail)?;
                *encoder = Some(Encoder::new(file, compression).map_err(fail)?);
                self.checkpointed = true;
                Ok(len)
            }
        }
    }

    /// Hands what was written to standard output (or a pipe, a device) to its reader now; a file
    /// is left to its checkpoints and [`JsonlOutput::finish`]. Called as each epoch is written, so
    /// a consumer of a stream output sees the epochs as they complete, not one buffer at a time.
    pub fn flush_stream(&mut self) -> anyhow::Result<()> {
        if let Some(Sink::Stream(w)) = self.sink.as_mut() {
            w.flush().map_err(|e| {
                anyhow::anyhow!("cannot write to '{}': {}", self.path, io_reason(&e))
            })?;
        }
        Ok(())
    }

    /// Appends one record: `json_bytes` (one JSON value, without newlines) and a `\n`.
    pub fn write_record(&mut self, json_bytes: &[u8]) -> anyhow::Result<()> {
        debug_assert!(
            !json_bytes.contains(&b'\n'),
            "a JSONL record must not contain a newline"
        );
        let w: &mut dyn Write = match self.sink.as_mut() {
            Some(Sink::Stream(w)) => w,
            Some(Sink::File {
                encoder: Some(encoder),
                ..
            }) => {
                self.since_writeback += json_bytes.len() as u64 + 1;
                if self.since_writeback >= WRITEBACK_BYTES {
                    // What the buffer holds reaches the kernel later, and the next start takes it.
                    self.writebacks += u64::from(encoder.start_writeback());
                    self.since_writeback = 0;
                }
                encoder.writer()
            }
            _ => bail!("output '{}' is already finished", self.path),
        };
        w.write_all(json_bytes)
            .and_then(|()| w.write_all(b"\n"))
            .map_err(|e| anyhow::anyhow!("cannot write to '{}': {}", self.path, io_reason(&e)))?;
        self.records += 1;
        Ok(())
    }

    /// How many times the file's writeback was started ahead of a sync: one per
    /// [`WRITEBACK_BYTES`] of records written (Linux; 0 elsewhere).
    pub fn writebacks_started(&self) -> u64 {
        self.writebacks
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The path the output was created with (`-` for stdout).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Flushes, ends the compressed stream, syncs the file to disk and renames it to its path.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let path = self.path.clone();
        let fail = |what: &str, e: io::Error| {
            anyhow::anyhow!("cannot {what} output file '{path}': {}", io_reason(&e))
        };
        match self.sink.take() {
            None => Ok(()),
            Some(Sink::Stream(mut w)) => w.flush().map_err(|e| fail("flush", e)),
            Some(Sink::File {
                encoder,
                partial,
                target,
            }) => {
                let result = (|| {
                    let encoder = encoder.expect("an encoder between checkpoints");
                    let file = encoder.finish().map_err(|e| fail("write", e))?;
                    file.sync_all().map_err(|e| fail("sync", e))?;
                    drop(file);
                    std::fs::rename(&partial, &target).map_err(|e| fail("rename into place", e))?;
                    sync_parent_dir(&target);
                    Ok(())
                })();
                if result.is_err() && !self.checkpointed {
                    let _ = std::fs::remove_file(&partial);
                }
                result
            }
        }
    }
}

impl Drop for JsonlOutput {
    /// An output dropped unfinished leaves no file behind, unless a checkpoint made its partial
    /// file the state a later run resumes from; then what follows the checkpoint is not written
    /// (the encoder is dropped, not finished), and a resume cuts it off anyway.
    fn drop(&mut self) {
        if let Some(Sink::File {
            encoder, partial, ..
        }) = self.sink.take()
        {
            drop(encoder);
            if !self.checkpointed {
                let _ = std::fs::remove_file(partial);
            }
        }
    }
}

/// `<path>.partial`: in the same directory, so the final rename cannot cross file systems; the
/// same name for every run, so a resumed run finds it.
pub fn partial_path(target: &Path) -> PathBuf {
    let mut name = target.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

fn create_error(path: &str, target: &Path, e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::NotFound
        && let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return anyhow::anyhow!(
            "cannot create output file '{path}': directory '{}' does not exist",
            dir.display()
        );
    }
    anyhow::anyhow!("cannot create output file '{path}': {}", io_reason(&e))
}

/// Makes the rename itself durable. Best effort: not every platform can sync a directory.
fn sync_parent_dir(target: &Path) {
    #[cfg(unix)]
    {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = target;
}

/// How often the message (docs/s, yield) is recomputed; the bar itself redraws at its own rate.
const MESSAGE_INTERVAL: Duration = Duration::from_millis(100);

/// A progress bar on stderr for file mode: bytes read with ETA when the input size is known, a
/// spinner otherwise, with documents per second and the running yield.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    last_message: Option<Instant>,
    docs_read: u64,
    docs_out: u64,
    total_bytes: Option<u64>,
    /// The whole input is read: the bar shows the work in flight, not an ETA of 0 s.
    reading_done: bool,
    /// Outputs are QA pairs (several per document), not documents: no "yield".
    qa_pairs: bool,
}

impl Progress {
    /// A bar for an input of `total_bytes` (`None`: a spinner). Hidden when `enabled` is false or
    /// stderr is not a terminal.
    pub fn new(total_bytes: Option<u64>, enabled: bool) -> Progress {
        let bar = if !enabled {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(total_bytes, ProgressDrawTarget::stderr());
            let template = if total_bytes.is_some() {
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} (eta {eta}) {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {bytes} {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            if total_bytes.is_none() {
                // Keeps the spinner moving while a slow stdin delivers nothing.
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            bar
        };
        Progress {
            bar,
            start: Instant::now(),
            last_message: None,
            docs_read: 0,
            docs_out: 0,
            total_bytes,
            reading_done: false,
            qa_pairs: false,
        }
    }

    /// The outputs counted are QA pairs: show pairs per document instead of a yield.
    pub fn counting_qa_pairs(mut self) -> Self {
        self.qa_pairs = true;
        self
    }

    /// Reports the input bytes consumed, documents read and records written so far. Cheap enough
    /// to call per document: the message is rebuilt at most every 100 ms.
    pub fn update(&mut self, bytes_read: u64, docs_read: u64, docs_out: u64) {
        self.docs_read = docs_read;
        self.docs_out = docs_out;
        if !self.reading_done && self.total_bytes.is_some_and(|t| bytes_read >= t) {
            self.reading_done = true;
            // The rest is processing (the LLM stages can take long): no ETA of 0 s.
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] input read, finishing what is in flight: {msg}",
            ) {
                self.bar.set_style(style);
                self.bar.enable_steady_tick(Duration::from_millis(200));
            }
        }
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_position(bytes_read);
        let now = Instant::now();
        if self
            .last_message
            .is_none_or(|t| now.duration_since(t) >= MESSAGE_INTERVAL)
        {
            self.last_message = Some(now);
            self.bar.set_message(status_message(
                docs_read,
                docs_out,
                now.duration_since(self.start),
                self.qa_pairs,
            ));
        }
    }

    /// Draws the final counts and leaves the bar on screen.
    pub fn finish(&mut self) {
        if !self.bar.is_hidden() {
            self.bar.finish_with_message(status_message(
                self.docs_read,
                self.docs_out,
                self.start.elapsed(),
                self.qa_pairs,
            ));
        }
    }
}

/// "12,345 docs, 1,234 docs/s, 7,802 out, yield 63.2%".
fn status_message(docs_read: u64, docs_out: u64, elapsed: Duration, qa_pairs: bool) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        docs_read as f64 / secs
    } else {
        0.0
    };
    let per_doc = if docs_read > 0 {
        docs_out as f64 / docs_read as f64
    } else {
        0.0
    };
    if qa_pairs {
        return format!(
            "{} docs, {} docs/s, {} QA pairs ({per_doc:.2} per document)",
            thousands(docs_read),
            thousands(rate.round() as u64),
            thousands(docs_out)
        );
    }
    format!(
        "{} docs, {} docs/s, {} out, yield {:.1}%",
        thousands(docs_read),
        thousands(rate.round() as u64),
        thousands(docs_out),
        100.0 * per_doc
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_pipe_is_written_in_place_not_renamed_over() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.jsonl");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("mkfifo is not available: skipped");
            return;
        }
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
        };
        let path = fifo.to_str().unwrap();
        assert!(is_special_file(path));
        let mut out = JsonlOutput::create(path).unwrap();
        out.write_record(br#"{"id":"a"}"#).unwrap();
        assert_eq!(out.checkpoint().unwrap(), 0, "nothing to resume from");
        out.finish().unwrap();
        // Checked before waiting for the reader, which never wakes if the pipe was replaced.
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo(), "the pipe was replaced: {kind:?}");
        assert!(!partial_path(&fifo).exists());
        assert_eq!(reader.join().unwrap(), "{\"id\":\"a\"}\n");
    }

    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/web/sample.jsonl"
    );

    fn read_all(input: &mut JsonlInput) -> Vec<(LineInfo, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(info) = input.next_line(&mut buf).unwrap() {
            out.push((info, buf.clone()));
        }
        out
    }

    fn lines_of(input: &mut JsonlInput) -> Vec<Vec<u8>> {
        read_all(input).into_iter().map(|(_, l)| l).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn write_file(dir: &Path, name: &str, data: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn records() -> Vec<Vec<u8>> {
        (0..500)
            .map(|i| {
                format!(r#"{{"id":"d{i}","text":"document number {i} ünïcode"}}"#).into_bytes()
            })
            .collect()
    }

    fn round_trip(name: &str, expected: Compression) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let path = path.to_str().unwrap();
        let mut out = JsonlOutput::create(path).unwrap();
        for r in records() {
            out.write_record(&r).unwrap();
        }
        assert_eq!(out.records(), 500);
        out.finish().unwrap();

        let mut input = JsonlInput::open(path).unwrap();
        assert_eq!(input.compression(), expected);
        let read = read_all(&mut input);
        assert_eq!(read.len(), 500);
        for (i, (info, line)) in read.iter().enumerate() {
            assert_eq!(info.number, i as i64 + 1);
            assert!(!info.truncated);
            assert_eq!(line, &records()[i]);
        }
        let size = std::fs::metadata(path).unwrap().len();
        assert_eq!(input.total_bytes(), Some(size));
        assert_eq!(input.bytes_read(), size);
        // No temporary file is left beside the output.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn file_round_trip_plain() {
        round_trip("out.jsonl", Compression::None);
    }

    #[test]
    fn file_round_trip_gzip() {
        round_trip("out.jsonl.gz", Compression::Gzip);
    }

    #[test]
    fn file_round_trip_zstd() {
        round_trip("out.jsonl.zst", Compression::Zstd);
    }

    #[test]
    fn file_compression_is_detected_by_magic_bytes_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"{\"a\":1}\n{\"b\":2}\n";
        let gz = write_file(dir.path(), "really-gzip.jsonl", &gzip(data));
        let zst = write_file(
            dir.path(),
            "really-zstd.gz",
            &zstd::encode_all(&data[..], 3).unwrap(),
        );
        let plain = write_file(dir.path(), "really-plain.zst", data);
        for (path, expected) in [
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
            (plain, Compression::None),
        ] {
            let mut input = JsonlInput::open(&path).unwrap();
            assert_eq!(input.compression(), expected, "{path}");
            assert_eq!(
                lines_of(&mut input),
                vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
            );
        }
    }

    /// A reader that returns one byte per call, as a slow pipe might.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(1);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn file_magic_detection_survives_short_reads() {
        let data = gzip(b"{\"a\":1}\n");
        let mut input = JsonlInput::from_reader("pipe", Trickle(io::Cursor::new(data))).unwrap();
        assert_eq!(input.compression(), Compression::Gzip);
        assert_eq!(lines_of(&mut input), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(input.total_bytes(), None);
    }

    #[test]
    fn file_a_pipe_read_in_background_hands_over_what_is_read_without_waiting() {
        let (reader, mut writer) = io::pipe().unwrap();
        // Opening reads the first bytes (the compression's magic).
        writer.write_all(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        let input = JsonlInput::from_reader("pipe", reader).unwrap();
        assert!(input.may_wait());
        let (woken_tx, woken) = std::sync::mpsc::channel();
        let mut input = input
            .read_in_background(100, move || {
                let _ = woken_tx.send(());
            })
            .unwrap();
        // What the thread hands over next, waiting for its wake-ups (bounded: a lost one fails).
        let next = |input: &mut BackgroundInput| loop {
            match input.try_next_line().unwrap() {
                NextLine::Pending => woken
                    .recv_timeout(Duration::from_secs(10))
                    .expect("woken when lines or the end are ready"),
                found => return found,
            }
        };
        let line = |n, text: &[u8]| {
            NextLine::Line(
                LineInfo {
                    number: n,
                    truncated: false,
                },
                text.to_vec(),
            )
        };
        assert_eq!(next(&mut input), line(1, b"{\"a\":1}"));
        assert_eq!(next(&mut input), line(2, b"{\"a\":2}"));
        // The writer pauses: nothing to take, and taking does not block.
        assert_eq!(input.try_next_line().unwrap(), NextLine::Pending);
        writer.write_all(b"{\"a\":3}").unwrap();
        drop(writer);
        assert_eq!(next(&mut input), line(3, b"{\"a\":3}"));
        assert_eq!(next(&mut input), NextLine::End);
        assert_eq!(input.lines_read(), 3);
    }

    #[test]
    fn file_concatenated_gzip_members_are_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = gzip(b"{\"m\":1}\n{\"m\":2}\n");
        data.extend(gzip(b"{\"m\":3}\n"));
        let path = write_file(dir.path(), "multi.jsonl.gz", &data);
        let mut input = JsonlInput::open(&path).unwrap();
        assert_eq!(
            lines_of(&mut input),
            vec![
                b"{\"m\":1}".to_vec(),
                b"{\"m\":2}".to_vec(),
                b"{\"m\":3}".to_vec()
            ]
        );
    }

    #[test]
    fn file_line_endings_empty_lines_and_raw_bytes() {
        let data: &[u8] = b"{\"a\":1}\r\n\n\xff\xfe not utf8\r\n\r\n{\"last\":true}";
        let mut input = JsonlInput::from_reader("mem", io::Cursor::new(data.to_vec())).unwrap();
        let read = read_all(&mut input);
        let lines: Vec<&[u8]> = read.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(
            lines,
            vec![
                &b"{\"a\":1}"[..],
                b"",
                b"\xff\xfe not utf8",
                b"",
                b"{\"last\":true}"
            ]
        );
        let numbers: Vec<i64> = read.iter().map(|(i, _)| i.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
        assert_eq!(input.lines_read(), 5);
    }

    #[test]
    fn file_final_newline_is_not_an_extra_line() {
        let mut input =
            JsonlInput::from_reader("mem", io::Cursor::new(b"a\nb\n".to_vec())).unwrap();
        assert_eq!(lines_of(&mut input), vec![b"a".to_vec(), b"b".to_vec()]);
        let mut empty = JsonlInput::from_reader("mem", io::empty()).unwrap();
        assert!(lines_of(&mut empty).is_empty());
        // A lone newline is one empty line.
        let mut one = JsonlInput::from_reader("mem", io::Cursor::new(b"\n".to_vec())).unwrap();
        assert_eq!(lines_of(&mut one), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn file_over_long_line_is_truncated_with_bounded_memory() {
        const MAX: usize = 1000;
        // 64 MiB without a newline, then a normal line: never materialised, only streamed.
        let huge = io::repeat(b'x').take(64 << 20);
        let rest = io::Cursor::new(b"\n{\"ok\":1}\n".to_vec());
        let mut input = JsonlInput::from_reader("mem", huge.chain(rest))
            .unwrap()
            .with_max_line_bytes(MAX);
        let mut buf = Vec::new();
        let info = input.next_line(&mut buf).unwrap().unwrap();
        assert_eq!(
            info,
            LineInfo {
                number: 1,
                truncated: true
            }
        );
        assert_eq!(buf, vec![b'x'; MAX]);
        assert!(buf.capacity() < 64 * MAX, "capacity {}", buf.capacity());
        let info = input.next_line(&mut buf).unwrap().unwrap();
        assert_eq!(
            info,
            LineInfo {
                number: 2,
                truncated: false
            }
        );
        assert_eq!(buf, b"{\"ok\":1}");
        assert!(input.next_line(&mut buf).unwrap().is_none());
    }

    #[test]
    fn file_truncation_boundaries() {
        const MAX: usize = 4;
        let data = b"abcd\nabcd\r\nabcde\nabcdef\r\nab\nabcdefgh";
        let mut input = JsonlInput::from_reader("mem", io::Cursor::new(data.to_vec()))
            .unwrap()
            .with_max_line_bytes(MAX);
        let read: Vec<(bool, Vec<u8>)> = read_all(&mut input)
            .into_iter()
            .map(|(i, l)| (i.truncated, l))
            .collect();
        assert_eq!(
            read,
            vec![
                (false, b"abcd".to_vec()),
                (false, b"abcd".to_vec()),
                (true, b"abcd".to_vec()),
                (true, b"abcd".to_vec()),
                (false, b"ab".to_vec()),
                (true, b"abcd".to_vec()),
            ]
        );
        // A last line without a newline, one byte over.
        let mut input = JsonlInput::from_reader("mem", io::Cursor::new(b"abcde".to_vec()))
            .unwrap()
            .with_max_line_bytes(MAX);
        let read = read_all(&mut input);
        assert_eq!(read.len(), 1);
        assert!(read[0].0.truncated);
        assert_eq!(read[0].1, b"abcd");
    }

    #[test]
    fn file_missing_input_error_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let err = JsonlInput::open(path.to_str().unwrap()).unwrap_err();
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "cannot open input file '{}': No such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn file_corrupt_gzip_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = gzip(b"{\"a\":1}\n");
        let mid = data.len() / 2;
        data.truncate(mid);
        let path = write_file(dir.path(), "cut.jsonl.gz", &data);
        let mut input = JsonlInput::open(&path).unwrap();
        let mut buf = Vec::new();
        let err = loop {
            match input.next_line(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("a truncated gzip stream read as complete"),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains(&path), "{err}");
    }

    #[test]
    fn a_checkpointed_output_resumes_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["out.jsonl", "out.jsonl.gz", "out.jsonl.zst"] {
            let path = dir.path().join(name);
            let p = path.to_str().unwrap();
            let mut out = JsonlOutput::create(p).unwrap();
            out.write_record(b"{\"n\":1}").unwrap();
            out.write_record(b"{\"n\":2}").unwrap();
            let len = out.checkpoint().unwrap();
            assert!(len > 0);
            // Written after the checkpoint, then the process dies: cut off on resume.
            out.write_record(b"{\"n\":3}").unwrap();
            drop(out);
            assert!(
                partial_path(&path).exists(),
                "{name}: the checkpointed partial file is kept"
            );
            let mut out = JsonlOutput::resume(p, len).unwrap();
            out.write_record(b"{\"n\":4}").unwrap();
            out.checkpoint().unwrap();
            out.write_record(b"{\"n\":5}").unwrap();
            out.finish().unwrap();
            assert!(!partial_path(&path).exists());
            let mut input = JsonlInput::open(p).unwrap();
            let mut buf = Vec::new();
            let mut lines = Vec::new();
            while input.next_line(&mut buf).unwrap().is_some() {
                lines.push(String::from_utf8(std::mem::take(&mut buf)).unwrap());
            }
            assert_eq!(
                lines,
                ["{\"n\":1}", "{\"n\":2}", "{\"n\":4}", "{\"n\":5}"],
                "{name}"
            );
        }
        // A partial file shorter than its record: a clear error, not a corrupt output.
        let path = dir.path().join("short.jsonl");
        let mut out = JsonlOutput::create(path.to_str().unwrap()).unwrap();
        out.write_record(b"{}").unwrap();
        let len = out.checkpoint().unwrap();
        drop(out);
        let err = JsonlOutput::resume(path.to_str().unwrap(), len + 10).unwrap_err();
        assert!(format!("{err:#}").contains("--restart"), "{err:#}");
    }

    #[test]
    fn file_output_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl.zst");
        let p = path.to_str().unwrap();
        let mut out = JsonlOutput::create(p).unwrap();
        out.write_record(b"{\"a\":1}").unwrap();
        assert!(!path.exists(), "the output appeared before finish");
        let tmp = partial_path(&path);
        assert!(tmp.exists());
        out.finish().unwrap();
        assert!(path.exists());
        assert!(!tmp.exists());

        // Dropped without finish: no output, no temporary file.
        let dropped = dir.path().join("dropped.jsonl.gz");
        let mut out = JsonlOutput::create(dropped.to_str().unwrap()).unwrap();
        out.write_record(b"{\"a\":1}").unwrap();
        drop(out);
        assert!(!dropped.exists());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["out.jsonl.zst".to_string()]);
    }

    #[test]
    fn a_growing_output_starts_its_writeback_every_few_megabytes() {
        let dir = tempfile::tempdir().unwrap();
        let record = format!("{{\"text\":\"{}\"}}", "x".repeat(1000));
        let per_writeback = WRITEBACK_BYTES.div_ceil(record.len() as u64 + 1);
        for name in ["out.jsonl", "out.jsonl.zst"] {
            let path = dir.path().join(name);
            let mut out = JsonlOutput::create(path.to_str().unwrap()).unwrap();
            for _ in 0..2 * per_writeback + 10 {
                out.write_record(record.as_bytes()).unwrap();
            }
            // Each start is a syscall that succeeded (one with a bad argument would not count).
            assert_eq!(out.writebacks_started(), 2, "{name}");
            out.finish().unwrap();
            let mut back = JsonlInput::open(path.to_str().unwrap()).unwrap();
            assert_eq!(
                read_all(&mut back).len() as u64,
                2 * per_writeback + 10,
                "{name}"
            );
        }
        // Standard output has no file to write back.
        let mut out = JsonlOutput::create("-").unwrap();
        out.write_record(b"{}").unwrap();
        assert_eq!(out.writebacks_started(), 0);
    }

    #[test]
    fn file_output_replaces_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "out.jsonl", b"old\nold\nold\n");
        let mut out = JsonlOutput::create(&path).unwrap();
        out.write_record(b"{\"new\":1}").unwrap();
        // The old content stays readable until finish.
        assert_eq!(std::fs::read(&path).unwrap(), b"old\nold\nold\n");
        out.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"new\":1}\n");
    }

    #[test]
    fn file_output_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("out.jsonl");
        let msg = JsonlOutput::create(missing.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&*missing.to_string_lossy()), "{msg}");
        assert!(msg.contains("does not exist"), "{msg}");

        let msg = JsonlOutput::create(dir.path().to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("is a directory"), "{msg}");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let ro = dir.path().join("ro");
            std::fs::create_dir(&ro).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
            // Root ignores directory permissions; check only where they apply.
            if File::create(ro.join("probe")).is_err() {
                let target = ro.join("out.jsonl");
                let msg = JsonlOutput::create(target.to_str().unwrap())
                    .unwrap_err()
                    .to_string();
                assert!(msg.contains(&*target.to_string_lossy()), "{msg}");
                assert!(msg.contains("Permission denied"), "{msg}");
            }
        }
    }

    #[test]
    fn file_shared_sample_survives_gzip() {
        let original = std::fs::read(SAMPLE).expect("the shared sample is readable");
        let expected: Vec<&[u8]> = original
            .strip_suffix(b"\n")
            .unwrap_or(&original)
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(expected.len(), 379, "the tests' slice of the shared sample");

        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "sample.jsonl.gz", &gzip(&original));
        let mut input = JsonlInput::open(&path).unwrap();
        let read = read_all(&mut input);
        assert_eq!(read.len(), expected.len());
        for (i, (info, line)) in read.iter().enumerate() {
            assert_eq!(info.number, i as i64 + 1);
            assert!(!info.truncated);
            assert_eq!(line.as_slice(), expected[i], "line {}", i + 1);
        }
        assert_eq!(input.bytes_read(), input.total_bytes().unwrap());
    }

    #[test]
    fn file_progress_message_and_hidden_bar() {
        assert_eq!(
            status_message(12_345, 7_802, Duration::from_secs(10), false),
            "12,345 docs, 1,235 docs/s, 7,802 out, yield 63.2%"
        );
        assert_eq!(
            status_message(0, 0, Duration::ZERO, false),
            "0 docs, 0 docs/s, 0 out, yield 0.0%"
        );
        // QA pairs outnumber documents: pairs per document, never a yield of 179 %.
        assert_eq!(
            status_message(100, 179, Duration::from_secs(10), true),
            "100 docs, 10 docs/s, 179 QA pairs (1.79 per document)"
        );
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");

        let mut p = Progress::new(Some(100), false);
        assert!(p.bar.is_hidden());
        p.update(50, 10, 6);
        assert!(!p.reading_done);
        // All bytes read while work is still in flight: no more ETA.
        p.update(100, 20, 6);
        assert!(p.reading_done);
        p.finish();
        assert_eq!((p.docs_read, p.docs_out), (20, 6));
    }
}
