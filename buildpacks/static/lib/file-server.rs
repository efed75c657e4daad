//! Skiff's static file server: a CGI program (std only, built for wasm32-wasip2) that serves
//! the files under `/app/<root>` for GET and HEAD.
//!
//! `static.json` (optional, read from `/app`) takes the keys Heroku's static buildpack uses:
//! `root` (default: `public/` when it exists, else the app itself), `clean_urls`
//! (`/about` serves `about.html`), `error_page` (a file served with 404s), `headers`
//! (glob -> header map) and `redirects` (path -> `{ "url", "status" }`).
//! Hidden files (any path segment starting with a dot) are never served, and the WASI sandbox
//! only opens `/app` read-only, so no request can leave the site's root.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::time::UNIX_EPOCH;

fn main() {
    let mut out = io::stdout().lock();
    let result = serve(&mut out);
    if let Err(e) = result {
        // Writing fails only when the client went away; nothing is left to tell it.
        eprintln!("skiff-static: {e}");
    }
}

fn serve(out: &mut impl Write) -> io::Result<()> {
    let method = std::env::var("REQUEST_METHOD").unwrap_or_default();
    let path = std::env::var("PATH_INFO").unwrap_or_default();
    let config = Config::load();

    if let Some((url, status)) = config.redirect(&path) {
        let status = if (300..400).contains(&status) { status } else { 301 };
        return write!(
            out,
            "Status: {status} {}\r\nLocation: {url}\r\nContent-Length: 0\r\n\r\n",
            reason(status)
        );
    }
    if method != "GET" && method != "HEAD" {
        return write!(
            out,
            "Status: 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nMethod not allowed.\n"
        );
    }
    let head_only = method == "HEAD";
    let Some(segments) = safe_segments(&path) else {
        return not_found(out, &config, head_only);
    };
    let mut file = format!("{}/{}", config.root, segments.join("/"));
    let is_dir_request = path.ends_with('/') || segments.is_empty();
    match std::fs::metadata(&file) {
        Ok(meta) if meta.is_dir() => {
            if !is_dir_request {
                // `/docs` -> `/docs/`, so relative links inside the page resolve.
                let query = std::env::var("QUERY_STRING").unwrap_or_default();
                let query = if query.is_empty() {
                    String::new()
                } else {
                    format!("?{query}")
                };
                return write!(
                    out,
                    "Status: 301 Moved Permanently\r\nLocation: {path}/{query}\r\nContent-Length: 0\r\n\r\n"
                );
            }
            file = format!("{}/index.html", file.trim_end_matches('/'));
        }
        Ok(_) => {}
        Err(_) if config.clean_urls && !segments.is_empty() => file.push_str(".html"),
        Err(_) => return not_found(out, &config, head_only),
    }
    send_file(out, &config, &path, &file, "200 OK", head_only)
        .or_else(|_| not_found(out, &config, head_only))
}

/// The request path as safe segments: no `.`/`..`, no hidden names, no odd bytes.
fn safe_segments(path: &str) -> Option<Vec<&str>> {
    let mut segments = Vec::new();
    for segment in path.split('/') {
        if segment.is_empty() {
            continue;
        }
        if segment.starts_with('.') || segment.contains(['\\', '\0']) {
            return None;
        }
        segments.push(segment);
    }
    Some(segments)
}

fn not_found(out: &mut impl Write, config: &Config, head_only: bool) -> io::Result<()> {
    if let Some(page) = &config.error_page {
        let file = format!("{}/{}", config.root, page.trim_start_matches('/'));
        if safe_segments(page).is_some() && std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            return send_file(out, config, page, &file, "404 Not Found", head_only);
        }
    }
    write!(
        out,
        "Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nNot found.\n"
    )
}

/// Streams a file with its content type, length, validators and configured headers. Fails
/// (before writing anything) when the file cannot be opened.
fn send_file(
    out: &mut impl Write,
    config: &Config,
    request_path: &str,
    path: &str,
    status: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime);
    let mut head = String::new();
    let not_modified = status.starts_with("200")
        && std::env::var("HTTP_IF_NONE_MATCH")
            .is_ok_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if not_modified {
        head.push_str("Status: 304 Not Modified\r\n");
    } else {
        head.push_str(&format!("Status: {status}\r\n"));
        head.push_str(&format!("Content-Type: {}\r\n", content_type(path)));
        head.push_str(&format!("Content-Length: {}\r\n", meta.len()));
    }
    head.push_str(&format!("ETag: {etag}\r\n"));
    for (name, value) in config.headers_for(request_path) {
        if is_token(&name) && !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if !head_only && !not_modified {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
    }
    out.flush()
}

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "rss" => "application/rss+xml",
        "atom" => "application/atom+xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        _ => "application/octet-stream",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        _ => "Redirect",
    }
}

