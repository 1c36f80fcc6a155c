//! ICMP echo timed in microseconds, from inside a lab node's network namespace. ping(8)
//! prints RTTs of 10 ms and more in 0.1 ms steps, as coarse as the added RTT the
//! data-plane bench holds to 0.1 ms, and a median of such steps moves by whole steps.
//! Written here rather than taken from a crate: the ping crates open their socket in the
//! caller's namespace and bring an async runtime; this is a raw socket opened in another
//! namespace, a timer and a checksum.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::RngExt as _;
use socket2::{Domain, Protocol, Socket, Type};

/// A reply later than this counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// As ping(8): 56 bytes of payload, 84 on the wire with the IP and ICMP headers.
const PAYLOAD: usize = 56;

/// Gaps between `count` echoes, drawn uniformly from half to one and a half `mean`.
/// Echoes sent at a fixed period lock in phase with whatever else is periodic on the
/// machine (the other path's echoes, a tunnel's probes, the emulator's wake-ups), and each
/// round then measures one phase of it (RFC 2330 § 11.1: random sampling). Bounded rather
/// than Poisson: an echo waits for its reply, so a gap shorter than the RTT would only
/// postpone the next send.
pub(crate) fn random_gaps(rng: &mut impl rand::Rng, count: u16, mean: Duration) -> Vec<Duration> {
    let (low, high) = (mean / 2, mean * 3 / 2);
    (0..count).map(|_| rng.random_range(low..=high)).collect()
}

/// RTTs, ms, of echoes to `to` from the network namespace at `netns`, one after each of
/// `gaps` (see [`random_gaps`]); an echo with no reply within a second is left out.
pub(crate) fn rtts(netns: &Path, to: Ipv4Addr, gaps: &[Duration]) -> Result<Vec<f64>> {
    let sock = crate::ns::in_netns(netns, || {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).context("raw ICMP socket")
    })?;
    // Raw sockets see every ICMP message of the namespace: ours are told apart by
    // identifier, sequence and source.
    let id = (std::process::id() & 0xffff) as u16;
    let dest = SocketAddrV4::new(to, 0).into();
    let mut out = Vec::with_capacity(gaps.len());
    let mut next = Instant::now();
    for (seq, gap) in (0..=u16::MAX).zip(gaps) {
        next += *gap;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let sent = Instant::now();
        sock.send_to(&echo_request(id, seq), &dest)
            .with_context(|| format!("echo request to {to}"))?;
        if wait_reply(&sock, to, id, seq, sent + REPLY_TIMEOUT)? {
            out.push(sent.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}

/// Reads until the reply to (`id`, `seq`) from `from` arrives (true) or `deadline` passes.
fn wait_reply(sock: &Socket, from: Ipv4Addr, id: u16, seq: u16, deadline: Instant) -> Result<bool> {
    let mut buf = [0u8; 1500];
    loop {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return Ok(false);
        };
        sock.set_read_timeout(Some(left))?;
        let n = match (&*sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading ICMP"),
        };
        if is_reply(&buf[..n], from, id, seq) {
            return Ok(true);
        }
    }
}

/// An ICMP echo request (type 8) with ping(8)'s payload size.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 8 + PAYLOAD];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in p[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Whether `packet` (an IPv4 packet, as a raw socket reads it) is the echo reply to
/// (`id`, `seq`) from `from`.
fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(ihl..)) else {
        return false;
    };
    icmp.len() >= 8
        && src == from.octets()
        && icmp[0] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn random_gaps_stay_within_half_and_one_and_a_half_the_mean_and_vary() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mean = Duration::from_millis(20);
        let gaps = random_gaps(&mut rng, 1000, mean);
        assert_eq!(gaps.len(), 1000);
        assert!(gaps.iter().all(|g| (mean / 2..=mean * 3 / 2).contains(g)));
        let total: Duration = gaps.iter().sum();
        let average = total / 1000;
        assert!(
            average > mean * 95 / 100 && average < mean * 105 / 100,
            "{average:?}"
        );
        // Not a fixed period: the gaps spread over the range.
        let short = gaps.iter().filter(|g| **g < mean * 3 / 4).count();
        let long = gaps.iter().filter(|g| **g > mean * 5 / 4).count();
        assert!(short > 150 && long > 150, "{short} short, {long} long");
    }

    #[test]
    fn a_request_checksums_to_zero_as_a_receiver_verifies_it() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        assert_eq!((p[0], &p[4..8]), (8, &[0x12, 0x34, 0, 7][..]));
        assert_eq!(p.len(), 64);
    }

    #[test]
    fn only_the_reply_to_our_echo_from_its_destination_matches() {
        let to = Ipv4Addr::new(172, 16, 2, 10);
        let mut ip = vec![0x45u8, 0, 0, 84, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&to.octets());
        ip.extend_from_slice(&[172, 16, 1, 10]);
        let mut reply = echo_request(9, 3);
        reply[0] = 0;
        let packet = [ip.clone(), reply.clone()].concat();
        assert!(is_reply(&packet, to, 9, 3));
        assert!(!is_reply(&packet, to, 9, 4), "another sequence");
        assert!(!is_reply(&packet, to, 8, 3), "another identifier");
        assert!(
            !is_reply(&packet, Ipv4Addr::new(172, 16, 2, 11), 9, 3),
            "another source"
        );
        let request = [ip, echo_request(9, 3)].concat();
        assert!(!is_reply(&request, to, 9, 3), "our own request");
        assert!(!is_reply(&packet[..25], to, 9, 3), "truncated");
        assert!(!is_reply(&[], to, 9, 3));
    }
}
