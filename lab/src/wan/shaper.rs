//! The fate of every frame of one direction, with no I/O and no clock of its own: loss,
//! duplication, the rate limit, delay and jitter (FIFO per flow), reordering, and the
//! queue of delayed frames. The forwarding thread (`forward` in `wan`) passes in each
//! received frame with the monotonic time, sends what the shaper says to send now, and
//! asks it for the frames that have come due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::Impairment;

/// A rate-limited direction drops frames that would wait longer than this in its queue.
pub(super) const RATE_QUEUE_LIMIT_NS: u64 = 100_000_000;
/// Delayed frames held at most, per direction (like netem's `limit`)...
pub(super) const HEAP_LIMIT: usize = 200_000;
/// ...and bytes: GSO super-frames are up to 64 KiB each.
pub(super) const HEAP_BYTES_LIMIT: usize = 64 << 20;
/// Frames carry a `virtio_net_hdr` of this length before the Ethernet header.
pub(super) const VNET_HDR_LEN: usize = 10;

/// Flows whose frames keep their order under jitter; flows hashed to one bucket share it.
const FLOW_BUCKETS: usize = 1024;

/// The flow of an Ethernet frame: IP addresses, protocol and UDP/TCP ports, hashed.
///
/// Jitter keeps the order within a flow, as a real WAN does (ECMP hashes a flow onto one
/// path), but not across flows: one FIFO for the whole link would delay every frame to the
/// latest due time of any frame before it, so with many flows the delay would be biased up
/// and the jitter down (seen in the lab: 8 probe flows at 10/s through ±5 ms measured
/// +0.9 ms and −0.6 ms).
fn flow_bucket(frame: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let Some(ethertype) = frame.get(12..14) else {
        return 0;
    };
    match ethertype {
        [0x08, 0x00] => {
            let Some(ip) = frame.get(14..) else { return 0 };
            let (Some(&vihl), Some(&proto), Some(addrs)) = (ip.first(), ip.get(9), ip.get(12..20))
            else {
                return 0;
            };
            mix(&[proto]);
            mix(addrs);
            let fragment = ip.get(6..8).is_some_and(|f| f[0] & 0x3f != 0 || f[1] != 0);
            if matches!(proto, 6 | 17) && !fragment {
                mix(l4_ports(ip.get(usize::from(vihl & 0x0f) * 4..)));
            }
        }
        [0x86, 0xdd] => {
            let Some(ip) = frame.get(14..) else { return 0 };
            let (Some(&next), Some(addrs)) = (ip.get(6), ip.get(8..40)) else {
                return 0;
            };
            mix(&[next]);
            mix(addrs);
            if matches!(next, 6 | 17) {
                mix(l4_ports(ip.get(40..)));
            }
        }
        other => mix(other),
    }
    (h % FLOW_BUCKETS as u64) as usize
}

fn l4_ports(l4: Option<&[u8]>) -> &[u8] {
    l4.and_then(|t| t.get(0..4)).unwrap_or_default()
}

/// SplitMix64: a fast, good-enough generator for drop/duplicate/jitter decisions.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && (self.next() % 1_000_000) < ppm as u64
    }
}

struct Pending {
    due: u64,
    seq: u64,
    frame: Vec<u8>,
}
impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// What became of one received frame (for the direction's counters).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Fate {
    pub(super) lost: bool,
    pub(super) duplicated: bool,
    /// Copies to send at once (no impairment and nothing queued ahead).
    pub(super) send_now: u8,
    /// Copies dropped because a queue was full.
    pub(super) queue_drops: u8,
    /// Copies given a delay, and those delays summed (µs).
    pub(super) delayed: u8,
    pub(super) delay_sum_us: u64,
}

/// One direction's impairments and its delay line.
pub(super) struct Shaper {
    params: Impairment,
    rng: Rng,
    heap: BinaryHeap<Reverse<Pending>>,
    heap_bytes: usize,
    seq: u64,
    /// Per flow bucket: the due time of its latest frame.
    last_due: Vec<u64>,
    /// When the rate limiter's link is free again.
    rate_free: u64,
}

impl Shaper {
    pub(super) fn new(seed: u64) -> Shaper {
        Shaper {
            params: Impairment::default(),
            rng: Rng(seed),
            heap: BinaryHeap::new(),
            heap_bytes: 0,
            seq: 0,
            last_due: vec![0; FLOW_BUCKETS],
            rate_free: 0,
        }
    }

