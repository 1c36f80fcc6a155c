#!/usr/bin/env bash
# Installs what the demo and the tests need on a Debian machine. Idempotent: when every
# package is already there it changes nothing and makes no network call.
set -euo pipefail

PACKAGES=(
  iproute2 iptables nftables iputils-ping procps psmisc ethtool curl
  iperf3 graphviz wireguard-go wireguard-tools gobgpd frr
  lintian dpkg-dev systemd
  faketime prometheus tmux
  clang libbpf-dev
)

if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. /etc/os-release

# Debian 13's apt source, pinned so that apt installs nothing from it but wireguard-go
# (scripts/apt/); on Debian 12 only.
trixie_source() {
  install -m 0644 "$here/apt/gatewan-trixie-wireguard-go.sources" /etc/apt/sources.list.d/
  install -m 0644 "$here/apt/gatewan-trixie-wireguard-go.pref" \
    /etc/apt/preferences.d/gatewan-trixie-wireguard-go
  apt-get update -qq
}

# wireguard-go of 2023 or later: TUN offloads (TCP GSO/GRO) and UDP batching carry about
# seven times what Debian 12's 0.0.20220316 carries here (lab bench dataplane), and it sizes
# its socket buffers. Debian 13's package runs on Debian 12 (it needs libc6 >= 2.34 only):
# an apt source for trixie, pinned so that wireguard-go is the one package taken from it.
WIREGUARD_GO_MIN=0.0.20230223
wg_version=$(dpkg-query -W -f='${Version}' wireguard-go 2>/dev/null || true)
if ! dpkg --compare-versions "${wg_version:-0}" ge "$WIREGUARD_GO_MIN"; then
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    echo "bootstrap: wireguard-go ${wg_version:-none} < $WIREGUARD_GO_MIN: taking Debian 13's (apt pin: wireguard-go only)"
    export DEBIAN_FRONTEND=noninteractive
    trixie_source
    apt-get install -y -qq --no-install-recommends wireguard-go
  else
    echo "bootstrap: warning: wireguard-go ${wg_version:-none} is older than $WIREGUARD_GO_MIN (no TUN offloads): tunnels carry a fraction of what they could; install a newer one" >&2
  fi
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

# FRR 10 or later for the lab's FRR leaf (leaf-par1 of two-dc): Debian 12's 8.4 loses
# type-5 next hops on route changes (ADR 0051). scripts/lab-frr.sh unpacks Debian 13's under
# /opt/gatewan/frr without installing it; it does nothing once that FRR answers.
if ! /opt/gatewan/frr/run zebra --version >/dev/null 2>&1; then
  [ "${VERSION_CODENAME:-}" = bookworm ] && trixie_source
  "$here/lab-frr.sh"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "bootstrap: cargo not found: install the Rust toolchain (rustup, Rust >= 1.95)" >&2
  exit 1
fi
