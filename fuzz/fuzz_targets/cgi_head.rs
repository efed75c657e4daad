//! Fuzzes the CGI head parser through `skiff_core::fuzzing::check_cgi_head`, and checks that
//! every head it accepts converts to the `http` crate's types, as the runtime converts it.
#![no_main]

use http::{HeaderName, HeaderValue, StatusCode};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    skiff_core::fuzzing::check_cgi_head(data);
    if let Ok(head) = skiff_core::cgi::parse_head(data) {
        assert!(StatusCode::from_u16(head.status).is_ok());
        for (name, value) in &head.headers {
            let parsed = HeaderName::from_bytes(name.as_bytes()).expect("http takes the name");
            assert_eq!(parsed.as_str(), name);
            assert!(
                HeaderValue::from_bytes(value).is_ok(),
                "http refuses {value:?}"
            );
        }
    }
});
