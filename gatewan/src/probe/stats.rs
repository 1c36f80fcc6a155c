//! Probe statistics of one tunnel, pure: a sliding window of probes answered or lost, and
//! the tunnel state (Established, Degraded, Down) with hysteresis so a tunnel measured at
//! the edge of a threshold does not flap.
//!
//! A tunnel goes Down by either of two rules, checked at every probe (ADR 0008):
//! - BFD's: its newest `down.consecutive` settled probes are all lost. This one decides
//!   failover time: (consecutive − 1) × spacing + timeout after the first lost probe,
//!   whatever the evaluation interval. It speaks only for tunnels that do not lose probes
//!   by themselves (the window's loss, the run aside, below `degraded.loss`): on a tunnel
//!   losing 30 %, three in a row happen by chance several times a minute.
//! - the loss rule: at least `down.loss` of the last interval's settled probes are lost,
//!   which catches a lossy tunnel dying, an interval and a timeout after it does.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// One probe as the window keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Probe {
    seq: u64,
    sent_us: u64,
    /// Round-trip time, once answered.
    rtt_us: Option<u64>,
    /// Answered after a probe with a higher sequence number had been answered.
    reordered: bool,
}

/// What a reply turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyVerdict {
    Counted,
    /// For a probe we never sent, or already expired out of the window.
    Unknown,
    /// After the probe timed out: counted as lost, not as a reply.
    Late,
    Duplicate,
    /// For a probe sent before the window restarted (see `ProbeWindow::restart`).
    Stale,
}

/// What the newest settled probes say, for Down between evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Recent {
    /// Loss of the settled probes of the last interval (`ProbeWindow::recent_loss`).
    pub loss: Option<f64>,
    /// The newest settled probes, in a row, that are lost (`ProbeWindow::consecutive_lost`).
    pub lost_in_a_row: u32,
    /// Loss of the window's settled probes sent before that run: how likely a run is by
    /// chance alone.
    pub loss_before_run: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurements {
    /// Probes whose fate is known (answered or timed out) in the window.
    pub measured: u32,
    pub loss: f64,
    pub latency: Duration,
    pub jitter: Duration,
    pub reorder: f64,
}

/// The probes of the last `window`.
#[derive(Debug, Clone)]
pub struct ProbeWindow {
    window_us: u64,
    timeout_us: u64,
    probes: VecDeque<Probe>,
    highest_answered: Option<u64>,
    /// Send time of the first probe ever answered: probes before it were sent into a
    /// tunnel that was not up yet (no handshake), which is not loss.
    first_answered_us: Option<u64>,
    /// Probes sent before this are not measured (see `restart`).
    measured_from_us: u64,
    /// When the last counted reply arrived.
    last_counted_us: Option<u64>,
}

impl ProbeWindow {
    pub fn new(window: Duration, timeout: Duration) -> Self {
        ProbeWindow {
            window_us: window.as_micros() as u64,
            timeout_us: timeout.as_micros() as u64,
            probes: VecDeque::new(),
            highest_answered: None,
            first_answered_us: None,
            measured_from_us: 0,
            last_counted_us: None,
        }
    }

    /// For a tunnel that is Down: restarts the window when a reply arrives after a
    /// silence longer than the probe timeout (the path came back), once per silence.
    pub fn resume(&mut self, now_us: u64) -> bool {
        let since = self.last_counted_us.unwrap_or(0).max(self.measured_from_us);
        let silent = self.last_counted_us.is_none() && self.measured_from_us == 0
            || now_us.saturating_sub(since) > self.timeout_us;
        if silent {
            self.restart(now_us);
        }
        silent
    }

    /// Forgets the probes sent before `now_us`: called when a tunnel that was Down
    /// answers again. WireGuard holds the packets sent while it has no session and
    /// releases them when the handshake completes, so their round trips measure the
    /// handshake, not the path (hundreds of milliseconds on a 10 ms path, decaying over a
    /// whole window); and the outage's losses are already told by the Down state.
    fn restart(&mut self, now_us: u64) {
        self.measured_from_us = now_us;
        self.highest_answered = None;
        self.first_answered_us = None;
    }

    pub fn sent(&mut self, seq: u64, now_us: u64) {
        self.probes.push_back(Probe {
            seq,
            sent_us: now_us,
            rtt_us: None,
            reordered: false,
        });
        self.expire(now_us);
    }

