#!/usr/bin/env python3
"""echo.py ADDRESS COUNT SEED: COUNT ICMP echoes to ADDRESS from the current network
namespace, each after a gap drawn uniformly from 10 to 30 ms (as `lab bench dataplane`,
ADR 0060); prints the RTTs in ms of those answered within a second. Measurement prototype
for ADR 0067."""
import os
import random
import socket
import struct
import sys
import time

to, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sock.settimeout(1.0)
ident = os.getpid() & 0xFFFF


def checksum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


rtts, next_send = [], time.monotonic()
for seq in range(count):
    next_send += random.uniform(0.010, 0.030)
    time.sleep(max(0.0, next_send - time.monotonic()))
    payload = b"x" * 56
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
    sent = time.perf_counter_ns()
    sock.sendto(packet, (to, 0))
    while True:
        try:
            data, (source, _) = sock.recvfrom(1500)
        except socket.timeout:
            break
        ihl = (data[0] & 15) * 4
        if source == to and data[ihl] == 0 and struct.unpack("!HH", data[ihl + 4:ihl + 8]) == (ident, seq):
            rtts.append((time.perf_counter_ns() - sent) / 1e6)
            break
print(" ".join(f"{r:.4f}" for r in rtts))
