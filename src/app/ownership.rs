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
use crate::infrastructure::db;

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
    if let Some(file) = db::sqlite_file(config.settings.database.url.expose_secret()) {
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
