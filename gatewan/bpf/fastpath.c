// SPDX-License-Identifier: GPL-2.0
// The data plane's fast path (ADR 0067): two tc programs, direct action, that carry the
// common tenant packet past the kernel's VXLAN device, macvlan, rules, tables and
// nftables, deciding exactly as those would from maps the gatewan writes
// (gatewan/src/dataplane/fastpath.rs computes the entries, the adapter writes them).
//
//   fabric_in  on the fabric interface's ingress: VXLAN to one of our VTEP addresses, with
//              our VNI and port, whose inner destination MAC is a tunnel's Router's MAC,
//              loses its outer headers and goes into the tunnel that tunnel's table sends
//              to (itself, or its sibling under local repair). As on the kernel path, the
//              tunnel's WireGuard allowed IPs decide what it carries.
//   tunnel_in  on each tunnel's ingress: a packet from a source the tunnel may bring in,
//              to a prefix of this datacenter that one VTEP announces, is encapsulated
//              for that VTEP and its Router's MAC and goes out to the underlay next hop
//              the kernel's FIB gives (bpf_fib_lookup, so the neighbour is always current).
//
// Anything else continues on the kernel path, untouched, which stays whole: TTL or hop
// limit 1, IPv4 options and fragments, IPv6 extension headers, TCP SYN (the MSS clamp),
// a packet over the MTU or a GSO one, an unknown MAC or VNI, a source the tunnel may not
// bring in (nftables counts and drops it), a destination local to the gatewan, a prefix
// with several VTEPs (ECMP) or a static gateway, an unresolved underlay neighbour. The
// programs never drop a packet they have not changed.
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

// The layouts below are mirrored by #[repr(C)] types in fastpath.rs; change both.
struct vxlanhdr { __be32 flags, vni; };
struct config {
    __u32 vni;            // host order
    __u32 port;           // host order
    __u32 vxlan_ifindex;  // gwvx0
    __u32 vxlan_mtu;      // the largest inner packet gwvx0 takes
    __u8 vxlan_mac[6];    // gwvx0's MAC: the inner source MAC toward the fabric
    __u16 pad;
    __be32 vtep;          // gwvx0's local address: the outer source
    __u32 fabric_ifindex; // gwvx0's underlay device, the oif of its route lookups
};
struct v4_key { __u32 prefixlen; __be32 addr; };
struct mac_key { __u8 mac[6]; __u16 pad; };
struct tunnel { __u32 ifindex; __u32 mtu; };
// scope: a tunnel's ifindex (fp_sources), 0 (fp_egress, fp_local)
struct net_key { __u32 prefixlen; __u32 scope; __u32 family; __u8 addr[16]; };
struct route { __u8 router_mac[6]; __u8 fast; __u8 pad; __be32 vtep; };
struct mac_stats { __u64 packets, bytes; };
// fits: the largest outer packet the FIB accepted for this hop (its MTU check).
struct next_hop { __u64 until; __u32 ifindex; __u32 fits; __u8 dmac[6]; __u8 smac[6]; };

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct config); } fp_config SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 1024); __type(key, struct v4_key); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_vteps SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16384); __type(key, struct mac_key); __type(value, struct tunnel); } fp_tunnels SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 262144); __type(key, struct net_key); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_sources SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 65536); __type(key, struct net_key); __type(value, struct route); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_egress SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_LPM_TRIE); __uint(max_entries, 4096); __type(key, struct net_key); __type(value, __u8); __uint(map_flags, BPF_F_NO_PREALLOC); } fp_local SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_HASH); __uint(max_entries, 16384); __type(key, struct mac_key); __type(value, struct mac_stats); } fp_mac_stats SEC(".maps");
// The underlay next hop of each VTEP, as bpf_fib_lookup last gave it, for NEXT_HOP_NS: a
// FIB lookup costs more than all the rest of tunnel_in. The kernel's own neighbour
// entries are used for seconds unconfirmed; this adds at most NEXT_HOP_NS to how long an
// underlay route change takes to reach the fast path.
#define NEXT_HOP_NS 100000000ULL
struct { __uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH); __uint(max_entries, 4096); __type(key, __be32); __type(value, struct next_hop); } fp_next_hops SEC(".maps");

// Counters, by index; mirrored by fastpath::Counter.
enum {
    TO_TUNNEL_PACKETS, TO_TUNNEL_BYTES, TO_FABRIC_PACKETS, TO_FABRIC_BYTES,
    // Packets left to the kernel path, by reason.
    PASS_NOT_FORWARDABLE,  // TTL 1, options, fragment, extension header, SYN, malformed
    PASS_TOO_BIG,          // over the MTU, or GSO
    PASS_LOCAL,            // to the gatewan itself
    PASS_UNKNOWN_MAC,      // no tunnel has this Router's MAC
    PASS_SOURCE,           // a source the tunnel may not bring in
    PASS_NO_FAST_ROUTE,    // no route, ECMP or a static gateway
    PASS_UNDERLAY,         // the FIB has no resolved next hop toward the VTEP
    PASS_ERROR,            // a helper failed before anything was changed
    COUNTERS,
};
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, COUNTERS); __type(key, __u32); __type(value, __u64); } fp_counters SEC(".maps");

