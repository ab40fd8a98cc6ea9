//! The key parser takes any bytes without panicking, and its errors never echo the input's key material.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_github_app::PrivateKey;

fuzz_target!(|data: &[u8]| {
    if let Err(error) = PrivateKey::from_pem(data) {
        let text = format!("{error} {error:?}");
        if let Ok(input) = std::str::from_utf8(data) {
            // Key material: long runs of base64. Messages are prose and never contain one.
            let is_base64 = |l: &str| l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
            for line in input.lines().map(str::trim).filter(|l| l.len() >= 40 && is_base64(l)) {
                assert!(!text.contains(line), "an error echoed the input: {text}");
            }
        }
    }
    let _ = PrivateKey::from_der(data);
});