    pub fn reply(&mut self, seq: u64, now_us: u64) -> ReplyVerdict {
        // Sequence numbers increase, so the window is sorted: binary search.
        let Ok(i) = self.probes.binary_search_by_key(&seq, |p| p.seq) else {
            return ReplyVerdict::Unknown;
        };
        let p = &mut self.probes[i];
        if p.sent_us < self.measured_from_us {
            return ReplyVerdict::Stale;
        }
        if p.rtt_us.is_some() {
            return ReplyVerdict::Duplicate;
        }
        let rtt = now_us.saturating_sub(p.sent_us);
        if rtt > self.timeout_us {
            return ReplyVerdict::Late;
        }
        p.rtt_us = Some(rtt);
        self.last_counted_us = Some(now_us);
        let sent = p.sent_us;
        self.first_answered_us = Some(self.first_answered_us.map_or(sent, |f| f.min(sent)));
        let p = &mut self.probes[i];
        p.reordered = self.highest_answered.is_some_and(|h| seq < h);
        self.highest_answered = Some(self.highest_answered.map_or(seq, |h| h.max(seq)));
        ReplyVerdict::Counted
    }

    fn expire(&mut self, now_us: u64) {
        let horizon = self.window_start(now_us);
        while self.probes.front().is_some_and(|p| p.sent_us < horizon) {
            self.probes.pop_front();
        }
    }

    /// Measurements over the probes sent in the last `window` whose fate is known.
    pub fn measure(&mut self, now_us: u64) -> Measurements {
        self.expire(now_us);
        // Loss counts only the probes whose timeout has passed (all answered or lost).
        // Counting the recent answered ones as well, but not the recent lost ones (still
        // pending), biased loss low: 30 % measured as 26 % with a 5 s window and 1 s timeout.
        let settled_to = now_us.saturating_sub(self.timeout_us);
        let Some(from) = self.measured_from(now_us) else {
            // Never answered (since the last restart): every probe whose timeout has passed
            // in the window is lost. Not "nothing measured": the data plane keeps a tunnel
            // measured nothing on its own route (a restarted gatewan has measured nothing
            // yet), and a tunnel black-holed since our start would keep its flows for good.
            let from = self.window_start(now_us).max(self.measured_from_us);
            let lost = match now_us.checked_sub(self.timeout_us) {
                Some(settled_to) => self
                    .probes
                    .iter()
                    .filter(|p| p.sent_us >= from && p.sent_us <= settled_to)
                    .count(),
                None => 0,
            };
            return Measurements {
                measured: u32::try_from(lost).unwrap_or(u32::MAX),
                loss: if lost > 0 { 1.0 } else { 0.0 },
                ..Measurements::default()
            };
        };
        let mut measured = 0u32;
        let mut lost = 0u32;
        let mut answered = 0u32;
        let mut reordered = 0u32;
        let mut rtt_sum = 0u64;
        let mut delta_sum = 0u64;
        let mut deltas = 0u32;
        let mut prev: Option<u64> = None;
        for p in self.probes.iter().filter(|p| p.sent_us >= from) {
            if p.sent_us <= settled_to {
                measured += 1;
                if p.rtt_us.is_none() {
                    lost += 1;
                }
            }
            if let Some(r) = p.rtt_us {
                answered += 1;
                rtt_sum += r;
                if p.reordered {
                    reordered += 1;
                }
                // RFC 3550 jitter compares consecutive packets' transit times; with a
                // round trip the consecutive RTTs play that part.
                if let Some(q) = prev {
                    delta_sum += r.abs_diff(q);
                    deltas += 1;
                }
                prev = Some(r);
            }
        }
        if measured == 0 {
            return Measurements::default();
        }
        Measurements {
            measured,
            loss: f64::from(lost) / f64::from(measured),
            latency: Duration::from_micros(if answered > 0 {
                rtt_sum / u64::from(answered)
            } else {
                0
            }),
            jitter: Duration::from_micros(if deltas > 0 {
                delta_sum / u64::from(deltas)
            } else {
                0
            }),
            reorder: if answered > 0 {
                f64::from(reordered) / f64::from(answered)
            } else {
                0.0
            },
        }
    }

    /// Loss among the probes sent in `[now - span - timeout, now - timeout]`: the recent
    /// past whose fate is known, for fast Down detection.
    pub fn recent_loss(&self, span: Duration, now_us: u64) -> Option<f64> {
        let to = now_us.saturating_sub(self.timeout_us);
        let from = to
            .saturating_sub(span.as_micros() as u64)
            .max(self.first_answered_us.unwrap_or(u64::MAX));
        let mut n = 0u32;
        let mut lost = 0u32;
        for p in self
            .probes
            .iter()
            .filter(|p| p.sent_us >= from && p.sent_us <= to)
        {
            n += 1;
            if p.rtt_us.is_none() {
                lost += 1;
            }
        }
        (n > 0).then(|| f64::from(lost) / f64::from(n))
    }