static __always_inline void add(__u32 i, __u64 n)
{
    __u64 *p = bpf_map_lookup_elem(&fp_counters, &i);
    if (p) *p += n;
}

static __always_inline int pass(__u32 reason)
{
    add(reason, 1);
    return TC_ACT_OK;
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

struct inner_ip { int family; __u32 tot_len; __u8 src[16]; __u8 dst[16]; };

// An IPv4 header (without options, within the packet) whose checksum holds and whose
// total length is within the `len` bytes that arrived.
static __always_inline int ip_header_sound(struct iphdr *ip, __u32 len)
{
    __u16 *w = (__u16 *)ip;
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 10; i++) sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    __u32 tot = bpf_ntohs(ip->tot_len);
    return sum == 0xffff && tot >= sizeof(*ip) && tot <= len;
}

// Reads the tenant packet at `l3`, of which `len` bytes arrived; returns its family, or 0
// when it is not one the fast path forwards (TTL, options, fragments, extension headers,
// TCP SYN), not a sound one (a length beyond what arrived, a bad IPv4 header checksum),
// or not a unicast one the kernel would route (multicast, broadcast, loopback, "this
// network", IPv6 link-local): the kernel path answers, drops and counts those.
static __always_inline int inner(void *l3, void *end, __u32 len, struct inner_ip *p)
{
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end) return 0;
    if (ip->version == 4) {
        if (ip->ihl != 5 || ip->ttl <= 1 || (ip->frag_off & bpf_htons(0x3fff))) return 0;
        if (!ip_header_sound(ip, len)) return 0;
        __u8 first = ((__u8 *)&ip->daddr)[0], src_first = ((__u8 *)&ip->saddr)[0];
        if (first >= 224 || first == 127 || first == 0 || src_first >= 224 || src_first == 127 || src_first == 0)
            return 0;
        if (ip->protocol == IPPROTO_TCP) {
            struct tcphdr *t = (void *)(ip + 1);
            if ((void *)(t + 1) > end || t->syn) return 0;
        }
        p->family = AF_INET;
        p->tot_len = bpf_ntohs(ip->tot_len);
        __builtin_memcpy(p->src, &ip->saddr, 4);
        __builtin_memcpy(p->dst, &ip->daddr, 4);
        return AF_INET;
    }
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > end || ip6->version != 6 || ip6->hop_limit <= 1) return 0;
    if (bpf_ntohs(ip6->payload_len) + sizeof(*ip6) > len) return 0;
    // Multicast, link-local (fe80::/10), loopback and unspecified (::/127) destinations.
    __u8 d0 = ip6->daddr.in6_u.u6_addr8[0], d1 = ip6->daddr.in6_u.u6_addr8[1];
    if (d0 == 0xff || (d0 == 0xfe && (d1 & 0xc0) == 0x80)) return 0;
    if (!ip6->daddr.in6_u.u6_addr32[0] && !ip6->daddr.in6_u.u6_addr32[1] &&
        !ip6->daddr.in6_u.u6_addr32[2] && !(ip6->daddr.in6_u.u6_addr32[3] & bpf_htonl(0xfffffffe)))
        return 0;
    if (ip6->saddr.in6_u.u6_addr8[0] == 0xff) return 0;
    if (ip6->nexthdr == IPPROTO_TCP) {
        struct tcphdr *t = (void *)(ip6 + 1);
        if ((void *)(t + 1) > end || t->syn) return 0;
    } else if (ip6->nexthdr != IPPROTO_UDP && ip6->nexthdr != IPPROTO_ICMPV6) {
        return 0;
    }
    p->family = AF_INET6;
    p->tot_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
    __builtin_memcpy(p->src, &ip6->saddr, 16);
    __builtin_memcpy(p->dst, &ip6->daddr, 16);
    return AF_INET6;
}

static __always_inline struct net_key net_key(__u32 scope, struct inner_ip *p, const __u8 *addr)
{
    struct net_key k = { .scope = scope, .family = p->family };
    k.prefixlen = 64 + (p->family == AF_INET ? 32 : 128);
    __builtin_memcpy(k.addr, addr, 16);
    return k;
}

static __always_inline int is_local(struct inner_ip *p)
{
    struct net_key k = net_key(0, p, p->dst);
    return bpf_map_lookup_elem(&fp_local, &k) != 0;
}

