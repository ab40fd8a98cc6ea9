//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

/// Fails if `text` contains any of the secrets, or anything shaped like a GitHub token, a JWT or PEM key material.
pub fn assert_no_secrets(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!secret.is_empty());
        assert!(!text.contains(secret), "a secret leaked into: {text}");
    }
    for marker in ["ghs_", "ghu_", "ghr_", "eyJ", "MII"] {
        assert!(!text.contains(marker), "{marker:?} leaked into: {text}");
    }
}

/// A GET request to `url` with an empty body.
pub fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}
