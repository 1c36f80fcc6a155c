#!/usr/bin/env python3
"""Measurement prototype for ADR 0067, not part of gatewan.

Compiles fastpath.c, loads it into a gatewan of a running lab and fills its maps from what
that gatewan programmed in the kernel (tables, neighbours, FDB, nftables source filter),
then attaches it to the fabric interface and every tunnel with tc. The maps are a snapshot:
run it again after a change (a failover, a new tunnel), or `off` first.

Usage: load.py LAB NODE on|off|counters [--fib]
  on        (re)load and attach; --fib builds the variant that asks bpf_fib_lookup
  off       detach and unpin
  counters  fast-path packets and bytes, and why tunnel_in left packets to the kernel

Needs clang, bpftool and bpffs at /run/gwbpf (mounted on first use).
"""
import ipaddress
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BPFFS = "/run/gwbpf"

lab, node, mode = sys.argv[1:4]
fib = "--fib" in sys.argv[4:]
ns = f"lab.{lab}.{node}"
# bpffs takes no dots in names.
pin = f"{BPFFS}/{lab}_{node}".replace("-", "_").replace(".", "_")


def sh(cmd, check=True):
    r = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True)
    if check and r.returncode:
        raise SystemExit(f"{node}: {cmd}: {r.stderr.strip()}")
    return r.stdout


def dump(name):
    out = subprocess.run(["bpftool", "map", "dump", "pinned", f"{pin}/maps/{name}"],
                         capture_output=True, text=True, check=True).stdout
    return [sum(v["value"] for v in e["values"]) for e in json.loads(out)]


if mode == "counters":
    print(f"{node}: fabric->tunnel packets, bytes, tunnel->fabric packets, bytes: {dump('fp_counters')}")
    print(f"{node}: tunnel_in passed to the kernel, by reason: {dump('fp_passed')}")
    sys.exit(0)

links = json.loads(sh("ip -d -j link show"))
by_name = {l["ifname"]: l for l in links}
gw = by_name["gwvx0"]
vx = gw["linkinfo"]["info_data"]
fabric_if = vx["link"]
tunnels = [l["ifname"] for l in links if l["ifname"].startswith("sdwan")]

sh(f"tc filter del dev {fabric_if} ingress pref 1 2>/dev/null; "
   + "; ".join(f"tc filter del dev {t} ingress pref 1 2>/dev/null" for t in tunnels) + "; true", False)
subprocess.run(["rm", "-rf", pin])
if mode == "off":
    sys.exit(0)

os.makedirs(BPFFS, exist_ok=True)
if subprocess.run(["mountpoint", "-q", BPFFS]).returncode:
    subprocess.run(["mount", "-t", "bpf", "bpf", BPFFS], check=True)
obj = os.path.join(tempfile.mkdtemp(), "fastpath.o")
subprocess.run(["clang", "-O2", "-g", "-Wall", "-Wno-address-of-packed-member", "-target", "bpf",
                "-I/usr/include/x86_64-linux-gnu", *(["-DFIB_LOOKUP"] if fib else []),
                "-c", os.path.join(HERE, "fastpath.c"), "-o", obj], check=True)
subprocess.run(["bpftool", "prog", "loadall", obj, pin, "type", "classifier", "pinmaps", f"{pin}/maps"],
               check=True, stderr=subprocess.DEVNULL)


def upd(m, key, val):
    hx = lambda b: [f"{x:02x}" for x in b]
    subprocess.run(["bpftool", "map", "update", "pinned", f"{pin}/maps/{m}",
                    "key", "hex", *hx(key), "value", "hex", *hx(val)], check=True)


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def family(n):
    return 2 if n.version == 4 else 10


def addr16(n):
    return n.network_address.packed.ljust(16, b"\0")


rules = json.loads(sh("ip -j rule show"))
table_of = {r["iif"]: int(r["table"]) for r in rules if "iif" in r and r.get("table", "").isdigit()}
egress = next(table_of[t] for t in table_of if t.startswith("sdwan"))
local = ipaddress.IPv4Address(vx["local"])
upd("fp_config", struct.pack("<I", 0),
    struct.pack("<II4sIII", vx["id"], vx.get("port", 4789), local.packed, gw["ifindex"],
                by_name[fabric_if]["ifindex"], egress))

