#!/usr/bin/env bash
# Benchmark 2: instructions per request for each variant and request shape, by callgrind. The difference between
# runs of 200,000 and 100,000 requests, divided by 100,000, cancels setup (key parsing, the fake server, the mint).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release --example inject --features test-util
for shape in plain realistic; do
  for variant in ${VARIANTS:-bare set_request_header installation_auth app_auth user_auth retry_auth retry_app_auth hand_rolled}; do
    count() {
      valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/inject "$variant" "$shape" "$1" 2>&1 \
        | sed -n 's/.*I\s*refs:\s*//p' | tr -d ','
    }
    small=$(count 100000)
    large=$(count 200000)
    echo "$shape $variant $(( (large - small) / 100000 ))"
  done
done
