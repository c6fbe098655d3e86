//! The daemon as a child process, the way systemd runs it: output collected, NOTIFY_SOCKET
//! bound, signals sent with `kill`.

use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_balance-alertd");

/// A running `balance-alertd run` with its output collected and its systemd socket bound.
pub struct DaemonProcess {
    child: Child,
    output: Arc<Mutex<String>>,
    notify: UnixDatagram,
    notes: Vec<String>,
    last_note: Option<String>,
}

impl DaemonProcess {
    pub fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Self {
        let socket = dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket);
        let notify = UnixDatagram::bind(&socket).expect("bind NOTIFY_SOCKET");
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .env_clear()
            .env("NOTIFY_SOCKET", &socket)
            .envs(env.iter().copied())
            .args(["--config", config.to_str().unwrap(), "run"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start balance-alertd run");
        let output = Arc::new(Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Self {
            child,
            output,
            notify,
            notes: Vec::new(),
            last_note: None,
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.output().matches(needle).count()
    }

    pub fn wait_for_output(&self, needle: &str, times: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} x{times} within {timeout:?}; output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a notification line starting with `needle` (e.g. "READY=1"), then forgets
    /// the notifications up to it.
    pub fn wait_for_note(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(i) = self
                .notes
                .iter()
                .position(|n| n.lines().any(|l| l.starts_with(needle)))
            {
                self.last_note = self.notes.drain(..=i).next_back();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle} within {timeout:?}; output:\n{}",
                self.output()
            );
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// The notification [`Self::wait_for_note`] found last (one datagram, all its lines).
    pub fn last_note(&self) -> &str {
        self.last_note.as_deref().unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, and a clean exit (code 0) within 10 s.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let code = self
            .wait_exit(Duration::from_secs(10))
            .and_then(|s| s.code());
        assert_eq!(code, Some(0), "{}", self.output());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