    pub(super) fn set_params(&mut self, p: Impairment) {
        self.params = p;
    }

    /// Decides the fate of `frame` (virtio header included) received at `now` (ns):
    /// queued for later, to send now, or dropped.
    pub(super) fn receive(&mut self, frame: &[u8], now: u64) -> Fate {
        let p = self.params;
        let mut fate = Fate::default();
        if self.rng.chance_ppm(p.loss_ppm) {
            fate.lost = true;
            return fate;
        }
        let copies = if self.rng.chance_ppm(p.duplicate_ppm) {
            fate.duplicated = true;
            2
        } else {
            1
        };
        if p.is_passthrough() && self.heap.is_empty() {
            fate.send_now = copies;
            return fate;
        }
        let payload = &frame[VNET_HDR_LEN.min(frame.len())..];
        for _ in 0..copies {
            // The rate limiter is a FIFO link of the given speed ahead of the delay line.
            let mut depart = now;
            let wire = payload.len() as u64;
            if let Some(ser) = (wire * 8 * 1_000_000_000).checked_div(p.rate_bps) {
                let start = self.rate_free.max(now);
                if start - now > RATE_QUEUE_LIMIT_NS {
                    fate.queue_drops += 1;
                    continue;
                }
                self.rate_free = start + ser;
                depart = self.rate_free;
            }
            let due = if self.rng.chance_ppm(p.reorder_ppm) {
                // As in netem: a reordered frame skips the delay and overtakes.
                depart
            } else {
                let mut d = depart + p.delay_us * 1000;
                if p.jitter_us > 0 {
                    let span = 2 * p.jitter_us * 1000 + 1;
                    d = d + self.rng.next() % span - p.jitter_us * 1000;
                }
                // Jitter alone does not reorder a flow: FIFO per flow.
                let flow = &mut self.last_due[flow_bucket(payload)];
                let d = d.max(*flow);
                *flow = d;
                fate.delayed += 1;
                fate.delay_sum_us += d.saturating_sub(now) / 1000;
                d
            };
            if self.heap.len() >= HEAP_LIMIT || self.heap_bytes + frame.len() > HEAP_BYTES_LIMIT {
                fate.queue_drops += 1;
                continue;
            }
            self.seq += 1;
            self.heap_bytes += frame.len();
            self.heap.push(Reverse(Pending {
                due,
                seq: self.seq,
                frame: frame.to_vec(),
            }));
        }
        fate
    }

    /// The next frame due at `now`, if any.
    pub(super) fn pop_due(&mut self, now: u64) -> Option<Vec<u8>> {
        if self.heap.peek().is_some_and(|Reverse(x)| x.due <= now) {
            let Reverse(x) = self.heap.pop()?;
            self.heap_bytes -= x.frame.len();
            return Some(x.frame);
        }
        None
    }

