//! The scrubber never lets a planted secret through. A secret (1 to 600 characters of a GitHub token's, a JWT's
//! or base64 key material's alphabet, at least 24) is planted anywhere in arbitrary text; neither `scrub` nor the
//! `Display`/`Debug` of the error built from a token endpoint's answer carrying that text as GitHub's `message`
//! may contain any 24-character substring of it.
#![no_main]

use libfuzzer_sys::fuzz_target;

const ALPHABETS: [&[u8]; 3] = [
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.",
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let alphabet = ALPHABETS[data[0] as usize % ALPHABETS.len()];
    let length = 24 + (usize::from(data[1]) * 3) % 577;
    let split = usize::from(data[2]).min(data.len() - 3);
    let (prefix, rest) = data[3..].split_at(split);
    // The secret's characters come from the input too, cycling when it runs out.
    let seed: Vec<u8> = if rest.is_empty() { vec![7] } else { rest.to_vec() };
    let secret: String =
        (0..length).map(|i| alphabet[(usize::from(seed[i % seed.len()]) + i * 7) % alphabet.len()] as char).collect();
    let text = format!("{}{secret}{}", String::from_utf8_lossy(prefix), String::from_utf8_lossy(rest));

    let check = |shown: &str, what: &str| {
        for window in secret.as_bytes().windows(24) {
            let window = std::str::from_utf8(window).unwrap();
            assert!(!shown.contains(window), "{what} kept {window:?} of the secret: {shown:?}");
        }
    };
    check(&tower_github_app::fuzzing::scrub(&text), "scrub");

    let body = serde_json::json!({ "message": text }).to_string();
    let headers = http::HeaderMap::new();
    for status in [401, 403, 422, 500] {
        if let Err(error) = tower_github_app::fuzzing::mint_answer(status, &headers, body.as_bytes()) {
            check(&error.to_string(), "Display");
            check(&format!("{error:?}"), "Debug");
        }
    }
});
