// SPDX-License-Identifier: GPL-2.0
// Measurement prototype for ADR 0067, not part of gatewan: a tc (cls_bpf) fast path for
// tenant packets, loaded into a running two-dc lab by load.py. Two programs:
//   fabric_in  on the fabric interface's ingress: VXLAN from a leaf to one of our VTEP
//              addresses whose inner destination MAC is a tunnel's Router's MAC is
//              decapsulated here and redirected into that tunnel.
//   tunnel_in  on each tunnel's ingress: a packet from a source the tunnel may bring in,
//              to a prefix of this datacenter, is VXLAN-encapsulated here and redirected
//              out of the fabric interface.
// The decisions come from maps filled from what the gatewan programmed in the kernel
// (its tables, neighbours and FDB). With -DFIB_LOOKUP they come from bpf_fib_lookup on the
// gatewan's own tables instead (the slower variant ADR 0067 measured).
// Anything else takes the kernel path unchanged: TTL or hop limit 1, IP options and
// fragments, TCP SYN (the MSS clamp), a packet over the MTU (GSO ones included), an unknown
// MAC or VNI, a source the tunnel may not bring in (nftables counts and drops it), a
// destination local to the gatewan, IPv6 underlay.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif
#define AF_INET 2
#define AF_INET6 10

struct vxlanhdr { __be32 flags, vni; };
struct config {
    __u32 vni;          // host order
    __u32 port;         // host order
    __be32 vtep;        // our VXLAN source address (gwvx0's local)
    __u32 vxlan_ifindex;
    __u32 fabric_ifindex; // gwvx0's underlay device: the oif of its route lookups
    __u32 egress_table;   // FIB_LOOKUP: the table packets from the tunnels are routed in
};
#define DIRECT_TABLE ((1U << 0) | (1U << 3)) /* BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID */
#define SET_TABLE(f, t) (*(__u32 *)&(f).h_vlan_proto = (t))
struct mac_key { __u8 mac[6]; __u16 pad; };
struct lpm4 { __u32 prefixlen; __be32 addr; };
struct tunnel_mac { __u32 macvlan_ifindex; __u32 table; __u32 tunnel_ifindex; __u32 mtu; };
struct route_key { __u32 prefixlen; __u32 family; __u8 addr[16]; };
struct route { __u8 router_mac[6]; __u8 vxlan_mac[6]; __be32 vtep; __u32 mtu; };
struct underlay { __u32 ifindex; __u8 dmac[6]; __u8 smac[6]; };
struct src_key { __u32 prefixlen; __u32 ifindex; __u32 family; __u8 addr[16]; };

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct config); } fp_config SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 256); __type(key, struct lpm4); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_vteps SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096); __type(key, struct mac_key); __type(value, struct tunnel_mac); } fp_tunnel_macs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096); __type(key, struct mac_key); __type(value, __be32); } fp_router_macs SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 65536); __type(key, struct src_key); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_sources SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 65536); __type(key, struct route_key); __type(value, struct route); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_routes SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __type(key, struct route_key); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_local SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024); __type(key, __be32); __type(value, struct underlay); } fp_underlay SEC(".maps");
// Why tunnel_in left a packet to the kernel: 1 not forwardable here (TTL, SYN...), 2 source,
// 3 no route (local destinations: the probes) or too big, 4 a Router's MAC without a VTEP
// (FIB_LOOKUP), 5 no underlay next hop,
// 8 + n: bpf_fib_lookup returned n (FIB_LOOKUP).
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 16); __type(key, __u32); __type(value, __u64); } fp_passed SEC(".maps");
static __always_inline int passed(__u32 i) { __u64 *p = bpf_map_lookup_elem(&fp_passed, &i); if (p) *p += 1; return TC_ACT_OK; }
// 0,1: fabric -> tunnel packets, bytes; 2,3: tunnel -> fabric packets, bytes
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 4); __type(key, __u32); __type(value, __u64); } fp_counters SEC(".maps");

static __always_inline void count(__u32 i, __u64 bytes)
{
    __u64 *p = bpf_map_lookup_elem(&fp_counters, &i);
    if (p) *p += 1;
    i++;
    p = bpf_map_lookup_elem(&fp_counters, &i);
    if (p) *p += bytes;
}

// Decrements the TTL (with the checksum, RFC 1624) or the hop limit of the packet at
// `l3`; false when the header is not within the packet.
static __always_inline int hop_dec(void *l3, void *end, int family)
{
    if (family == AF_INET) {
        struct iphdr *ip = l3;
        if ((void *)(ip + 1) > end) return 0;
        __u32 c = ip->check;
        c += bpf_htons(0x0100);
        ip->check = (__u16)(c + (c >> 16));
        ip->ttl--;
        return 1;
    }
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > end) return 0;
    ip6->hop_limit--;
    return 1;
}

// The key of a packet's destination in fp_routes and fp_local.
static __always_inline struct route_key dst_key(struct bpf_fib_lookup *f, int family)
{
    struct route_key k = { .prefixlen = 32 + (family == AF_INET ? 32 : 128), .family = family };
    if (family == AF_INET) __builtin_memcpy(k.addr, &f->ipv4_dst, 4); else __builtin_memcpy(k.addr, f->ipv6_dst, 16);
    return k;
}

