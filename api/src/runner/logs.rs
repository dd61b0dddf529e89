//! A deployment's log on its way to the server, live and crash-safe.
//!
//! Every line (its config var values redacted first, [`Redactor`]) is appended at once to a
//! spool file in the work directory (`spool/<deployment>.log`); a sender reads the file and
//! sends what it has not sent with `appendDeploymentLog`: at most [`BATCH_BYTES`] at a time,
//! and at least every batch interval (500 ms) while output continues, so a build that prints
//! without pause shows up live. Each batch carries the next sequence number, so a batch sent
//! again after a lost answer is applied once. Before a batch goes out, its number and extent
//! are written beside the spool (`spool/<deployment>.sent`), and after the server took it,
//! what it acknowledged: a runner killed at any point finds, when it starts again, exactly
//! which lines the server has, and sends the rest (the same batch under the same number
//! where that one was in flight), so no line is lost or doubled.
//!
//! Memory stays bounded whatever a build prints: lines go to disk, and the queue in front of
//! the writer is bounded (a producer waits when it is full).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::client::Client;
use super::client::operations::{AppendLog, append_log};

/// The most a batch carries (the server takes up to 64 KiB).
pub const BATCH_BYTES: usize = 32 * 1024;
const QUEUE_LINES: usize = 1024;
/// How long spool files of deployments that never finished here are kept.
const KEEP_ORPHANS: Duration = Duration::from_secs(24 * 3600);

/// Where lines of one deployment's log go.
#[derive(Clone)]
pub struct LogSender(mpsc::Sender<String>);

impl LogSender {
    pub async fn line(&self, line: impl Into<String>) {
        let _ = self.0.send(line.into()).await;
    }

    /// A stage marker, as `==> build` (stages are what `Deployment.stage` reports).
    pub async fn stage(&self, stage: &str) {
        self.line(format!("==> {stage}")).await;
    }
}

/// Values shorter than this are not redacted (they would blank out ordinary words).
const MIN_SECRET: usize = 4;

/// Replaces config var values in log lines by `[REDACTED]`. The log travels line by line,
/// so a value of several lines (a PEM key) is redacted line by line.
pub struct Redactor {
    /// Longest first, so that a value containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new(values: Vec<String>) -> Self {
        let mut secrets: Vec<String> = values
            .iter()
            .flat_map(|value| value.lines())
            .map(|line| line.trim().to_owned())
            .filter(|line| line.len() >= MIN_SECRET)
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    /// `line` with every value replaced.
    pub fn redact(&self, mut line: String) -> String {
        for secret in &self.secrets {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), "[REDACTED]");
            }
        }
        line
    }
}

/// What the server has of a spool: every byte before `offset`, through chunk `sequence`;
/// `pending` is a chunk that may or may not have arrived (its number and end).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Sent {
    /// The deployment's global ID (what `appendDeploymentLog` takes).
    deployment: String,
    offset: u64,
    sequence: i64,
    pending: Option<(i64, u64)>,
}

/// A deployment's spool: its lines, and what of them the server has.
pub struct Spool {
    log: PathBuf,
    sent: PathBuf,
}

impl Spool {
    /// The spool of deployment `id` in `dir`.
    pub fn new(dir: &Path, id: i64) -> Self {
        Self {
            log: dir.join(format!("{id}.log")),
            sent: dir.join(format!("{id}.sent")),
        }
    }

    fn read_sent(&self) -> Sent {
        std::fs::read(&self.sent)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn write_sent(&self, sent: &Sent) -> std::io::Result<()> {
        crate::files::write_owner_only(
            &self.sent,
            &serde_json::to_vec(sent).map_err(std::io::Error::other)?,
        )
    }

    /// Where sending resumes, when the server says it applied chunks up to
    /// `server_sequence`: a batch in flight when the runner stopped counts as sent if the
    /// server has its number.
    fn resume(&self, deployment: &str, server_sequence: i64) -> Sent {
        let mut sent = self.read_sent();
        deployment.clone_into(&mut sent.deployment);
        if let Some((sequence, end)) = sent.pending.take()
            && sequence <= server_sequence
        {
            sent.offset = end;
        }
        sent.sequence = server_sequence;
        sent
    }

    /// Bytes in the spool not yet sent.
    pub fn unsent(&self) -> u64 {
        let length = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        length.saturating_sub(self.read_sent().offset)
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.sent);
    }
}

