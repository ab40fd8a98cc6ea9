//! Any answer of the token endpoint (status, Date header, body) gives a token or a typed error, never a panic, and
//! no error text carries anything shaped like a credential.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, body) = data.split_at(data.len().min(3));
    let status = match head {
        [a, b, ..] => 100 + u16::from_le_bytes([*a, *b]) % 500,
        _ => 201,
    };
    let mut headers = http::HeaderMap::new();
    if let Some(&flag) = head.get(2) {
        if flag & 1 == 1 {
            headers.insert("date", http::HeaderValue::from_static("Sat, 21 Nov 2026 18:00:00 GMT"));
        }
        if flag & 2 == 2 {
            headers.insert("x-ratelimit-remaining", http::HeaderValue::from_static("0"));
        }
    }
    if let Err(error) = tower_github_app::fuzzing::mint_answer(status, &headers, body) {
        let text = format!("{error} {error:?}");
        for secret in ["ghs_", "ghu_", "ghr_", "eyJ"] {
            assert!(!text.contains(secret), "{secret} in an error: {text}");
        }
    }
});
