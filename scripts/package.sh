#!/usr/bin/env bash
# Builds the Debian packages gatewan, bgpctl and routingctl (ADR 0044) with dpkg-deb from a
# staged tree: binaries (stripped), systemd units, example configs (conffiles in
# /etc/gatewan), man pages and bash/zsh/fish completions that each binary writes itself
# (`BIN generate …`), copyright, changelog and maintainer scripts. Needs dpkg-dev
# (dpkg-shlibdeps) and binutils (strip), which lintian brings; nothing from the network.
#
#   scripts/package.sh                     # cargo build --release, then package target/release
#   scripts/package.sh --bin-dir target/debug --out-dir /tmp/debs --compress gzip
set -euo pipefail
cd "$(dirname "$0")/.."
# What the redirections below create is installed as is: 0644, whatever the caller's umask.
umask 022
root=$PWD

usage() {
  cat >&2 <<'EOF'
usage: scripts/package.sh [--bin-dir DIR] [--out-dir DIR] [--compress xz|gzip|zstd|none]

  --bin-dir DIR   package the gatewan, bgpctl and routingctl binaries already built in DIR
                  (e.g. target/debug) instead of building them with `cargo build --release`
  --out-dir DIR   where the .deb files are written (default: target/debian)
  --compress C    dpkg-deb's compression of the packages' contents (default: xz)

  DEB_MAINTAINER  the packages' Maintainer field (default: Gatewan developers <gatewan@example.org>)
EOF
  exit 2
}

bin_dir=""
out_dir="${CARGO_TARGET_DIR:-target}/debian"
compress=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) [ $# -ge 2 ] || usage; bin_dir=$2; shift 2 ;;
    --out-dir) [ $# -ge 2 ] || usage; out_dir=$2; shift 2 ;;
    --compress) [ $# -ge 2 ] || usage; compress=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "package.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$compress" in xz|gzip|zstd|none) ;; *) echo "package.sh: --compress $compress: expected xz, gzip, zstd or none" >&2; exit 2 ;; esac

for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "package.sh: $tool is missing: apt-get install dpkg-dev binutils (scripts/bootstrap.sh installs them)" >&2
    exit 1
  fi
done

if [ -z "$bin_dir" ]; then
  cargo build --release --locked --bins -p gatewan -p bgpctl -p routingctl
  bin_dir="${CARGO_TARGET_DIR:-target}/release"
fi
for b in gatewan bgpctl routingctl; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "package.sh: $bin_dir/$b is missing: build it (cargo build --bins) or leave out --bin-dir" >&2
    exit 1
  fi
done
bin_dir=$(cd "$bin_dir" && pwd)
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

# The version the binaries report (the workspace's), so the package never claims another;
# -1: the first packaging of that version (changelog.Debian, as for any non-native package).
upstream=$("$bin_dir/gatewan" --version | awk '{print $2}')
version="$upstream-1"
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-"Gatewan developers <gatewan@example.org>"}
homepage="https://github.com/gatewan/gatewan"
# Reproducible: every date and file time is the last commit's (or SOURCE_DATE_EPOCH's).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
commit=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
# The copyright notice's years: from the first commit's to the last one's.
last_year=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y)
first_year=$(git -C "$root" log --max-parents=0 --format=%cd --date=format:%Y 2>/dev/null | tail -n 1 || true)
years=${first_year:-$last_year}
[ "$years" = "$last_year" ] || years="$years-$last_year"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debian"
# dpkg-shlibdeps wants a debian/control naming the packages it computes dependencies for.
printf 'Source: gatewan\n\nPackage: gatewan\nArchitecture: any\n\nPackage: bgpctl\nArchitecture: any\n\nPackage: routingctl\nArchitecture: any\n' \
  >"$work/debian/control"

# put MODE SOURCE DESTINATION: a file into the package tree.
put() {
  local mode=$1 src=$2 dst=$3
  install -D -m "$mode" "$src" "$dst"
}