    /// When the next queued frame is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(x)| x.due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as the emulator reads it: virtio header, Ethernet, IPv4, UDP with the
    /// given source port, `len` bytes on the wire.
    fn udp(sport: u16, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + len.max(42)];
        let e = &mut f[VNET_HDR_LEN..];
        e[12] = 0x08;
        e[14] = 0x45;
        e[23] = 17;
        e[26..30].copy_from_slice(&[198, 51, 100, 1]);
        e[30..34].copy_from_slice(&[198, 51, 100, 17]);
        e[34..36].copy_from_slice(&sport.to_be_bytes());
        e[36..38].copy_from_slice(&40080u16.to_be_bytes());
        f
    }

    fn shaper(p: Impairment) -> Shaper {
        let mut s = Shaper::new(7);
        s.set_params(p);
        s
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn flows_are_told_apart_and_short_frames_are_safe() {
        // Ethernet + IPv4 + UDP, ports 20064 -> 40080.
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[198, 51, 100, 1]);
        f[30..34].copy_from_slice(&[198, 51, 100, 17]);
        f[34..38].copy_from_slice(&[0x4e, 0x60, 0x9c, 0x90]);
        let a = flow_bucket(&f);
        assert_eq!(a, flow_bucket(&f), "one flow, one bucket");
        let mut g = f.clone();
        g[35] ^= 1; // another source port
        assert_ne!(a, flow_bucket(&g));
        for n in 0..f.len() {
            let _ = flow_bucket(&f[..n]);
        }
    }

    #[test]
    fn without_impairment_a_frame_goes_at_once_and_nothing_waits() {
        let mut s = shaper(Impairment::default());
        let fate = s.receive(&udp(1, 100), 0);
        assert_eq!(fate.send_now, 1);
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn a_delayed_frame_comes_due_after_the_delay_and_not_before() {
        let mut s = shaper(Impairment {
            delay_us: 10_000,
            ..Default::default()
        });
        let fate = s.receive(&udp(1, 100), 5 * MS);
        assert_eq!(
            (fate.send_now, fate.delayed, fate.delay_sum_us),
            (0, 1, 10_000)
        );
        assert_eq!(s.next_due(), Some(15 * MS));
        assert_eq!(s.pop_due(15 * MS - 1), None);
        assert_eq!(s.pop_due(15 * MS), Some(udp(1, 100)));
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn total_loss_drops_every_frame() {
        let mut s = shaper(Impairment {
            loss_ppm: 1_000_000,
            ..Default::default()
        });
        for i in 0..100 {
            let fate = s.receive(&udp(i, 100), u64::from(i));
            assert!(fate.lost && fate.send_now == 0);
        }
        assert_eq!(s.next_due(), None);
    }

    #[test]
    fn jitter_never_reorders_a_flow_but_may_reorder_flows() {
        let mut s = shaper(Impairment {
            delay_us: 10_000,
            jitter_us: 5_000,
            ..Default::default()
        });
        // 200 frames of each of two flows, 0.1 ms apart, each tagged by its length.
        for i in 0..400u64 {
            s.receive(&udp(1 + (i % 2) as u16, 100 + i as usize), i * MS / 10);
        }
        let mut last_len = [0usize; 2];
        let mut flows_crossed = false;
        let mut previous_flow = None;
        while let Some(f) = s.pop_due(u64::MAX) {
            let flow = usize::from(f[VNET_HDR_LEN + 35]) - 1;
            assert!(f.len() > last_len[flow], "flow {flow} reordered");
            last_len[flow] = f.len();
            if previous_flow == Some(flow) {
                flows_crossed = true;
            }
            previous_flow = Some(flow);
        }
        assert!(
            flows_crossed,
            "frames of two flows interleave differently than sent"
        );
    }

    #[test]
    fn a_rate_limit_spaces_frames_by_their_serialisation_time_and_drops_beyond_its_queue() {
        // 1500-byte frames at 12 Mbit/s: 1 ms each.
        let mut s = shaper(Impairment {
            rate_bps: 12_000_000,
            ..Default::default()
        });
        let f = udp(1, 1500);
        for _ in 0..3 {
            assert_eq!(s.receive(&f, 0).queue_drops, 0);
        }
        let due: Vec<u64> = std::iter::from_fn(|| {
            let d = s.next_due()?;
            s.pop_due(d)?;
            Some(d)
        })
        .collect();
        assert_eq!(due, [MS, 2 * MS, 3 * MS]);
        // The queue holds at most RATE_QUEUE_LIMIT_NS of waiting: 100 frames here.
        let mut s = shaper(Impairment {
            rate_bps: 12_000_000,
            ..Default::default()
        });
        let drops: u32 = (0..150)
            .map(|_| u32::from(s.receive(&f, 0).queue_drops))
            .sum();
        assert_eq!(drops, 49);
    }

    #[test]
    fn duplication_queues_two_copies_and_reordering_skips_the_delay() {
        let mut s = shaper(Impairment {
            delay_us: 10_000,
            duplicate_ppm: 1_000_000,
            ..Default::default()
        });
        let fate = s.receive(&udp(1, 100), 0);
        assert!(fate.duplicated);
        assert_eq!(fate.delayed, 2);
        let mut s = shaper(Impairment {
            delay_us: 10_000,
            reorder_ppm: 1_000_000,
            ..Default::default()
        });
        let fate = s.receive(&udp(1, 100), 3 * MS);
        assert_eq!(fate.delayed, 0);
        assert_eq!(s.next_due(), Some(3 * MS));
    }
}