# Our VTEP addresses: gwvx0's own and the per-tunnel pool (local routes on lo).
for r in json.loads(sh("ip -j route show table local type local dev lo")):
    n = ipaddress.ip_network(r["dst"], strict=False)
    if not n.network_address.is_loopback:
        upd("fp_vteps", struct.pack("<I", n.prefixlen) + n.network_address.packed, b"\1")
# Everything local to the gatewan stays on the kernel path.
for fam in ("-4", "-6"):
    for r in json.loads(sh(f"ip {fam} -j route show table local")):
        if r.get("type") == "local":
            n = ipaddress.ip_network(r["dst"], strict=False)
            upd("fp_local", struct.pack("<II", 32 + n.prefixlen, family(n)) + addr16(n), b"\1")
# Tunnel MAC -> its macvlan and table, and the tunnel that table sends to now.
for l in links:
    if l["ifname"].startswith("gwm"):
        t = table_of[l["ifname"]]
        dev = next((r["dev"] for r in json.loads(sh(f"ip -j route show table {t}"))
                    if r.get("type", "unicast") == "unicast" and r.get("dev", "").startswith("sdwan")), None)
        target = struct.pack("<II", by_name[dev]["ifindex"], by_name[dev]["mtu"]) if dev else bytes(8)
        upd("fp_tunnel_macs", mac(l["address"]) + b"\0\0", struct.pack("<II", l["ifindex"], t) + target)
# This datacenter's prefixes -> Router's MAC and VTEP (egress table, gwvx0's neighbours and FDB).
fdb = {f["mac"]: f["dst"] for f in json.loads(sh("bridge -j fdb show dev gwvx0"))
       if "dst" in f and ":" not in f["dst"]}
for m, dst in fdb.items():
    upd("fp_router_macs", mac(m) + b"\0\0", ipaddress.IPv4Address(dst).packed)
for fam in ("-4", "-6"):
    for r in json.loads(sh(f"ip {fam} -j route show table {egress}")):
        if r.get("dev") != "gwvx0" or "gateway" not in r:
            continue
        nb = json.loads(sh(f"ip -j neigh show {r['gateway']} dev gwvx0"))
        if not nb or nb[0].get("lladdr") not in fdb:
            continue
        n = ipaddress.ip_network(r["dst"], strict=False)
        upd("fp_routes", struct.pack("<II", 32 + n.prefixlen, family(n)) + addr16(n),
            mac(nb[0]["lladdr"]) + mac(gw["address"]) + ipaddress.IPv4Address(fdb[nb[0]["lladdr"]]).packed
            + struct.pack("<I", gw["mtu"]))
# The underlay next hop of each VTEP, as the kernel resolved it.
for vtep in set(fdb.values()):
    rt = json.loads(sh(f"ip -j route get {vtep}"))[0]
    nb = json.loads(sh(f"ip -j neigh show {rt.get('gateway', vtep)} dev {rt['dev']}"))
    if nb and "lladdr" in nb[0]:
        upd("fp_underlay", ipaddress.IPv4Address(vtep).packed,
            struct.pack("<I", by_name[rt["dev"]]["ifindex"]) + mac(nb[0]["lladdr"]) + mac(by_name[rt["dev"]]["address"]))
# The source filter, from the nftables chains the gatewan applied.
for t in tunnels:
    chain = sh(f"nft -j list chain inet gatewan from_{t}", False)
    for rule in (json.loads(chain)["nftables"] if chain else []):
        for expr in rule.get("rule", {}).get("expr", []):
            m = expr.get("match")
            if not m or m.get("op") != "!=" or "payload" not in m["left"]:
                continue
            right = m["right"]
            for p in right["set"] if isinstance(right, dict) and "set" in right else [right]:
                p = p if isinstance(p, str) else f"{p['prefix']['addr']}/{p['prefix']['len']}"
                n = ipaddress.ip_network(p, strict=False)
                upd("fp_sources", struct.pack("<III", 64 + n.prefixlen, by_name[t]["ifindex"], family(n)) + addr16(n), b"\1")

sh(f"tc qdisc add dev {fabric_if} clsact 2>/dev/null; "
   f"tc filter replace dev {fabric_if} ingress pref 1 handle 1 bpf da object-pinned {pin}/fabric_in")
for t in tunnels:
    sh(f"tc qdisc add dev {t} clsact 2>/dev/null; "
       f"tc filter replace dev {t} ingress pref 1 handle 1 bpf da object-pinned {pin}/tunnel_in")
print(f"{node}: fast path ({'bpf_fib_lookup' if fib else 'maps'}) on {fabric_if} and {len(tunnels)} tunnels")
