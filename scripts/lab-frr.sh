#!/usr/bin/env bash
# Provides FRR 10 or later for the lab's FRR leaf (two-dc's leaf-par1) at
# /opt/gatewan/frr/run: `run DAEMON ARGS...` runs mgmtd, zebra, bgpd... and `run vtysh`.
#
# Why not the system's FRR: Debian 12 ships FRR 8.4, whose zebra loses a type-5 route's
# next-hop (Router's MAC) entries whenever bgpd changes the route's best path
# (FRRouting/frr#12391, ADR 0051): a leaf then holds routes through tunnels it can no longer
# reach. Debian 13's FRR 10.3 has the fix but needs libc6 >= 2.38, so on Debian 12 its
# packages are unpacked (never installed: nothing of the system changes) under
# /opt/gatewan/frr/root and run through their own dynamic loader. Where the system's FRR is
# 10 or later already, `run` is that FRR.
#
# Idempotent: once `run zebra --version` answers, it changes nothing and makes no network
# call. Called by scripts/bootstrap.sh (and by lab/Dockerfile); needs root and, on Debian 12,
# the trixie apt source that bootstrap.sh installs.
set -euo pipefail

DIR=${GATEWAN_FRR_DIR:-/opt/gatewan/frr}
FRR_MIN=10.0
# FRR 10.3's run-time dependencies that Debian 12 lacks or has too old; the rest (liblzma,
# libpcre2, libtinfo, libxxhash, libaudit, libcap-ng) are Debian 12's own.
TRIXIE_PACKAGES=(frr libc6 libyang3 libreadline8t64 libcares2 libjson-c5 libprotobuf-c1
  libunwind8 liblua5.3-0 libcap2 libcrypt1 libpam0g)

version_of() { # the FRR version that `$@ --version` answers (a zebra), or nothing
  "$@" --version 2>/dev/null | sed -n 's/^zebra version \([0-9.]*\).*/\1/p' | head -1
}

have=$( [ -x "$DIR/run" ] && version_of "$DIR/run" zebra || true)
if [ -n "$have" ] && dpkg --compare-versions "$have" ge "$FRR_MIN"; then
  exit 0
fi

install -d "$DIR"
system=$(version_of /usr/lib/frr/zebra || true)
if [ -n "$system" ] && dpkg --compare-versions "$system" ge "$FRR_MIN"; then
  cat > "$DIR/run.new" <<'RUN'
#!/bin/sh
# Written by gatewan's scripts/lab-frr.sh: the system's FRR (10 or later).
d=$1; shift
[ "$d" = vtysh ] && exec /usr/bin/vtysh "$@"
exec /usr/lib/frr/"$d" "$@"
RUN
else
  echo "lab-frr: FRR ${system:-none} < $FRR_MIN: unpacking Debian 13's FRR under $DIR (not installed)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq "${TRIXIE_PACKAGES[@]/%//trixie}" 2>&1 | grep -v "unsandboxed" || true)
  ls "$work"/frr_*.deb >/dev/null 2>&1 || {
    echo "lab-frr: could not download FRR from Debian 13 (is the trixie apt source of scripts/apt/ installed and updated?)" >&2
    exit 1
  }
  rm -rf "$DIR/root.new"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$DIR/root.new"; done
  rm -rf "$DIR/root"
  mv "$DIR/root.new" "$DIR/root"
  cat > "$DIR/run.new" <<RUN
#!/bin/sh
# Written by gatewan's scripts/lab-frr.sh: Debian 13's FRR, unpacked under $DIR/root and run
# through its own dynamic loader (its libc), the system's libraries for the rest.
R=$DIR/root
LP=\$R/usr/lib/x86_64-linux-gnu:\$R/lib/x86_64-linux-gnu:\$R/usr/lib/x86_64-linux-gnu/frr
d=\$1; shift
bin=\$R/usr/lib/frr/\$d
[ "\$d" = vtysh ] && bin=\$R/usr/bin/vtysh
exec \$R/usr/lib64/ld-linux-x86-64.so.2 --library-path "\$LP" "\$bin" "\$@"
RUN
fi
chmod 0755 "$DIR/run.new"
mv "$DIR/run.new" "$DIR/run"
have=$(version_of "$DIR/run" zebra || true)
if [ -z "$have" ] || ! dpkg --compare-versions "$have" ge "$FRR_MIN"; then
  echo "lab-frr: $DIR/run answers FRR '${have:-nothing}', not $FRR_MIN or later" >&2
  exit 1
fi
echo "lab-frr: FRR $have at $DIR/run"
