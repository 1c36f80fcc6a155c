#!/usr/bin/env bash
# The demo: two datacenters (sg1, par1) on one host with `lab` (lab/topologies/two-dc.clab.yml):
# per datacenter a fabric route reflector (gobgpd), an EVPN leaf originating the tenant
# prefixes with a tenant host behind it (in sg1 `lab leaf`, one Router's MAC per route, as
# hardware; in par1 FRR 10, one per next hop, as Linux), two gatewans on two IP transits (lumen,
# cogent) behind WAN emulators, routed by one default route each, and two bgpctls.
# It shows the tunnels and their measurements, the type-5 routes the fabric receives and
# why the controller chose them; a host in sg1 pinging a host in par1 and the tunnels that
# carry it (WireGuard counters), iperf3 across; then fails the transit that carries a ping
# stream, shows the packets lost and the routes move.
# The lab is torn down at the end (or stays with KEEP=1: `lab down` it yourself).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo build --release --bins --locked -q
export PATH=$PWD/target/release:$PATH
TOPO=lab/topologies/two-dc.clab.yml

cleanup() { [ "${KEEP:-0}" = 1 ] || lab down "$TOPO" >/dev/null 2>&1 || true; }
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
on() { local node=$1; shift; lab exec -t "$TOPO" "$node" -- "$@"; }
bgpctl() { on "$1" routingctl --socket /run/bgpctl/bgpctl.sock "${@:2}"; }

say "lab up: 20 nodes; gatewans, bgpctls, gobgpd and the leaves start by themselves"
lab down "$TOPO" >/dev/null 2>&1 || true
lab up "$TOPO"

say "waiting for the 8 tunnels (both ends) and the routes"
for _ in $(seq 1 60); do
  n=0
  for g in gatewan01-sg1 gatewan02-sg1 gatewan01-par1 gatewan02-par1; do
    n=$((n + $(on $g routingctl -o json tunnels 2>/dev/null | grep -c '"state": "Established"' || true)))
  done
  routes=$(on fabric-sg1 gobgp global rib -a evpn 2>/dev/null | grep -c 172.16.2.0 || true)
  [ "$n" -ge 16 ] && [ "$routes" -ge 1 ] && break
  sleep 0.5
done

say "routingctl members (on gatewan01-sg1)"
on gatewan01-sg1 routingctl members

say "routingctl tunnels (on gatewan01-sg1)"
on gatewan01-sg1 routingctl tunnels
say "one tunnel in the operator YAML"
on gatewan01-sg1 routingctl -o yaml tunnels --peer gatewan01-par1 | sed -n '1,45p'

say "bgpctl-sg1: BGP peers and routes (learned from the fabric, advertised to it)"
bgpctl bgpctl-sg1 peers
bgpctl bgpctl-sg1 routes

say "bgpctl-sg1: why these tunnels (required capacity 1.5 Gbps toward par1)"
# A better set seen while the tunnels' first measurements settle applies only after its
# hold-down (10 s): wait for it, so that the traffic below takes the tunnels shown here.
for _ in $(seq 1 60); do
  bgpctl bgpctl-sg1 explain 2>/dev/null | grep -q "a better set holds" || break
  sleep 0.5
done
bgpctl bgpctl-sg1 explain

say "the sg1 fabric's route reflector (gobgpd) holds par1's prefixes via the gatewans"
on fabric-sg1 gobgp global rib -a evpn

transfer() { for g in gatewan01-sg1 gatewan02-sg1; do on $g wg show all transfer | sed "s/^/$g /"; done; }
# Bytes each sg1 tunnel sent between the two transfer readings: "gatewan interface bytes".
sent() { paste /tmp/gatewan-demo-before /tmp/gatewan-demo-after | awk '{print $1, $2, $10 - $5}'; }
say "host-sg1 pings host-par1 (IPv4 and IPv6): host -> leaf -> VXLAN -> gatewan -> WireGuard -> gatewan -> VXLAN -> leaf -> host"
for _ in $(seq 1 40); do on host-sg1 ping -c 1 -W 1 172.16.2.10 >/dev/null 2>&1 && break; sleep 0.5; done
on host-sg1 ping -c 3 172.16.2.10
on host-sg1 ping -c 3 2001:db8:a2::10

say "iperf3 host-sg1 -> host-par1, 8 flows; the bytes each sg1 tunnel sends"
transfer > /tmp/gatewan-demo-before
on host-par1 iperf3 -s -D -1
sleep 0.5
on host-sg1 iperf3 -c 172.16.2.10 -P 8 -t 3 | tail -4
transfer > /tmp/gatewan-demo-after
echo "bytes sent per sg1 tunnel during the transfer (the ones chosen above carry it; the others only probes):"
sent | awk '{printf "  %-14s %-10s %12d\n", $1, $2, $3}'
on gatewan01-sg1 routingctl tunnels

say "a ping stream host-sg1 -> host-par1 (every 5 ms), and the tunnel the leaf hashed it to"
on host-sg1 ping -q -i 0.005 -W 1 -c 1400 172.16.2.10 > /tmp/gatewan-demo-stream &
stream=$!
sleep 1
transfer > /tmp/gatewan-demo-before
sleep 1
transfer > /tmp/gatewan-demo-after
# The busiest sg1 tunnel over that second carries the stream; its transit is the one to fail.
read -r gw tunnel _ < <(sent | sort -k3,3n | tail -1)
transit=$(on "$gw" routingctl tunnels | awk -v t="$tunnel" '$1 == t {split($4, a, "→"); print a[1]}')
transit=${transit:-lumen}
other=$([ "$transit" = lumen ] && echo cogent || echo lumen)
echo "the stream leaves sg1 through $gw/$tunnel, over $transit"

say "lab impair wan-$transit loss=100%: the $transit transit fails under the stream"
lab impair "wan-$transit" loss=100%
sleep 2
on "$gw" routingctl tunnels
say "gobgpd on fabric-sg1 two seconds later: only $other tunnels' Router's MACs"
on fabric-sg1 gobgp global rib -a evpn
bgpctl bgpctl-sg1 explain

wait $stream || true
say "the ping stream across the failure (the gatewans moved the traffic at once: the loss is the probes' detection time)"
grep -A1 "packets transmitted" /tmp/gatewan-demo-stream

say "restore $transit"
lab impair "wan-$transit" reset
echo "done$([ "${KEEP:-0}" = 1 ] && echo ': the lab is still up (lab down '"$TOPO"')')"
