//! `routingctl probe TUNNEL`: a measurement on demand, mtr-style, beside the tunnel's own
//! probes. It sends requests of the tunnel's echo protocol (`wire`) from an ephemeral port
//! of the tunnel's inner address, through the tunnel's interface only, under a cookie of
//! its own. The peer's echo answers any port of that address (`engine::classify` checks
//! the address, which the tunnel vouches for), so nothing changes at the peer, and the
//! tunnel's own window, counters and state are untouched.
//!
//! [`Outcomes`] is the pure part: which probe is answered, late or lost, from the
//! packets and the clock given to it.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::wire::{Kind, Packet};

/// Bounds of a request: a probe is a 40-byte datagram; 1,000 of them at 10 ms apart is
/// the most one call may send.
pub const MAX_COUNT: u32 = 1000;
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// What to probe: the tunnel as its row in the tunnel table names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub interface: String,
    pub tunnel_index: u64,
    /// Our inner address.
    pub local: IpAddr,
    /// The peer's inner address and echo port.
    pub peer: SocketAddr,
}

/// One probe's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub seq: u64,
    /// None: no reply within the timeout.
    pub rtt: Option<Duration>,
}

/// The probes in flight and their outcomes, in the order they resolve.
#[derive(Debug)]
pub struct Outcomes {
    cookie: u64,
    tunnel_index: u64,
    timeout: Duration,
    pending: BTreeMap<u64, Instant>,
}

impl Outcomes {
    pub fn new(cookie: u64, tunnel_index: u64, timeout: Duration) -> Self {
        Outcomes {
            cookie,
            tunnel_index,
            timeout,
            pending: BTreeMap::new(),
        }
    }

    /// The request for probe `seq` sent at `now`.
    pub fn request(&mut self, seq: u64, now: Instant, since_epoch: Duration) -> Packet {
        self.pending.insert(seq, now);
        Packet {
            kind: Kind::Request,
            tunnel_index: self.tunnel_index,
            cookie: self.cookie,
            seq,
            timestamp_ns: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// A datagram from the peer at `now`: the outcome it resolves, if it is the reply to a
    /// probe still pending (anything else, a late or foreign packet, resolves nothing).
    pub fn reply(&mut self, buf: &[u8], now: Instant) -> Option<Outcome> {
        let p = Packet::decode(buf).ok()?;
        if p.kind != Kind::Reply || p.cookie != self.cookie || p.tunnel_index != self.tunnel_index {
            return None;
        }
        let sent = self.pending.remove(&p.seq)?;
        Some(Outcome {
            seq: p.seq,
            rtt: Some(now.saturating_duration_since(sent)),
        })
    }

    /// The probes unanswered for the timeout at `now`: lost.
    pub fn expire(&mut self, now: Instant) -> Vec<Outcome> {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, sent)| now.saturating_duration_since(**sent) >= self.timeout)
            .map(|(seq, _)| *seq)
            .collect();
        lost.into_iter()
            .map(|seq| {
                self.pending.remove(&seq);
                Outcome { seq, rtt: None }
            })
            .collect()
    }

    /// When the oldest pending probe times out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.pending.values().min().map(|sent| *sent + self.timeout)
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }
}

/// A socket on the tunnel's inner address, an ephemeral port, and its interface only.
fn bind(t: &Target) -> io::Result<UdpSocket> {
    super::engine::bind_on(&t.interface, SocketAddr::new(t.local, 0))
}

/// Sends `count` probes `interval` apart and hands each outcome to `out` as it resolves
/// (a reply, or the timeout); returns when all are resolved or `out` refuses (the caller
/// went away).
pub async fn run(
    target: &Target,
    count: u32,
    interval: Duration,
    timeout: Duration,
    mut out: impl FnMut(Outcome) -> bool,
) -> io::Result<()> {
    let socket = bind(target)?;
    let epoch = Instant::now();
    let mut o = Outcomes::new(rand::random(), target.tunnel_index, timeout);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u32;
    let mut buf = [0u8; 256];
    loop {
        if sent == count && o.is_idle() {
            return Ok(());
        }
        let expiry = o
            .next_expiry()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + timeout);
        tokio::select! {
            _ = ticks.tick(), if sent < count => {
                let now = Instant::now();
                let p = o.request(u64::from(sent), now, now - epoch);
                sent += 1;
                if let Err(e) = socket.send_to(&p.encode(), target.peer).await {
                    // Counted as lost at its timeout, as the tunnel's own probes count it.
                    tracing::debug!(interface = %target.interface, error = %e, "on-demand probe not sent");
                }
            }
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                if from.ip() != target.peer.ip() {
                    continue;
                }
                if let Some(outcome) = o.reply(buf.get(..n).unwrap_or_default(), Instant::now())
                    && !out(outcome)
                {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep_until(expiry) => {
                for outcome in o.expire(Instant::now()) {
                    if !out(outcome) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(p: &Packet) -> [u8; super::super::wire::LEN] {
        Packet {
            kind: Kind::Reply,
            ..*p
        }
        .encode()
    }

    #[test]
    fn a_reply_resolves_its_probe_once_and_the_rest_expire_as_lost() {
        let t0 = Instant::now();
        let mut o = Outcomes::new(42, 7, Duration::from_secs(1));
        let p0 = o.request(0, t0, Duration::ZERO);
        let p1 = o.request(
            1,
            t0 + Duration::from_millis(100),
            Duration::from_millis(100),
        );
        let at = t0 + Duration::from_millis(40);
        assert_eq!(
            o.reply(&reply_to(&p0), at),
            Some(Outcome {
                seq: 0,
                rtt: Some(Duration::from_millis(40))
            })
        );
        assert_eq!(
            o.reply(&reply_to(&p0), at),
            None,
            "a duplicate resolves nothing"
        );
        let foreign = Packet { cookie: 43, ..p1 };
        assert_eq!(o.reply(&reply_to(&foreign), at), None, "another prober's");
        let other_tunnel = Packet {
            tunnel_index: 8,
            ..p1
        };
        assert_eq!(o.reply(&reply_to(&other_tunnel), at), None);
        assert_eq!(o.reply(&p1.encode(), at), None, "a request is no reply");
        assert_eq!(o.reply(b"garbage", at), None);
        assert!(o.expire(t0 + Duration::from_millis(1099)).is_empty());
        assert_eq!(o.next_expiry(), Some(t0 + Duration::from_millis(1100)));
        assert_eq!(
            o.expire(t0 + Duration::from_millis(1100)),
            [Outcome { seq: 1, rtt: None }]
        );
        assert!(o.is_idle());
        assert_eq!(
            o.reply(&reply_to(&p1), t0 + Duration::from_secs(2)),
            None,
            "late"
        );
    }
}
