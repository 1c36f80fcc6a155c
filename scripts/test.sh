#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and end-to-end tests (root:
# network namespaces, iptables). With CI=true, a test that cannot run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
cargo test --workspace --locked