/// How a deployment's log is spooled and sent.
#[derive(Clone, Debug)]
pub struct Spooling {
    /// The spool directory (in the work directory).
    pub dir: PathBuf,
    /// Lines are sent at least this often while output continues.
    pub batch: Duration,
}

/// How sending a spool ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Every line is with the server (or it said the log is full): the spool is removed.
    All,
    /// The server refused the log (the deployment is not this runner's to write now), or
    /// could not be reached in time: the spool stays for a later start.
    Kept,
}

/// Starts spooling deployment `id`'s log (`deployment` is its global ID) and sending it,
/// continuing after chunk `server_sequence` (the job's `logSequence`): lines an earlier run
/// of this runner spooled but did not send go first. The task ends once every
/// [`LogSender`] is dropped and the spool is sent (or kept: [`Delivered`]).
pub fn spool(
    client: Client,
    deployment: String,
    id: i64,
    redactor: Redactor,
    server_sequence: i64,
    spooling: &Spooling,
) -> std::io::Result<(LogSender, JoinHandle<Delivered>)> {
    crate::files::create_private_dir(&spooling.dir)?;
    let spool = Spool::new(&spooling.dir, id);
    let sent = spool.resume(&deployment, server_sequence);
    spool.write_sent(&sent)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spool.log)?;
    let length = file.metadata()?.len();
    let (length_tx, length_rx) = watch::channel(length);
    let (sender, mut lines) = mpsc::channel::<String>(QUEUE_LINES);
    let writer = async move {
        while let Some(line) = lines.recv().await {
            let mut line = redactor.redact(line);
            line.push('\n');
            match file.write_all(line.as_bytes()) {
                Ok(()) => {
                    length_tx.send_modify(|length| *length += line.len() as u64);
                }
                Err(error) => tracing::warn!(%error, "cannot spool a log line; it is lost"),
            }
        }
        // Dropping the sender of `length` tells the sender task the log is complete.
    };
    let batch = spooling.batch;
    let task = tokio::spawn(async move {
        let send = send_spool(&client, &spool, sent, length_rx, batch);
        let ((), delivered) = tokio::join!(writer, send);
        if delivered == Delivered::All {
            spool.remove();
        }
        delivered
    });
    Ok((LogSender(sender), task))
}

/// Sends what `spool` holds beyond `sent`, as it grows (`length`), until the writer is done
/// and everything is sent.
async fn send_spool(
    client: &Client,
    spool: &Spool,
    mut sent: Sent,
    mut length: watch::Receiver<u64>,
    batch: Duration,
) -> Delivered {
    let mut waiting_since: Option<tokio::time::Instant> = None;
    loop {
        let available = *length.borrow_and_update();
        let writer_done = length.has_changed().is_err();
        if available <= sent.offset {
            if writer_done {
                return Delivered::All;
            }
            waiting_since = None;
            if length.changed().await.is_err() {
                continue;
            }
            continue;
        }
        let since = *waiting_since.get_or_insert_with(tokio::time::Instant::now);
        let due = since + batch;
        if !writer_done
            && available - sent.offset < BATCH_BYTES as u64
            && tokio::time::Instant::now() < due
        {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                _ = length.changed() => {}
            }
            continue;
        }
        let chunk = match read_chunk(&spool.log, sent.offset, available) {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::warn!(%error, "cannot read the log spool");
                return Delivered::Kept;
            }
        };
        let end = sent.offset + chunk.len() as u64;
        let number = sent.sequence + 1;
        sent.pending = Some((number, end));
        if let Err(error) = spool.write_sent(&sent) {
            tracing::warn!(%error, "cannot record the log's progress");
        }
        match deliver(client, &sent.deployment, &chunk, number).await {
            Outcome::Applied { full } => {
                sent.offset = end;
                sent.sequence = number;
                sent.pending = None;
                let _ = spool.write_sent(&sent);
                waiting_since = None;
                if full {
                    return Delivered::All;
                }
            }
            Outcome::Refused => return Delivered::Kept,
        }
    }
}

