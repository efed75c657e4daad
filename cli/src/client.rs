//! The API client the commands share: base URL and token from `SKIFF_API_URL` /
//! `SKIFF_API_TOKEN`, or the defaults `skiff up` sets (`http://127.0.0.1:5000` and the
//! token in `~/.netrc`).

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

pub(crate) struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub(crate) fn from_env() -> Result<Self> {
        let base = std::env::var("SKIFF_API_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:5000".to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = match std::env::var("SKIFF_API_TOKEN") {
            Ok(t) if !t.is_empty() => t,
            _ => {
                let host = host_of(&base);
                skiff_platform::netrc::default_path()
                    .and_then(|p| skiff_platform::netrc::lookup(&p, &host))
                    .with_context(|| {
                        format!("no API token: set SKIFF_API_TOKEN, or run `skiff up` (it writes ~/.netrc for {host})")
                    })?
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { base, token, agent })
    }

    /// The token in use.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The API's base URL.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The shared HTTP agent.
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    pub(crate) fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .call()
            .with_context(|| {
                format!(
                    "cannot reach the Skiff API at {}; is `skiff up` running?",
                    self.base
                )
            })?;
        decode(resp)
    }

    pub(crate) fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base);
        if method == "DELETE" {
            let resp = self
                .agent
                .delete(&url)
                .header("authorization", format!("Bearer {}", self.token))
                .call()
                .with_context(|| {
                    format!(
                        "cannot reach the Skiff API at {}; is `skiff up` running?",
                        self.base
                    )
                })?;
            return decode(resp);
        }
        let req = match method {
            "POST" => self.agent.post(&url),
            "PATCH" => self.agent.patch(&url),
            "PUT" => self.agent.put(&url),
            other => bail!("unsupported method {other}"),
        };
        let resp = req
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body.to_string())
            .with_context(|| {
                format!(
                    "cannot reach the Skiff API at {}; is `skiff up` running?",
                    self.base
                )
            })?;
        decode(resp)
    }
}

impl Client {
    /// GET with query parameters, returning the body as a stream (for long responses like
    /// `logs --tail`).
    pub(crate) fn get_reader(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<impl std::io::Read + use<>> {
        let mut req = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (k, v) in query {
            req = req.query(*k, v);
        }
        let mut resp = req.call().with_context(|| {
            format!(
                "cannot reach the Skiff API at {}; is `skiff up` running?",
                self.base
            )
        })?;
        if !resp.status().is_success() {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            bail!("{}", error_message(text));
        }
        Ok(resp.into_body().into_reader())
    }

    /// DELETE with query parameters.
    pub(crate) fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let mut req = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        for (k, v) in query {
            req = req.query(*k, v);
        }
        let resp = req.call().with_context(|| {
            format!(
                "cannot reach the Skiff API at {}; is `skiff up` running?",
                self.base
            )
        })?;
        decode(resp)
    }
}

/// The API's `{"message"}`, or the raw text when the body is not an API error.
fn error_message(text: String) -> String {
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or(text)
}

fn decode<T: DeserializeOwned>(mut resp: ureq::http::Response<ureq::Body>) -> Result<T> {
    let status = resp.status();
    let text = resp
        .body_mut()
        .read_to_string()
        .context("reading the API response")?;
    if !status.is_success() {
        bail!("{}", error_message(text));
    }
    let text = if text.trim().is_empty() {
        "null".to_owned()
    } else {
        text
    };
    serde_json::from_str(&text).with_context(|| format!("unexpected API response: {text}"))
}

/// The host part of a URL (`http://127.0.0.1:5000` -> `127.0.0.1`), as netrc keys it.
pub(crate) fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => authority.to_owned(),
    }
}