/// What `static.json` says.
struct Config {
    root: String,
    clean_urls: bool,
    error_page: Option<String>,
    headers: Vec<(String, Vec<(String, String)>)>,
    redirects: BTreeMap<String, (String, u16)>,
}

impl Config {
    fn load() -> Self {
        let json = std::fs::read_to_string("/app/static.json")
            .ok()
            .and_then(|text| Json::parse(&text));
        let get = |key: &str| json.as_ref().and_then(|j| j.get(key));
        let root = match get("root").and_then(Json::as_str) {
            Some(root) => root.to_owned(),
            None if std::fs::metadata("/app/public").is_ok_and(|m| m.is_dir()) => "public".into(),
            None => String::new(),
        };
        // The root is inside the app whatever static.json says.
        let root = match safe_segments(&root) {
            Some(segments) if !segments.is_empty() => format!("/app/{}", segments.join("/")),
            _ => "/app".into(),
        };
        let headers = match get("headers") {
            Some(Json::Object(globs)) => globs
                .iter()
                .map(|(glob, map)| {
                    let fields = match map {
                        Json::Object(fields) => fields
                            .iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                            .collect(),
                        _ => Vec::new(),
                    };
                    (glob.clone(), fields)
                })
                .collect(),
            _ => Vec::new(),
        };
        let redirects = match get("redirects") {
            Some(Json::Object(rules)) => rules
                .iter()
                .filter_map(|(from, rule)| {
                    let url = rule.get("url")?.as_str()?.to_owned();
                    let status = match rule.get("status") {
                        Some(Json::Number(n)) => *n as u16,
                        _ => 301,
                    };
                    Some((from.clone(), (url, status)))
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        Self {
            root,
            clean_urls: matches!(get("clean_urls"), Some(Json::Bool(true))),
            error_page: get("error_page").and_then(Json::as_str).map(str::to_owned),
            headers,
            redirects,
        }
    }

    fn redirect(&self, path: &str) -> Option<(String, u16)> {
        self.redirects
            .get(path)
            .filter(|(url, _)| !url.contains(['\r', '\n']))
            .cloned()
    }

    fn headers_for(&self, path: &str) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(glob, _)| glob_match(glob.as_bytes(), path.as_bytes()))
            .flat_map(|(_, fields)| fields.iter().cloned())
            .collect()
    }
}

/// `*` matches within a path segment, `**` across segments.
fn glob_match(glob: &[u8], path: &[u8]) -> bool {
    match glob {
        [] => path.is_empty(),
        [b'*', b'*', rest @ ..] => (0..=path.len()).any(|i| glob_match(rest, &path[i..])),
        [b'*', rest @ ..] => {
            let limit = path.iter().position(|&b| b == b'/').unwrap_or(path.len());
            (0..=limit).any(|i| glob_match(rest, &path[i..]))
        }
        [c, rest @ ..] => path.first() == Some(c) && glob_match(rest, &path[1..]),
    }
}

/// Just enough JSON for static.json.
#[derive(Debug, Clone)]
#[allow(dead_code, reason = "arrays and nulls are parsed to be skipped, never read")]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Option<Json> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let value = p.value()?;
        p.ws();
        (p.i == p.s.len()).then_some(value)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, word: &str) -> bool {
        if self.s[self.i..].starts_with(word.as_bytes()) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Option<Json> {
        self.ws();
        match *self.s.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.eat("}") {
                    return Some(Json::Object(fields));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return None;
                    }
                    fields.push((key, self.value()?));
                    self.ws();
                    if self.eat("}") {
                        return Some(Json::Object(fields));
                    }
                    if !self.eat(",") {
                        return None;
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    if self.eat("]") {
                        return Some(Json::Array(items));
                    }
                    if !self.eat(",") {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Json::String),
            b't' => self.eat("true").then_some(Json::Bool(true)),
            b'f' => self.eat("false").then_some(Json::Bool(false)),
            b'n' => self.eat("null").then_some(Json::Null),
            _ => {
                let start = self.i;
                while self.i < self.s.len() && b"+-.eE0123456789".contains(&self.s[self.i]) {
                    self.i += 1;
                }
                std::str::from_utf8(&self.s[start..self.i])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Json::Number)
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        if !self.eat("\"") {
            return None;
        }
        let mut out = String::new();
        loop {
            let rest = std::str::from_utf8(&self.s[self.i..]).ok()?;
            let c = rest.chars().next()?;
            self.i += c.len_utf8();
            match c {
                '"' => return Some(out),
                '\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            self.i += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?).unwrap_or('\u{fffd}')
                        }
                        other => other as char,
                    });
                }
                c => out.push(c),
            }
        }
    }
}
