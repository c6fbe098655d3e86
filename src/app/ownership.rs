//! SPEC §4: run by root against the service's files, a command must not leave behind files
//! the service's own user can no longer write (the day's audit file, SQLite's `-wal`/`-shm`):
//! the service then fails to start. A command run as root refuses when the audit log
//! directory or the SQLite database belongs to another user, and names the command to use.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::unistd::{Uid, User, geteuid};
use secrecy::ExposeSecret;

use super::AppError;
use crate::config::LoadedConfig;

/// Refuses `command` when run as root on files another user owns.
pub fn refuse_root_on_service_files(config: &LoadedConfig) -> Result<(), AppError> {
    if !geteuid().is_root() {
        return Ok(());
    }
    for path in service_paths(config) {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue; // nothing there yet: whatever root creates is root's own setup
        };
        if meta.uid() == 0 {
            continue;
        }
        let owner = User::from_uid(Uid::from_raw(meta.uid()))
            .ok()
            .flatten()
            .map_or_else(|| format!("#{}", meta.uid()), |user| user.name);
        let args: Vec<String> = std::env::args().collect();
        return Err(AppError::Config(format!(
            "refusing to run as root: {} belongs to user {owner}, and files root creates there \
             (the audit log, SQLite's -wal/-shm) would lock the service out of them. \
             Run the command as that user: sudo -u {owner} {}",
            path.display(),
            args.join(" ")
        )));
    }
    Ok(())
}

/// The audit log directory and, for a SQLite database, its file and directory.
fn service_paths(config: &LoadedConfig) -> Vec<PathBuf> {
    let mut paths = vec![config.settings.log.dir.clone()];
    if let Some(file) = sqlite_file(config.settings.database.url.expose_secret()) {
        if let Some(dir) = file.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            paths.push(dir.to_path_buf());
        }
        paths.push(file);
    }
    paths
}

/// The file of a `sqlite:` URL; `None` for other databases and in-memory SQLite.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" || query.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/balance-alert/alerts.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/balance-alert/alerts.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://alerts.db"),
            Some(PathBuf::from("alerts.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://x?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
