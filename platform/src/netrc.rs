//! `~/.netrc` entries, the way Heroku's CLI keeps its credentials: git (through curl) and the
//! `skiff` CLI both read them, so a push needs no further login step.

use std::path::{Path, PathBuf};

/// The user's netrc file.
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".netrc"))
}

/// The password stored for `host`, if any.
pub fn lookup(path: &Path, host: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut words = text.split_whitespace();
    let mut current_matches = false;
    while let Some(word) = words.next() {
        match word {
            "machine" => current_matches = words.next() == Some(host),
            "default" => current_matches = false,
            "password" => {
                let value = words.next();
                if current_matches {
                    return value.map(str::to_owned);
                }
            }
            _ => {}
        }
    }
    None
}

/// Removes the entry for `host`, keeping every other entry.
pub fn remove(path: &Path, host: &str) -> std::io::Result<()> {
    let Ok(existing) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    crate::write_private(path, &without_host(&existing, host))
}

fn without_host(existing: &str, host: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    // Entries are kept line by line; the one for `host` (in Skiff's one-line form or spread
    // over several lines) is dropped.
    for line in existing.lines() {
        let first = line.split_whitespace().next();
        if first == Some("machine") || first == Some("default") {
            skipping = first == Some("machine") && line.split_whitespace().nth(1) == Some(host);
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Sets (replacing any previous one) the entry for `host`, keeping every other entry.
pub fn upsert(path: &Path, host: &str, login: &str, password: &str) -> std::io::Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = without_host(&existing, host);
    out.push_str(&format!(
        "machine {host} login {login} password {password}\n"
    ));
    crate::write_private(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_replaces_only_its_host() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join(".netrc");
        std::fs::write(&p, "machine example.org\n  login me\n  password one\nmachine 127.0.0.1 login skiff password old\n").expect("write");
        upsert(&p, "127.0.0.1", "skiff", "new").expect("upsert");
        assert_eq!(lookup(&p, "127.0.0.1").as_deref(), Some("new"));
        assert_eq!(lookup(&p, "example.org").as_deref(), Some("one"));
        assert_eq!(lookup(&p, "other"), None);
        remove(&p, "127.0.0.1").expect("remove");
        assert_eq!(lookup(&p, "127.0.0.1"), None);
        assert_eq!(lookup(&p, "example.org").as_deref(), Some("one"));
    }
}
