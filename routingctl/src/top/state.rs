//! What `routingctl top` shows, without I/O: the latest snapshot from the daemon, the
//! readings of each tunnel kept client-side for the sparklines, the link to the daemon,
//! and which pane is focused and scrolled where. Keys change it through [`State::key`].

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use gatewan_proto::v1;

/// Readings kept per tunnel: more than any sparkline column shows.
pub(crate) const HISTORY: usize = 120;

/// A bounded ring: the newest `cap` values, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct Ring<T> {
    cap: usize,
    values: VecDeque<T>,
}

impl<T: Copy> Ring<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Ring {
            cap: cap.max(1),
            values: VecDeque::with_capacity(cap.max(1)),
        }
    }

    pub(crate) fn push(&mut self, v: T) {
        if self.values.len() == self.cap {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }

    /// The newest `n` values (fewer when fewer were pushed), oldest first.
    pub(crate) fn last(&self, n: usize) -> impl Iterator<Item = T> + '_ {
        self.values
            .iter()
            .skip(self.values.len().saturating_sub(n))
            .copied()
    }
}

/// One snapshot's measurements of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub latency_us: u32,
    pub loss_ppm: u32,
}

/// The readings of every tunnel of the latest snapshot, by tunnel id (tunnels gone from
/// the snapshot are forgotten, so the history stays as large as the mesh).
#[derive(Debug, Default)]
pub(crate) struct History {
    cap: usize,
    by_tunnel: HashMap<String, Ring<Reading>>,
}

impl History {
    pub(crate) fn new(cap: usize) -> Self {
        History {
            cap,
            by_tunnel: HashMap::new(),
        }
    }

    /// Appends one reading per tunnel of a snapshot.
    pub(crate) fn record(&mut self, tunnels: &[v1::TopTunnel]) {
        self.by_tunnel
            .retain(|id, _| tunnels.iter().any(|t| &t.id == id));
        for t in tunnels {
            self.by_tunnel
                .entry(t.id.clone())
                .or_insert_with(|| Ring::new(self.cap))
                .push(Reading {
                    latency_us: t.latency_us,
                    loss_ppm: t.loss_ppm,
                });
        }
    }

    pub(crate) fn of(&self, tunnel: &str) -> Option<&Ring<Reading>> {
        self.by_tunnel.get(tunnel)
    }
}

/// The link to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    Connected,
    /// The stream ended or could not be opened; top retries every second.
    Reconnecting {
        attempts: u32,
        error: String,
    },
}

/// The panes, in the order Tab visits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pane {
    Members,
    Peers,
    Tunnels,
    Chosen,
}

impl Pane {
    pub(crate) const ALL: [Pane; 4] = [Pane::Members, Pane::Peers, Pane::Tunnels, Pane::Chosen];

    fn index(self) -> usize {
        Pane::ALL.iter().position(|p| *p == self).unwrap_or(0)
    }
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Quit,
    Redraw,
    Nothing,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Where the daemon is (its socket or server), for the header.
    pub target: String,
    pub interval: Duration,
    pub snapshot: Option<v1::TopSnapshot>,
    pub history: History,
    pub link: Link,
    pub focus: Pane,
    /// First row shown, per pane (`Pane::ALL` order).
    pub scroll: [usize; 4],
}

impl State {
    pub(crate) fn new(target: String, interval: Duration) -> Self {
        State {
            target,
            interval,
            snapshot: None,
            history: History::new(HISTORY),
            link: Link::Connected,
            focus: Pane::Tunnels,
            scroll: [0; 4],
        }
    }

    /// A snapshot arrived: the link is up.
    pub(crate) fn apply(&mut self, s: v1::TopSnapshot) {
        self.history.record(&s.tunnels);
        self.snapshot = Some(s);
        self.link = Link::Connected;
        for p in Pane::ALL {
            let max = self.rows(p).saturating_sub(1);
            let i = p.index();
            self.scroll[i] = self.scroll[i].min(max);
        }
    }

    /// The stream ended or a reconnection failed.
    pub(crate) fn lost(&mut self, error: String) {
        let attempts = match &self.link {
            Link::Connected => 0,
            Link::Reconnecting { attempts, .. } => attempts.saturating_add(1),
        };
        self.link = Link::Reconnecting { attempts, error };
    }

    /// Rows of a pane's table.
    pub(crate) fn rows(&self, p: Pane) -> usize {
        let Some(s) = &self.snapshot else { return 0 };
        match p {
            Pane::Members => s.members.len(),
            Pane::Peers => s.peers.len(),
            Pane::Tunnels => s.tunnels.len(),
            Pane::Chosen => s.remotes.len(),
        }
    }

    pub(crate) fn scroll_of(&self, p: Pane) -> usize {
        self.scroll[p.index()]
    }