    /// How many of the newest settled probes (sent at least `timeout` ago) are lost in a
    /// row: BFD's detection counter. Like `measure`, it looks no further back than the
    /// window nor before the first probe answered since the last restart (earlier probes
    /// went into a tunnel not up yet), so a tunnel never answered has no run, and one that
    /// came back has a run only of probes lost since it did.
    pub fn consecutive_lost(&self, now_us: u64) -> u32 {
        let Some(from) = self.measured_from(now_us) else {
            return 0;
        };
        let settled_to = now_us.saturating_sub(self.timeout_us);
        let run = self
            .probes
            .iter()
            .rev()
            .skip_while(|p| p.sent_us > settled_to)
            .take_while(|p| p.sent_us >= from && p.rtt_us.is_none())
            .count();
        u32::try_from(run).unwrap_or(u32::MAX)
    }

    /// The recent past the Down rules look at: `recent_loss` over `span`, the run of
    /// `consecutive_lost` and the loss before it.
    pub fn recent(&self, span: Duration, now_us: u64) -> Recent {
        let run = self.consecutive_lost(now_us);
        let mut settled = 0u32;
        let mut lost = 0u32;
        if let Some(from) = self.measured_from(now_us) {
            let settled_to = now_us.saturating_sub(self.timeout_us);
            for p in self
                .probes
                .iter()
                .filter(|p| p.sent_us >= from && p.sent_us <= settled_to)
            {
                settled += 1;
                if p.rtt_us.is_none() {
                    lost += 1;
                }
            }
        }
        // The run is the newest of these settled probes, all lost.
        let before = settled.saturating_sub(run);
        Recent {
            loss: self.recent_loss(span, now_us),
            lost_in_a_row: run,
            loss_before_run: if before > 0 {
                f64::from(lost.saturating_sub(run)) / f64::from(before)
            } else {
                0.0
            },
        }
    }

    /// Where the measured probes start: the window's start, or the first probe answered
    /// since the last restart if later; None while none is.
    fn measured_from(&self, now_us: u64) -> Option<u64> {
        let first = self.first_answered_us?;
        Some(self.window_start(now_us).max(first))
    }

    /// The oldest send time the window covers: its length, plus the timeout its last
    /// probes need to settle.
    fn window_start(&self, now_us: u64) -> u64 {
        now_us.saturating_sub(self.window_us + self.timeout_us)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TunnelState {
    Established,
    Degraded,
    Down,
}

impl TunnelState {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelState::Established => "Established",
            TunnelState::Degraded => "Degraded",
            TunnelState::Down => "Down",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub degraded_loss: f64,
    pub degraded_latency: Duration,
    pub down_loss: f64,
    /// Lost probes in a row that make a tunnel Down (BFD's detect multiplier); 0 is taken
    /// as 1.
    pub down_consecutive: u32,
    /// Intervals a better state must hold before the tunnel moves to it.
    pub recover_intervals: u32,
    /// A measure must fall this far below a threshold (fraction of it) to count as better.
    pub margin: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            degraded_loss: 0.05,
            degraded_latency: Duration::from_millis(400),
            down_loss: 0.9,
            // Failover must cost at most 1 s. With the default probes (one every 100 ms,
            // timeout 500 ms) a dead tunnel is Down (3 − 1) × 100 + 500 = 700 ms after its
            // first lost probe, which is sent within 100 ms of the failure, and the check
            // runs at the next probe: 0.7–0.9 s. A fourth probe would make it 1.0 s and
            // leave nothing for the data plane. Three in a row by chance: 1e-6 per probe
            // at 1 % random loss, one false Down per tunnel in about 28 h at 10 probes/s
            // (see ADR 0008).
            down_consecutive: 3,
            recover_intervals: 3,
            margin: 0.2,
        }
    }
}

/// The state of a tunnel from its measurements, evaluated once per probe interval and,
/// for worse states only, at every probe. Worse states are entered at once (the controller
/// must react within a fraction of an interval); better ones only after `recover_intervals`
/// consecutive intervals clear of the threshold by `margin`.
#[derive(Debug, Clone)]
pub struct Health {
    state: TunnelState,
    better_for: u32,
    /// Whether the tunnel was ever better than Down: a new tunnel that answers cleanly is
    /// usable at once, the hysteresis guards recoveries.
    ever_up: bool,
    pub transitions: BTreeMap<TunnelState, u64>,
}

impl Default for Health {
    fn default() -> Self {
        // A new tunnel is Down until probes answer.
        Health {
            state: TunnelState::Down,
            better_for: 0,
            ever_up: false,
            transitions: BTreeMap::new(),
        }
    }
}

