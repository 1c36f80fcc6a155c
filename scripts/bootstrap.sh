#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine. Idempotent: when every
# package is already there it changes nothing and makes no network call.
set -euo pipefail

PACKAGES=(
  iproute2 iptables nftables iputils-ping procps psmisc ethtool curl
  iperf3 graphviz wireguard-go wireguard-tools gobgpd frr
  lintian dpkg-dev systemd
  faketime prometheus tmux
)

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found: install the Rust toolchain (rustup, Rust >= 1.95)" >&2
  exit 1
fi
