//! Property checks over the parsers in this crate, shared by the cargo-fuzz targets in
//! `fuzz/` and by the short deterministic run in the test suite. Each `check_*` takes raw
//! bytes, feeds them to a parser and panics when a property the rest of Skiff relies on does
//! not hold; an input a parser refuses is fine as long as the refusal is an error, not a panic.
//!
//! Built for tests, and for other crates with the `fuzzing` feature; never in a release.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use crate::cgi::{self, CgiHead};
use crate::manifest::{SLUG_MANIFEST_VERSION, SlugManifest, split_command};
use crate::names::{AppName, ConfigKey, parse_domain};
use crate::procfile::{Procfile, ProcfileError, is_valid_process_type};
use crate::text::app_relative;
use crate::{BuildpackRelease, ReleaseYamlError};

/// A parsed Procfile names only valid process types with trimmed, one-line, non-empty
/// commands, and prints back to text that parses to the same Procfile.
pub fn check_procfile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count();
    match Procfile::parse(text) {
        Ok(p) => {
            assert!(
                text.len() <= 64 * 1024,
                "a Procfile over 64 KiB was accepted"
            );
            let mut printed = String::new();
            for (name, command) in &p.processes {
                assert!(
                    is_valid_process_type(name),
                    "invalid type {name:?} accepted"
                );
                assert!(!command.is_empty(), "{name}: empty command accepted");
                assert_eq!(command, command.trim(), "{name}: command not trimmed");
                assert!(!command.contains('\n'), "{name}: command spans lines");
                let (component, _) = split_command(command);
                assert!(
                    !component.is_empty(),
                    "{name}: command without a first word"
                );
                printed.push_str(&format!("{name}: {command}\n"));
            }
            assert_eq!(
                Procfile::parse(&printed).as_ref(),
                Ok(&p),
                "printing and re-parsing changed the Procfile"
            );
        }
        Err(ProcfileError::TooLarge(n)) => assert!(n > 64 * 1024 && n == text.len()),
        Err(
            ProcfileError::Syntax { line, .. }
            | ProcfileError::BadType { line, .. }
            | ProcfileError::Duplicate { line, .. }
            | ProcfileError::EmptyCommand { line, .. },
        ) => assert!(
            (1..=lines).contains(&line),
            "error on line {line} of {lines}"
        ),
    }
}

/// Accepted `bin/release` output names only valid process types, parses the same way twice,
/// and survives being printed back as YAML.
pub fn check_release_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match BuildpackRelease::parse(text) {
        Ok(release) => {
            for name in release.default_process_types.keys() {
                assert!(
                    is_valid_process_type(name),
                    "invalid type {name:?} accepted"
                );
            }
            let again = BuildpackRelease::parse(text).expect("parsed once, not twice");
            assert_eq!(again, release, "two parses of one text differ");
            let mut doc = BTreeMap::new();
            doc.insert("default_process_types", &release.default_process_types);
            if let Ok(printed) = serde_yaml_ng::to_string(&doc) {
                let reparsed = BuildpackRelease::parse(&printed).expect("printed YAML parses");
                assert_eq!(reparsed, release, "printing and re-parsing changed it");
            }
        }
        Err(ReleaseYamlError::BadProcessType(name)) => {
            assert!(!is_valid_process_type(&name), "valid type {name:?} refused");
        }
        Err(ReleaseYamlError::Yaml(message)) => assert!(!message.is_empty()),
    }
}

/// The CGI head: the blank line is found where it is, and a parsed head has a real status,
/// token names in lowercase, clean values, no `Status` or hop-by-hop fields and a numeric
/// Content-Length.
pub fn check_cgi_head(data: &[u8]) {
    if let Some(end) = cgi::head_end(data) {
        assert!(end <= data.len());
        assert!(data[..end].ends_with(b"\n"), "head ends mid-line");
        assert_eq!(
            cgi::head_end(&data[..end - 1]),
            None,
            "an earlier blank line"
        );
        if let Ok(head) = cgi::parse_head(&data[..end]) {
            check_head(&head);
        }
    }
    if let Ok(head) = cgi::parse_head(data) {
        check_head(&head);
    }
    if let Ok(code) = cgi::parse_status(data) {
        assert!((100..=599).contains(&code), "status {code}");
    }
}

fn check_head(head: &CgiHead) {
    assert!((100..=599).contains(&head.status), "status {}", head.status);
    for (name, value) in &head.headers {
        assert!(!name.is_empty(), "empty header name");
        assert!(
            name.bytes()
                .all(|b| cgi::is_token_byte(b) && !b.is_ascii_uppercase()),
            "header name {name:?}"
        );
        assert!(name != "status", "Status passed through as a header");
        assert!(!cgi::HOP_BY_HOP.contains(&name.as_str()), "{name} passed");
        assert!(
            value.iter().all(|&b| cgi::is_value_byte(b)),
            "value of {name} has control bytes"
        );
        assert_eq!(
            value.as_slice(),
            value.trim_ascii(),
            "value of {name} not trimmed"
        );
        if name == "content-length" {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            assert!(n.is_some(), "Content-Length {value:?}");
        }
    }
}