    pub(crate) fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::Nothing;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let focus = self.focus.index();
        let max = self.rows(self.focus).saturating_sub(1);
        let scroll = &mut self.scroll[focus];
        match k.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => return Action::Quit,
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Tab => self.focus = Pane::ALL[(focus + 1) % Pane::ALL.len()],
            KeyCode::BackTab => {
                self.focus = Pane::ALL[(focus + Pane::ALL.len() - 1) % Pane::ALL.len()]
            }
            KeyCode::Down | KeyCode::Char('j') => *scroll = (*scroll + 1).min(max),
            KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
            KeyCode::PageDown => *scroll = (*scroll + 10).min(max),
            KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => *scroll = 0,
            KeyCode::End | KeyCode::Char('G') => *scroll = max,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

/// Text from the network, made safe to draw: control characters (an escape sequence would
/// reach the terminal) become `?`, and it is cut at `max` characters.
pub(crate) fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > max {
        out.pop();
        out.push('…');
    }
    out
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A sparkline of `values` (oldest first) in at most `width` characters, right-aligned so
/// the newest reading is always in the last column. The scale is 0 ..= the larger of the
/// largest value shown and `floor` (so a steady 1 ms does not look like a wall).
pub(crate) fn sparkline(values: &[u64], width: usize, floor: u64) -> String {
    let shown = &values[values.len().saturating_sub(width)..];
    let top = shown.iter().copied().max().unwrap_or(0).max(floor).max(1);
    let mut out = " ".repeat(width - shown.len());
    for &v in shown {
        // 0 → lowest bar, top → highest; u128 so no value from the network overflows.
        let level = (u128::from(v.min(top)) * 7).div_ceil(u128::from(top));
        out.push(BARS[usize::try_from(level).unwrap_or(7).min(7)]);
    }
    out
}

/// A latency in microseconds as people read it.
pub(crate) fn latency(us: u32) -> String {
    if us >= 1_000_000 {
        format!("{:.1}s", f64::from(us) / 1e6)
    } else {
        format!("{:.1}ms", f64::from(us) / 1e3)
    }
}

/// A loss in parts per million, as a percentage (bounded: the value is the network's).
pub(crate) fn loss(ppm: u32) -> String {
    format!("{:.1}%", f64::from(ppm.min(1_000_000)) / 1e4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel(id: &str, latency_us: u32, loss_ppm: u32) -> v1::TopTunnel {
        v1::TopTunnel {
            id: id.into(),
            latency_us,
            loss_ppm,
            ..Default::default()
        }
    }

    #[test]
    fn a_ring_keeps_the_newest_values() {
        let mut r = Ring::new(3);
        for v in 1..=5 {
            r.push(v);
        }
        assert_eq!(r.last(usize::MAX).count(), 3);
        assert_eq!(r.last(10).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(r.last(2).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn history_follows_the_tunnels_of_the_latest_snapshot() {
        let mut h = History::new(4);
        h.record(&[tunnel("a", 1000, 0), tunnel("b", 2000, 0)]);
        h.record(&[tunnel("a", 1500, 10_000)]);
        let a: Vec<Reading> = h.of("a").unwrap().last(10).collect();
        assert_eq!(
            a,
            [
                Reading {
                    latency_us: 1000,
                    loss_ppm: 0
                },
                Reading {
                    latency_us: 1500,
                    loss_ppm: 10_000
                }
            ]
        );
        assert!(h.of("b").is_none(), "a tunnel gone is forgotten");
    }

    #[test]
    fn sparklines_scale_and_align_right() {
        assert_eq!(sparkline(&[], 4, 1), "    ");
        assert_eq!(sparkline(&[0, 100], 4, 1), "  ▁█");
        // Below the floor a value stays low.
        assert_eq!(sparkline(&[10, 10], 2, 1000), "▂▂");
        // Only the newest `width` readings, whatever came before.
        assert_eq!(sparkline(&[1000, 0, 0, 7], 3, 1), "▁▁█");
        // Values from the network cannot overflow or index out of the bars.
        assert_eq!(sparkline(&[u64::MAX, 0], 2, 0), "█▁");
    }

    #[test]
    fn network_text_cannot_reach_the_terminal_raw() {
        assert_eq!(clean("gw\x1b[2Jx", 20), "gw?[2Jx");
        assert_eq!(clean("abcdef", 4), "abc…");
        assert_eq!(clean("abcd", 4), "abcd");
    }

    #[test]
    fn units() {
        assert_eq!(latency(12_345), "12.3ms");
        assert_eq!(latency(2_500_000), "2.5s");
        assert_eq!(loss(15_000), "1.5%");
        assert_eq!(loss(u32::MAX), "100.0%");
    }

    #[test]
    fn keys_quit_switch_panes_and_scroll_within_bounds() {
        let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
        let mut s = State::new("sock".into(), Duration::from_secs(1));
        s.apply(v1::TopSnapshot {
            tunnels: (0..3).map(|i| tunnel(&i.to_string(), 0, 0)).collect(),
            ..Default::default()
        });
        assert_eq!(s.key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(
            s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(s.focus, Pane::Tunnels);
        for _ in 0..5 {
            s.key(key(KeyCode::Down));
        }
        assert_eq!(s.scroll_of(Pane::Tunnels), 2, "stops at the last row");
        s.key(key(KeyCode::Tab));
        assert_eq!(s.focus, Pane::Chosen);
        s.key(key(KeyCode::BackTab));
        s.key(key(KeyCode::Home));
        assert_eq!(s.scroll_of(Pane::Tunnels), 0);
        // Fewer rows in the next snapshot: the scroll follows.
        s.key(key(KeyCode::End));
        s.apply(v1::TopSnapshot::default());
        assert_eq!(s.scroll_of(Pane::Tunnels), 0);
    }

    #[test]
    fn reconnection_attempts_are_counted() {
        let mut s = State::new("sock".into(), Duration::from_secs(1));
        s.lost("stream ended".into());
        s.lost("refused".into());
        assert_eq!(
            s.link,
            Link::Reconnecting {
                attempts: 1,
                error: "refused".into()
            }
        );
        s.apply(v1::TopSnapshot::default());
        assert_eq!(s.link, Link::Connected);
    }
}
