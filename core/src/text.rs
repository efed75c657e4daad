//! Small pure helpers shared by the CLI, the platform and the runtime: dates, paths inside an
//! app, and error messages.

use std::path::{Component, Path, PathBuf};

/// An error's message followed by each of its causes, `: `-separated: what a user needs when a
/// library's top-level message alone ("error connecting to server") says too little.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// (year, month, day, seconds into the day) for Unix seconds, UTC.
pub fn civil(secs: i64) -> (i64, i64, i64, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm): exact for every day an i64 holds here.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for Unix seconds.
pub fn timestamp(secs: i64) -> String {
    let (y, m, d, rem) = civil(secs);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `YYYY-MM-DDTHH:MM:SS.ffffff+00:00` for Unix microseconds, as log lines carry it.
pub fn rfc3339_micros(time_us: i64) -> String {
    let (y, m, d, rem) = civil(time_us.div_euclid(1_000_000));
    let micros = time_us.rem_euclid(1_000_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The most of one log line Skiff keeps, in bytes, wherever the line goes (an app's log
/// stream, its drains, the platform's own log): one line must not pin megabytes in every
/// app's ring, nor cost the platform time in proportion to what a guest chose to print.
pub const MAX_LOG_LINE_BYTES: usize = 10 * 1024;

/// `line` cut to [`MAX_LOG_LINE_BYTES`] on a char boundary.
pub fn log_line_prefix(line: &str) -> &str {
    prefix_within(line, MAX_LOG_LINE_BYTES)
}

/// The longest start of `text` of at most `max` bytes that ends on a char boundary.
pub fn prefix_within(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A path inside an app's tree (`bin/a.wasm`, `/app/bin/a.wasm`), or `None` when it would
/// leave the tree or names nothing.
pub fn app_relative(path: &str) -> Option<PathBuf> {
    let path = Path::new(path.strip_prefix("/app/").unwrap_or(path));
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_names_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(error_chain(&outer), "error connecting: connection refused");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error connecting")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_873_600), "2026-11-28 13:46:40");
        assert_eq!(
            rfc3339_micros(1_795_873_600_000_042),
            "2026-11-28T13:46:40.000042+00:00"
        );
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn relative_paths_stay_inside() {
        assert_eq!(
            app_relative("bin/a.wasm"),
            Some(PathBuf::from("bin/a.wasm"))
        );
        assert_eq!(app_relative("./a.wasm"), Some(PathBuf::from("a.wasm")));
        assert_eq!(
            app_relative("/app/bin/a.wasm"),
            Some(PathBuf::from("bin/a.wasm"))
        );
        assert_eq!(app_relative("../a.wasm"), None);
        assert_eq!(app_relative("/etc/passwd"), None);
        assert_eq!(app_relative(""), None);
    }

    #[test]
    fn long_log_lines_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_LOG_LINE_BYTES);
        let cut = log_line_prefix(&long);
        assert!(cut.len() <= MAX_LOG_LINE_BYTES);
        assert!(cut.len() > MAX_LOG_LINE_BYTES - 2);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(log_line_prefix("short"), "short");
    }
}
