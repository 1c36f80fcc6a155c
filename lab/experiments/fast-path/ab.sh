#!/bin/bash
# ab.sh ROUNDS 'COMMAND A' 'COMMAND B': alternates rounds under A and B. Each round echoes
# 100 times through the whole path (host-sg1 -> host-par1) and 100 times through the bare
# tunnel (gatewan01-sg1 -> wgbench), each at its own random times (ADR 0060), and prints
# the difference of the medians; then the median of each side's rounds.
# Measurement prototype for ADR 0067.
here=$(dirname "$0"); R=$1; A=$2; B=$3; out=$(mktemp)
for r in $(seq "$R"); do
  for side in A B; do
    if [ $side = A ]; then eval "$A"; else eval "$B"; fi
    ip netns exec lab.two-dc.host-sg1 python3 "$here/echo.py" 172.16.2.10 100 $RANDOM > "$out.full" &
    ip netns exec lab.two-dc.gatewan01-sg1 python3 "$here/echo.py" 192.168.255.2 100 $RANDOM > "$out.bare" &
    wait
    python3 - "$side" "$out.full" "$out.bare" <<'P' | tee -a "$out"
import statistics as s, sys
f, b = ([float(x) for x in open(p).read().split()] for p in sys.argv[2:4])
print(f"{sys.argv[1]} whole {s.median(f):.3f} bare {s.median(b):.3f} added {s.median(f) - s.median(b):.3f} ms")
P
  done
done
python3 - "$out" <<'P'
import statistics as s, sys
d = {}
for l in open(sys.argv[1]):
    p = l.split(); d.setdefault(p[0], []).append(float(p[6]))
for k, v in sorted(d.items()):
    print(f"{k}: added RTT, median of {len(v)} rounds {s.median(v):.3f} ms (rounds {min(v):.3f}-{max(v):.3f})")
P
rm -f "$out" "$out.full" "$out.bare"
