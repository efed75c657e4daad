//! Names a user types: app names and config var keys. Both end up in hostnames, paths, SQL
//! rows and environment variables, so they are validated once, here, and carried as types.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// App names become DNS labels and directory names.
    #[error(
        "invalid app name {0:?}: use 3 to 30 lowercase letters, digits and dashes, starting with a letter and not ending with a dash"
    )]
    App(String),
    /// Config keys become environment variable names.
    #[error(
        "invalid config var name {0:?}: use uppercase letters, digits and underscores, not starting with a digit"
    )]
    ConfigKey(String),
    /// Custom domains become routing-table keys and TLS certificate names.
    #[error("{raw:?} is not a valid domain: {why}")]
    Domain {
        /// The name as given.
        raw: String,
        /// Which rule it broke.
        why: String,
    },
}

/// A validated app name, safe to use as a DNS label, a file name and a git repository name.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

impl AppName {
    /// Checks `name` against Heroku's rules for app names.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let bytes = name.as_bytes();
        let ok = (3..=30).contains(&bytes.len())
            && bytes[0].is_ascii_lowercase()
            && bytes[bytes.len() - 1] != b'-'
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::App(name.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AppName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AppName> for String {
    fn from(value: AppName) -> Self {
        value.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated config var key (`[A-Z_][A-Z0-9_]*`, at most 256 bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConfigKey(String);

impl ConfigKey {
    /// Checks `key` against the environment-variable rule Heroku applies to config vars.
    pub fn parse(key: &str) -> Result<Self, NameError> {
        let bytes = key.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 256
            && (bytes[0].is_ascii_uppercase() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
        if ok {
            Ok(Self(key.to_owned()))
        } else {
            Err(NameError::ConfigKey(key.to_owned()))
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host name an app may claim, normalised (trimmed, lowercase, no trailing dot): lowercase
/// DNS labels, at least two, not all digits, outside `platform_domain` (whose names are the
/// apps').
pub fn parse_domain(raw: &str, platform_domain: &str) -> Result<String, NameError> {
    let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| NameError::Domain {
        raw: raw.to_owned(),
        why: why.to_owned(),
    };
    if host.is_empty() || host.len() > 253 {
        return Err(bad("it must be 1 to 253 characters"));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("it needs at least two labels, like www.example.com"));
    }
    for label in &labels {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad(
                "each label is 1 to 63 letters, digits or inner hyphens",
            ));
        }
    }
    if labels.iter().all(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad("IP addresses are not domains"));
    }
    if host == platform_domain || host.ends_with(&format!(".{platform_domain}")) {
        return Err(bad(&format!(
            "names under {platform_domain} belong to Skiff's apps"
        )));
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for good in ["hello", "my-app-2", "abc"] {
            assert!(AppName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Hello",
            "1app",
            "app-",
            "a_b_c",
            "a.b.c",
            "../etc",
            &"a".repeat(31),
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_keys() {
        for good in ["FOO", "_X", "DATABASE_URL", "A1"] {
            assert!(ConfigKey::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "foo", "1A", "A-B", "A B", "A=B"] {
            assert!(ConfigKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains() {
        for ok in ["www.example.com", "WWW.Example.COM.", "a-b.example.org"] {
            assert!(parse_domain(ok, "localhost").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "example",
            "hello.localhost",
            "localhost",
            "-a.example.com",
            "a..example.com",
            "a_b.example.com",
            "127.0.0.1",
            "www.example.com:80",
        ] {
            assert!(parse_domain(bad, "localhost").is_err(), "{bad}");
        }
        assert_eq!(
            parse_domain("WWW.Example.COM.", "localhost").ok(),
            Some("www.example.com".to_owned())
        );
    }
}