/// The spool's bytes from `offset`, at most [`BATCH_BYTES`] and up to `available`, ending at
/// a line's end when the limit cuts.
fn read_chunk(path: &Path, offset: u64, available: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let take = (available - offset).min(BATCH_BYTES as u64);
    let mut bytes = Vec::with_capacity(take as usize);
    file.take(take).read_to_end(&mut bytes)?;
    if (take as usize) == BATCH_BYTES
        && let Some(end) = bytes.iter().rposition(|b| *b == b'\n')
    {
        bytes.truncate(end + 1);
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

enum Outcome {
    Applied { full: bool },
    Refused,
}

/// Sends `chunk` as number `sequence`, retrying while the server cannot be reached (growing
/// pauses up to 30 s).
async fn deliver(client: &Client, deployment: &str, chunk: &str, sequence: i64) -> Outcome {
    let variables = append_log::Variables {
        id: deployment.to_owned(),
        chunk: chunk.to_owned(),
        sequence: Some(sequence),
    };
    let mut pause = Duration::from_millis(200);
    loop {
        match client.run::<AppendLog>(variables.clone()).await {
            Ok(data) => {
                return Outcome::Applied {
                    full: data.append_deployment_log.log_full,
                };
            }
            Err(error) if error.code().is_some() => {
                tracing::warn!(%error, "the server refused a log batch; it stays spooled");
                return Outcome::Refused;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot send a log batch; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sends, at start, what earlier runs of this runner spooled and did not send (for
/// deployments still its own), and removes spools older than a day.
pub async fn send_leftovers(client: &Client, spooling: &Spooling) {
    let Ok(entries) = std::fs::read_dir(&spooling.dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_suffix(".log")
            .and_then(|id| id.parse::<i64>().ok())
        else {
            continue;
        };
        let spool = Spool::new(&spooling.dir, id);
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok());
        if age.is_some_and(|age| age > KEEP_ORPHANS) {
            spool.remove();
            continue;
        }
        if spool.unsent() == 0 {
            continue;
        }
        let mut from = spool.read_sent();
        if from.deployment.is_empty() {
            continue;
        }
        let Ok(length) = std::fs::metadata(&spool.log).map(|m| m.len()) else {
            continue;
        };
        // The batch in flight goes again under its own number (applied once); then the rest.
        if let Some((sequence, _)) = from.pending.take() {
            from.sequence = sequence - 1;
        }
        let (done, length) = watch::channel(length);
        drop(done);
        let delivered = send_spool(client, &spool, from, length, spooling.batch).await;
        tracing::info!(
            deployment = id,
            ?delivered,
            "sent the log lines left by an earlier run"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_several_lines_are_redacted_line_by_line() {
        let pem = "-----BEGIN PRIVATE KEY-----\r\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n";
        let redactor = Redactor::new(vec![
            pem.to_owned(),
            "abc".to_owned(),
            "hunter22".to_owned(),
        ]);
        for line in pem.lines() {
            let shown = redactor.redact(format!("echo {line} done"));
            assert_eq!(shown, "echo [REDACTED] done", "{line}");
        }
        assert_eq!(
            redactor.redact("pw=hunter22 abc".to_owned()),
            "pw=[REDACTED] abc"
        );
    }

    #[test]
    fn a_batch_in_flight_counts_once_the_server_has_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 7);
        let sent = Sent {
            deployment: "RGVwbG95bWVudDo3".to_owned(),
            offset: 100,
            sequence: 4,
            pending: Some((5, 180)),
        };
        spool.write_sent(&sent).unwrap();
        // The server applied 5 before the runner died: resume after it.
        let resumed = spool.resume("RGVwbG95bWVudDo3", 5);
        assert_eq!(
            (resumed.offset, resumed.sequence, resumed.pending),
            (180, 5, None)
        );
        // It never arrived: those bytes go again, as number 5.
        let resumed = spool.resume("RGVwbG95bWVudDo3", 4);
        assert_eq!(
            (resumed.offset, resumed.sequence, resumed.pending),
            (100, 4, None)
        );
    }

    #[test]
    fn chunks_end_at_a_line_when_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let line = format!("{}\n", "x".repeat(999));
        std::fs::write(&path, line.repeat(100)).unwrap();
        let chunk = read_chunk(&path, 0, 100_000).unwrap();
        assert_eq!(chunk.len() % 1000, 0);
        assert!(chunk.len() <= BATCH_BYTES && chunk.len() > BATCH_BYTES - 1000);
    }
}
