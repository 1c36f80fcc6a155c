//! Admission of datagrams before any decoding: per-source rate limit (before the AEAD, so
//! floods cost little) and the replay filter (after it, on authenticated datagrams only).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

/// Token bucket per source IP, in a bounded table.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    burst: u32,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens_milli: u64,
    last_ms: u64,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32, max_sources: usize) -> Self {
        RateLimiter {
            per_second,
            burst: burst.max(1),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Whether a datagram from `src` at `now_ms` is admitted.
    pub fn admit(&mut self, src: IpAddr, now_ms: u64) -> bool {
        let cap = u64::from(self.burst) * 1000;
        if !self.buckets.contains_key(&src) && self.buckets.len() >= self.max_sources {
            // Table full: forget sources whose bucket refilled, they hold no information.
            let rate = u64::from(self.per_second);
            self.buckets
                .retain(|_, b| b.tokens_milli + now_ms.saturating_sub(b.last_ms) * rate < cap);
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let b = self.buckets.entry(src).or_insert(Bucket {
            tokens_milli: cap,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms);
        b.tokens_milli = (b.tokens_milli + elapsed * u64::from(self.per_second)).min(cap);
        b.last_ms = b.last_ms.max(now_ms);
        if b.tokens_milli >= 1000 {
            b.tokens_milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// What the replay filter says of an authenticated datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Seen moments ago: the same datagram sent to several of our addresses (one per
    /// transit), not an attack.
    Duplicate,
    /// Seen long ago.
    Replay,
    /// Stamped further from our wall clock than the window: `skew_ms` is the stamp
    /// minus our clock (positive: the sender's clock is ahead).
    Skewed {
        skew_ms: i64,
    },
}

/// Remembers the datagrams accepted within `window_ms`; older timestamps are refused, so
/// memory is bounded by the accepted rate times the window (and by `capacity`).
#[derive(Debug)]
pub struct ReplayFilter {
    window_ms: u64,
    duplicate_ms: u64,
    capacity: usize,
    seen: HashMap<u128, u64>,
    order: VecDeque<(u64, u128)>,
}

impl ReplayFilter {
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        ReplayFilter {
            window_ms,
            duplicate_ms: 2_000.min(window_ms),
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// `timestamp_ms`, the sender's stamp, is checked against our wall clock `unix_ms`;
    /// what we remember expires on the monotonic clock `mono_ms`, so a step of the wall
    /// clock neither forgets the datagrams just seen nor keeps them for ever.
    pub fn check(
        &mut self,
        nonce_id: u128,
        timestamp_ms: u64,
        unix_ms: u64,
        mono_ms: u64,
    ) -> Freshness {
        let now_ms = mono_ms;
        self.expire(now_ms);
        if timestamp_ms.abs_diff(unix_ms) > self.window_ms {
            let skew = i128::from(timestamp_ms) - i128::from(unix_ms);
            let skew_ms = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
            return Freshness::Skewed { skew_ms };
        }
        if let Some(&first_seen) = self.seen.get(&nonce_id) {
            return if now_ms.saturating_sub(first_seen) <= self.duplicate_ms {
                Freshness::Duplicate
            } else {
                Freshness::Replay
            };
        }
        if self.order.len() >= self.capacity
            && let Some((_, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(nonce_id, now_ms);
        self.order.push_back((now_ms, nonce_id));
        Freshness::Fresh
    }

    fn expire(&mut self, now_ms: u64) {
        // Anything timestamped before now - window is refused by the clock check anyway;
        // keep entries one extra window for senders whose clocks run ahead of ours.
        let horizon = now_ms.saturating_sub(2 * self.window_ms);
        while let Some(&(t, id)) = self.order.front() {
            if t >= horizon {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&id);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refills() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut rl = RateLimiter::new(10, 5, 16);
        let admitted = (0..20).filter(|_| rl.admit(ip, 1000)).count();
        assert_eq!(admitted, 5);
        assert!(rl.admit(ip, 1100)); // 0.1 s refills one token
        assert!(!rl.admit(ip, 1100));
        assert!(
            rl.admit("192.0.2.2".parse().unwrap(), 1100),
            "another source has its own bucket"
        );
    }

    #[test]
    fn rate_limit_table_is_bounded() {
        let mut rl = RateLimiter::new(10, 5, 4);
        for i in 0..4u8 {
            assert!(rl.admit(IpAddr::from([192, 0, 2, i]), 0));
        }
        // All four buckets are still draining: a fifth source is refused, not tracked.
        assert!(!rl.admit(IpAddr::from([192, 0, 2, 9]), 0));
        // Once they refill, their entries are forgotten and room is made.
        assert!(rl.admit(IpAddr::from([192, 0, 2, 9]), 10_000));
        assert!(rl.buckets.len() <= 4);
    }

    #[test]
    fn replay_filter() {
        let mut f = ReplayFilter::new(30_000, 1000);
        // Wall and monotonic clocks with different origins.
        let check =
            |f: &mut ReplayFilter, id, stamp, now: u64| f.check(id, stamp, now, now - 90_000);
        assert_eq!(check(&mut f, 1, 100_000, 100_000), Freshness::Fresh);
        assert_eq!(check(&mut f, 1, 100_000, 100_500), Freshness::Duplicate);
        assert_eq!(check(&mut f, 1, 100_000, 110_000), Freshness::Replay);
        assert_eq!(
            check(&mut f, 2, 60_000, 100_000),
            Freshness::Skewed { skew_ms: -40_000 },
            "too old"
        );
        assert_eq!(
            check(&mut f, 3, 140_000, 100_000),
            Freshness::Skewed { skew_ms: 40_000 },
            "too far in the future"
        );
        // After expiry the id is forgotten, but its timestamp is then out of the window.
        assert_eq!(
            check(&mut f, 1, 100_000, 200_000),
            Freshness::Skewed { skew_ms: -100_000 }
        );
        assert!(f.len() <= 1);
    }

    #[test]
    fn what_the_replay_filter_remembers_expires_on_the_monotonic_clock() {
        let mut f = ReplayFilter::new(30_000, 1000);
        assert_eq!(f.check(1, 100_000, 100_000, 5_000), Freshness::Fresh);
        // Our wall clock steps an hour ahead and the sender's with it: the datagram seen
        // a second ago is still remembered, whatever the wall clock says.
        let hour = 3_600_000;
        assert_eq!(
            f.check(1, 100_000 + hour, 101_000 + hour, 6_000),
            Freshness::Duplicate
        );
        assert_eq!(
            f.check(1, 100_000 + hour, 101_000 + hour, 30_000),
            Freshness::Replay
        );
        assert_eq!(f.len(), 1);
        // Forgotten two windows of monotonic time later.
        assert_eq!(
            f.check(9, 101_000 + hour, 101_000 + hour, 66_001),
            Freshness::Fresh
        );
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn replay_filter_capacity() {
        let mut f = ReplayFilter::new(30_000, 3);
        for id in 0..10 {
            assert_eq!(f.check(id, 1000, 1000, 1000), Freshness::Fresh);
        }
        assert_eq!(f.len(), 3);
    }
}
