#!/usr/bin/env bash
# The demo: two datacenters (sg1, par1) on one host with `lab` (lab/topologies/two-dc.clab.yml):
# per datacenter a fabric route reflector (gobgpd), an FRR EVPN leaf originating the tenant
# prefixes with a tenant host behind it, two gatewans on two IP transits (lumen, cogent)
# behind WAN emulators, routed by one default route each, and two bgpctls.
# It shows the tunnels and their measurements, the type-5 routes the fabric receives and
# why the controller chose them; then fails the lumen transit and shows the routes move.
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

say "lab up: 20 nodes; gatewans, bgpctls, gobgpd and FRR start by themselves"
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
bgpctl bgpctl-sg1 explain

say "the sg1 fabric's route reflector (gobgpd) holds par1's prefixes via the gatewans"
on fabric-sg1 gobgp global rib -a evpn

say "lab impair wan-lumen loss=100%: the lumen transit fails"
lab impair wan-lumen loss=100%
sleep 2
on gatewan01-sg1 routingctl tunnels
say "gobgpd on fabric-sg1 two seconds later: only cogent tunnels' Router's MACs"
on fabric-sg1 gobgp global rib -a evpn
bgpctl bgpctl-sg1 explain

say "restore lumen"
lab impair wan-lumen reset
echo "done$([ "${KEEP:-0}" = 1 ] && echo ': the lab is still up (lab down '"$TOPO"')')"
