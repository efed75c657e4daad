//! The router's own response pages, shown when no app answers, and Heroku's router error codes.

/// A small HTML page for an error the router itself produces. Names no app but the one asked.
pub(crate) fn page(title: &str, detail: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{detail}</p></body></html>\n",
        title = escape(title),
        detail = escape(detail),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Heroku's router error codes, for the router log line (`code=H12 desc="Request timeout"`)
/// and the page the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// The dyno refuses connections.
    H10,
    /// Too many requests in flight for the app.
    H11,
    /// The dyno did not answer in time.
    H12,
    /// The dyno closed the connection without a (complete) response.
    H13,
    /// No web dynos.
    H14,
    /// The client went away or stalled before the exchange finished.
    H18,
    /// Web dynos were starting and none came up within the boot timeout.
    H20,
    /// Maintenance mode.
    H80,
    /// The router itself failed.
    H99,
}

impl Code {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::H10 => "H10",
            Self::H11 => "H11",
            Self::H12 => "H12",
            Self::H13 => "H13",
            Self::H14 => "H14",
            Self::H18 => "H18",
            Self::H20 => "H20",
            Self::H80 => "H80",
            Self::H99 => "H99",
        }
    }

    pub(crate) fn desc(self) -> &'static str {
        match self {
            Self::H10 => "App crashed",
            Self::H11 => "Backlog too deep",
            Self::H12 => "Request timeout",
            Self::H13 => "Connection closed without response",
            Self::H14 => "No web processes running",
            Self::H18 => "Request Interrupted",
            Self::H20 => "App boot timeout",
            Self::H80 => "Maintenance mode",
            Self::H99 => "Platform error",
        }
    }

    /// What the client gets; H18 clients are usually gone, so it is rarely seen.
    pub(crate) fn page(self) -> String {
        let (title, detail) = match self {
            Self::H10 => (
                "Application error",
                "The app is not accepting connections (H10). Its logs say why; `skiff ps:restart` starts its dynos again.",
            ),
            Self::H11 => (
                "Application busy",
                "The app has too many requests in flight (H11). Try again in a moment.",
            ),
            Self::H12 => ("Request timeout", "The app did not answer in time (H12)."),
            Self::H13 => (
                "Application error",
                "The app closed the connection without answering (H13). Its logs say why.",
            ),
            Self::H14 => (
                "Application error",
                "This app has no web dynos running (H14). Deploy it, or scale it with `skiff ps:scale web=1`.",
            ),
            Self::H18 => (
                "Request interrupted",
                "The request was not sent in time (H18).",
            ),
            Self::H20 => (
                "Application error",
                "The app's web dynos did not start in time (H20). Its logs say why.",
            ),
            Self::H80 => (
                "Offline for maintenance",
                "This app is in maintenance mode (H80). Please check back soon.",
            ),
            Self::H99 => (
                "Platform error",
                "Skiff could not route this request (H99).",
            ),
        };
        page(title, detail)
    }
}
