//! Deployment logs on disk: one file per deployment in the logs directory, named
//! `deployment-<id>-<nonce>.log` (the nonce keeps a new database from ever reading an older
//! database's file for the same id), readable only by the server's user (directory 0700,
//! files 0600).
//!
//! - Keystone reads and writes only files it named in its own directory, whatever path a
//!   row holds (rows adopted from Django, or changed by hand, may name any file), and never
//!   through a symbolic link.
//! - Appends are capped per deployment ([`LogStore::max_bytes`]): the append that reaches the
//!   cap is cut there and followed by one marker line; later output is dropped.
//! - Control characters other than newline and tab are stored escaped (`\u{1b}`), so a log
//!   cannot drive the terminal of whoever reads it; `\r\n` becomes `\n`.
//! - Reading the last lines reads the file from its end, at most a given number of bytes:
//!   memory stays bounded whatever the file's size.
//! - Reading the lines after line N seeks through a sidecar index of line counts
//!   (`deployment-<id>-<nonce>.idx`, [`LineIndex`]): it reads at most [`INDEX_EVERY`] bytes
//!   to find line N, however long the log, and every byte it reads (the search included)
//!   counts towards the caller's limit, so what a field costs is known before it runs.
//! - A deployment's file (and its index) is deleted with it.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::DomainError;

/// The marker written once a deployment's log reaches its cap.
pub const TRUNCATED_MARKER: &str =
    "[keystone] this deployment's log reached its size limit; further output is dropped";

/// Where deployment logs live and how large each may grow.
#[derive(Clone, Debug)]
pub struct LogStore {
    /// Absolute.
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// What an append did.
#[derive(Debug, PartialEq, Eq)]
pub struct Appended {
    /// The text written (escaped, and cut at the cap); empty once the log is full.
    pub text: String,
    /// Whether the log is full now.
    pub full: bool,
}

impl LogStore {
    /// A fresh file name for `deployment_id`'s log.
    pub fn new_path(&self, deployment_id: i64) -> Result<PathBuf, DomainError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)
            .map_err(|e| DomainError::Internal(format!("no randomness for a log name: {e}")))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        Ok(self
            .dir
            .join(format!("deployment-{deployment_id}-{nonce}.log")))
    }

    /// Whether `path` is a log file this store named: directly in its directory, called
    /// `deployment-….log`.
    pub fn owns(&self, path: &str) -> bool {
        let path = Path::new(path);
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("deployment-") && n.ends_with(".log"));
        named && path.parent() == Some(self.dir.as_path())
    }

    fn confined<'a>(&self, path: &'a str) -> Result<&'a Path, DomainError> {
        if self.owns(path) {
            Ok(Path::new(path))
        } else {
            Err(DomainError::Forbidden(format!(
                "the log file {path:?} is not in Keystone's logs directory; only files Keystone \
                 named there are read or written"
            )))
        }
    }

    /// Appends `chunk` (escaped) to the log at `path`, up to the cap.
    pub async fn append(&self, path: &str, chunk: &str) -> Result<Appended, DomainError> {
        let path = self.confined(path)?.to_owned();
        let dir = self.dir.clone();
        let text = escape_controls(chunk).into_owned();
        let max = self.max_bytes;
        run_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)?;
            let size = file.metadata()?.len();
            if size >= max {
                return Ok(Appended {
                    text: String::new(),
                    full: true,
                });
            }
            // A write the disk cannot take leaves the file as it was: a retried chunk is
            // then written once, whole.
            let mut write = |bytes: &[u8]| {
                file.write_all(bytes).inspect_err(|_| {
                    let _ = file.set_len(size);
                })
            };
            let room = usize::try_from(max - size).unwrap_or(usize::MAX);
            if text.len() <= room {
                write(text.as_bytes())?;
                index_written(&path, &file);
                return Ok(Appended { text, full: false });
            }
            let mut cut = room;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let mut written = text[..cut].to_owned();
            if !written.is_empty() && !written.ends_with('\n') {
                written.push('\n');
            }
            written.push_str(TRUNCATED_MARKER);
            written.push('\n');
            write(written.as_bytes())?;
            index_written(&path, &file);
            Ok(Appended {
                text: written,
                full: true,
            })
        })
        .await
    }

    /// The last `lines` lines of the log at `path`, reading at most `max_bytes` from its end
    /// (older lines beyond that are left out). A missing file has no lines.
    pub async fn tail(
        &self,
        path: &str,
        lines: usize,
        max_bytes: usize,
    ) -> Result<Tail, DomainError> {
        if path.is_empty() || lines == 0 {
            return Ok(Tail::default());
        }
        let path = self.confined(path)?.to_owned();
        run_blocking(move || {
            let Some(file) = open_existing(&path)? else {
                return Ok(Tail::default());
            };
            read_tail(&file, lines, max_bytes)
        })
        .await
    }

    /// Lines `after + 1 ..= after + count` of the log at `path` (numbered from 1), reading at
    /// most `max_bytes` of it, the search for line `after + 1` included: a reader resumes
    /// exactly where it stopped.
    pub async fn after(
        &self,
        path: &str,
        after: usize,
        count: usize,
        max_bytes: usize,
    ) -> Result<Tail, DomainError> {
        if path.is_empty() || count == 0 {
            return Ok(Tail::default());
        }
        let path = self.confined(path)?.to_owned();
        run_blocking(move || {
            let Some(file) = open_existing(&path)? else {
                return Ok(Tail::default());
            };
            let index = LineIndex::open(&path)?;
            index.catch_up(&file)?;
            let mut tail = Tail::default();
            let Some(start) = index.seek(&file, after as u64, max_bytes, &mut tail)? else {
                return Ok(tail);
            };
            read_lines(&file, start, count, max_bytes, &mut tail)?;
            Ok(tail)
        })
        .await
    }

    /// Deletes the log files among `paths` that this store owns (after their deployments'
    /// rows are gone); failures are logged, not returned: the rows are deleted already.
    pub async fn remove(&self, paths: Vec<String>) {
        for path in paths.into_iter().filter(|p| self.owns(p)) {
            let index = LineIndex::path(Path::new(&path));
            for file in [PathBuf::from(&path), index] {
                match tokio::fs::remove_file(&file).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => tracing::warn!(
                        path = %file.display(), %error, "cannot delete a deployment's log"
                    ),
                }
            }
        }
    }
}