SEC("classifier")
int fabric_in(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
    if (!cfg || !cfg->vxlan_ifindex) return TC_ACT_OK;
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP)) return TC_ACT_OK;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP) return TC_ACT_OK;
    if (ip->frag_off & bpf_htons(0x3fff)) return TC_ACT_OK;
    struct udphdr *udp = (void *)(ip + 1);
    if ((void *)(udp + 1) > end || udp->dest != bpf_htons(cfg->port)) return TC_ACT_OK;
    struct vxlanhdr *vx = (void *)(udp + 1);
    if ((void *)(vx + 1) > end || vx->flags != bpf_htonl(0x08000000) || vx->vni != bpf_htonl(cfg->vni << 8))
        return TC_ACT_OK;
    struct v4_key vk = { .prefixlen = 32, .addr = ip->daddr };
    if (!bpf_map_lookup_elem(&fp_vteps, &vk)) return TC_ACT_OK;
    // From here on the packet is tenant traffic for this gatewan. Its outer IPv4 header
    // must be sound as the kernel checks it (checksum, length). The outer UDP checksum is
    // not verified: RFC 7348 lets the decapsulating VTEP skip it (the kernel path does
    // verify it; Linux leaves send one, most hardware leaves send 0), and the tenant
    // packet keeps its own checksums end to end.
    if (!ip_header_sound(ip, skb->len - sizeof(*eth))) return pass(PASS_NOT_FORWARDABLE);
    struct ethhdr *in = (void *)(vx + 1);
    if ((void *)(in + 1) > end) return pass(PASS_NOT_FORWARDABLE);
    struct mac_key mk = {};
    __builtin_memcpy(mk.mac, in->h_dest, 6);
    struct tunnel *t = bpf_map_lookup_elem(&fp_tunnels, &mk);
    if (!t) return pass(PASS_UNKNOWN_MAC);
    // What arrived after the outer headers and the inner Ethernet header.
    __u32 outer = sizeof(*eth) + sizeof(*ip) + sizeof(*udp) + sizeof(*vx) + sizeof(*in);
    __u32 len = skb->len > outer ? skb->len - outer : 0;
    struct inner_ip p = {};
    int family = inner(in + 1, end, len, &p);
    if (!family || (family == AF_INET) != (in->h_proto == bpf_htons(ETH_P_IP))) return pass(PASS_NOT_FORWARDABLE);
    if (skb->gso_segs > 1 || p.tot_len > t->mtu) return pass(PASS_TOO_BIG);
    if (is_local(&p)) return pass(PASS_LOCAL);
    if (!hop_dec(in + 1, end, family)) return pass(PASS_ERROR);
    __u32 ifindex = t->ifindex;
    __u64 flags = family == AF_INET ? BPF_F_ADJ_ROOM_DECAP_L3_IPV4 : BPF_F_ADJ_ROOM_DECAP_L3_IPV6;
    // Outer IPv4, UDP, VXLAN and inner Ethernet go; the outer Ethernet header stays for
    // the redirect, which drops it on a device without a link layer (the tunnel).
    if (bpf_skb_adjust_room(skb, -(int)(sizeof(*ip) + sizeof(*udp) + sizeof(*vx) + sizeof(*in)), BPF_ADJ_ROOM_MAC, flags))
        return TC_ACT_SHOT;  // the TTL is already changed: the kernel must not forward it
    data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
    eth = data;
    if ((void *)(eth + 1) > end) return TC_ACT_SHOT;
    eth->h_proto = bpf_htons(family == AF_INET ? ETH_P_IP : ETH_P_IPV6);
    add(TO_TUNNEL_PACKETS, 1);
    add(TO_TUNNEL_BYTES, p.tot_len);
    struct mac_stats *s = bpf_map_lookup_elem(&fp_mac_stats, &mk);
    if (!s) {
        struct mac_stats none = {};
        bpf_map_update_elem(&fp_mac_stats, &mk, &none, BPF_NOEXIST);
        s = bpf_map_lookup_elem(&fp_mac_stats, &mk);
    }
    if (s) {
        s->packets++;
        s->bytes += p.tot_len;
    }
    return bpf_redirect(ifindex, 0);
}

struct outer {
    struct ethhdr eth; struct iphdr ip; struct udphdr udp; struct vxlanhdr vx; struct ethhdr in;
} __attribute__((packed));

