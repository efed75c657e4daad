//! The CGI response head (RFC 3875 section 6): the header block a CGI program prints before
//! its body. The runtime runs the program; parsing what it printed is pure and lives here so it
//! can be tested and fuzzed without a WebAssembly engine.
//!
//! Names and values are checked against the same rules the `http` crate applies, so the
//! runtime's conversion to its header types cannot fail on anything accepted here.

/// A parsed CGI header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgiHead {
    /// The response status: from `Status:`, else 302 with a `Location:`, else 200.
    pub status: u16,
    /// Header fields in order, names lowercased, without `Status` and hop-by-hop headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Headers about the connection, which the dyno's HTTP server owns.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The longest header name the `http` crate accepts.
const MAX_NAME_LEN: usize = (1 << 16) - 1;

/// Where the body starts: just past the first empty line (`\n\n` or `\r\n\r\n`, or mixed).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + nl];
        if line.is_empty() || line == b"\r" {
            return Some(start + nl + 1);
        }
        start += nl + 1;
    }
    None
}

/// A token character (RFC 9110 `tchar`), the only bytes a header name may hold.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `b` may appear in a header value: visible bytes, space, tab and obs-text.
pub fn is_value_byte(b: u8) -> bool {
    (b >= 32 && b != 127) || b == b'\t'
}

/// Parses the header block (up to and including its blank line). Errors are messages for
/// the app's logs, naming the line at fault.
pub fn parse_head(block: &[u8]) -> Result<CgiHead, String> {
    let mut headers = Vec::new();
    let mut status = None;
    let mut location = false;
    let mut fields = 0usize;
    for (n, raw) in block.split(|&b| b == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(&first) = line.first() else {
            break;
        };
        let lineno = n + 1;
        if first == b' ' || first == b'\t' {
            return Err(format!(
                "CGI header line {lineno} starts with whitespace (folded header lines are not accepted)"
            ));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!(
                "CGI header line {lineno} has no colon: {:?}",
                preview(line)
            ));
        };
        let raw_name = &line[..colon];
        if raw_name.is_empty()
            || raw_name.len() > MAX_NAME_LEN
            || !raw_name.iter().all(|&b| is_token_byte(b))
        {
            return Err(format!(
                "CGI header line {lineno} has an invalid name: {:?}",
                preview(raw_name)
            ));
        }
        let name = String::from_utf8_lossy(raw_name).to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        if !value.iter().all(|&b| is_value_byte(b)) {
            return Err(format!(
                "CGI header {name} has a value with control characters"
            ));
        }
        fields += 1;
        if name == "status" {
            if status.is_some() {
                return Err("the CGI headers have two Status lines".into());
            }
            status = Some(parse_status(value)?);
            continue;
        }
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if name == "content-length"
            && std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_none()
        {
            return Err(format!(
                "the CGI Content-Length header is not a number: {:?}",
                preview(value)
            ));
        }
        if name == "location" {
            location = true;
        }
        headers.push((name, value.to_vec()));
    }
    if fields == 0 {
        return Err(
            "the CGI header block is empty; a response starts with Content-Type, Location or Status"
                .into(),
        );
    }
    let status = status.unwrap_or(if location { 302 } else { 200 });
    Ok(CgiHead { status, headers })
}

/// `Status: 404 Not Found` -> 404. Only three-digit codes from 100 to 599 are statuses.
pub fn parse_status(value: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(value);
    let code = text.split_whitespace().next().unwrap_or("");
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..=599).contains(c) && code.len() == 3)
        .ok_or_else(|| format!("the CGI Status header is not a status code: {text:?}"))
}

/// The start of some bytes, for an error message.
pub fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(60)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_blank_line_in_either_style() {
        assert_eq!(head_end(b"Content-Type: text/plain\r\n\r\nbody"), Some(28));
        assert_eq!(head_end(b"Content-Type: text/plain\n\nbody"), Some(26));
        assert_eq!(head_end(b"A: b\r\nC: d\n\nbody"), Some(12));
        assert_eq!(head_end(b"Content-Type: text/plain\r\n"), None);
        assert_eq!(head_end(b"\nbody"), Some(1));
    }

    #[test]
    fn parses_status_location_and_headers() {
        let head = parse_head(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
        )
        .expect("parses");
        assert_eq!(head.status, 404);
        assert_eq!(
            head.headers,
            vec![
                ("content-type".into(), b"text/plain".to_vec()),
                ("x-a".into(), b"1".to_vec()),
                ("x-a".into(), b"2".to_vec()),
            ]
        );

        let head = parse_head(b"Location: /elsewhere\n\n").expect("parses");
        assert_eq!(head.status, 302);
        assert_eq!(
            head.headers,
            vec![("location".into(), b"/elsewhere".to_vec())]
        );

        let head =
            parse_head(b"Content-Type: text/html\nTransfer-Encoding: chunked\n\n").expect("parses");
        assert_eq!(head.status, 200);
        assert_eq!(head.headers.len(), 1);
    }

    #[test]
    fn refuses_malformed_blocks() {
        for bad in [
            &b"just some text\n\n"[..],
            b"Status: two hundred\n\n",
            b"Status: 99\n\n",
            b"Status: 0200\n\n",
            b"Status: 600\n\n",
            b"Status: 200\nStatus: 201\n\n",
            b"Bad Name: x\n\n",
            b": no name\n\n",
            b"X-A: 1\n folded\n\n",
            b"X-A: a\x01b\n\n",
            b"Content-Length: lots\n\n",
            b"\n",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