/// The log at `path` opened for reading, never through a symbolic link; `None` if missing.
fn open_existing(path: &Path) -> std::io::Result<Option<File>> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, DomainError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| DomainError::Internal(format!("log I/O task failed: {e}")))?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                DomainError::StorageFull(format!(
                    "the logs directory has no space left ({e}): nothing was stored; send the \
                     chunk again once there is space"
                ))
            }
            _ => DomainError::Internal(format!("log file: {e}")),
        })
}

/// Lines of a log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    pub lines: Vec<String>,
    /// Fewer lines than asked for came back because of the byte limit.
    pub cut: bool,
    /// Bytes of the file read to find them (at most the limit asked for).
    pub read: usize,
}

/// Every this many bytes of a log, its index records how many lines came before: finding a
/// line reads at most this much.
pub const INDEX_EVERY: u64 = 64 * 1024;

/// The sidecar index of a deployment's log: a record every [`INDEX_EVERY`] bytes, each two
/// little-endian `u64`s, the number of line ends before an offset and that offset. Kept up
/// to date by every append (and brought up to date by a read, for logs written before it
/// existed); a lost record only makes the next one take longer to write.
pub struct LineIndex {
    file: File,
}

/// One record: `lines` line ends come before byte `offset`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mark {
    lines: u64,
    offset: u64,
}

const MARK_BYTES: u64 = 16;

impl LineIndex {
    /// The index of the log at `log`: `deployment-….log` → `deployment-….idx`.
    pub fn path(log: &Path) -> PathBuf {
        log.with_extension("idx")
    }

    /// The index of the log at `log`, created (empty) if missing.
    fn open(log: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(Self::path(log))?;
        Ok(Self { file })
    }