impl Health {
    pub fn state(&self) -> TunnelState {
        self.state
    }

    /// Called once per interval. `r` is the recent past (fast Down); `m` the window's.
    pub fn update(&mut self, m: &Measurements, r: &Recent, t: &Thresholds) -> TunnelState {
        let entering = Self::entering(m, r, t);
        // The state the measurements are clearly in, thresholds lowered by the margin.
        let keep = 1.0 - t.margin;
        let recent = r.loss.unwrap_or(m.loss);
        // A run of losses has no margin: it is there or not.
        let clear = if m.measured == 0 || recent >= t.down_loss * keep || Self::run_is_down(r, t) {
            TunnelState::Down
        } else if m.loss >= t.degraded_loss * keep
            || m.latency.as_secs_f64() >= t.degraded_latency.as_secs_f64() * keep
        {
            TunnelState::Degraded
        } else {
            TunnelState::Established
        };
        if entering > self.state {
            self.set(entering);
        } else if clear < self.state {
            self.better_for += 1;
            if self.better_for >= t.recover_intervals || !self.ever_up {
                self.set(clear);
            }
        } else {
            self.better_for = 0;
        }
        self.state
    }

    /// Called between intervals, at every probe: enters a worse state at once (the
    /// controller must not wait up to an interval for a failure) and never a better one,
    /// so the hysteresis still counts whole intervals. Returns whether the state changed.
    pub fn worsen(&mut self, m: &Measurements, r: &Recent, t: &Thresholds) -> bool {
        let entering = Self::entering(m, r, t);
        if entering > self.state {
            self.set(entering);
            return true;
        }
        false
    }

    fn entering(m: &Measurements, r: &Recent, t: &Thresholds) -> TunnelState {
        let recent = r.loss.unwrap_or(m.loss);
        if m.measured == 0 || recent >= t.down_loss || Self::run_is_down(r, t) {
            TunnelState::Down
        } else if m.loss >= t.degraded_loss || m.latency >= t.degraded_latency {
            TunnelState::Degraded
        } else {
            TunnelState::Established
        }
    }

    /// BFD's rule. A tunnel that loses probes by itself has runs by chance: at 30 % loss
    /// three in a row come about every 50 probes (5 s at the default rate), and such a
    /// tunnel is Degraded, not Down, until the loss rule says otherwise.
    fn run_is_down(r: &Recent, t: &Thresholds) -> bool {
        r.lost_in_a_row >= t.down_consecutive.max(1) && r.loss_before_run < t.degraded_loss
    }

