//! What the host says about itself that a config may leave out: its interfaces, their
//! addresses and default routes, its name. Read over rtnetlink (and sysfs for link
//! speeds) by thin adapters; the choices made from it are pure and live with their users
//! (`config` takes the VTEP from `fabric.interface`, `init` writes a starting config).

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::Handle;

use crate::config::GatewanSettings;
pub use crate::config::HostAddress;
use crate::netlink::io_err;
use gatewan_kit::config::ConfigErrors;

/// An interface of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub name: String,
    pub loopback: bool,
    pub addresses: Vec<HostAddress>,
    /// Next hops of the main table's default routes through it (IPv4 and IPv6).
    pub default_gateways: Vec<IpAddr>,
    /// Link speed in bit/s, when the driver reports one (virtual NICs often do not).
    pub speed_bps: Option<u64>,
}

impl HostInterface {
    /// Its global addresses, in the kernel's order.
    pub fn global_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses
            .iter()
            .filter(|a| a.global)
            .map(|a| a.address)
    }
}

/// The host as `gatewan init` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDescription {
    pub hostname: String,
    pub interfaces: Vec<HostInterface>,
}

/// Completes what the settings leave to the host, `fabric.vtep` from `fabric.interface`,
/// read once as the daemon starts. What cannot be completed is a config error: the daemon
/// exits 2 naming the field, as for a transit gateway the main table lacks.
pub async fn complete_settings(settings: GatewanSettings) -> anyhow::Result<GatewanSettings> {
    let Some(from) = &settings.vtep_from_interface else {
        return Ok(settings);
    };
    let interface = from.interface.clone();
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let addresses = interface_addresses(&handle, &interface).await?;
    let settings = settings
        .with_vtep_interface_addresses(addresses.as_deref())
        .map_err(ConfigErrors)?;
    if let Some(vtep) = settings.vtep {
        tracing::info!(%vtep, %interface, "fabric.vtep: the address of fabric.interface");
    }
    Ok(settings)
}

/// The addresses of interface `name`, None when the host has no such interface.
pub async fn interface_addresses(
    handle: &Handle,
    name: &str,
) -> io::Result<Option<Vec<HostAddress>>> {
    let Some(index) = crate::netlink::link_index(handle, name).await? else {
        return Ok(None);
    };
    let mut all = addresses(handle).await?;
    Ok(Some(all.remove(&index).unwrap_or_default()))
}

/// Every address of the host, by interface index.
async fn addresses(handle: &Handle) -> io::Result<BTreeMap<u32, Vec<HostAddress>>> {
    let mut out: BTreeMap<u32, Vec<HostAddress>> = BTreeMap::new();
    let mut msgs = handle.address().get().execute();
    while let Some(m) = msgs.try_next().await.map_err(io_err)? {
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on a
        // point-to-point link, and the only one IPv6 usually sends.
        let mut local = None;
        let mut address = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(m.header.flags.bits()));
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => local = Some(*ip),
                AddressAttribute::Address(ip) => address = Some(*ip),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        let Some(ip) = local.or(address) else {
            continue;
        };
        // 0x01 is IFA_F_TEMPORARY for IPv6 (a privacy address) but IFA_F_SECONDARY for
        // IPv4, where a secondary address is as real as the primary.
        let replaced = ip.is_ipv6()
            && (flags.contains(AddressFlags::Secondary)
                || flags.contains(AddressFlags::Deprecated));
        out.entry(m.header.index).or_default().push(HostAddress {
            address: ip,
            prefix_len: m.header.prefix_len,
            global: m.header.scope == AddressScope::Universe && !replaced,
        });
    }
    Ok(out)
}

/// Reads the host: hostname, interfaces, their addresses, the main table's default routes
/// and link speeds.
pub async fn describe(handle: &Handle) -> io::Result<HostDescription> {
    let hostname = nix::unistd::gethostname()
        .map_err(io::Error::from)?
        .to_string_lossy()
        .into_owned();
    let mut links = Vec::new();
    let mut msgs = handle.link().get().execute();
    while let Some(l) = msgs.try_next().await.map_err(io_err)? {
        let name = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        if let Some(name) = name {
            links.push((
                l.header.index,
                name,
                l.header.flags.contains(LinkFlags::Loopback),
            ));
        }
    }
    let mut addrs = addresses(handle).await?;
    let routes = crate::transit::main_table(handle).await?;
    let interfaces = links
        .into_iter()
        .map(|(index, name, loopback)| HostInterface {
            default_gateways: routes
                .iter()
                .filter(|r| r.prefix_len == 0 && r.interface == name)
                .map(|r| r.gateway)
                .collect(),
            speed_bps: link_speed_bps(&name),
            addresses: addrs.remove(&index).unwrap_or_default(),
            name,
            loopback,
        })
        .collect();
    Ok(HostDescription {
        hostname,
        interfaces,
    })
}

/// The link speed sysfs reports (Mbit/s), in bit/s. Unknown (`-1`, or a read error: a link
/// that is down, a virtual NIC) is None.
fn link_speed_bps(interface: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/speed")).ok()?;
    parse_speed_mbps(&text)
}

fn parse_speed_mbps(text: &str) -> Option<u64> {
    let mbps: i64 = text.trim().parse().ok()?;
    u64::try_from(mbps)
        .ok()
        .filter(|&m| m > 0)
        .and_then(|m| m.checked_mul(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_link_speed_is_none() {
        assert_eq!(parse_speed_mbps("10000\n"), Some(10_000_000_000));
        assert_eq!(parse_speed_mbps("-1\n"), None);
        assert_eq!(parse_speed_mbps("0"), None);
        assert_eq!(parse_speed_mbps(""), None);
        assert_eq!(parse_speed_mbps("fast"), None);
    }
}
