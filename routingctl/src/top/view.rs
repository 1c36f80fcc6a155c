//! Drawing `routingctl top` from a [`State`], pure: the same function draws the terminal,
//! `--once`'s text and the unit tests' `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, Wrap};

use gatewan_proto::v1;

use super::state::{Link, Pane, State, clean, latency, loss, sparkline};
use crate::output::{rate, role, state as member_state, uptime};

/// Below this the panes do not fit: a message says so instead.
pub(crate) const MIN_WIDTH: u16 = 80;
pub(crate) const MIN_HEIGHT: u16 = 20;

/// Width of each sparkline column.
const SPARK: usize = 16;
/// Longest name (gatewan, datacenter, error…) drawn from the network.
const NAME: usize = 40;

pub(crate) fn draw(frame: &mut Frame, state: &State) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small: {}x{}, routingctl top needs {MIN_WIDTH}x{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let s = state.snapshot.as_ref();
    let count = |p| state.rows(p) as u16;
    let top_rows = count(Pane::Members).max(count(Pane::Peers));
    let [header, upper, tunnels, chosen] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length((top_rows + 3).clamp(4, 12)),
        Constraint::Min(5),
        Constraint::Length((count(Pane::Chosen) + 3).clamp(4, 10)),
    ])
    .areas(area);
    let [members, peers] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(upper);
    draw_header(frame, header, state);
    let Some(s) = s else {
        frame.render_widget(
            Paragraph::new("waiting for the first snapshot").block(Block::bordered()),
            upper,
        );
        return;
    };
    draw_members(frame, members, state, s);
    draw_peers(frame, peers, state, s);
    draw_tunnels(frame, tunnels, state, s);
    draw_chosen(frame, chosen, state, s);
}

fn draw_header(frame: &mut Frame, area: Rect, state: &State) {
    let [title, status] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let who = match &state.snapshot {
        Some(s) => format!("{} ({})", clean(&s.name, NAME), clean(&s.datacenter, NAME)),
        None => "-".into(),
    };
    let at = state
        .snapshot
        .as_ref()
        .and_then(|s| u64::try_from(s.at_unix_ms).ok())
        .map(|ms| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|| "-".into());
    frame.render_widget(
        Line::from(vec![
            Span::styled("routingctl top", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  {who}  {at}  every {}",
                humantime::format_duration(state.interval)
            )),
        ]),
        title,
    );
    let link = match &state.link {
        Link::Connected => Span::styled(
            format!("connected to {}", state.target),
            Style::new().fg(Color::Green),
        ),
        Link::Reconnecting { attempts, error } => Span::styled(
            format!(
                "RECONNECTING to {} (attempt {}): {}; showing the last snapshot",
                state.target,
                attempts + 1,
                clean(error, 200)
            ),
            Style::new()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ),
    };
    let keys = Span::styled(
        "  q quit · tab pane · ↑↓ PgUp PgDn scroll",
        Style::new().fg(Color::DarkGray),
    );
    frame.render_widget(Line::from(vec![link, keys]), status);
}

fn block(title: String, state: &State, pane: Pane) -> Block<'static> {
    let style = if state.focus == pane {
        Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let total = state.rows(pane);
    let first = state.scroll_of(pane);
    let title = if first > 0 {
        format!(" {title} ({total}, from {}) ", first + 1)
    } else {
        format!(" {title} ({total}) ")
    };
    Block::new()
        .borders(Borders::ALL)
        .border_style(style)
        .title(title)
}

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::new().add_modifier(Modifier::BOLD))
}

fn state_style(s: &str) -> Style {
    match s {
        "Established" | "alive" => Style::new().fg(Color::Green),
        "Degraded" | "suspect" | "Connect" | "Active" | "OpenSent" | "OpenConfirm" => {
            Style::new().fg(Color::Yellow)
        }
        _ => Style::new().fg(Color::Red),
    }
}

