#!/bin/sh
# Puts a running two-dc lab into the conditions of `lab bench dataplane`'s RTT rounds
# (ADR 0054, 0060): cogent fails, so every flow takes lumen; the bare tunnel `wgbench`
# (wireguard-go, its own keys and port) joins gatewan01-sg1 and gatewan01-par1 over lumen;
# lumen is drained on both gatewan02s, so one tunnel carries the traffic both ways.
# Measurement prototype for ADR 0067. Run from lab/ with the release binaries on PATH.
set -e
lab impair wan-cogent loss=100%
sleep 5
for n in gatewan01-sg1 gatewan01-par1; do
  lab exec $n -- sh -c 'umask 077; wg genkey > /tmp/bench.key; wg pubkey < /tmp/bench.key' > /tmp/$n.pub
done
bare() { # node, inner address, peer node, peer's lumen address
  lab exec $1 -- sh -c "wireguard-go wgbench >/dev/null 2>&1 && wg set wgbench listen-port 51999 private-key /tmp/bench.key peer $(cat /tmp/$3.pub) allowed-ips 192.168.255.0/30 endpoint [$4]:51999 && ip addr add $2 dev wgbench && ip link set wgbench up"
}
bare gatewan01-sg1 192.168.255.1/30 gatewan01-par1 2001:db8:100:21::2
bare gatewan01-par1 192.168.255.2/30 gatewan01-sg1 2001:db8:100:11::2
for n in gatewan02-sg1 gatewan02-par1; do lab exec $n -- routingctl transits drain lumen; done
sleep 10
