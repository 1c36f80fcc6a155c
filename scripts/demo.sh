#!/usr/bin/env bash
# The demo: four gatewans of two datacenters (sg1, par1) form the sealed gossip mesh in a
# private network namespace, each on two transits; routingctl shows the members; then one
# gatewan is killed and the others see it go down. Everything is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
cargo build --release --bins --locked -q
BIN=$PWD/target/release

NS=gatewan-demo-$$
DIR=$(mktemp -d /tmp/gatewan-demo.XXXXXX)
cleanup() {
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT

ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
"$BIN/gatewan" keygen > "$DIR/keyring"
chmod 600 "$DIR/keyring"

i=0
for dc in sg1 par1; do
  for n in 01 02; do
    i=$((i + 1))
    name="gatewan$n-$dc"
    cp "$DIR/keyring" "$DIR/$name.keyring"
    cat > "$DIR/$name.yaml" <<YAML
name: $name
datacenter: $dc
state_dir: $DIR/$name
mesh:
  bind: "0.0.0.0:$((7945 + i))"
  seeds: ["127.0.1.1:7946"]
  keyring: $DIR/$name.keyring
transits:
  - name: lumen
    addresses: [127.0.1.$i]
    capacity: 1Gbps
  - name: cogent
    addresses: [127.0.2.$i]
    capacity: 500Mbps
api:
  socket: $DIR/$name.sock
YAML
    "$BIN/gatewan" --check -c "$DIR/$name.yaml" >/dev/null
    ip netns exec "$NS" "$BIN/gatewan" -c "$DIR/$name.yaml" >"$DIR/$name.log" 2>&1 &
    disown
  done
done

SOCK=$DIR/gatewan01-sg1.sock
echo "waiting for the mesh to converge..."
for _ in $(seq 1 100); do
  n=$("$BIN/routingctl" --socket "$SOCK" -o json members 2>/dev/null | grep -c '"state": "alive"' || true)
  [ "$n" = 4 ] && break
  sleep 0.1
done
echo
echo "\$ routingctl members    # as gatewan01-sg1 sees the mesh"
"$BIN/routingctl" --socket "$SOCK" members
echo
echo "\$ routingctl keyring list"
"$BIN/routingctl" --socket "$SOCK" keyring list
echo
victim=$(ip netns pids "$NS" | tail -n 1)
echo "kill -9 of one gatewan (pid $victim); waiting until the others mark it down..."
kill -9 "$victim"
start=$(date +%s.%N)
for _ in $(seq 1 150); do
  "$BIN/routingctl" --socket "$SOCK" -o json members | grep -q '"state": "down"' && break
  sleep 0.1
done
awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "marked down after %.1f s\n\n", e - s }'
"$BIN/routingctl" --socket "$SOCK" members
