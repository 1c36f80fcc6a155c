//! The host side of the tunnels: WireGuard interfaces through wireguard-control (kernel or
//! wireguard-go), links and addresses through rtnetlink. Observes what is there and
//! applies the reconciler's steps; decides nothing.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{Handle, LinkUnspec};
use wireguard_control::{
    AllowedIp, Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder,
};

use super::reconcile::{SeenTunnel, Step, WantedTunnel};
use crate::netlink::{io_err, netlink_err};

/// Which WireGuard implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireguardMode {
    Kernel,
    Userspace,
    /// Kernel when the module is there, else wireguard-go.
    Auto,
}

impl WireguardMode {
    pub fn backend(self) -> Backend {
        match self {
            WireguardMode::Kernel => Backend::Kernel,
            WireguardMode::Userspace => Backend::Userspace,
            WireguardMode::Auto => {
                if std::path::Path::new("/sys/module/wireguard").exists() {
                    Backend::Kernel
                } else {
                    Backend::Userspace
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

pub struct System {
    handle: Handle,
    backend: Backend,
    private_key: Key,
    public_key: Key,
    prefix: String,
    /// The host's online CPUs but the isolated ones, as an RPS mask ([`receive_mask`]);
    /// None with fewer than two (nothing to spread), or when the operator keeps the masks
    /// (`tunnels.spread_receive: false`).
    receive_mask: Option<String>,
}

pub use super::reconcile::UNICAST;

/// [`UNICAST`] as WireGuard takes it.
fn unicast_allowed_ips() -> Vec<AllowedIp> {
    UNICAST
        .iter()
        .map(|&(address, cidr)| AllowedIp { address, cidr })
        .collect()
}

/// Keeps the kernel from sending on a tunnel by itself. A link-local address makes it send
/// a router solicitation the moment the link comes up; both ends of a new tunnel come up
/// together, so both start a WireGuard handshake at once, the handshakes cross and fail,
/// and wireguard-go's retries stay in step every 5 s (seen in the lab: tunnels taking 10 to
/// 30 s to come up). With it and [`UNICAST`], only the prober's chosen initiator opens the
/// tunnel. Best effort: a host without IPv6 has nothing to quiet.
fn quiet_ipv6(interface: &str) {
    for (key, value) in [
        ("addr_gen_mode", "1"),
        ("accept_ra", "0"),
        ("router_solicitations", "0"),
    ] {
        let path = format!("/proc/sys/net/ipv6/conf/{interface}/{key}");
        if let Err(e) = std::fs::write(&path, value) {
            tracing::debug!(path, error = %e, "cannot set IPv6 sysctl on tunnel interface");
        }
    }
}

/// The RPS mask (`rps_cpus`) of the CPUs in `online` but not in `isolated` (the kernel's
/// lists, e.g. `0-3,8`; isolated CPUs are kept free of kernel work), as the kernel writes
/// masks: 32-bit hex groups, most significant first. None for fewer than two CPUs or a
/// list that does not parse.
///
/// Why tunnels spread what they receive: WireGuard hands decrypted packets to the kernel
/// from one context per tunnel (wireguard-go's TUN writer, the kernel's per-peer NAPI), and
/// forwarding them toward the fabric (routing, VXLAN, the fabric link) then runs there,
/// for every flow the tunnel carries. RPS queues them to the CPU of their flow's hash
/// instead (ADR 0063).
pub fn receive_mask(online: &str, isolated: &str) -> Option<String> {
    let isolated = cpu_list(isolated)?;
    let cpus: BTreeSet<u32> = cpu_list(online)?.difference(&isolated).copied().collect();
    if cpus.len() < 2 {
        return None;
    }
    let mut words = vec![0u32; cpus.last().map_or(0, |&c| c / 32 + 1) as usize];
    for c in cpus {
        words[(c / 32) as usize] |= 1 << (c % 32);
    }
    // The most significant group unpadded, the others 8 digits.
    let mut groups = words.iter().rev().map(|w| format!("{w:08x}"));
    let first = groups.next().map(|g| g.trim_start_matches('0').to_string());
    Some(
        first
            .into_iter()
            .chain(groups)
            .collect::<Vec<_>>()
            .join(","),
    )
}

/// A kernel CPU list (`0-3,8`; empty for none).
fn cpu_list(list: &str) -> Option<BTreeSet<u32>> {
    let mut cpus = BTreeSet::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?),
            None => {
                let c = part.parse::<u32>().ok()?;
                (c, c)
            }
        };
        // A host has at most a few thousand CPUs; anything else is not a CPU list.
        if lo > hi || hi >= 8192 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    Some(cpus)
}

/// Whether two masks as the kernel reads and writes them name the same CPUs (it pads with
/// zero groups up to its own CPU count).
fn same_mask(a: &str, b: &str) -> bool {
    fn words(m: &str) -> Option<Vec<u32>> {
        let mut w: Vec<u32> = m
            .trim()
            .split(',')
            .map(|g| u32::from_str_radix(g, 16).ok())
            .collect::<Option<_>>()?;
        let zeros = w.iter().take_while(|&&x| x == 0).count();
        w.drain(..zeros);
        Some(w)
    }
    matches!((words(a), words(b)), (Some(x), Some(y)) if x == y)
}

impl System {
    /// Opens a netlink connection in the caller's network namespace.
    pub fn new(mode: WireguardMode, private_key: [u8; 32], prefix: &str) -> io::Result<System> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        let private_key = Key(private_key);
        Ok(System {
            handle,
            backend: mode.backend(),
            public_key: private_key.get_public(),
            private_key,
            prefix: prefix.to_string(),
            receive_mask: {
                let list =
                    |f: &str| std::fs::read_to_string(format!("/sys/devices/system/cpu/{f}"));
                // No `isolated` file: a kernel without CPU isolation, so none is isolated.
                let isolated = list("isolated").unwrap_or_default();
                list("online")
                    .ok()
                    .and_then(|online| receive_mask(&online, &isolated))
            },
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Takes a new private key; the next reconcile reconfigures every tunnel with it.
    pub fn set_private_key(&mut self, key: [u8; 32]) {
        self.private_key = Key(key);
        self.public_key = self.private_key.get_public();
    }

    /// Leaves every tunnel's RPS mask as it is (`tunnels.spread_receive: false`): to the
    /// operator's own tuning, or the kernel's default of no spreading.
    pub fn leave_receive_cpus(&mut self) {
        self.receive_mask = None;
    }

    /// Our tunnel interfaces: the prefix followed by the tunnel index.
    fn is_ours(&self, name: &str) -> bool {
        name.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    }

    /// Every link: (name, index, up).
    pub async fn links(&self) -> io::Result<Vec<(String, u32, bool)>> {
        Ok(self
            .link_stats()
            .await?
            .into_iter()
            .map(|l| (l.name, l.index, l.up))
            .collect())
    }

    /// Every link with its byte counters (one netlink dump).
    pub async fn link_stats(&self) -> io::Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(io_err)? {
            let mut info = LinkInfo {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
                ..Default::default()
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::IfName(n) => info.name = n.clone(),
                    LinkAttribute::Stats64(s) => {
                        info.rx_bytes = s.rx_bytes;
                        info.tx_bytes = s.tx_bytes;
                    }
                    _ => {}
                }
            }
            out.push(info);
        }
        Ok(out)
    }

    pub async fn link_index(&self, name: &str) -> io::Result<Option<u32>> {
        crate::netlink::link_index(&self.handle, name).await
    }

    async fn addresses(&self, index: u32) -> io::Result<BTreeSet<IpNet>> {
        let mut out = BTreeSet::new();
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(a) = addrs.try_next().await.map_err(io_err)? {
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNet::new(*ip, a.header.prefix_len)
                    // The kernel adds an IPv6 link-local address to every link: not ours.
                    && !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
                {
                    out.insert(net);
                }
            }
        }
        Ok(out)
    }

    /// The tunnel interfaces on the host, as the reconciler compares them.
    pub async fn observe(&self) -> io::Result<Vec<SeenTunnel>> {
        let mut out = Vec::new();
        for (name, index, up) in self.links().await? {
            if !self.is_ours(&name) {
                continue;
            }
            let addresses = self.addresses(index).await?;
            let backend = self.backend;
            let iface: InterfaceName = name.parse().map_err(io_err)?;
            // wireguard-control is blocking (netlink or the UAPI socket).
            let dev = tokio::task::spawn_blocking(move || Device::get(&iface, backend))
                .await
                .map_err(io_err)?;
            let spread = self.spread(&name, index);
            let mut seen = SeenTunnel {
                interface: name,
                addresses,
                up,
                spread,
                ..Default::default()
            };
            if let Ok(dev) = dev {
                seen.listen_port = dev.listen_port;
                seen.fwmark = dev.fwmark;
                seen.our_key = dev.public_key.as_ref() == Some(&self.public_key);
                seen.peers = dev
                    .peers
                    .iter()
                    .map(|p| (p.config.public_key.0, p.config.endpoint))
                    .collect();
                seen.peer_allowed_ips = dev
                    .peers
                    .first()
                    .map(|p| {
                        p.config
                            .allowed_ips
                            .iter()
                            .filter_map(|a| IpNet::new(a.address, a.cidr).ok())
                            .map(|n| n.trunc())
                            .collect()
                    })
                    .unwrap_or_default();
                // WireGuard dates handshakes by the wall clock.
                seen.live_session = dev.peers.first().is_some_and(|p| {
                    p.stats
                        .last_handshake_time
                        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age < super::reconcile::SESSION_FRESH)
                });
            }
            out.push(seen);
        }
        Ok(out)
    }

    /// Whether the interface's receive processing is spread over our CPUs, or cannot be:
    /// on a single CPU, when the operator keeps the masks, without RPS in the kernel, or
    /// when /sys shows another network
    /// namespace (it is the one it was mounted in), where a same-named interface is not
    /// ours to touch.
    fn spread(&self, interface: &str, index: u32) -> bool {
        let Some(mask) = &self.receive_mask else {
            return true;
        };
        let dir = format!("/sys/class/net/{interface}");
        let ours = std::fs::read_to_string(format!("{dir}/ifindex"))
            .is_ok_and(|i| i.trim().parse() == Ok(index));
        if !ours {
            return true;
        }
        match std::fs::read_to_string(format!("{dir}/queues/rx-0/rps_cpus")) {
            Ok(now) => same_mask(&now, mask),
            Err(_) => true,
        }
    }

    /// WireGuard counters of a tunnel's peer: (rx bytes, tx bytes, last handshake).
    pub fn peer_stats(&self, interface: &str) -> Option<(u64, u64, Option<std::time::SystemTime>)> {
        let iface: InterfaceName = interface.parse().ok()?;
        let dev = Device::get(&iface, self.backend).ok()?;
        let p = dev.peers.first()?;
        Some((
            p.stats.rx_bytes,
            p.stats.tx_bytes,
            p.stats.last_handshake_time,
        ))
    }

    pub async fn apply(&self, step: &Step) -> io::Result<()> {
        match step {
            Step::Configure(w) => self.configure(w).await,
            Step::AddAddress { interface, address } => {
                let index = self.require(interface).await?;
                self.handle
                    .address()
                    .add(index, address.addr(), address.prefix_len())
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_err)
            }
            Step::RemoveAddress { interface, address } => {
                let index = self.require(interface).await?;
                let mut addrs = self
                    .handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute();
                while let Some(a) = addrs.try_next().await.map_err(netlink_err)? {
                    let matches = a.header.prefix_len == address.prefix_len()
                        && a.attributes.iter().any(
                            |x| matches!(x, AddressAttribute::Address(ip) if *ip == address.addr()),
                        );
                    if matches {
                        self.handle
                            .address()
                            .del(a)
                            .execute()
                            .await
                            .map_err(netlink_err)?;
                    }
                }
                Ok(())
            }
            Step::SetAllowedIps {
                interface,
                peer_public_key,
            } => {
                let iface: InterfaceName = interface.parse().map_err(io_err)?;
                // The peer is updated in place, not replaced: its session (and the traffic
                // it carries) goes on.
                let update = DeviceUpdate::new().add_peer(
                    PeerConfigBuilder::new(&Key(*peer_public_key))
                        .replace_allowed_ips()
                        .add_allowed_ips(&unicast_allowed_ips()),
                );
                let backend = self.backend;
                tokio::task::spawn_blocking(move || update.apply(&iface, backend))
                    .await
                    .map_err(io_err)?
            }
            Step::SetUp { interface } => {
                let index = self.require(interface).await?;
                quiet_ipv6(interface);
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(index).up().build())
                    .execute()
                    .await
                    .map_err(netlink_err)
            }
            Step::SpreadReceive { interface } => {
                let index = self.require(interface).await?;
                if self.spread(interface, index) {
                    return Ok(());
                }
                let Some(mask) = &self.receive_mask else {
                    return Ok(());
                };
                std::fs::write(
                    format!("/sys/class/net/{interface}/queues/rx-0/rps_cpus"),
                    mask,
                )
            }
            Step::Delete { interface } => {
                let iface: InterfaceName = interface.parse().map_err(io_err)?;
                let backend = self.backend;
                // Deleting the device stops wireguard-go too (it watches its socket).
                let _ = tokio::task::spawn_blocking(move || {
                    Device::get(&iface, backend).and_then(Device::delete)
                })
                .await;
                if let Some(index) = self.link_index(interface).await? {
                    self.handle
                        .link()
                        .del(index)
                        .execute()
                        .await
                        .map_err(io_err)?;
                }
                Ok(())
            }
        }
    }

    /// The netlink handle, for what shares this connection (transit routing).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    async fn require(&self, interface: &str) -> io::Result<u32> {
        self.link_index(interface).await?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {interface} is not there"),
            )
        })
    }

    async fn configure(&self, w: &WantedTunnel) -> io::Result<()> {
        let iface: InterfaceName = w.interface.parse().map_err(io_err)?;
        let peer = PeerConfigBuilder::new(&Key(w.peer_public_key))
            .set_endpoint(w.endpoint)
            .replace_allowed_ips()
            .add_allowed_ips(&unicast_allowed_ips());
        let mut update = DeviceUpdate::new()
            .set_private_key(self.private_key.clone())
            .set_listen_port(w.listen_port)
            .replace_peers()
            .add_peer(peer);
        update = match w.fwmark {
            Some(m) => update.set_fwmark(m),
            None => update.unset_fwmark(),
        };
        let backend = self.backend;
        tokio::task::spawn_blocking(move || update.apply(&iface, backend))
            .await
            .map_err(io_err)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(&(a, len): &(IpAddr, u8)) -> IpNet {
        IpNet::new(a, len).expect("a valid prefix")
    }

    #[test]
    fn the_receive_mask_names_every_online_cpu_as_the_kernel_writes_it() {
        assert_eq!(receive_mask("0-1\n", "\n").as_deref(), Some("3"));
        assert_eq!(receive_mask("0-3,8", "").as_deref(), Some("10f"));
        assert_eq!(receive_mask("0-39", "").as_deref(), Some("ff,ffffffff"));
        assert_eq!(receive_mask("32-33", "").as_deref(), Some("3,00000000"));
        // Isolated CPUs are left alone.
        assert_eq!(receive_mask("0-7", "2-5").as_deref(), Some("c3"));
        assert_eq!(receive_mask("0-3", "1-3"), None);
        // Nothing to spread on one CPU; no guessing on what does not parse.
        for none in ["0", "", "0-", "a-b", "3-1", "0-99999"] {
            assert_eq!(receive_mask(none, ""), None, "{none:?}");
        }
        assert_eq!(receive_mask("0-3", "x"), None);
    }

    #[test]
    fn masks_compare_by_the_cpus_they_name() {
        assert!(same_mask("00000000,00000003\n", "3"));
        assert!(same_mask("ff,ffffffff", "000000ff,ffffffff"));
        assert!(!same_mask("0", "3"));
        assert!(!same_mask("1", "3"));
        assert!(!same_mask("garbage", "3"));
    }

    #[test]
    fn the_peer_carries_every_unicast_address_and_no_multicast() {
        let nets: Vec<IpNet> = UNICAST.iter().map(net).collect();
        for (i, a) in nets.iter().enumerate() {
            assert_eq!(*a, a.trunc(), "{a} has host bits");
            for b in &nets[i + 1..] {
                assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap");
            }
        }
        // Disjoint, so the sizes add up: all of each family but its multicast block.
        let size = |v6: bool| -> u128 {
            nets.iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .map(|n| 1u128 << (n.max_prefix_len() - n.prefix_len()))
                .sum()
        };
        assert_eq!(size(false), (1u128 << 32) - (1u128 << 28));
        assert_eq!(size(true), u128::MAX - ((1u128 << 120) - 1));
        let covered = |a: &str| {
            nets.iter()
                .any(|n| n.contains(&a.parse::<IpAddr>().unwrap()))
        };
        for multicast in [
            "224.0.0.1",
            "239.255.255.250",
            "ff02::16",
            "ff02::2",
            "ff05::2",
        ] {
            assert!(!covered(multicast), "{multicast} is allowed");
        }
        for unicast in [
            "10.0.0.1",
            "172.16.2.10",
            "255.255.255.255",
            "2001:db8:a2::10",
            "fe80::1",
            "::",
        ] {
            assert!(covered(unicast), "{unicast} is not allowed");
        }
    }
}