    fn marks(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len() / MARK_BYTES)
    }

    fn mark(&self, at: u64) -> std::io::Result<Mark> {
        let mut bytes = [0u8; MARK_BYTES as usize];
        self.file.read_exact_at(&mut bytes, at * MARK_BYTES)?;
        let (lines, offset) = bytes.split_at(8);
        Ok(Mark {
            lines: u64::from_le_bytes(lines.try_into().unwrap_or_default()),
            offset: u64::from_le_bytes(offset.try_into().unwrap_or_default()),
        })
    }

    /// Records a mark for every [`INDEX_EVERY`] bytes of `log` past the last one, counting
    /// the line ends in between (each byte of the log is counted once, over its life).
    fn catch_up(&self, log: &File) -> std::io::Result<()> {
        self.file.lock()?;
        let result = (|| {
            let marks = self.marks()?;
            let mut last = if marks == 0 {
                Mark::default()
            } else {
                self.mark(marks - 1)?
            };
            let length = log.metadata()?.len();
            let mut block = vec![0u8; INDEX_EVERY as usize];
            let mut written = Vec::new();
            while length.saturating_sub(last.offset) >= INDEX_EVERY {
                log.read_exact_at(&mut block, last.offset)?;
                last = Mark {
                    lines: last.lines + block.iter().filter(|b| **b == b'\n').count() as u64,
                    offset: last.offset + INDEX_EVERY,
                };
                written.extend_from_slice(&last.lines.to_le_bytes());
                written.extend_from_slice(&last.offset.to_le_bytes());
            }
            (&self.file).write_all(&written)
        })();
        self.file.unlock()?;
        result
    }

    /// Where line `after + 1` of `log` starts, searching from the last mark with fewer than
    /// `after` line ends before it (the next mark has `after` or more: the search reads at
    /// most [`INDEX_EVERY`] bytes, counted in `tail.read`). `None` when the log has fewer
    /// lines, or `max_bytes` ran out first (`tail.cut`).
    fn seek(
        &self,
        log: &File,
        after: u64,
        max_bytes: usize,
        tail: &mut Tail,
    ) -> std::io::Result<Option<u64>> {
        if after == 0 {
            return Ok(Some(0));
        }
        // The first mark with `after` or more line ends before it; the one before is where
        // to start.
        let (mut low, mut high) = (0, self.marks()?);
        while low < high {
            let middle = low + (high - low) / 2;
            if self.mark(middle)?.lines < after {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let from = if low == 0 {
            Mark::default()
        } else {
            self.mark(low - 1)?
        };
        let mut remaining = after - from.lines;
        let mut offset = from.offset;
        let length = log.metadata()?.len();
        let mut block = vec![0u8; 8 * 1024];
        while offset < length {
            let take = (length - offset).min(block.len() as u64) as usize;
            if tail.read + take > max_bytes {
                tail.cut = true;
                return Ok(None);
            }
            log.read_exact_at(&mut block[..take], offset)?;
            tail.read += take;
            for (at, byte) in block[..take].iter().enumerate() {
                if *byte == b'\n' {
                    remaining -= 1;
                    if remaining == 0 {
                        return Ok(Some(offset + at as u64 + 1));
                    }
                }
            }
            offset += take as u64;
        }
        Ok(None)
    }
}

/// Appends to the index of the log at `path` what `log`'s last write completed; a failure is
/// logged (the next write or read catches up), not returned: the log itself is written.
fn index_written(path: &Path, log: &File) {
    if let Err(error) = LineIndex::open(path).and_then(|index| index.catch_up(log)) {
        tracing::warn!(path = %path.display(), %error, "cannot update a log's line index");
    }
}

/// Up to `count` whole lines of `log` from byte `start`, while `tail.read` stays within
/// `max_bytes` (then `tail.cut`).
fn read_lines(
    log: &File,
    start: u64,
    count: usize,
    max_bytes: usize,
    tail: &mut Tail,
) -> std::io::Result<()> {
    use std::io::{BufRead, Seek};
    let mut reader = std::io::BufReader::new(log);
    reader.seek(std::io::SeekFrom::Start(start))?;
    let mut line = Vec::new();
    while tail.lines.len() < count {
        line.clear();
        let room = max_bytes.saturating_sub(tail.read);
        let read = (&mut reader)
            .take(room as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        if read > room {
            tail.cut = true;
            break;
        }
        tail.read += read;
        let text = String::from_utf8_lossy(&line);
        tail.lines
            .push(text.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(())
}

/// The last `lines` complete lines of `file`, from at most its last `max_bytes` bytes.
fn read_tail(file: &File, lines: usize, max_bytes: usize) -> std::io::Result<Tail> {
    const BLOCK: u64 = 64 * 1024;
    let length = file.metadata()?.len();
    let limit = max_bytes as u64;
    let mut start = length;
    let mut newlines = 0;
    // Read backwards until the tail holds `lines` line ends beyond the last one, or the
    // byte limit, or the start of the file.
    while start > 0 && newlines <= lines && length - start < limit {
        let take = BLOCK.min(start).min(limit - (length - start));
        start -= take;
        let mut block = vec![0u8; take as usize];
        file.read_exact_at(&mut block, start)?;
        newlines += block.iter().filter(|b| **b == b'\n').count();
    }
    let mut tail = vec![0u8; (length - start) as usize];
    file.read_exact_at(&mut tail, start)?;
    // Not at the file's start: the first line is only part of one.
    let from = if start > 0 {
        tail.iter()
            .position(|b| *b == b'\n')
            .map_or(tail.len(), |i| i + 1)
    } else {
        0
    };
    let text = String::from_utf8_lossy(&tail[from..]);
    let all: Vec<&str> = text.lines().collect();
    let first = all.len().saturating_sub(lines);
    Ok(Tail {
        lines: all[first..].iter().map(|l| (*l).to_owned()).collect(),
        cut: start > 0 && all.len() < lines,
        read: (length - start) as usize,
    })
}

/// `text` with control characters other than `\n` and `\t` escaped, and `\r\n` as `\n`.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' | '\t' => escaped.push(c),
            c if c.is_control() => escaped.extend(c.escape_default()),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max_bytes: u64) -> LogStore {
        LogStore {
            dir: dir.to_owned(),
            max_bytes,
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("ok\r\n\u{1b}[2Jgone\rX\tY\n"),
            "ok\n\\u{1b}[2Jgone\\rX\tY\n"
        );
        assert!(matches!(escape_controls("plain\n"), Cow::Borrowed(_)));
    }

    #[tokio::test]
    async fn appends_stop_at_the_cap_with_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let logs = store(dir.path(), 10);
        let path = logs.new_path(1).unwrap();
        let path = path.to_str().unwrap();
        assert!(!logs.append(path, "12345\n").await.unwrap().full);
        let cut = logs.append(path, "67890abc\n").await.unwrap();
        assert!(cut.full);
        assert_eq!(cut.text, format!("6789\n{TRUNCATED_MARKER}\n"));
        let dropped = logs.append(path, "more\n").await.unwrap();
        assert_eq!(dropped.text, "");
        let tail = logs.tail(path, 10, 1 << 20).await.unwrap();
        assert_eq!(tail.lines, ["12345", "6789", TRUNCATED_MARKER]);
        assert!(!tail.cut);
        let mode = std::fs::metadata(path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[tokio::test]
    async fn tail_reads_from_the_end_within_its_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let logs = store(dir.path(), u64::MAX);
        let path = logs.new_path(2).unwrap();
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let last = logs.tail(path, 3, 1 << 20).await.unwrap();
        assert_eq!(last.lines, ["line 99997", "line 99998", "line 99999"]);
        assert!(!last.cut);
        // 100 bytes hold only the last few whole lines; the partial one is left out.
        let Tail {
            lines: bounded,
            cut,
            ..
        } = logs.tail(path, 1000, 100).await.unwrap();
        assert!(cut);
        assert!(bounded.len() < 15, "{bounded:?}");
        assert_eq!(bounded.last().unwrap(), "line 99999");
        assert!(bounded.iter().all(|l| l.starts_with("line ")));
    }

    /// The lines after line N, as a reader that reads the whole file finds them.
    fn naive_after(text: &str, after: usize, count: usize) -> Vec<String> {
        text.split_inclusive('\n')
            .skip(after)
            .take(count)
            .map(|line| line.trim_end_matches('\n').to_owned())
            .collect()
    }

    #[tokio::test]
    async fn lines_after_n_are_found_through_the_index_reading_little() {
        let dir = tempfile::tempdir().unwrap();
        let logs = store(dir.path(), u64::MAX);
        let path = logs.new_path(3).unwrap();
        let path = path.to_str().unwrap();
        // 2 MiB of lines of varied lengths, one of them far longer than an index step,
        // appended in chunks that split lines.
        let mut text = String::new();
        for i in 0..40_000 {
            text.push_str(&format!("line {i} {}\n", "x".repeat(i % 97)));
            if i == 20_000 {
                text.push_str(&"y".repeat(200_000));
                text.push('\n');
            }
        }
        for chunk in text.as_bytes().chunks(50_000) {
            logs.append(path, std::str::from_utf8(chunk).unwrap())
                .await
                .unwrap();
        }
        let total = text.lines().count();
        for after in [
            0,
            1,
            999,
            20_000,
            20_001,
            20_002,
            35_000,
            total - 1,
            total,
            total + 5,
        ] {
            let read = logs.after(path, after, 3, 1 << 20).await.unwrap();
            assert_eq!(read.lines, naive_after(&text, after, 3), "after {after}");
            let lines: usize = read.lines.iter().map(|l| l.len() + 1).sum();
            // The search read at most one index step (a long line is read whole).
            assert!(
                read.read <= INDEX_EVERY as usize + 8 * 1024 + 200_001 + lines,
                "after {after}: read {} bytes",
                read.read
            );
            if !(20_000..=20_002).contains(&after) && after < total {
                assert!(
                    read.read <= INDEX_EVERY as usize + 8 * 1024 + lines,
                    "after {after}: {}",
                    read.read
                );
            }
        }
        // A limit smaller than the search cuts it.
        let cut = logs.after(path, 35_000, 3, 10).await.unwrap();
        assert!(cut.cut && cut.lines.is_empty() && cut.read <= 10);
    }

    #[tokio::test]
    async fn a_log_without_an_index_gets_one_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let logs = store(dir.path(), u64::MAX);
        let path = logs.new_path(4).unwrap();
        let text: String = (0..50_000).map(|i| format!("old line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        let path = path.to_str().unwrap();
        let read = logs.after(path, 45_000, 2, 1 << 20).await.unwrap();
        assert_eq!(read.lines, ["old line 45000", "old line 45001"]);
        assert!(read.read <= INDEX_EVERY as usize + 8 * 1024 + 100);
        assert!(LineIndex::path(Path::new(path)).exists());
        logs.remove(vec![path.to_owned()]).await;
        assert!(!Path::new(path).exists());
        assert!(!LineIndex::path(Path::new(path)).exists());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the chunks and lines, the lines after N are those a whole read finds.
        #[test]
        fn the_index_agrees_with_a_whole_read(
            chunks in proptest::collection::vec("[a-c\n]{0,3000}", 1..60),
            afters in proptest::collection::vec(0usize..4000, 1..8),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let logs = LogStore { dir: dir.path().to_owned(), max_bytes: u64::MAX };
                let path = logs.new_path(5).unwrap();
                let path = path.to_str().unwrap();
                for chunk in &chunks {
                    logs.append(path, chunk).await.unwrap();
                }
                let text: String = chunks.concat();
                for after in &afters {
                    let read = logs.after(path, *after, 4, 1 << 20).await.unwrap();
                    assert_eq!(read.lines, naive_after(&text, *after, 4), "after {after}");
                }
            });
        }
    }

    #[tokio::test]
    async fn files_outside_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let logs = store(&dir.path().join("logs"), 100);
        for path in ["/etc/passwd", "/tmp/deployment-1.log"] {
            assert!(matches!(
                logs.tail(path, 10, 100).await,
                Err(DomainError::Forbidden(_))
            ));
        }
        let escape = format!("{}/../deployment-1.log", logs.dir.display());
        assert!(!logs.owns(&escape));
    }
}
