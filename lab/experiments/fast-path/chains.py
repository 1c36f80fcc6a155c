#!/usr/bin/env python3
"""Per-hop times from `perf script --ns` output of the net tracepoints (trace.sh).

Events of one packet (same sk_buff, same thread, less than 200 µs apart) form a chain;
for every pair of consecutive events (`rx:DEV` = netif_receive_skb, `tx:DEV` =
net_dev_start_xmit, `neti:DEV` = netif_rx, `napi:DEV` = GRO entry) it prints how many
times the pair was seen and the median time between them, in µs. Only chains through a
gatewan or leaf device (sdwan*, gwvx0, vx*) are kept. Measurement prototype for ADR 0067.
"""
import collections
import re
import statistics
import sys

LINE = re.compile(r"\s*(\S+)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)")
KIND = {"netif_receive_skb": "rx", "net_dev_start_xmit": "tx", "netif_rx": "neti",
        "napi_gro_receive_entry": "napi"}

chains, open_chain = [], {}
for line in open(sys.argv[1]):
    m = LINE.match(line)
    skb = m and re.search(r"skbaddr=(\S+)", m.group(6))
    if not skb:
        continue
    dev = re.search(r"dev=(\S+)", m.group(6))
    t, tid, event = float(m.group(4)) * 1e6, m.group(2), m.group(5).split(":")[1]
    hop = f"{KIND.get(event, event)}:{dev.group(1) if dev else ''}"
    chain = open_chain.get((tid, skb.group(1)))
    if chain and t - chain[-1][0] < 200:
        chain.append((t, hop))
    else:
        chain = [(t, hop)]
        open_chain[(tid, skb.group(1))] = chain
        chains.append(chain)

pairs = collections.defaultdict(list)
for chain in chains:
    if not any(d in hop for _, hop in chain for d in ("sdwan", "gwvx0", "vx1")):
        continue
    for (t0, a), (t1, b) in zip(chain, chain[1:]):
        pairs[f"{a} -> {b}"].append(t1 - t0)
for pair, times in sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:40]:
    print(f"{len(times):5d}  median {statistics.median(times):6.2f} µs  {pair}")
