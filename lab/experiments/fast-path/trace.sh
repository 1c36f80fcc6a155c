#!/bin/sh
# Per-hop times inside the namespaces, from kernel tracepoints (no packet capture, which
# would add its own work): 80 echoes host-sg1 -> host-par1, then the median time between
# consecutive events of the same packet (chains.py). Measurement prototype for ADR 0067.
here=$(dirname "$0")
(ip netns exec lab.two-dc.host-sg1 python3 "$here/echo.py" 172.16.2.10 80 1 > /dev/null &)
perf record -q -a -o /tmp/fastpath-trace.data -e net:net_dev_start_xmit -e net:netif_receive_skb \
  -e net:netif_rx -e net:napi_gro_receive_entry -- sleep 2 2>/dev/null
perf script --ns -i /tmp/fastpath-trace.data -F comm,tid,cpu,time,event,trace 2>/dev/null > /tmp/fastpath-trace.txt
python3 "$here/chains.py" /tmp/fastpath-trace.txt