// Fills the lookup from the inner packet at `l3`; returns the address family or 0 when the
// packet must take the kernel path (TTL, options, fragments, TCP SYN).
static __always_inline int inner(void *l3, void *end, struct bpf_fib_lookup *f)
{
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end) return 0;
    if (ip->version == 4) {
        if (ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff))) return 0;
        if (ip->protocol == IPPROTO_TCP) {
            struct tcphdr *t = (void *)(ip + 1);
            if ((void *)(t + 1) > end || t->syn) return 0;
        }
        f->family = AF_INET;
        f->tos = ip->tos;
        f->l4_protocol = ip->protocol;
        f->tot_len = bpf_ntohs(ip->tot_len);
        f->ipv4_src = ip->saddr;
        f->ipv4_dst = ip->daddr;
        return AF_INET;
    }
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > end || ip6->version != 6 || ip6->hop_limit <= 1) return 0;
    if (ip6->nexthdr == IPPROTO_TCP) {
        struct tcphdr *t = (void *)(ip6 + 1);
        if ((void *)(t + 1) > end || t->syn) return 0;
    } else if (ip6->nexthdr != IPPROTO_UDP && ip6->nexthdr != IPPROTO_ICMPV6) {
        return 0;
    }
    f->family = AF_INET6;
    f->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
    f->l4_protocol = ip6->nexthdr;
    f->tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
    __builtin_memcpy(f->ipv6_src, &ip6->saddr, 16);
    __builtin_memcpy(f->ipv6_dst, &ip6->daddr, 16);
    return AF_INET6;
}

SEC("tc/fabric")
int fabric_in(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
    if (!cfg) return TC_ACT_OK;
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return TC_ACT_OK;
    if (ip->frag_off & bpf_htons(0x3fff)) return TC_ACT_OK;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || udp->dest != bpf_htons(cfg->port)) return TC_ACT_OK;
    struct vxlanhdr *vx = (void *)(udp + 1);
    if ((void *)(vx + 1) > end || vx->flags != bpf_htonl(0x08000000) || vx->vni != bpf_htonl(cfg->vni << 8)) return TC_ACT_OK;
    struct lpm4 vk = { .prefixlen = 32, .addr = ip->daddr };
    if (!bpf_map_lookup_elem(&fp_vteps, &vk)) return TC_ACT_OK;
    struct ethhdr *in = (void *)(vx + 1);
    if ((void *)(in + 1) > end) return TC_ACT_OK;
    struct mac_key mk = {};
    __builtin_memcpy(mk.mac, in->h_dest, 6);
    struct tunnel_mac *macvlan = bpf_map_lookup_elem(&fp_tunnel_macs, &mk);
    if (!macvlan) return TC_ACT_OK;
    struct bpf_fib_lookup f = {};
    int family = inner(in + 1, end, &f);
    if (!family || (family == AF_INET) != (in->h_proto == bpf_htons(ETH_P_IP))) return TC_ACT_OK;
#ifdef FIB_LOOKUP
    // The tunnel's table decides, as for a packet from the macvlan (tunnels have no link
    // layer: no neighbour to resolve). It does not see the local table, so a destination
    // local to the gatewan is left out below.
    f.ifindex = macvlan->macvlan_ifindex;
    SET_TABLE(f, macvlan->table);
    if (bpf_fib_lookup(skb, &f, sizeof(f), DIRECT_TABLE | (1U << 2) /* BPF_FIB_LOOKUP_SKIP_NEIGH */) != BPF_FIB_LKUP_RET_SUCCESS)
        return TC_ACT_OK;
#endif
    struct route_key lk = dst_key(&f, family);
    if (bpf_map_lookup_elem(&fp_local, &lk)) return TC_ACT_OK;
#ifndef FIB_LOOKUP
    if (!macvlan->tunnel_ifindex || f.tot_len > macvlan->mtu) return TC_ACT_OK;
    f.ifindex = macvlan->tunnel_ifindex;
#endif
    if (f.ifindex == cfg->vxlan_ifindex) return TC_ACT_OK;
    if (!hop_dec(in + 1, end, family)) return TC_ACT_OK;
    __u64 flags = family == AF_INET ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4 : BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
    // Outer IPv4, UDP, VXLAN and inner Ethernet go; the outer Ethernet header stays for
    // the redirect, which drops it on a device without a link layer.
    if (bpf_skb_adjust_room(skb, -(int)(sizeof(*ip) + sizeof(*udp) + sizeof(*vx) + sizeof(*in)), BPF_ADJ_ROOM_MAC, flags))
        return TC_ACT_OK;
    if (family == AF_INET6) {
        data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
        eth = data;
        if ((void *)(eth + 1) > end) return TC_ACT_SHOT;
        eth->h_proto = bpf_htons(ETH_P_IPV6);
    }
    count(0, skb->len);
    return bpf_redirect(f.ifindex, 0);
}

