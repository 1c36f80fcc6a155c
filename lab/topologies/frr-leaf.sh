#!/bin/bash
# An FRR leaf of a lab node: mgmtd, zebra and bgpd with network namespaces as VRFs (-w),
# then the node's integrated configuration ($1) applied through vtysh, as FRR's frrinit.sh
# does with `vtysh -b`. It exits as soon as one daemon does, so that lab restarts the leaf
# whole.
#
# FRR 9.0 or later, from /opt/gatewan/frr/run (scripts/lab-frr.sh, run by bootstrap.sh):
# FRR 8.4 loses type-5 next hops when routes change (ADR 0051).
set -u
FRR=${GATEWAN_FRR:-/opt/gatewan/frr/run}
conf=${1:?usage: frr-leaf.sh FRR.CONF}
if ! "$FRR" zebra --version >/dev/null 2>&1; then
	echo "frr-leaf: no FRR at $FRR: run scripts/bootstrap.sh (it unpacks FRR 9.0 or later there)" >&2
	exit 1
fi
install -d -o frr -g frr /run/frr
# Flows spread over a route's next hops by their ports, as fabrics hash, rather than by
# addresses alone: in every VRF of the node (its /run/netns holds only those).
for vrf in /run/netns/*; do
	[ -e "$vrf" ] || continue
	ip netns exec "${vrf##*/}" sysctl -qw net.ipv4.fib_multipath_hash_policy=1 \
		net.ipv6.fib_multipath_hash_policy=1
done
trap 'kill $(jobs -p) 2>/dev/null' EXIT
for d in mgmtd zebra bgpd; do
	"$FRR" "$d" -w -u frr -g frr -P 0 &
done
for _ in $(seq 100); do
	[ -S /run/frr/mgmtd.vty ] && [ -S /run/frr/zebra.vty ] && [ -S /run/frr/bgpd.vty ] && break
	sleep 0.1
done
"$FRR" vtysh -f "$conf" || exit 1
wait -n