SEC("classifier")
int tunnel_in(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct config *cfg = bpf_map_lookup_elem(&fp_config, &zero);
    if (!cfg || !cfg->vxlan_ifindex || !cfg->fabric_ifindex) return TC_ACT_OK;
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct inner_ip p = {};
    int family = inner(data, end, skb->len, &p);
    if (!family) return pass(PASS_NOT_FORWARDABLE);
    if (skb->gso_segs > 1 || p.tot_len > cfg->vxlan_mtu || p.tot_len != skb->len) return pass(PASS_TOO_BIG);
    // Local first: the probes, most of a tunnel's packets when it is idle, stop here.
    if (is_local(&p)) return pass(PASS_LOCAL);
    struct net_key sk = net_key(skb->ifindex, &p, p.src);
    if (!bpf_map_lookup_elem(&fp_sources, &sk)) return pass(PASS_SOURCE);
    struct net_key rk = net_key(0, &p, p.dst);
    struct route *r = bpf_map_lookup_elem(&fp_egress, &rk);
    if (!r || !r->fast) return pass(PASS_NO_FAST_ROUTE);
    struct outer h = {};
    __u32 outer_len = p.tot_len + sizeof(h) - sizeof(h.eth);
    // The underlay next hop as the VXLAN device's own packets would find it.
    __be32 vtep = r->vtep;
    __u64 now = bpf_ktime_get_coarse_ns();
    struct next_hop *nh = bpf_map_lookup_elem(&fp_next_hops, &vtep);
    struct next_hop fresh = {};
    if (!nh || nh->until < now || outer_len > nh->fits) {
        struct bpf_fib_lookup ul = {};
        ul.family = AF_INET;
        ul.l4_protocol = IPPROTO_UDP;
        ul.tot_len = outer_len;
        ul.ipv4_src = cfg->vtep;
        ul.ipv4_dst = vtep;
        ul.ifindex = cfg->fabric_ifindex;
        if (bpf_fib_lookup(skb, &ul, sizeof(ul), BPF_FIB_LOOKUP_OUTPUT) != BPF_FIB_LKUP_RET_SUCCESS)
            return pass(PASS_UNDERLAY);
        fresh.until = now + NEXT_HOP_NS;
        fresh.ifindex = ul.ifindex;
        fresh.fits = outer_len;
        if (nh && nh->until >= now && nh->ifindex == ul.ifindex && nh->fits > outer_len)
            fresh.fits = nh->fits;
        __builtin_memcpy(fresh.dmac, ul.dmac, 6);
        __builtin_memcpy(fresh.smac, ul.smac, 6);
        bpf_map_update_elem(&fp_next_hops, &vtep, &fresh, BPF_ANY);
        nh = &fresh;
    }
    __builtin_memcpy(h.in.h_dest, r->router_mac, 6);
    __builtin_memcpy(h.in.h_source, cfg->vxlan_mac, 6);
    h.in.h_proto = bpf_htons(family == AF_INET ? ETH_P_IP : ETH_P_IPV6);
    __builtin_memcpy(h.eth.h_dest, nh->dmac, 6);
    __builtin_memcpy(h.eth.h_source, nh->smac, 6);
    h.eth.h_proto = bpf_htons(ETH_P_IP);
    h.ip.version = 4;
    h.ip.ihl = 5;
    h.ip.ttl = 64;
    h.ip.protocol = IPPROTO_UDP;
    h.ip.tot_len = bpf_htons(outer_len);
    // DF, as RFC 7348 asks of VTEPs (they do not fragment VXLAN), so the ID may be 0
    // (RFC 6864); the FIB's MTU check above keeps the outer packet within the first hop.
    h.ip.frag_off = bpf_htons(0x4000);
    h.ip.saddr = cfg->vtep;
    h.ip.daddr = vtep;
    // The source port spreads flows over the fabric's ECMP, as the kernel's VXLAN does.
    __u32 hash = bpf_get_hash_recalc(skb);
    h.udp.source = bpf_htons(32768 + (hash & 0x7fff));
    h.udp.dest = bpf_htons(cfg->port);
    h.udp.len = bpf_htons(outer_len - sizeof(h.ip));
    h.vx.flags = bpf_htonl(0x08000000);
    h.vx.vni = bpf_htonl(cfg->vni << 8);
    __u16 *w = (__u16 *)((__u8 *)&h + sizeof(h.eth));
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < 10; i++) sum += w[i];
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    h.ip.check = ~sum;
    data = (void *)(long)skb->data; end = (void *)(long)skb->data_end;
    if (!hop_dec(data, end, family)) return pass(PASS_ERROR);
    if (bpf_skb_change_head(skb, sizeof(h), 0)) return TC_ACT_SHOT;  // TTL already changed
    if (bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0)) return TC_ACT_SHOT;
    add(TO_FABRIC_PACKETS, 1);
    add(TO_FABRIC_BYTES, p.tot_len);
    return bpf_redirect(nh->ifindex, 0);
}

char _license[] SEC("license") = "GPL";
