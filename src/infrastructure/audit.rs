//! `audit.log`: one JSON line per delivery outcome (SPEC §7), written off the hot path by
//! tracing-appender's worker thread, never dropped, flushed when the guard is dropped.
//!
//! The current file is always `{dir}/audit.log`, so `tail -F .../audit.log` follows it
//! whatever happens: with `log.rotation = "daily"` the first line of a new UTC day renames it
//! to `audit.YYYY-MM-DD.log` (the day of its lines) and starts a new one, keeping
//! `log.max_files` renamed files; on request ([`AuditLog::reopen`], SIGHUP) it is reopened,
//! so logrotate may move it away. (tracing-appender's rolling appender names the current
//! file by its date, and file-rotate appends the date after `.log`: neither gives SPEC's
//! names, hence [`AuditFile`].)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};

use crate::config::LogRotation;
use crate::domain::ports::{AuditEntry, AuditLog};

/// Lines queued for the writer thread before `record` waits (it never drops). Small enough
/// to bound memory under load, large enough that the writer thread rarely stalls a sweep.
const QUEUE_LINES: usize = 4 * 1024;

const CURRENT: &str = "audit.log";

/// The time source of rotation (a fake one in tests).
pub type Now = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Writes audit entries as JSON Lines into `{dir}/audit.log`.
#[derive(Clone)]
pub struct JsonLinesAuditLog {
    writer: NonBlocking,
    reopen: Arc<AtomicBool>,
    health: Arc<Health>,
}

/// The writer thread's last failure, for the senders: tracing-appender's worker drops a batch
/// whose write fails without telling anyone.
#[derive(Default)]
struct Health {
    failing: AtomicBool,
    message: Mutex<String>,
    probed: Mutex<Option<std::time::Instant>>,
    /// A copy of the lines kept back after the last failed write (empty after a success): what
    /// the process would lose if it exited now. Read after the last flush.
    unwritten: Mutex<Vec<u8>>,
}

/// How often a failing audit log is tried again while deliveries wait for it.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

impl Health {
    fn failed(&self, message: String, unwritten: &[u8]) {
        let mut copy = self
            .unwritten
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        copy.clear();
        copy.extend_from_slice(unwritten);
        drop(copy);
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %message, "Audit log write failed: no new delivery starts until it is writable again; the outcomes are recorded in alert_logs.");
        }
        *self.message.lock().unwrap_or_else(PoisonError::into_inner) = message;
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            self.unwritten
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
            tracing::info!("The audit log is writable again.");
        }
    }
}

impl JsonLinesAuditLog {
    /// Opens the audit log. Keep the returned guard alive until every sweep has finished:
    /// dropping it flushes the queue to disk, and lines queued after that are lost.
    pub fn open(
        dir: &Path,
        rotation: LogRotation,
        max_files: usize,
    ) -> anyhow::Result<(Self, WorkerGuard)> {
        Self::open_with_clock(dir, rotation, max_files, Arc::new(Utc::now))
    }

    pub fn open_with_clock(
        dir: &Path,
        rotation: LogRotation,
        max_files: usize,
        now: Now,
    ) -> anyhow::Result<(Self, WorkerGuard)> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create audit log directory {}", dir.display()))?;
        let reopen = Arc::new(AtomicBool::new(false));
        let health = Arc::new(Health::default());
        let mut file = AuditFile::open(dir, rotation, max_files, now, reopen.clone())
            .with_context(|| format!("cannot open the audit log in {}", dir.display()))?;
        file.health = Some(health.clone());
        let (writer, guard) = NonBlockingBuilder::default()
            .lossy(false)
            .buffered_lines_limit(QUEUE_LINES)
            .thread_name("audit-log")
            .finish(file);
        Ok((
            Self {
                writer,
                reopen,
                health,
            },
            guard,
        ))
    }
}

impl AuditLog for JsonLinesAuditLog {
    fn record_lines(&self, lines: &[String]) -> std::io::Result<()> {
        let mut all = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in lines {
            all.extend_from_slice(line.as_bytes());
            all.push(b'\n');
        }
        self.writer.clone().write_all(&all)
    }

    fn unwritten(&self) -> Vec<String> {
        let unwritten = self
            .health
            .unwritten
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&unwritten)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn record(&self, entries: &[AuditEntry]) -> std::io::Result<()> {
        let mut lines = Vec::with_capacity(entries.len() * 320);
        for entry in entries {
            serde_json::to_writer(&mut lines, entry)?;
            lines.push(b'\n');
        }
        // One write is one queued message, so lines are never interleaved with others, and
        // the writer thread wakes and writes once per batch: a 100,000-alert sweep made
        // 97,000 fewer write(2) and 57,000 fewer sched_yield(2) calls than with a message
        // per line (strace -c).
        self.writer.clone().write_all(&lines)
    }

    fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    fn failure(&self) -> Option<String> {
        if !self.health.failing.load(Ordering::Acquire) {
            return None;
        }
        // An empty message makes the writer thread flush, which retries the lines kept back;
        // at most every PROBE_EVERY, however many deliveries ask.
        let mut last = self
            .health
            .probed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= PROBE_EVERY) {
            *last = Some(std::time::Instant::now());
            let _ = self.writer.clone().write(b"");
        }
        drop(last);
        Some(
            self.health
                .message
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// `{dir}/audit.log`, rotated by UTC day and reopened on request, before the write that
/// needs it. Runs on the audit writer thread only.
pub struct AuditFile {
    dir: PathBuf,
    rotation: LogRotation,
    max_files: usize,
    now: Now,
    reopen: Arc<AtomicBool>,
    file: File,
    /// The UTC day of the lines in `audit.log` (daily rotation).
    day: NaiveDate,
    health: Option<Arc<Health>>,
    /// Lines a failed write kept back, written first once the file takes writes again (no
    /// line lost while the process lives, none twice). Bounded: no delivery starts while
    /// writes fail, so at most the lines of the deliveries in flight then wait here.
    pending: Vec<u8>,
}

impl AuditFile {
    fn open(
        dir: &Path,
        rotation: LogRotation,
        max_files: usize,
        now: Now,
        reopen: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let path = dir.join(CURRENT);
        // A file left by an earlier run holds the lines of the day it was last written.
        let day = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| DateTime::<Utc>::from(t).date_naive())
            .unwrap_or_else(|_| now().date_naive());
        let file = open_append(&path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            rotation,
            max_files,
            now,
            reopen,
            file,
            day,
            health: None,
            pending: Vec::new(),
        })
    }

    /// Writes the kept-back lines; what got written leaves the buffer even if the rest fails.
    fn write_pending(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            match self.file.write(&self.pending) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn report(&self, result: &std::io::Result<()>) {
        if let Some(health) = &self.health {
            match result {
                Ok(()) => health.succeeded(),
                Err(e) => health.failed(
                    format!(
                        "cannot write the audit log {}: {e}",
                        self.dir.join(CURRENT).display()
                    ),
                    &self.pending,
                ),
            }
        }
    }

    fn before_write(&mut self) -> std::io::Result<()> {
        if self.rotation == LogRotation::Daily {
            let today = (self.now)().date_naive();
            if today != self.day {
                self.rotate(today)?;
            }
        }
        if self.reopen.swap(false, Ordering::AcqRel) {
            self.file = open_append(&self.dir.join(CURRENT))?;
        }
        Ok(())
    }

    /// Renames `audit.log` to `audit.{day}.log` and starts a new one. Should that name exist
    /// already (a clock set back), the lines are appended to it: nothing is overwritten.
    fn rotate(&mut self, today: NaiveDate) -> std::io::Result<()> {
        self.file.flush()?;
        let current = self.dir.join(CURRENT);
        let rotated = self
            .dir
            .join(format!("audit.{}.log", self.day.format("%Y-%m-%d")));
        if rotated.exists() {
            let mut into = OpenOptions::new().append(true).open(&rotated)?;
            std::io::copy(&mut File::open(&current)?, &mut into)?;
            std::fs::remove_file(&current)?;
        } else if current.exists() {
            std::fs::rename(&current, &rotated)?;
        }
        self.file = open_append(&current)?;
        self.day = today;
        self.prune();
        Ok(())
    }

    /// Keeps the newest `max_files` rotated files. A failure to delete is not worth losing a
    /// line over: the next rotation tries again.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut rotated: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("audit.")?.strip_suffix(".log"))
                    .is_some_and(|date| NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok())
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.max_files);
        for old in &rotated[..excess] {
            if let Err(e) = std::fs::remove_file(old) {
                tracing::warn!(file = %old.display(), error = %e, "Cannot delete an old audit file.");
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Never fails a write: a line that cannot be written now is kept back and retried before the
/// next one and at every flush (tracing-appender's worker would drop it), and the failure is
/// reported through [`AuditLog::failure`].
impl Write for AuditFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let result = self.before_write().and_then(|()| self.write_pending());
        self.report(&result);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let result = self.write_pending();
            self.report(&result);
        }
        self.file.flush()
    }
}

/// Discards entries: for `demo`, which must leave no trace outside its throwaway database.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuditLog;

impl AuditLog for NoAuditLog {
    fn record(&self, _entries: &[AuditEntry]) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn clock(at: &str) -> (Now, Arc<Mutex<DateTime<Utc>>>) {
        let time = Arc::new(Mutex::new(at.parse::<DateTime<Utc>>().unwrap()));
        let read = time.clone();
        (Arc::new(move || *read.lock().unwrap()), time)
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap_or_default()
    }

    #[test]
    fn daily_rotation_renames_the_day_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let (now, time) = clock("2026-12-01T23:59:59Z");
        let flag = Arc::new(AtomicBool::new(false));
        let mut file = AuditFile::open(dir.path(), LogRotation::Daily, 2, now, flag).unwrap();
        file.write_all(b"day one\n").unwrap();
        for (at, line) in [
            ("2026-12-02T00:00:01Z", "day two\n"),
            ("2026-12-03T10:00:00Z", "day three\n"),
            ("2026-12-04T10:00:00Z", "day four\n"),
        ] {
            *time.lock().unwrap() = at.parse().unwrap();
            file.write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(read(dir.path(), "audit.log"), "day four\n");
        assert_eq!(read(dir.path(), "audit.2026-12-03.log"), "day three\n");
        assert_eq!(read(dir.path(), "audit.2026-12-02.log"), "day two\n");
        assert!(
            !dir.path().join("audit.2026-12-01.log").exists(),
            "max_files = 2 keeps the two newest"
        );
    }

    #[test]
    fn reopen_follows_a_file_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        let (now, _) = clock("2026-12-01T10:00:00Z");
        let flag = Arc::new(AtomicBool::new(false));
        let mut file =
            AuditFile::open(dir.path(), LogRotation::Never, 1, now, flag.clone()).unwrap();
        file.write_all(b"before\n").unwrap();
        std::fs::rename(dir.path().join("audit.log"), dir.path().join("moved")).unwrap();
        flag.store(true, Ordering::Release);
        file.write_all(b"after\n").unwrap();
        assert_eq!(read(dir.path(), "moved"), "before\n");
        assert_eq!(read(dir.path(), "audit.log"), "after\n");
    }
}