# package NAME "RECOMMENDS" "SUGGESTS" "SUMMARY" "DESCRIPTION" [daemon]
package() {
  local name=$1 recommends=$2 suggests=$3 summary=$4 description=$5 daemon=${6:-}
  local tree="$work/debian/$name"
  mkdir -p "$tree/DEBIAN"

  # The binary: stripped as dh_strip does, debug info is not shipped.
  put 0755 "$bin_dir/$name" "$tree/usr/bin/$name"
  strip --remove-section=.comment --remove-section=.note "$tree/usr/bin/$name"

  # Man pages and completions, from the binary's own clap definition.
  "$bin_dir/$name" generate man "$work/man-$name" >/dev/null
  for page in "$work/man-$name"/*.8; do
    mkdir -p "$tree/usr/share/man/man8"
    gzip -9n -c "$page" >"$tree/usr/share/man/man8/$(basename "$page").gz"
  done
  mkdir -p "$tree/usr/share/bash-completion/completions" "$tree/usr/share/zsh/vendor-completions" \
    "$tree/usr/share/fish/vendor_completions.d"
  "$bin_dir/$name" generate completions bash >"$tree/usr/share/bash-completion/completions/$name"
  "$bin_dir/$name" generate completions zsh >"$tree/usr/share/zsh/vendor-completions/_$name"
  "$bin_dir/$name" generate completions fish >"$tree/usr/share/fish/vendor_completions.d/$name.fish"

  local doc="$tree/usr/share/doc/$name"
  mkdir -p "$doc"
  sed "s/#YEARS#/$years/" packaging/debian/copyright >"$doc/copyright"
  chmod 0644 "$doc/copyright"
  # Not for the Debian archive: there is no ITP bug for the changelog to close.
  mkdir -p "$tree/usr/share/lintian/overrides"
  printf '# Built outside the Debian archive: no ITP bug to close.\n%s: initial-upload-closes-no-bugs\n' \
    "$name" >"$tree/usr/share/lintian/overrides/$name"
  chmod 0644 "$tree/usr/share/lintian/overrides/$name"
  cat >"$work/changelog" <<EOF
$name ($version) unstable; urgency=medium

  * Built by scripts/package.sh from commit $commit.

 -- $maintainer  $(date -R -u -d "@$SOURCE_DATE_EPOCH")
EOF
  gzip -9n -c "$work/changelog" >"$doc/changelog.Debian.gz"
  chmod 0644 "$doc/changelog.Debian.gz"

  if [ -n "$daemon" ]; then
    put 0644 "packaging/systemd/$name.service" "$tree/usr/lib/systemd/system/$name.service"
    # The starting config, a conffile: dpkg keeps the operator's edits on upgrade.
    put 0644 "packaging/examples/$name.yaml" "$tree/etc/gatewan/$name.yaml"
    echo "/etc/gatewan/$name.yaml" >"$tree/DEBIAN/conffiles"
    # The full reference, every key commented, and the operator guide.
    put 0644 "docs/examples/$name.yaml" "$doc/examples/$name.yaml"
    gzip -9n -c docs/operators.md >"$doc/operators.md.gz"
    chmod 0644 "$doc/operators.md.gz"
    for script in postinst prerm postrm; do
      sed "s/#UNIT#/$name.service/g" "packaging/debian/$script" >"$tree/DEBIAN/$script"
      chmod 0755 "$tree/DEBIAN/$script"
    done
  fi

  local depends
  depends=$(cd "$work" && dpkg-shlibdeps -O -e"debian/$name/usr/bin/$name" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
  if [ -z "$depends" ]; then
    echo "package.sh: dpkg-shlibdeps found no dependencies of $name" >&2
    exit 1
  fi

  find "$tree" -path "$tree/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
  local size
  size=$(du -sk --apparent-size --exclude=DEBIAN "$tree" | cut -f1)
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $size"
    echo "Depends: $depends"
    [ -n "$recommends" ] && echo "Recommends: $recommends"
    [ -n "$suggests" ] && echo "Suggests: $suggests"
    echo "Section: net"
    echo "Priority: optional"
    echo "Homepage: $homepage"
    echo "Description: $summary"
    printf '%s\n' "$description" | fold -s -w 78 | sed 's/ *$//; s/^/ /'
  } >"$tree/DEBIAN/control"
  (cd "$tree" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
  chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/md5sums"
  [ -f "$tree/DEBIAN/conffiles" ] && chmod 0644 "$tree/DEBIAN/conffiles"
  find "$tree" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

  local deb="$out_dir/${name}_${version}_${arch}.deb"
  dpkg-deb --root-owner-group -Z"$compress" --build "$tree" "$deb" >/dev/null
  echo "$deb"
}

package gatewan "routingctl, nftables" "wireguard-go" \
  "SD-WAN gateway joining datacenters over measured WireGuard tunnels" \
  "Gatewans in every datacenter form a sealed gossip mesh over public IP transit, build one WireGuard tunnel per pair of transits to every remote gatewan, measure each (loss, latency, jitter) and carry the tenants' traffic between the datacenters' VXLAN fabrics. This package holds the daemon, its systemd unit (not enabled: configure /etc/gatewan/gatewan.yaml and the mesh keyring first) and a starting configuration." \
  daemon
package bgpctl "routingctl" "" \
  "Gatewan's BGP EVPN speaker and tunnel controller" \
  "bgpctl chooses, per remote datacenter, the Gatewan tunnels that carry its traffic (by latency, jitter, loss, capacity and cost) and steers the datacenter's fabric into them with BGP EVPN type-5 routes; it learns the fabric's prefixes into the gatewans' mesh. This package holds the daemon, its systemd unit (not enabled: configure /etc/gatewan/bgpctl.yaml and the mesh keyring first) and a starting configuration." \
  daemon
package routingctl "" "" \
  "command-line client of Gatewan's gatewan and bgpctl daemons" \
  "routingctl shows what a gatewan or bgpctl knows (mesh members, tunnels and their measurements, BGP peers, type-5 routes, the controller's choices and why) and operates the mesh keyring and keys, over the daemon's Unix socket or its TCP API with mutual TLS."