/// App names, config keys, custom domains and paths inside an app: what is accepted is safe
/// where each ends up (DNS labels, directories, environment variables) and round-trips.
pub fn check_names(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let json = serde_json::to_string(text).unwrap_or_default();
    match AppName::parse(text) {
        Ok(name) => {
            assert_eq!(name.as_str(), text);
            assert_eq!(name.to_string(), text);
            assert!((3..=30).contains(&text.len()));
            assert!(
                !text.contains(['.', '/', '\\']),
                "{text:?} is not one label"
            );
            assert_eq!(app_relative(text), Some(PathBuf::from(text)));
            let encoded = serde_json::to_string(&name).unwrap_or_default();
            assert_eq!(encoded, json);
            let decoded: AppName = serde_json::from_str(&encoded).expect("round trip");
            assert_eq!(decoded, name);
        }
        Err(_) => assert!(serde_json::from_str::<AppName>(&json).is_err()),
    }
    if let Ok(key) = ConfigKey::parse(text) {
        assert_eq!(key.as_str(), text);
        assert!(!text.is_empty() && !text.contains(['=', '\0']), "{text:?}");
        assert!(!text.as_bytes()[0].is_ascii_digit());
    }
    for platform in ["localhost", "skiff.example.com"] {
        if let Ok(host) = parse_domain(text, platform) {
            assert!((1..=253).contains(&host.len()));
            assert_eq!(host, host.to_ascii_lowercase());
            assert!(host.split('.').count() >= 2);
            assert!(
                host.split('.').all(|l| (1..=63).contains(&l.len())
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
                "{host:?}"
            );
            assert!(host != platform && !host.ends_with(&format!(".{platform}")));
            assert_eq!(
                parse_domain(&host, platform).as_deref(),
                Ok(host.as_str()),
                "not idempotent"
            );
        }
    }
    if let Some(rel) = app_relative(text) {
        assert!(!rel.as_os_str().is_empty());
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_))),
            "{rel:?} leaves the app"
        );
        assert!(Path::new("/app").join(&rel).starts_with("/app"));
    }
}

/// A manifest that loads has the current version, valid process types and component paths
/// inside the app, and survives a write and re-read unchanged. Commands split into words that
/// join back to the same split.
pub fn check_manifest(data: &[u8]) {
    if let Ok(manifest) = SlugManifest::from_json(data) {
        assert_eq!(manifest.version, SLUG_MANIFEST_VERSION);
        for (name, spec) in &manifest.process_types {
            assert!(is_valid_process_type(name), "{name:?}");
            let rel = app_relative(&spec.component).expect("component inside the app");
            assert_eq!(rel, PathBuf::from(&spec.component));
            assert!(!Path::new(&spec.component).is_absolute());
        }
        let again = SlugManifest::from_json(&manifest.to_json()).expect("re-read");
        assert_eq!(again, manifest, "write and re-read changed the manifest");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let (component, args) = split_command(text);
        assert!(!component.contains(char::is_whitespace));
        assert!(
            args.iter()
                .all(|a| !a.is_empty() && !a.contains(char::is_whitespace))
        );
        if !component.is_empty() {
            let joined = std::iter::once(component.clone())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ");
            assert_eq!(split_command(&joined), (component, args));
        } else {
            assert!(args.is_empty());
        }
    }
}

/// A tiny xorshift generator: deterministic mutations without a dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from a seed (zero is replaced; xorshift would stay at zero).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Bytes a parser is likely to care about, for insertions.
const INTERESTING: &[&[u8]] = &[
    b"\n",
    b"\r\n",
    b":",
    b" ",
    b"\t",
    b"#",
    b"..",
    b"/",
    b"\0",
    b"\xff",
    b"-",
    b"_",
    b".",
    b"web",
    b"Status: ",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"&a",
    b"*a",
    b"!!",
    b"%41",
    b"0",
    b"999",
    b"\xc3\xa9",
];

/// One to four random edits of `seed`: flip, insert, delete, duplicate or splice in a token.
pub fn mutate(seed: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                let start = at.min(end.saturating_sub(1));
                out.drain(start..end);
            }
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + 1 + rng.below(16)).min(out.len());
                let chunk = out[start..end].to_vec();
                out.splice(at..at, chunk);
            }
            4 => out.insert(at, rng.next_u64() as u8),
            _ if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            _ => out.push(rng.next_u64() as u8),
        }
    }
    out
}

/// The seed files of one fuzz target (`fuzz/corpus/<target>/`), sorted by name.
pub fn seeds(corpus_dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir)
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.sort();
    paths
        .iter()
        .filter(|p| p.is_file())
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Runs `check` on every seed and on `mutations` deterministic mutations of them; panics
/// (through `check`) naming nothing itself, so the failing input is printed by the caller's
/// assertion. Returns how many inputs ran.
pub fn run(corpus_dir: &Path, mutations: usize, check: impl Fn(&[u8])) -> usize {
    let seeds = seeds(corpus_dir);
    assert!(!seeds.is_empty(), "no seeds in {}", corpus_dir.display());
    let mut rng = XorShift::new(0x5eed_f00d);
    for seed in &seeds {
        check(seed);
    }
    for _ in 0..mutations {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(seed, &mut rng);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        if let Err(panic) = outcome {
            eprintln!("failing input: {:?}", String::from_utf8_lossy(&input));
            std::panic::resume_unwind(panic);
        }
    }
    seeds.len() + mutations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    #[test]
    fn procfile_corpus_and_mutations() {
        run(&corpus("procfile"), 4000, check_procfile);
    }

    #[test]
    fn release_yaml_corpus_and_mutations() {
        run(&corpus("release_yaml"), 3000, check_release_yaml);
    }

    #[test]
    fn cgi_head_corpus_and_mutations() {
        run(&corpus("cgi_head"), 4000, check_cgi_head);
    }

    #[test]
    fn names_corpus_and_mutations() {
        run(&corpus("names"), 4000, check_names);
    }

    #[test]
    fn manifest_corpus_and_mutations() {
        run(&corpus("manifest"), 4000, check_manifest);
    }

    #[test]
    fn xorshift_is_deterministic() {
        let mut a = XorShift::new(7);
        let mut b = XorShift::new(7);
        assert_eq!(
            mutate(b"web: x", &mut a),
            mutate(b"web: x", &mut b),
            "same seed, same mutation"
        );
    }
}
