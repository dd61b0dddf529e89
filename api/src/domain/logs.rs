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
//! - A deployment's file is deleted with it.

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
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

    /// Lines `after + 1 ..= after + count` of the log at `path` (numbered from 1), from at
    /// most `max_bytes` of them: a reader resumes exactly where it stopped.
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
            use std::io::BufRead;
            let Some(file) = open_existing(&path)? else {
                return Ok(Tail::default());
            };
            let mut reader = std::io::BufReader::new(file);
            let mut line = Vec::new();
            let mut tail = Tail::default();
            let mut number = 0;
            let mut bytes = 0;
            while reader.read_until(b'\n', &mut line)? > 0 {
                number += 1;
                if number > after {
                    if tail.lines.len() == count {
                        break;
                    }
                    bytes += line.len();
                    if bytes > max_bytes {
                        tail.cut = true;
                        break;
                    }
                    let text = String::from_utf8_lossy(&line);
                    tail.lines
                        .push(text.trim_end_matches(['\n', '\r']).to_owned());
                }
                line.clear();
            }
            Ok(tail)
        })
        .await
    }

    /// Deletes the log files among `paths` that this store owns (after their deployments'
    /// rows are gone); failures are logged, not returned: the rows are deleted already.
    pub async fn remove(&self, paths: Vec<String>) {
        for path in paths.into_iter().filter(|p| self.owns(p)) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => tracing::warn!(%path, %error, "cannot delete a deployment's log"),
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

/// The end of a log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tail {
    pub lines: Vec<String>,
    /// Fewer lines than asked for came back because of the byte limit.
    pub cut: bool,
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
        } = logs.tail(path, 1000, 100).await.unwrap();
        assert!(cut);
        assert!(bounded.len() < 15, "{bounded:?}");
        assert_eq!(bounded.last().unwrap(), "line 99999");
        assert!(bounded.iter().all(|l| l.starts_with("line ")));
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