fn draw_members(frame: &mut Frame, area: Rect, state: &State, s: &v1::TopSnapshot) {
    let rows = s
        .members
        .iter()
        .skip(state.scroll_of(Pane::Members))
        .map(|m| {
            let st = if m.revoked {
                "revoked"
            } else {
                member_state(m.state)
            };
            let name = if m.name.is_empty() {
                clean(&m.id, NAME)
            } else {
                clean(&m.name, NAME)
            };
            Row::new(vec![
                Span::raw(format!("{}{name}", if m.local { "*" } else { " " })),
                Span::raw(clean(&m.datacenter, NAME)),
                Span::raw(role(m.role)),
                Span::styled(st, state_style(st)),
            ])
        });
    let table = Table::new(
        rows,
        [
            Constraint::Min(16),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(header(&[" NAME", "DC", "ROLE", "STATE"]))
    .block(block("members".into(), state, Pane::Members));
    frame.render_widget(table, area);
}

fn draw_peers(frame: &mut Frame, area: Rect, state: &State, s: &v1::TopSnapshot) {
    let rows = s.peers.iter().skip(state.scroll_of(Pane::Peers)).map(|p| {
        Row::new(vec![
            Span::raw(clean(&p.address, NAME)),
            Span::raw(p.asn.to_string()),
            Span::styled(clean(&p.state, 12), state_style(&p.state)),
            Span::raw(uptime(p.uptime_s)),
            Span::raw(p.prefixes_received.to_string()),
            Span::raw(p.prefixes_sent.to_string()),
            Span::raw(clean(&p.last_error, 200)),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Min(10),
        ],
    )
    .header(header(&[
        "PEER",
        "AS",
        "STATE",
        "UP",
        "IN",
        "OUT",
        "LAST ERROR",
    ]))
    .block(block("BGP sessions".into(), state, Pane::Peers));
    frame.render_widget(table, area);
}

fn draw_tunnels(frame: &mut Frame, area: Rect, state: &State, s: &v1::TopSnapshot) {
    let rows = s
        .tunnels
        .iter()
        .skip(state.scroll_of(Pane::Tunnels))
        .map(|t| {
            let readings: Vec<_> = state
                .history
                .of(&t.id)
                .map(|r| r.last(SPARK).collect())
                .unwrap_or_default();
            let lat: Vec<u64> = readings.iter().map(|r| u64::from(r.latency_us)).collect();
            let lost: Vec<u64> = readings.iter().map(|r| u64::from(r.loss_ppm)).collect();
            Row::new(vec![
                Span::raw(clean(&t.gatewan, NAME)),
                Span::raw(clean(&t.interface, 16)),
                Span::raw(clean(&t.peer, NAME)),
                Span::raw(format!(
                    "{}→{}",
                    clean(&t.local_transit, 16),
                    clean(&t.peer_transit, 16)
                )),
                Span::styled(clean(&t.state, 12), state_style(&t.state)),
                Span::raw(latency(t.latency_us)),
                // Floors: 1 ms of latency, 1 % of loss.
                Span::styled(sparkline(&lat, SPARK, 1_000), Style::new().fg(Color::Cyan)),
                Span::raw(loss(t.loss_ppm)),
                Span::styled(
                    sparkline(&lost, SPARK, 10_000),
                    Style::new().fg(Color::Magenta),
                ),
                Span::raw(if t.chosen { "chosen" } else { "" }),
            ])
        });
    let table = Table::new(
        rows,
        [
            Constraint::Min(14),
            Constraint::Length(9),
            Constraint::Min(14),
            Constraint::Min(13),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(SPARK as u16),
            Constraint::Length(6),
            Constraint::Length(SPARK as u16),
            Constraint::Length(6),
        ],
    )
    .header(header(&[
        "GATEWAN", "IFACE", "PEER", "TRANSITS", "STATE", "LATENCY", "", "LOSS", "", "",
    ]))
    .block(block("tunnels".into(), state, Pane::Tunnels));
    frame.render_widget(table, area);
}

fn draw_chosen(frame: &mut Frame, area: Rect, state: &State, s: &v1::TopSnapshot) {
    let title = format!("chosen tunnels of {}", clean(&s.name, NAME));
    if !s.decided {
        frame.render_widget(
            Paragraph::new("the controller has not decided yet (bgpctl is starting)").block(block(
                title,
                state,
                Pane::Chosen,
            )),
            area,
        );
        return;
    }
    let rows = s
        .remotes
        .iter()
        .skip(state.scroll_of(Pane::Chosen))
        .map(|r| {
            let short = if r.shortfall_bps > 0 {
                Span::styled(rate(r.shortfall_bps), Style::new().fg(Color::Red))
            } else {
                Span::raw("-")
            };
            let chosen: Vec<String> = r
                .chosen
                .iter()
                .map(|c| format!("{}/{}", clean(&c.gatewan, NAME), clean(&c.interface, 16)))
                .collect();
            let chosen = if chosen.is_empty() {
                Span::styled("none", Style::new().fg(Color::Red))
            } else {
                Span::raw(chosen.join(" "))
            };
            Row::new(vec![
                Span::raw(clean(&r.datacenter, NAME)),
                Span::raw(rate(r.required_bps)),
                Span::raw(rate(r.chosen_bps)),
                short,
                Span::raw(format!("{}/{}", r.healthy, r.candidates)),
                Span::raw(if r.pending { "yes" } else { "" }),
                chosen,
            ])
        });
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Min(20),
        ],
    )
    .header(header(&[
        "REMOTE DC",
        "REQUIRED",
        "CHOSEN",
        "SHORT",
        "HEALTHY",
        "PENDING",
        "CHOSEN TUNNELS",
    ]))
    .block(block(title, state, Pane::Chosen));
    frame.render_widget(table, area);
}

/// The frame as text, one line per row, trailing blanks trimmed: what `--once` prints.
pub(crate) fn to_text(buffer: &ratatui::buffer::Buffer) -> String {
    let area = buffer.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        for x in area.left()..area.right() {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Draws `state` on a `width` × `height` buffer, off screen.
pub(crate) fn render(state: &State, width: u16, height: u16) -> ratatui::buffer::Buffer {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut terminal = ratatui::Terminal::new(backend).expect("a test backend cannot fail");
    terminal
        .draw(|f| draw(f, state))
        .expect("a test backend cannot fail");
    terminal.backend().buffer().clone()
}

/// The height that shows every row of every pane at `width` (what `--once` uses).
pub(crate) fn full_height(state: &State) -> u16 {
    let rows = |p| state.rows(p) as u16;
    let upper = (rows(Pane::Members).max(rows(Pane::Peers)) + 3).clamp(4, 12);
    let chosen = (rows(Pane::Chosen) + 3).clamp(4, 10);
    (2 + upper + (rows(Pane::Tunnels) + 3).max(5) + chosen).max(MIN_HEIGHT)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn member(name: &str, dc: &str, role: v1::Role, state: v1::MemberState) -> v1::Member {
        v1::Member {
            name: name.into(),
            datacenter: dc.into(),
            role: role as i32,
            state: state as i32,
            ..Default::default()
        }
    }

    fn tunnel(iface: &str, transits: (&str, &str), state: &str, latency_us: u32) -> v1::TopTunnel {
        v1::TopTunnel {
            id: format!("id-{iface}"),
            gatewan: "gatewan01-sg1".into(),
            datacenter: "sg1".into(),
            interface: iface.into(),
            peer: "gatewan01-par1".into(),
            peer_datacenter: "par1".into(),
            local_transit: transits.0.into(),
            peer_transit: transits.1.into(),
            state: state.into(),
            latency_us,
            loss_ppm: if state == "Down" { 1_000_000 } else { 0 },
            chosen: state == "Established",
            ..Default::default()
        }
    }

    fn snapshot(cogent: &str) -> v1::TopSnapshot {
        v1::TopSnapshot {
            at_unix_ms: 1_796_410_841_000,
            name: "bgpctl-sg1".into(),
            datacenter: "sg1".into(),
            members: vec![
                member(
                    "gatewan01-sg1",
                    "sg1",
                    v1::Role::Gatewan,
                    v1::MemberState::Alive,
                ),
                member(
                    "gatewan01-par1",
                    "par1",
                    v1::Role::Gatewan,
                    v1::MemberState::Suspect,
                ),
            ],
            tunnels: vec![
                tunnel("sdwan10", ("lumen", "lumen"), "Established", 1_200),
                tunnel("sdwan11", ("cogent", "lumen"), cogent, 2_400),
            ],
            decided: true,
            remotes: vec![v1::TopRemote {
                datacenter: "par1".into(),
                required_bps: 1_000_000_000,
                chosen_bps: 500_000_000,
                shortfall_bps: 500_000_000,
                candidates: 2,
                healthy: 1,
                chosen: vec![v1::TopChosen {
                    gatewan: "gatewan01-sg1".into(),
                    interface: "sdwan10".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            peers: vec![v1::BgpPeer {
                address: "10.1.255.2".into(),
                asn: 65001,
                state: "Established".into(),
                uptime_s: 61,
                prefixes_received: 3,
                prefixes_sent: 2,
                ..Default::default()
            }],
        }
    }

    fn line_with<'a>(text: &'a str, needle: &str) -> &'a str {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
    }

    #[test]
    fn every_pane_shows_what_the_daemon_sent() {
        let mut state = State::new("/run/bgpctl/bgpctl.sock".into(), Duration::from_secs(1));
        state.apply(snapshot("Established"));
        let text = to_text(&render(&state, 160, 30));
        assert!(text.contains("bgpctl-sg1 (sg1)  2026-12-04T"), "{text}");
        assert!(
            text.contains("connected to /run/bgpctl/bgpctl.sock"),
            "{text}"
        );
        let m = line_with(&text, "gatewan01-par1  ");
        assert!(m.contains("par1") && m.contains("gatewan") && m.contains("suspect"));
        let p = line_with(&text, "10.1.255.2");
        assert!(p.contains("65001") && p.contains("Established") && p.contains("00:01:01"));
        let t = line_with(&text, "sdwan11");
        assert!(t.contains("cogent→lumen"), "{t}");
        assert!(t.contains("Established") && t.contains("2.4ms") && t.contains("0.0%"));
        let c = line_with(&text, "1.0 Gbps");
        assert!(c.contains("par1") && c.contains("500.0 Mbps") && c.contains("1/2"));
        assert!(c.contains("gatewan01-sg1/sdwan10"), "{c}");
    }

    #[test]
    fn a_failover_shows_in_the_state_and_the_sparklines() {
        let mut state = State::new("sock".into(), Duration::from_secs(1));
        for _ in 0..3 {
            state.apply(snapshot("Established"));
        }
        state.apply(snapshot("Down"));
        let text = to_text(&render(&state, 160, 30));
        let t = line_with(&text, "sdwan11");
        assert!(t.contains("Down") && t.contains("100.0%"), "{t}");
        // Three readings without loss, then one at 100 %.
        assert!(t.contains("▁▁▁█"), "{t}");
        // The other tunnel lost nothing.
        assert!(
            line_with(&text, "sdwan10").contains("▁▁▁▁ chosen"),
            "{text}"
        );
    }

    #[test]
    fn a_lost_stream_says_reconnecting_and_keeps_the_last_snapshot() {
        let mut state = State::new("/run/bgpctl/bgpctl.sock".into(), Duration::from_secs(1));
        state.apply(snapshot("Established"));
        state.lost("the daemon closed the stream".into());
        let text = to_text(&render(&state, 160, 30));
        assert!(
            text.contains(
                "RECONNECTING to /run/bgpctl/bgpctl.sock (attempt 1): the daemon closed the stream"
            ),
            "{text}"
        );
        assert!(text.contains("sdwan11"));
    }

    #[test]
    fn a_terminal_too_small_gets_a_message() {
        let state = State::new("sock".into(), Duration::from_secs(1));
        let text = to_text(&render(&state, 60, 10));
        assert!(text.contains("terminal too small: 60x10"), "{text}");
    }

    #[test]
    fn before_the_first_decision_the_chosen_pane_says_so() {
        let mut state = State::new("sock".into(), Duration::from_secs(1));
        let mut s = snapshot("Established");
        s.decided = false;
        s.remotes.clear();
        state.apply(s);
        let text = to_text(&render(&state, 120, 30));
        assert!(text.contains("has not decided yet"), "{text}");
    }

    #[test]
    fn once_shows_every_row() {
        let mut state = State::new("sock".into(), Duration::from_secs(1));
        let mut s = snapshot("Established");
        s.tunnels = (0..40)
            .map(|i| {
                tunnel(
                    &format!("sdwan{i}"),
                    ("lumen", "lumen"),
                    "Established",
                    1000,
                )
            })
            .collect();
        state.apply(s);
        let text = to_text(&render(&state, 160, full_height(&state)));
        assert!(
            text.contains("sdwan0 ") && text.contains("sdwan39"),
            "{text}"
        );
    }
}
