#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test (unit,
# simulation, wire, end-to-end with real doozerd/doozer processes on 127.0.0.x).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test --release"
cargo test --release --all-targets --locked