    fn set(&mut self, s: TunnelState) {
        self.ever_up |= s != TunnelState::Down;
        if s != self.state {
            *self.transitions.entry(s).or_default() += 1;
        }
        self.state = s;
        self.better_for = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1000;

    fn window() -> ProbeWindow {
        ProbeWindow::new(Duration::from_secs(5), Duration::from_secs(1))
    }

    #[test]
    fn probes_held_during_a_handshake_are_not_measured() {
        let mut w = window();
        // Sent every 100 ms into a tunnel with no WireGuard session for 2 s; the session
        // comes up at 2 s and WireGuard releases the held probes then.
        for seq in 0..20u64 {
            w.sent(seq, seq * 100 * MS);
        }
        let up = 1950 * MS;
        assert!(w.resume(up + 10 * MS), "first reply after silence restarts");
        for seq in 15..20u64 {
            assert_eq!(w.reply(seq, up + 10 * MS), ReplyVerdict::Stale);
        }
        // Then the path answers in 10 ms; later replies do not restart again.
        for seq in 20..60u64 {
            let t = seq * 100 * MS;
            w.sent(seq, t);
            assert!(!w.resume(t + 10 * MS));
            assert_eq!(w.reply(seq, t + 10 * MS), ReplyVerdict::Counted);
        }
        let m = w.measure(60 * 100 * MS);
        assert_eq!(m.latency, Duration::from_millis(10));
        assert_eq!(m.loss, 0.0);
    }

    #[test]
    fn a_path_back_after_an_outage_starts_a_clean_window() {
        let mut w = window();
        for seq in 0..30u64 {
            let t = seq * 100 * MS;
            w.sent(seq, t);
            w.reply(seq, t + 10 * MS);
        }
        // 2 s of outage, then answers again.
        for seq in 30..50u64 {
            w.sent(seq, seq * 100 * MS);
        }
        for seq in 50..80u64 {
            let t = seq * 100 * MS;
            w.sent(seq, t);
            w.resume(t + 10 * MS);
            w.reply(seq, t + 10 * MS);
        }
        let m = w.measure(80 * 100 * MS);
        assert_eq!(
            m.loss, 0.0,
            "the outage is told by Down, not carried on as loss"
        );
        assert!(m.measured > 0);
    }

    #[test]
    fn loss_latency_jitter_reorder() {
        let mut w = window();
        // 100 probes 10 ms apart; every 4th lost; RTT alternates 20 and 30 ms.
        for seq in 0..100u64 {
            let t = seq * 10 * MS;
            w.sent(seq, t);
        }
        for seq in 0..100u64 {
            if seq % 4 == 3 {
                continue;
            }
            let rtt = if seq % 2 == 0 { 20 } else { 30 } * MS;
            assert_eq!(w.reply(seq, seq * 10 * MS + rtt), ReplyVerdict::Counted);
        }
        let m = w.measure(100 * 10 * MS + 1100 * MS);
        assert_eq!(m.measured, 100);
        assert!((m.loss - 0.25).abs() < 1e-9);
        assert_eq!(
            m.latency,
            Duration::from_micros((50 * 20 + 25 * 30) * MS / 75)
        );
        // Answered RTTs run 20,30,20 | 20,30,20 | …: 50 deltas of 10 ms and 24 of 0.
        assert_eq!(m.jitter, Duration::from_micros(500 * MS / 74));
        assert_eq!(m.reorder, 0.0);
    }

    #[test]
    fn probes_before_the_first_reply_are_loss_only_until_one_is_answered() {
        let mut w = window();
        for s in 0..10 {
            w.sent(s, s * 100 * MS);
        }
        assert_eq!(
            w.measure(500 * MS).measured,
            0,
            "no timeout has passed yet: nothing measured"
        );
        let m = w.measure(3000 * MS);
        assert_eq!(
            (m.measured, m.loss),
            (10, 1.0),
            "never answered: all lost, not nothing measured"
        );
        w.sent(10, 1000 * MS);
        w.reply(10, 1001 * MS);
        let m = w.measure(2500 * MS);
        assert_eq!((m.measured, m.loss), (1, 0.0));
    }

    #[test]
    fn pending_probes_are_not_losses_yet() {
        let mut w = window();
        w.sent(1, 0);
        w.sent(2, 500 * MS);
        w.reply(1, 20 * MS);
        let m = w.measure(600 * MS);
        assert_eq!(
            (m.measured, m.loss),
            (1, 0.0),
            "probe 2 is within its timeout"
        );
    }

    #[test]
    fn loss_is_not_biased_by_pending_probes() {
        let mut w = window();
        // 10 probes a second for 10 s, every 10th lost, the others answered after 1 ms.
        for seq in 0..100u64 {
            w.sent(seq, seq * 100 * MS);
            if seq % 10 != 0 {
                w.reply(seq, seq * 100 * MS + MS);
            }
        }
        let m = w.measure(9950 * MS);
        assert!((m.loss - 0.1).abs() < 0.005, "{m:?}");
    }

    #[test]
    fn forged_late_duplicate_replies_are_not_counted() {
        let mut w = window();
        w.sent(1, 0);
        w.sent(2, 10 * MS);
        assert_eq!(w.reply(99, 20 * MS), ReplyVerdict::Unknown);
        assert_eq!(w.reply(1, 30 * MS), ReplyVerdict::Counted);
        assert_eq!(w.reply(1, 31 * MS), ReplyVerdict::Duplicate);
        assert_eq!(w.reply(2, 2000 * MS), ReplyVerdict::Late);
        let m = w.measure(3000 * MS);
        assert_eq!((m.measured, m.loss), (2, 0.5));
    }

    #[test]
    fn reordering() {
        let mut w = window();
        for s in 0..4 {
            w.sent(s, s * MS);
        }
        w.reply(0, 10 * MS);
        w.reply(2, 12 * MS);
        w.reply(1, 13 * MS); // overtaken by 2
        w.reply(3, 14 * MS);
        let m = w.measure(2000 * MS);
        assert!((m.reorder - 0.25).abs() < 1e-9);
    }

    #[test]
    fn window_slides() {
        let mut w = window();
        for s in 0..1000u64 {
            w.sent(s, s * 100 * MS);
            if s >= 500 {
                w.reply(s, s * 100 * MS + 5 * MS);
            }
        }
        // Only the last 5 s (50 probes) count: all answered.
        let m = w.measure(1000 * 100 * MS);
        assert_eq!(m.loss, 0.0);
        assert!(w.probes.len() <= 70);
    }

    fn m(loss: f64, latency_ms: u64) -> Measurements {
        Measurements {
            measured: 50,
            loss,
            latency: Duration::from_millis(latency_ms),
            ..Default::default()
        }
    }

    /// The recent past of a tunnel losing `loss` of its probes, none of them in a run.
    fn recent(loss: f64) -> Recent {
        Recent {
            loss: Some(loss),
            ..Recent::default()
        }
    }

    #[test]
    fn health_hysteresis() {
        let t = Thresholds::default();
        let mut h = Health::default();
        assert_eq!(h.state(), TunnelState::Down);
        // A new tunnel that answers cleanly is Established at once.
        assert_eq!(
            h.update(&m(0.0, 20), &recent(0.0), &t),
            TunnelState::Established
        );
        // Worse: at once.
        assert_eq!(
            h.update(&m(0.06, 20), &recent(0.06), &t),
            TunnelState::Degraded
        );
        // Oscillating around the threshold (5 % ± 1) never goes back to Established.
        for i in 0..20 {
            let loss = if i % 2 == 0 { 0.045 } else { 0.055 };
            assert_eq!(
                h.update(&m(loss, 20), &recent(loss), &t),
                TunnelState::Degraded
            );
        }
        assert_eq!(h.transitions.get(&TunnelState::Established), Some(&1));
        // Total loss in the last interval: Down at once.
        assert_eq!(h.update(&m(0.2, 20), &recent(1.0), &t), TunnelState::Down);
        // Recovering from Down takes 3 clear intervals.
        assert_eq!(h.update(&m(0.0, 20), &recent(0.0), &t), TunnelState::Down);
        assert_eq!(h.update(&m(0.0, 20), &recent(0.0), &t), TunnelState::Down);
        assert_eq!(
            h.update(&m(0.0, 20), &recent(0.0), &t),
            TunnelState::Established
        );
        // High latency alone degrades.
        let mut h = Health::default();
        for _ in 0..3 {
            h.update(&m(0.0, 500), &recent(0.0), &t);
        }
        assert_eq!(h.state(), TunnelState::Degraded);
    }

    #[test]
    fn between_intervals_only_worse() {
        let t = Thresholds::default();
        let mut h = Health::default();
        h.update(&m(0.0, 20), &recent(0.0), &t);
        assert!(!h.worsen(&m(0.0, 20), &recent(0.0), &t));
        assert!(h.worsen(&m(0.06, 20), &recent(0.06), &t));
        assert_eq!(h.state(), TunnelState::Degraded);
        // Clean again between intervals: no recovery, and it does not count toward one.
        for _ in 0..10 {
            assert!(!h.worsen(&m(0.0, 20), &recent(0.0), &t));
        }
        assert_eq!(h.state(), TunnelState::Degraded);
        assert!(h.worsen(&m(0.2, 20), &recent(0.95), &t));
        assert_eq!(h.state(), TunnelState::Down);
        assert_eq!(h.update(&m(0.0, 20), &recent(0.0), &t), TunnelState::Down);
    }

    #[test]
    fn a_run_counts_the_newest_settled_probes_lost_back_to_the_last_answer() {
        let mut w = window();
        // Answered, lost, answered, then four lost: 100 ms apart, timeout 1 s.
        for seq in 0..7u64 {
            w.sent(seq, seq * 100 * MS);
        }
        w.reply(0, 10 * MS);
        w.reply(2, 210 * MS);
        assert_eq!(w.consecutive_lost(1600 * MS), 4, "probes 3 to 6");
        assert_eq!(w.consecutive_lost(1400 * MS), 2, "probes 5 and 6 pending");
        let r = w.recent(Duration::from_secs(1), 1600 * MS);
        assert_eq!(r.lost_in_a_row, 4);
        assert!((r.loss_before_run - 1.0 / 3.0).abs() < 1e-9, "{r:?}");
    }

    #[test]
    fn a_late_reply_leaves_its_probe_in_the_run() {
        let mut w = window();
        for seq in 0..3u64 {
            w.sent(seq, seq * 100 * MS);
        }
        w.reply(0, 10 * MS);
        assert_eq!(w.reply(1, 1150 * MS), ReplyVerdict::Late);
        assert_eq!(w.consecutive_lost(1300 * MS), 2);
    }

    #[test]
    fn a_tunnel_never_answered_has_no_run() {
        let mut w = window();
        for seq in 0..30u64 {
            w.sent(seq, seq * 100 * MS);
        }
        assert_eq!(w.consecutive_lost(5000 * MS), 0);
        assert_eq!(w.recent(Duration::from_secs(1), 5000 * MS).lost_in_a_row, 0);
    }

    #[test]
    fn a_run_holds_no_probe_from_before_the_tunnel_came_back() {
        let mut w = window();
        // Up, then 2 s of outage, then the path answers again from 5 s on.
        for seq in 0..10u64 {
            w.sent(seq, seq * 100 * MS);
            w.reply(seq, seq * 100 * MS + 5 * MS);
        }
        for seq in 10..50u64 {
            w.sent(seq, seq * 100 * MS);
        }
        assert_eq!(w.consecutive_lost(5000 * MS), 31, "probes 10 to 40 settled");
        assert!(w.resume(5005 * MS));
        w.sent(50, 5010 * MS);
        w.reply(50, 5015 * MS);
        w.sent(51, 5110 * MS);
        w.sent(52, 5210 * MS);
        assert_eq!(
            w.consecutive_lost(6300 * MS),
            2,
            "the outage's probes are not counted again"
        );
    }

    #[test]
    fn a_run_looks_no_further_back_than_the_window() {
        let mut w = window();
        w.sent(0, 0);
        w.reply(0, 5 * MS);
        // 10 s dead: the window is 5 s, and only its settled probes make the run.
        for seq in 1..100u64 {
            w.sent(seq, seq * 100 * MS);
        }
        let now = 10_000 * MS;
        let m = w.measure(now);
        let r = w.recent(Duration::from_secs(1), now);
        assert_eq!(r.lost_in_a_row, m.measured, "{r:?} {m:?}");
        assert_eq!(r.loss_before_run, 0.0);
    }

    /// The recent past of a tunnel whose newest `run` probes are lost, `before` of the
    /// others.
    fn run(run: u32, before: f64) -> Recent {
        Recent {
            loss: Some(0.3),
            lost_in_a_row: run,
            loss_before_run: before,
        }
    }

    #[test]
    fn a_clean_tunnel_is_down_at_its_third_lost_probe_in_a_row() {
        let t = Thresholds::default();
        let mut h = Health::default();
        h.update(&m(0.0, 20), &recent(0.0), &t);
        assert!(!h.worsen(&m(0.04, 20), &run(2, 0.0), &t));
        assert_eq!(h.state(), TunnelState::Established);
        assert!(h.worsen(&m(0.06, 20), &run(3, 0.0), &t));
        assert_eq!(h.state(), TunnelState::Down);
        // Recovery keeps its hysteresis, and a run at an evaluation is no clear interval.
        assert_eq!(h.update(&m(0.0, 20), &recent(0.0), &t), TunnelState::Down);
        assert_eq!(h.update(&m(0.0, 20), &run(3, 0.0), &t), TunnelState::Down);
        for _ in 0..2 {
            assert_eq!(h.update(&m(0.0, 20), &recent(0.0), &t), TunnelState::Down);
        }
        assert_eq!(
            h.update(&m(0.0, 20), &recent(0.0), &t),
            TunnelState::Established
        );
    }

    #[test]
    fn a_tunnel_that_loses_probes_by_itself_is_not_down_for_a_run_of_them() {
        let t = Thresholds::default();
        let mut h = Health::default();
        assert_eq!(
            h.update(&m(0.3, 20), &run(3, 0.28), &t),
            TunnelState::Degraded
        );
        assert!(!h.worsen(&m(0.3, 20), &run(5, 0.28), &t));
        assert_eq!(
            h.update(&m(0.3, 20), &run(4, 0.28), &t),
            TunnelState::Degraded
        );
        // Its loss rule still holds.
        assert!(h.worsen(
            &m(0.4, 20),
            &Recent {
                loss: Some(0.9),
                ..run(12, 0.28)
            },
            &t
        ));
        assert_eq!(h.state(), TunnelState::Down);
    }

    #[test]
    fn a_zero_run_length_is_taken_as_one() {
        let t = Thresholds {
            down_consecutive: 0,
            ..Thresholds::default()
        };
        let mut h = Health::default();
        h.update(&m(0.0, 20), &recent(0.0), &t);
        assert!(!h.worsen(&m(0.0, 20), &recent(0.0), &t), "no run, no Down");
        assert!(h.worsen(&m(0.02, 20), &run(1, 0.0), &t));
    }

    /// One tunnel as the engine drives it, in virtual time: every `spacing` a check then
    /// a probe, every `interval` an evaluation first; the peer answers after `rtt` until
    /// `dead_from`, after which nothing comes back (a probe whose reply would arrive later
    /// is lost). Returns when the tunnel went Down, and when its first lost probe was sent.
    struct Run {
        spacing: u64,
        interval: u64,
        window: u64,
        timeout: u64,
        consecutive: u32,
        rtt: u64,
        dead_from: u64,
    }

    impl Run {
        fn down_at(&self) -> (u64, u64) {
            let t = Thresholds {
                down_consecutive: self.consecutive,
                ..Thresholds::default()
            };
            let mut w = ProbeWindow::new(
                Duration::from_micros(self.window),
                Duration::from_micros(self.timeout),
            );
            let mut h = Health::default();
            let mut replies = VecDeque::new();
            let mut first_lost = None;
            let mut up = false;
            let mut seq = 0;
            let mut now = 0;
            while now < self.dead_from + 10 * self.interval {
                while let Some(&(at, q)) = replies.front().filter(|(at, _)| *at <= now) {
                    replies.pop_front();
                    if h.state() == TunnelState::Down {
                        w.resume(at);
                    }
                    w.reply(q, at);
                }
                let span = Duration::from_micros(self.interval);
                if now % self.interval == 0 {
                    let m = w.measure(now);
                    h.update(&m, &w.recent(span, now), &t);
                }
                let m = w.measure(now);
                h.worsen(&m, &w.recent(span, now), &t);
                up |= h.state() != TunnelState::Down;
                if up && h.state() == TunnelState::Down {
                    assert!(now >= self.dead_from, "Down at {now} µs before the failure");
                    return (now, first_lost.expect("a probe lost"));
                }
                w.sent(seq, now);
                if now + self.rtt < self.dead_from {
                    replies.push_back((now + self.rtt, seq));
                } else {
                    first_lost.get_or_insert(now);
                }
                seq += 1;
                now += self.spacing;
            }
            panic!("never Down");
        }
    }

    #[test]
    fn with_the_fast_setting_a_dead_tunnel_is_down_100ms_after_its_first_lost_probe() {
        // probe: {interval: 100ms, count: 5, timeout: 60ms, down: {consecutive: 3}}
        let (spacing, timeout) = (20 * MS, 60 * MS);
        let detection = 2 * spacing + timeout;
        assert_eq!(detection, 100 * MS);
        // Every phase of the failure against the probes, a millisecond apart.
        for phase in 0..20 {
            let dead_from = 3000 * MS + phase * MS;
            let (down, first_lost) = Run {
                spacing,
                interval: 100 * MS,
                window: 500 * MS,
                timeout,
                consecutive: 3,
                rtt: 5 * MS,
                dead_from,
            }
            .down_at();
            assert_eq!(down - first_lost, detection, "failure at {dead_from} µs");
            // The first lost probe is the one in flight or the next: within a spacing.
            assert!(
                down - dead_from <= detection + spacing,
                "failure at {dead_from} µs, Down at {down} µs"
            );
        }
    }

    #[test]
    fn with_the_defaults_a_dead_tunnel_is_down_within_900ms_between_evaluations() {
        let s = Thresholds::default();
        let (spacing, timeout) = (100 * MS, 500 * MS);
        let detection = u64::from(s.down_consecutive - 1) * spacing + timeout;
        assert_eq!(detection, 700 * MS);
        for phase in (0..100).step_by(7) {
            let dead_from = 5000 * MS + phase * MS;
            let (down, first_lost) = Run {
                spacing,
                interval: 1000 * MS,
                window: 5000 * MS,
                timeout,
                consecutive: s.down_consecutive,
                rtt: 20 * MS,
                dead_from,
            }
            .down_at();
            assert_eq!(down - first_lost, detection, "failure at {dead_from} µs");
            // The loss rule alone takes about 1.5 s: an interval of settled probes.
            assert!(
                down - dead_from <= detection + spacing,
                "failure at {dead_from} µs, Down at {down} µs"
            );
        }
    }

    #[test]
    fn a_tunnel_losing_30_percent_in_runs_of_three_stays_degraded() {
        let t = Thresholds::default();
        let mut w = window();
        let mut h = Health::default();
        // 10 probes a second; of every 10, the first three are lost. Its first run, before
        // any loss was seen, is a Down (nothing tells it from a failure); once its loss is
        // known, its runs are its loss, not a failure.
        for seq in 0..200u64 {
            let now = seq * 100 * MS;
            if seq % 10 == 0 {
                let m = w.measure(now);
                h.update(&m, &w.recent(Duration::from_secs(1), now), &t);
            }
            let m = w.measure(now);
            h.worsen(&m, &w.recent(Duration::from_secs(1), now), &t);
            if seq > 60 {
                assert_eq!(h.state(), TunnelState::Degraded, "at {seq}");
            }
            w.sent(seq, now);
            if seq % 10 >= 3 {
                w.reply(seq, now + 10 * MS);
            }
        }
        assert_eq!(h.transitions.get(&TunnelState::Down), Some(&1));
    }
}
