//! `routingctl top` (ADR 0048): a live terminal view of a bgpctl's members, every
//! gatewan's tunnels with latency and loss sparklines, the controller's chosen tunnels per
//! remote datacenter and the BGP sessions, fed by the `Top.Watch` stream.
//!
//! The I/O lives here: the stream (reopened every second after it ends, with the last
//! snapshot kept on screen), the keys (read on a thread of their own), the terminal (raw
//! mode and the alternate screen, restored on exit, on a signal and on panic). What is
//! shown is `state` and `view`, pure.

mod state;
mod view;

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use crossterm::event::Event;
use gatewan_proto::v1;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;
use tonic::Streaming;

use crate::client::{self, Target};
use state::{Action, State};

/// How often a lost stream is reopened.
const RETRY: Duration = Duration::from_secs(1);
/// How long one reconnection may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `--once`'s width when standard output is not a terminal.
const ONCE_WIDTH: u16 = 160;

/// `--interval`: a duration within what the daemon serves (200 ms ..= 10 s).
pub(crate) fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 1s, 500ms)"))?;
    if d < Duration::from_millis(200) || d > Duration::from_secs(10) {
        return Err(format!("{s}: the interval must be within 200ms and 10s"));
    }
    Ok(d)
}

/// Opens the stream of snapshots; a daemon that is not a bgpctl is named as such.
async fn open(target: &Target, interval: Duration) -> anyhow::Result<Streaming<v1::TopSnapshot>> {
    let channel = client::connect(target).await?;
    let interval_ms = u32::try_from(interval.as_millis()).unwrap_or(u32::MAX);
    let stream = v1::top_client::TopClient::new(channel)
        .watch(v1::WatchRequest { interval_ms })
        .await
        .map_err(|s| crate::not_bgpctl(s, target))?
        .into_inner();
    Ok(stream)
}

pub(crate) async fn run(target: &Target, interval: Duration, once: bool) -> anyhow::Result<()> {
    // The first snapshot before the terminal changes: a wrong socket is a plain error.
    let mut stream = open(target, interval).await?;
    let first = stream
        .message()
        .await
        .map_err(|s| crate::call_error(s, target))?
        .context("the daemon ended the stream before its first snapshot")?;
    let mut state = State::new(target.to_string(), interval);
    state.apply(first);
    if once {
        let width = if std::io::stdout().is_terminal() {
            crossterm::terminal::size().map_or(ONCE_WIDTH, |(w, _)| w)
        } else {
            ONCE_WIDTH
        }
        .max(view::MIN_WIDTH);
        let buffer = view::render(&state, width, view::full_height(&state));
        print!("{}", view::to_text(&buffer));
        return Ok(());
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "routingctl top draws on a terminal; for scripts use `routingctl top --once` (one \
             frame as text) or the other commands with -o json"
        );
    }
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("cannot set up the terminal");
        }
    };
    let result = event_loop(&mut terminal, state, stream, target).await;
    ratatui::restore();
    result
}

/// The next snapshot of the stream, or never when there is none (reconnecting).
async fn next(
    stream: &mut Option<Streaming<v1::TopSnapshot>>,
) -> Result<Option<v1::TopSnapshot>, tonic::Status> {
    match stream {
        Some(s) => s.message().await,
        None => std::future::pending().await,
    }
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    mut state: State,
    stream: Streaming<v1::TopSnapshot>,
    target: &Target,
) -> anyhow::Result<()> {
    let mut input = spawn_input();
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut stream = Some(stream);
    let mut retry_at = Instant::now();
    // A daemon that stops sending (stopped, wedged) without closing the stream.
    let silence = state.interval * 3 + Duration::from_secs(2);
    let mut last_message = Instant::now();
    loop {
        terminal.draw(|f| view::draw(f, &state))?;
        tokio::select! {
            m = next(&mut stream) => {
                let lost = match m {
                    Ok(Some(s)) => {
                        state.apply(s);
                        last_message = Instant::now();
                        None
                    }
                    Ok(None) => Some("the daemon ended the stream (restarting?)".to_string()),
                    Err(s) => Some(format!("{:#}", crate::call_error(s, target))),
                };
                if let Some(error) = lost {
                    state.lost(error);
                    stream = None;
                    retry_at = Instant::now() + RETRY;
                }
            }
            () = tokio::time::sleep_until(last_message + silence), if stream.is_some() => {
                state.lost(format!("no snapshot for {}", humantime::format_duration(silence)));
                stream = None;
                retry_at = Instant::now();
            }
            () = tokio::time::sleep_until(retry_at), if stream.is_none() => {
                match tokio::time::timeout(CONNECT_TIMEOUT, open(target, state.interval)).await {
                    // Connected: the link shows so with the first snapshot, sent at once.
                    Ok(Ok(s)) => {
                        stream = Some(s);
                        last_message = Instant::now();
                    }
                    Ok(Err(e)) => {
                        state.lost(format!("{e:#}"));
                        retry_at = Instant::now() + RETRY;
                    }
                    Err(_) => {
                        state.lost(format!(
                            "no answer within {}",
                            humantime::format_duration(CONNECT_TIMEOUT)
                        ));
                        retry_at = Instant::now() + RETRY;
                    }
                }
            }
            ev = input.recv() => match ev {
                Some(Event::Key(k)) => {
                    if state.key(k) == Action::Quit {
                        return Ok(());
                    }
                }
                // A resize (or anything else): drawn again at the top of the loop.
                Some(_) => {}
                // The terminal is gone.
                None => return Ok(()),
            },
            _ = term.recv() => return Ok(()),
            _ = hangup.recv() => return Ok(()),
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

/// Terminal events, read on a thread of their own (crossterm's reads block). The thread
/// ends when the receiver is dropped or the terminal fails.
fn spawn_input() -> tokio::sync::mpsc::Receiver<Event> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        loop {
            match crossterm::event::poll(Duration::from_millis(250)) {
                Ok(true) => match crossterm::event::read() {
                    Ok(ev) => {
                        if tx.blocking_send(ev).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                Ok(false) if tx.is_closed() => return,
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_within_what_the_daemon_serves() {
        assert_eq!(parse_interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_interval("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_interval("100ms").is_err());
        assert!(parse_interval("11s").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