struct outer {
    struct ethhdr eth; struct iphdr ip; struct udphdr udp; struct vxlanhdr vx; struct ethhdr in;
} __attribute__((packed));

SEC("tc/tunnel")
int tunnel_in(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
    if (!cfg) return TC_ACT_OK;
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct bpf_fib_lookup f = {};
    int family = inner(data, end, &f);
    if (!family) return passed(1);
    // The source filter: what this tunnel may bring in. Anything else takes the kernel
    // path, where nftables drops and counts it.
    struct src_key sk = { .ifindex = skb->ifindex, .family = family };
    if (family == AF_INET) {
        sk.prefixlen = 64 + 32;
        __builtin_memcpy(sk.addr, &f.ipv4_src, 4);
    } else {
        sk.prefixlen = 64 + 128;
        __builtin_memcpy(sk.addr, f.ipv6_src, 16);
    }
    if (!bpf_map_lookup_elem(&fp_sources, &sk)) return passed(2);
    struct outer h = {};
    __u32 inner_len = skb->len;
    __u32 outer_len = inner_len + sizeof(h) - sizeof(h.eth);
#ifdef FIB_LOOKUP
    // The egress table and gwvx0's neighbours give the Router's MAC, the FDB its VTEP,
    // and the main table the underlay next hop, as for gwvx0's own packets.
    f.ifindex = skb->ifindex;
    SET_TABLE(f, cfg->egress_table);
    int rc = bpf_fib_lookup(skb, &f, sizeof(f), DIRECT_TABLE);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS) return passed(8 + (rc & 7));
    if (f.ifindex != cfg->vxlan_ifindex) return passed(3);
    struct mac_key mk = {};
    __builtin_memcpy(mk.mac, f.dmac, 6);
    __be32 *remote = bpf_map_lookup_elem(&fp_router_macs, &mk);
    if (!remote) return passed(4);
    __be32 vtep = *remote;
    __builtin_memcpy(h.in.h_dest, f.dmac, 6);
    __builtin_memcpy(h.in.h_source, f.smac, 6);
    struct bpf_fib_lookup ul = {};
    ul.family = AF_INET;
    ul.l4_protocol = IPPROTO_UDP;
    ul.tot_len = outer_len;
    ul.ipv4_src = cfg->vtep;
    ul.ipv4_dst = vtep;
    ul.ifindex = cfg->fabric_ifindex;
    SET_TABLE(ul, 254);
    if (bpf_fib_lookup(skb, &ul, sizeof(ul), BPF_FIB_LOOKUP_OUTPUT | DIRECT_TABLE) != BPF_FIB_LKUP_RET_SUCCESS) return passed(5);
    struct underlay under = { .ifindex = ul.ifindex };
    __builtin_memcpy(under.dmac, ul.dmac, 6);
    __builtin_memcpy(under.smac, ul.smac, 6);
    struct underlay *u = &under;
#else
    struct route_key rk = dst_key(&f, family);
    struct route *r = bpf_map_lookup_elem(&fp_routes, &rk);
    if (!r || f.tot_len > r->mtu) return passed(3);
    __be32 vtep = r->vtep;
    struct underlay *u = bpf_map_lookup_elem(&fp_underlay, &vtep);
    if (!u) return passed(5);
    __builtin_memcpy(h.in.h_dest, r->router_mac, 6);
    __builtin_memcpy(h.in.h_source, r->vxlan_mac, 6);
#endif
    h.in.h_proto = bpf_htons(family == AF_INET ? ETH_P_IP : ETH_P_IPV6);
    __u32 hash = bpf_get_hash_recalc(skb);
    data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
    if (!hop_dec(data, end, family)) return TC_ACT_OK;
    __builtin_memcpy(h.eth.h_dest, u->dmac, 6);
    __builtin_memcpy(h.eth.h_source, u->smac, 6);
    h.eth.h_proto = bpf_htons(ETH_P_IP);
    h.ip.version = 4;
    h.ip.ihl = 5;
    h.ip.ttl = 64;
    h.ip.protocol = IPPROTO_UDP;
    h.ip.tot_len = bpf_htons(outer_len);
    h.ip.frag_off = bpf_htons(0x4000);
    h.ip.saddr = cfg->vtep;
    h.ip.daddr = vtep;
    h.udp.source = bpf_htons(32768 + (hash & 0x7fff));
    h.udp.dest = bpf_htons(cfg->port);
    h.udp.len = bpf_htons(outer_len - sizeof(h.ip));
    h.vx.flags = bpf_htonl(0x08000000);
    h.vx.vni = bpf_htonl(cfg->vni << 8);
    __u16 *w = (__u16 *)((__u8 *)&h + sizeof(h.eth));
    __u32 s = 0;
#pragma unroll
    for (int i = 0; i < 10; i++) s += w[i];
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    h.ip.check = ~s;
    if (bpf_skb_change_head(skb, sizeof(h), 0)) return TC_ACT_SHOT;
    if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0)) return TC_ACT_SHOT;
    count(2, inner_len);
    return bpf_redirect(u->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
