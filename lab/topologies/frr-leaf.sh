#!/bin/bash
# An FRR leaf of a lab node: mgmtd, zebra and bgpd with network namespaces as VRFs (-w),
# then the node's integrated configuration ($1) applied through vtysh, as FRR's frrinit.sh
# does with `vtysh -b`. It exits as soon as one daemon does, so that lab restarts the leaf
# whole.
#
# FRR 10 or later, from /opt/gatewan/frr/run (scripts/lab-frr.sh, run by bootstrap.sh):
# FRR 8.4 loses type-5 next hops when routes change (ADR 0051).
set -u
FRR=${GATEWAN_FRR:-/opt/gatewan/frr/run}
conf=${1:?usage: frr-leaf.sh FRR.CONF}
if ! "$FRR" zebra --version >/dev/null 2>&1; then
	echo "frr-leaf: no FRR at $FRR: run scripts/bootstrap.sh (it unpacks FRR 10 or later there)" >&2
	exit 1
fi
# A leaf restarted after a kill leaves its daemons' sockets and pid files behind (vtysh
# would take them for live daemons and configure none), and after a kill -9 of this script,
# its daemons too. /run is the node's own, so these pid files are this node's.
# A pid may have been reused since (nodes share the host's pids): only an FRR daemon is
# killed.
for pidfile in /run/frr/*.pid; do
	[ -e "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "lib/frr/" && kill -9 "$pid"
done
rm -rf /run/frr
install -d -o frr -g frr /run/frr
# Flows spread over a route's next hops by their ports, as fabrics hash, rather than by
# addresses alone: in every VRF of the node (its /run/netns holds only those).
for vrf in /run/netns/*; do
	[ -e "$vrf" ] || continue
	ip netns exec "${vrf##*/}" sysctl -qw net.ipv4.fib_multipath_hash_policy=1 \
		net.ipv6.fib_multipath_hash_policy=1
done
trap 'kill $(jobs -p) 2>/dev/null' EXIT
# zebra --v6-rr-semantics: without it zebra changes an IPv6 route by deleting it and adding
# it again, and the VRF has no route to that prefix in between (docs/lab.md).
for d in mgmtd zebra bgpd; do
	extra=()
	[ "$d" = zebra ] && extra=(--v6-rr-semantics)
	"$FRR" "$d" -w -u frr -g frr -P 0 "${extra[@]}" &
done
# Every daemon answers before the configuration goes out: vtysh configures only those it
# reaches.
for d in mgmtd zebra bgpd; do
	for try in $(seq 100); do
		"$FRR" vtysh -d "$d" -c 'show version' >/dev/null 2>&1 && break
		[ "$try" = 100 ] && { echo "frr-leaf: $d does not answer after 10 s" >&2; exit 1; }
		sleep 0.1
	done
done
"$FRR" vtysh -f "$conf" || exit 1
wait -n
