//! Warns when a configuration file that holds secrets can be read by other users.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Keys whose values are secrets wherever they appear.
const SECRET_KEYS: &[(&str, &str)] = &[
    ("notify.email", "password"),
    ("notify.email", "smtp_url"),
    ("notify.slack", "webhook_url"),
    ("notify.webhook", "url"),
    ("notify.webhook", "secret"),
    ("notify.sms", "auth_token"),
];

/// A warning for `path` when it is readable by "other" and defines a secret (a URL counts
/// when it carries a password: a SQLite path is no secret).
pub fn warning(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    if mode & 0o004 == 0 {
        return None;
    }
    let table: toml::Table = std::fs::read_to_string(path).ok()?.parse().ok()?;
    let value = |section: &str, key: &str| {
        section
            .split('.')
            .try_fold(&table, |t, part| t.get(part)?.as_table())
            .and_then(|t| t.get(key))
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
    };
    let mut found: Vec<String> = SECRET_KEYS
        .iter()
        .filter(|(section, key)| value(section, key).is_some())
        .map(|(section, key)| format!("{section}.{key}"))
        .collect();
    let db_password = value("database", "url")
        .and_then(|u| url::Url::parse(&u).ok())
        .is_some_and(|u| u.password().is_some());
    if db_password {
        found.insert(0, "database.url".into());
    }
    if found.is_empty() {
        return None;
    }
    Some(format!(
        "config file {} is readable by other users (mode {:o}) and holds secrets ({}); \
         chmod o-r it, or move the secrets to the environment (EnvironmentFile=, mode 0600)",
        path.display(),
        mode & 0o777,
        found.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mode: u32, text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        file
    }

    #[test]
    fn warns_about_world_readable_files_with_secrets_only() {
        // A password with a '-', which temporary file names (alphanumeric) cannot contain: a
        // short one like "pw" sometimes appeared in the file's random name in the warning.
        let secret = "[notify.webhook]\nsecret = \"s\"\n[database]\nurl = \"postgres://u:hunter2-pw@h/db\"\n";
        let warning = warning(file(0o644, secret).path()).expect("a warning");
        assert!(
            warning.contains("database.url, notify.webhook.secret"),
            "{warning}"
        );
        assert!(
            !warning.contains("hunter2-pw"),
            "the warning must not quote the secret"
        );
        assert_eq!(
            super::warning(file(0o640, secret).path()),
            None,
            "not readable by others"
        );
        let harmless =
            "[database]\nurl = \"sqlite:///var/lib/x.db\"\n[alert]\nthreshold = \"5.00\"\n";
        assert_eq!(super::warning(file(0o644, harmless).path()), None);
    }
}
