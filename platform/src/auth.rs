//! API tokens: random, shown once, stored only as sha256 hashes. Clients send them as a
//! bearer token or, for git, as the password of HTTP basic auth (as Heroku's git does).

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A new random token (256 bits, hex).
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        // Without OS randomness no safe token can be made; fail loudly rather than weakly.
        panic!("the operating system's random number generator is unavailable");
    }
    hex::encode(bytes)
}

/// How a token is stored.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The token in an `Authorization` header: `Bearer T` or `Basic base64(user:T)`.
pub(crate) fn token_from_header(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_basic() {
        assert_eq!(token_from_header("Bearer abc").as_deref(), Some("abc"));
        let basic = base64::engine::general_purpose::STANDARD.encode("skiff:tok");
        assert_eq!(
            token_from_header(&format!("Basic {basic}")).as_deref(),
            Some("tok")
        );
        assert_eq!(token_from_header("Basic !!!"), None);
        assert_eq!(token_from_header("Digest x"), None);
        assert_ne!(new_token(), new_token());
        assert_eq!(hash_token("a").len(), 64);
    }
}
