//! Child processes of the runner, each in a process group of its own (`setsid`-like:
//! `process_group(0)`), so that a whole tree — a build and whatever it spawned — is stopped
//! with one signal, and a web process outlives a restart of the runner.
//!
//! - [`run_step`]: a foreground step (clone, build, release) whose output is streamed to the
//!   deployment's log; it ends by itself, at its timeout, or on cancellation — in the last
//!   two cases its group is killed.
//! - [`spawn_web`]: a web process in the background, its output appended to a file.
//! - [`stop_group`]: SIGTERM to a group, SIGKILL after a grace period.
//!
//! A failing step's error carries its last lines of output (git's message for a failed
//! clone, the compiler's for a failed build), for the deployment's `errorSummary`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

use super::logs::LogSender;

/// Longest output line kept whole; longer ones are cut into pieces of this size (a build
/// printing without newlines cannot grow the runner's memory).
const MAX_LINE: usize = 4096;

/// Lines of a failing step's output its error carries.
const ERROR_LINES: usize = 12;

/// How a step ended when it did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {} s", .0.as_secs())]
    TimedOut(Duration),
    #[error("cancelled")]
    Cancelled,
}

/// Where a deployment's steps run: their log, the cancellation signal, and a file that holds
/// the running step's process group (so that a runner killed mid-build can kill the orphaned
/// step when it starts again).
pub struct StepContext<'a> {
    pub log: &'a LogSender,
    pub cancel: watch::Receiver<bool>,
    pub group_file: PathBuf,
}

/// The last lines a step printed.
#[derive(Clone, Default)]
struct Recent(Arc<Mutex<VecDeque<String>>>);

impl Recent {
    fn push(&self, line: &str) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == ERROR_LINES {
            lines.pop_front();
        }
        lines.push_back(line.chars().take(300).collect());
    }

    /// `why`, followed by the lines.
    fn explain(&self, why: String) -> String {
        let lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.is_empty() {
            return why;
        }
        let mut text = why;
        text.push_str("; its last output:");
        for line in lines.iter() {
            text.push('\n');
            text.push_str(line);
        }
        text
    }
}

/// Kills the step recorded in `group_file`, if one still runs (a runner that was killed left
/// it behind).
pub fn kill_orphaned_step(group_file: &Path) {
    if let Some(group) = std::fs::read_to_string(group_file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        && group_alive(group)
    {
        tracing::warn!(
            group,
            "killing a step left behind by a previous run of the runner"
        );
        signal_group(group, rustix::process::Signal::KILL);
    }
}

/// Runs `command` (its own process group, output to the log) until it exits, `timeout` passes
/// or the context's cancellation turns true; in the last two cases the whole group is killed.
pub async fn run_step(
    mut command: Command,
    timeout: Duration,
    context: &mut StepContext<'_>,
) -> Result<(), StepError> {
    let log = context.log;
    let cancel = &mut context.cancel;
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| StepError::Failed(format!("cannot start: {e}")))?;
    let group = child.id().map(|pid| pid as i32);
    if let Some(group) = group {
        let _ = std::fs::write(&context.group_file, group.to_string());
    }
    let recent = Recent::default();
    let stdout = child
        .stdout
        .take()
        .map(|out| forward_output(out, log.clone(), recent.clone()));
    let stderr = child
        .stderr
        .take()
        .map(|err| forward_output(err, log.clone(), recent.clone()));
    let output = async {
        if let Some(stdout) = stdout {
            stdout.await;
        }
        if let Some(stderr) = stderr {
            stderr.await;
        }
    };
    let finished = async {
        let (status, ()) = tokio::join!(child.wait(), output);
        status
    };
    let cancelled = async {
        while !*cancel.borrow_and_update() {
            if cancel.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let outcome = tokio::select! {
        status = finished => match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(StepError::Failed(recent.explain(describe(status)))),
            Err(error) => Err(StepError::Failed(error.to_string())),
        },
        () = tokio::time::sleep(timeout) => Err(StepError::TimedOut(timeout)),
        () = cancelled => Err(StepError::Cancelled),
    };
    // Whatever the step left behind in its group goes too (a daemonized child included).
    if let Some(group) = group {
        signal_group(group, rustix::process::Signal::KILL);
    }
    let _ = std::fs::remove_file(&context.group_file);
    outcome
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_owned(),
    }
}

/// Sends the output of `reader` to `log` line by line (lines cut at [`MAX_LINE`]), keeping
/// the last ones in `recent`.
async fn forward_output(mut reader: impl AsyncRead + Unpin, log: LogSender, recent: Recent) {
    let mut buffer = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &byte in &buffer[..read] {
            if byte == b'\n' || line.len() >= MAX_LINE {
                let text = String::from_utf8_lossy(&line).into_owned();
                recent.push(&text);
                log.line(text).await;
                line.clear();
                if byte == b'\n' {
                    continue;
                }
            }
            line.push(byte);
        }
    }
    if !line.is_empty() {
        let text = String::from_utf8_lossy(&line).into_owned();
        recent.push(&text);
        log.line(text).await;
    }
}

/// Starts `command` in the background in its own process group with `PORT` set, its output
/// appended to `output`; returns the group id (the child's pid).
pub fn spawn_web(mut command: Command, port: u16, output: &Path) -> std::io::Result<i32> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)?;
    command
        .process_group(0)
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the web process exited at once"))?;
    // Reaped in the background; the process belongs to its own group from now on.
    tokio::spawn(async move {
        let mut child = child;
        let _ = child.wait().await;
    });
    Ok(pid as i32)
}

/// Whether any process of `group` is alive.
pub fn group_alive(group: i32) -> bool {
    rustix::process::Pid::from_raw(group)
        .is_some_and(|group| rustix::process::test_kill_process_group(group).is_ok())
}

fn signal_group(group: i32, signal: rustix::process::Signal) {
    if group > 1
        && let Some(group) = rustix::process::Pid::from_raw(group)
    {
        let _ = rustix::process::kill_process_group(group, signal);
    }
}

/// SIGTERM to `group`, then SIGKILL once `grace` has passed while any of it lives.
pub async fn stop_group(group: i32, grace: Duration) {
    signal_group(group, rustix::process::Signal::TERM);
    let deadline = tokio::time::Instant::now() + grace;
    while group_alive(group) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if group_alive(group) {
        signal_group(group, rustix::process::Signal::KILL);
    }
}

/// The last `lines` lines of the file at `path` (from at most its last 64 KiB).
pub fn last_lines(path: &Path, lines: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = length.saturating_sub(64 * 1024);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}
