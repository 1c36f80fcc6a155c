//! Published ports (containerlab's `ports: ["HOST:NODE"]`): a TCP forwarder from
//! `127.0.0.1:HOST` on the host into `127.0.0.1:NODE` inside a node's network namespace.
//!
//! Docker publishes a container's port with NAT; a lab node has no route to the host
//! (no management network), so the supervisor listens on the host and, per connection,
//! connects from a socket created by a thread that entered the node's namespace: a socket
//! stays in the namespace it was created in, so the copy loop itself runs anywhere. Only
//! the host's loopback listens: the lab's daemons are not published to the host's
//! network.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::ns;
use crate::topology::PublishedPort;

/// How often blocked loops look at the stop flag.
const TICK: u16 = 200;

/// Listens on `127.0.0.1:port.host` (in the caller's network namespace: the host's) and
/// forwards every connection to `127.0.0.1:port.node` in network namespace `netns`,
/// until `stop` is set. Fails at once if the host port cannot be bound.
pub fn publish(
    node: &str,
    netns: PathBuf,
    port: PublishedPort,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>> {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port.host));
    let listener = TcpListener::bind(listen).with_context(|| {
        format!(
            "publish port {} of node {node} on {listen} (another lab, or another program, holds it?)",
            port.node
        )
    })?;
    listener.set_nonblocking(true)?;
    let name = format!("port-{}", port.host);
    Ok(std::thread::Builder::new()
        .name(name)
        .spawn(move || accept_loop(listener, netns, port.node, stop))?)
}

fn wait_readable(fd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::from(TICK)).is_ok_and(|n| n > 0)
}

fn accept_loop(listener: TcpListener, netns: PathBuf, node_port: u16, stop: Arc<AtomicBool>) {
    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, node_port));
    // Joined before returning, so that once the supervisor has stopped no socket of the
    // node's namespace is left open (it would keep the namespace alive after `down`).
    let mut relays: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                relays.retain(|r| !r.is_finished());
                let (netns, stop) = (netns.clone(), stop.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("fwd-{node_port}"))
                    .spawn(move || {
                        // A node whose daemon is not listening (yet) refuses the
                        // connection: the client sees it closed, as a failed scrape.
                        let upstream = ns::in_netns(&netns, move || {
                            Ok(TcpStream::connect_timeout(&target, Duration::from_secs(2))?)
                        });
                        if let Ok(upstream) = upstream {
                            relay(client, upstream, &stop);
                        }
                    });
                // Out of threads: the connection was dropped (closed) with the closure.
                if let Ok(r) = spawned {
                    relays.push(r);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_readable(&listener);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(u64::from(TICK))),
        }
    }
    for r in relays {
        let _ = r.join();
    }
}

/// Copies both ways until both sides have closed (each end's EOF is passed on as a
/// half-close), an error, or `stop`.
fn relay(a: TcpStream, b: TcpStream, stop: &AtomicBool) {
    if a.set_nonblocking(false).is_err() || b.set_nonblocking(false).is_err() {
        return;
    }
    for s in [&a, &b] {
        let _ = s.set_nodelay(true);
        // A peer that stops reading fails the copy instead of holding the supervisor's
        // stop (which joins this thread) for ever.
        let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    }
    let mut buf = vec![0u8; 64 * 1024];
    // open[0]: a → b still flows; open[1]: b → a.
    let mut open = [true, true];
    while open.iter().any(|o| *o) && !stop.load(Ordering::Relaxed) {
        let (ready_a, ready_b) = {
            let mut fds = Vec::with_capacity(2);
            if open[0] {
                fds.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
            }
            if open[1] {
                fds.push(PollFd::new(b.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::from(TICK)) {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            let mut it = fds.iter();
            let ra = open[0] && it.next().is_some_and(ready);
            let rb = open[1] && it.next().is_some_and(ready);
            (ra, rb)
        };
        for (i, ready, (mut from, mut to)) in [(0, ready_a, (&a, &b)), (1, ready_b, (&b, &a))] {
            if !ready {
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    open[i] = false;
                }
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free port on the host's loopback (bound, then released).
    fn free_port() -> u16 {
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("ephemeral port")
            .port()
    }

    #[test]
    fn a_published_port_reaches_the_node_namespace_only() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "needs root (CI=true, not skipping)"
            );
            let _ = writeln!(std::io::stderr(), "SKIP ports test: needs root");
            return;
        }
        let lab = format!("t-ports-{}", std::process::id() % 100_000);
        ns::create_netns(&ns::netns_name(&lab, "n")).expect("netns");
        let netns = ns::netns_path(&lab, "n");
        // An echo server on the node's loopback: it answers what it got, uppercased,
        // once the client has half-closed (so EOF must cross the forwarder).
        let server = ns::in_netns(&netns, move || {
            std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()?;
            Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 7000))?)
        })
        .expect("listener in the node");
        let echo = std::thread::spawn(move || {
            let (mut c, _) = server.accept().expect("accept");
            let mut got = String::new();
            c.read_to_string(&mut got).expect("read");
            c.write_all(got.to_uppercase().as_bytes()).expect("write");
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (host, closed) = (free_port(), free_port());
        let fwd = publish(
            "n",
            netns.clone(),
            PublishedPort { host, node: 7000 },
            stop.clone(),
        )
        .expect("publish");
        // The same port twice on the host: refused, naming the node.
        let e = publish(
            "n",
            netns.clone(),
            PublishedPort { host, node: 7000 },
            stop.clone(),
        )
        .expect_err("a second listener on one host port");
        assert!(e.to_string().contains("node n"), "{e:#}");
        let dead = publish(
            "n",
            netns.clone(),
            PublishedPort {
                host: closed,
                node: 7001,
            },
            stop.clone(),
        )
        .expect("publish");

        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, host)).expect("connect");
        c.write_all(b"metrics please").expect("send");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut answer = String::new();
        c.read_to_string(&mut answer).expect("answer");
        assert_eq!(answer, "METRICS PLEASE");
        echo.join().expect("echo server");
        // Nothing listens on 7001 in the node (nor would the host's 7001 count): the
        // client's connection is closed without a byte.
        let mut c = TcpStream::connect((Ipv4Addr::LOCALHOST, closed)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let n = c.read_to_end(&mut buf).unwrap_or(0);
        assert_eq!(n, 0);

        stop.store(true, Ordering::Relaxed);
        fwd.join().expect("forwarder");
        dead.join().expect("forwarder");
        // Stopped: the host port is free again.
        TcpListener::bind((Ipv4Addr::LOCALHOST, host)).expect("host port released");
        crate::realize::down(&lab).expect("remove the namespace");
    }
}
