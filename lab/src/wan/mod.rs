//! WAN emulator: forwards Ethernet frames between two interfaces in userspace over
//! AF_PACKET sockets, applying delay, jitter, loss, reordering, duplication and a rate
//! limit per direction. It replaces netem, which the target kernels may lack.
//!
//! One thread per direction receives frames, decides their fate and keeps delayed frames
//! in a binary heap ordered by due time (monotonic clock); it sleeps in `ppoll` until the
//! next due time minus [`SPIN`] and spins the rest, so delays are accurate to tens of µs.
//! Frames carry a `virtio_net_hdr` (PACKET_VNET_HDR), so GSO super-frames (up to 64 KiB)
//! and partial checksums pass through intact and the kernel segments them on the way
//! out: that is what makes multi-Gbit/s possible where per-packet forwarding tops out at
//! a few hundred Mbit/s. When a direction has per-packet impairments (loss, duplication,
//! reordering) the realizer sets `gso_max_segs 1` on the sending neighbour, so frames are
//! single packets and the impairment applies per packet.
//!
//! Parameters are changed at runtime over an abstract unix socket (`@lab-wan`), which is
//! scoped to the emulator's network namespace.

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

mod shaper;

use shaper::{Shaper, VNET_HDR_LEN};

/// Name of the abstract control socket inside the emulator's network namespace.
pub const CONTROL_SOCKET: &str = "lab-wan";
/// Time before a due frame during which the scheduler spins instead of sleeping.
const SPIN: Duration = Duration::from_micros(50);
/// Largest frame accepted (BIG TCP may exceed 64 KiB); larger ones are dropped.
const MAX_FRAME: usize = 256 * 1024;

/// Impairments of one direction. Probabilities are in parts per million.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impairment {
    pub delay_us: u64,
    pub jitter_us: u64,
    pub loss_ppm: u32,
    pub reorder_ppm: u32,
    pub duplicate_ppm: u32,
    /// Bits per second; 0 means unlimited.
    pub rate_bps: u64,
}

fn parse_percent(v: &str) -> Result<u32, String> {
    let n = v.strip_suffix('%').unwrap_or(v);
    let f: f64 = n
        .parse()
        .map_err(|_| format!("`{v}` is not a percentage like `2%` or `0.5%`"))?;
    if !(0.0..=100.0).contains(&f) {
        return Err(format!("`{v}` is not between 0% and 100%"));
    }
    Ok((f * 10_000.0).round() as u32)
}

fn parse_duration_us(v: &str) -> Result<u64, String> {
    if v == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(v)
        .map_err(|_| format!("`{v}` is not a duration like `40ms` or `500us`"))?;
    if d > Duration::from_secs(10) {
        return Err(format!("`{v}` is longer than 10s"));
    }
    Ok(d.as_micros() as u64)
}

/// Parses `1Gbps`, `500Mbps`, `64kbps`, `1000bps` (decimal units) or `0`/`unlimited`.
pub fn parse_rate(v: &str) -> Result<u64, String> {
    if v == "0" || v == "unlimited" {
        return Ok(0);
    }
    let lower = v.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("gbps") {
        (n, 1e9)
    } else if let Some(n) = lower.strip_suffix("mbps") {
        (n, 1e6)
    } else if let Some(n) = lower.strip_suffix("kbps") {
        (n, 1e3)
    } else if let Some(n) = lower.strip_suffix("bps") {
        (n, 1.0)
    } else {
        return Err(format!("`{v}` is not a rate like `1Gbps` or `500Mbps`"));
    };
    let f: f64 = num
        .parse()
        .map_err(|_| format!("`{v}` is not a rate like `1Gbps` or `500Mbps`"))?;
    let bps = f * mult;
    if !(1000.0..=1e12).contains(&bps) {
        return Err(format!("`{v}` must be between 1kbps and 1000Gbps"));
    }
    Ok(bps as u64)
}

impl Impairment {
    /// Returns a copy with `key=value` words applied; `reset` restores no impairment.
    pub fn apply(self, words: &[&str]) -> Result<Impairment, String> {
        let p = self.apply_unchecked(words)?;
        if p.jitter_us > p.delay_us {
            return Err("jitter must not exceed delay".into());
        }
        Ok(p)
    }

    /// Like [`Impairment::apply`] without checks that span several keys.
    pub fn apply_unchecked(mut self, words: &[&str]) -> Result<Impairment, String> {
        for w in words {
            if *w == "reset" {
                self = Impairment::default();
                continue;
            }
            let Some((k, v)) = w.split_once('=') else {
                return Err(format!("`{w}` is not key=value"));
            };
            match k {
                "delay" => self.delay_us = parse_duration_us(v)?,
                "jitter" => self.jitter_us = parse_duration_us(v)?,
                "loss" => self.loss_ppm = parse_percent(v)?,
                "reorder" => self.reorder_ppm = parse_percent(v)?,
                "duplicate" => self.duplicate_ppm = parse_percent(v)?,
                "rate" => self.rate_bps = parse_rate(v)?,
                _ => {
                    return Err(format!(
                        "unknown impairment `{k}` (known: delay, jitter, loss, reorder, duplicate, rate, reset)"
                    ));
                }
            }
        }
        Ok(self)
    }

    /// True when the impairment decides per packet (loss, duplication, reordering), so
    /// the sender must not hand the emulator GSO super-frames.
    pub fn per_packet(&self) -> bool {
        self.loss_ppm > 0 || self.duplicate_ppm > 0 || self.reorder_ppm > 0
    }

    fn is_passthrough(&self) -> bool {
        self.delay_us == 0 && self.jitter_us == 0 && self.rate_bps == 0
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delay={}us jitter={}us loss={}% reorder={}% duplicate={}% rate={}",
            self.delay_us,
            self.jitter_us,
            self.loss_ppm as f64 / 10_000.0,
            self.reorder_ppm as f64 / 10_000.0,
            self.duplicate_ppm as f64 / 10_000.0,
            if self.rate_bps == 0 {
                "unlimited".to_string()
            } else {
                format!("{}bps", self.rate_bps)
            }
        )
    }
}

/// Counters of one direction.
#[derive(Default)]
struct Counters {
    rx: AtomicU64,
    tx: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    queue_drops: AtomicU64,
    send_errors: AtomicU64,
    /// Frames given a delay, and the delays summed (µs): what the emulator applied,
    /// jitter and per-flow ordering included, for tests to compare measurements with.
    delayed: AtomicU64,
    delay_sum_us: AtomicU64,
}

struct Shared {
    ports: [String; 2],
    /// Index = receiving port.
    params: Mutex<[Impairment; 2]>,
    generation: AtomicU64,
    counters: [Counters; 2],
    stop: Arc<AtomicBool>,
}

/// A running emulator; dropping it does not stop it, call [`Emulator::stop`].
pub struct Emulator {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    val: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: passes a valid pointer to a c_int of the stated size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Index of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let idx = ifindex(ifname).with_context(|| format!("no interface `{ifname}`"))?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            proto as i32,
        )
    })
    .context("AF_PACKET socket")?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = fd.as_raw_fd();
    setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_VNET_HDR, 1).context("PACKET_VNET_HDR")?;
    // Without this the socket would also read back the frames we send on it.
    setsockopt_int(raw, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
        .context("PACKET_IGNORE_OUTGOING")?;
    let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20);
    let _ = setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20);
    // SAFETY: zeroed sockaddr_ll is a valid value; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = idx as i32;
    // SAFETY: sll is a valid sockaddr_ll and its size is passed.
    cvt(unsafe {
        libc::bind(
            raw,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })
    .with_context(|| format!("bind AF_PACKET to {ifname}"))?;
    // SAFETY: zeroed packet_mreq is valid; fields set below.
    let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mreq.mr_ifindex = idx as i32;
    mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: mreq is a valid packet_mreq and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq as *const libc::packet_mreq as *const libc::c_void,
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        )
    })
    .context("promiscuous mode")?;
    Ok(fd)
}

fn mono_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

fn send_frame(fd: RawFd, frame: &[u8], c: &Counters) {
    // SAFETY: frame is a valid buffer of the given length.
    let r = unsafe { libc::send(fd, frame.as_ptr() as *const libc::c_void, frame.len(), 0) };
    if r < 0 {
        c.send_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        c.tx.fetch_add(1, Ordering::Relaxed);
    }
}

fn forward(shared: Arc<Shared>, dir: usize, rx: OwnedFd, tx: Arc<OwnedFd>) {
    // SAFETY: prctl with PR_SET_TIMERSLACK only affects this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    // Lowest real-time priority: on a busy 2-core host a normal thread wakes up
    // milliseconds late, which shows as delay outliers. The kernel's RT throttling
    // (sched_rt_runtime_us) still keeps 5% of each CPU for everyone else. Without
    // CAP_SYS_NICE this fails and the thread stays a normal one.
    let prio = libc::sched_param { sched_priority: 1 };
    // SAFETY: pid 0 is the calling thread; prio is a valid sched_param.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &prio) };
    let c = &shared.counters[dir];
    let rxfd = rx.as_raw_fd();
    let txfd = tx.as_raw_fd();
    let mut shaper = Shaper::new(mono_ns() ^ ((dir as u64 + 1) << 40));
    let mut gen_seen = u64::MAX;
    let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME];
    while !shared.stop.load(Ordering::Relaxed) {
        let g = shared.generation.load(Ordering::Acquire);
        if g != gen_seen {
            gen_seen = g;
            if let Ok(params) = shared.params.lock() {
                shaper.set_params(params[dir]);
            }
        }
        while let Some(frame) = shaper.pop_due(mono_ns()) {
            send_frame(txfd, &frame, c);
        }
        let mut got = 0;
        while got < 64 {
            // SAFETY: buf is a valid writable buffer of the given length.
            let n = unsafe {
                libc::recv(
                    rxfd,
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                )
            };
            if n <= 0 {
                break;
            }
            got += 1;
            if n as usize > buf.len() {
                c.queue_drops.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let frame = &buf[..n as usize];
            c.rx.fetch_add(1, Ordering::Relaxed);
            let fate = shaper.receive(frame, mono_ns());
            c.lost.fetch_add(u64::from(fate.lost), Ordering::Relaxed);
            c.duplicated
                .fetch_add(u64::from(fate.duplicated), Ordering::Relaxed);
            c.queue_drops
                .fetch_add(u64::from(fate.queue_drops), Ordering::Relaxed);
            c.delayed
                .fetch_add(u64::from(fate.delayed), Ordering::Relaxed);
            c.delay_sum_us
                .fetch_add(fate.delay_sum_us, Ordering::Relaxed);
            for _ in 0..fate.send_now {
                send_frame(txfd, frame, c);
            }
        }
        if got > 0 {
            continue;
        }
        let wait_ns = match shaper.next_due() {
            Some(due) => due.saturating_sub(mono_ns()),
            None => 100_000_000,
        };
        if wait_ns <= SPIN.as_nanos() as u64 {
            std::hint::spin_loop();
            continue;
        }
        let sleep = wait_ns - SPIN.as_nanos() as u64;
        let ts = libc::timespec {
            tv_sec: (sleep / 1_000_000_000) as libc::time_t,
            tv_nsec: (sleep % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: rxfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd and ts are valid for the duration of the call.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    }
}

impl Emulator {
    /// Starts forwarding between `ports` in the current thread's network namespace
    /// (call it from a thread that has entered the node's namespace); worker threads
    /// keep using the sockets opened here, whatever namespace they run in.
    pub fn start(
        ports: [String; 2],
        initial: Impairment,
        stop: Arc<AtomicBool>,
    ) -> Result<Emulator> {
        let s0 = packet_socket(&ports[0])?;
        let s1 = packet_socket(&ports[1])?;
        let addr = SocketAddr::from_abstract_name(CONTROL_SOCKET.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr).context("bind control socket @lab-wan")?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            ports,
            params: Mutex::new([initial, initial]),
            generation: AtomicU64::new(1),
            counters: Default::default(),
            stop,
        });
        let tx0 = Arc::new(s0.try_clone()?);
        let tx1 = Arc::new(s1.try_clone()?);
        let mut threads = Vec::new();
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wan-0to1".into())
                .spawn(move || forward(sh, 0, s0, tx1))?,
        );
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wan-1to0".into())
                .spawn(move || forward(sh, 1, s1, tx0))?,
        );
        let sh = shared.clone();
        threads.push(
            std::thread::Builder::new()
                .name("wan-ctl".into())
                .spawn(move || control_loop(sh, listener))?,
        );
        Ok(Emulator { shared, threads })
    }

    /// Stops and joins all threads (sets the shared stop flag).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn handle_command(sh: &Shared, line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["get"] | ["stats"] => {
            let params = match sh.params.lock() {
                Ok(p) => *p,
                Err(_) => return "error: state poisoned\n".into(),
            };
            let mut out = String::new();
            for (i, (c, p)) in sh.counters.iter().zip(params.iter()).enumerate() {
                out.push_str(&format!(
                    "{} -> {}: {} | rx={} tx={} lost={} duplicated={} queue_drops={} send_errors={} delayed={} delay_sum_us={}\n",
                    sh.ports[i],
                    sh.ports[1 - i],
                    p,
                    c.rx.load(Ordering::Relaxed),
                    c.tx.load(Ordering::Relaxed),
                    c.lost.load(Ordering::Relaxed),
                    c.duplicated.load(Ordering::Relaxed),
                    c.queue_drops.load(Ordering::Relaxed),
                    c.send_errors.load(Ordering::Relaxed),
                    c.delayed.load(Ordering::Relaxed),
                    c.delay_sum_us.load(Ordering::Relaxed),
                ));
            }
            out
        }
        ["json"] => match sh.params.lock() {
            Ok(p) => format!("{}\n", serde_json::to_string(&*p).unwrap_or_default()),
            Err(_) => "error: state poisoned\n".into(),
        },
        ["set", dir, rest @ ..] => {
            let dirs: Vec<usize> = match *dir {
                "*" => vec![0, 1],
                d => match sh.ports.iter().position(|p| p == d) {
                    Some(i) => vec![i],
                    None => {
                        return format!("error: no port `{d}` (ports: {})\n", sh.ports.join(", "));
                    }
                },
            };
            let Ok(mut params) = sh.params.lock() else {
                return "error: state poisoned\n".into();
            };
            let mut new = *params;
            for &i in &dirs {
                match params[i].apply(rest) {
                    Ok(p) => new[i] = p,
                    Err(e) => return format!("error: {e}\n"),
                }
            }
            *params = new;
            sh.generation.fetch_add(1, Ordering::Release);
            "ok\n".into()
        }
        _ => "error: commands are `get` and `set PORT|* key=value...`\n".into(),
    }
}

fn control_loop(sh: Arc<Shared>, listener: UnixListener) {
    while !sh.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::new(&stream);
                let mut line = String::new();
                if reader.read_line(&mut line).is_ok() {
                    let reply = handle_command(&sh, line.trim());
                    let _ = (&stream).write_all(reply.as_bytes());
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends one control command to the emulator of the current thread's network namespace.
pub fn control(command: &str) -> Result<String> {
    let addr = SocketAddr::from_abstract_name(CONTROL_SOCKET.as_bytes())?;
    let mut s = UnixStream::connect_addr(&addr).context("no WAN emulator answers in this node")?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply)?;
    if let Some(e) = reply.strip_prefix("error: ") {
        bail!("{}", e.trim());
    }
    Ok(reply)
}

/// Waits until all `ports` exist (containerlab adds interfaces after the container starts).
pub fn wait_for_ports(ports: &[String; 2], timeout: Duration) -> Result<()> {
    let t0 = std::time::Instant::now();
    while ports.iter().any(|p| ifindex(p).is_none()) {
        if t0.elapsed() > timeout {
            bail!(
                "interfaces {} did not appear within {:?}",
                ports.join(", "),
                timeout
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_impairments() {
        let p = Impairment::default()
            .apply(&[
                "delay=40ms",
                "jitter=5ms",
                "loss=2%",
                "reorder=1%",
                "duplicate=0.5%",
                "rate=1Gbps",
            ])
            .unwrap();
        assert_eq!(p.delay_us, 40_000);
        assert_eq!(p.jitter_us, 5_000);
        assert_eq!(p.loss_ppm, 20_000);
        assert_eq!(p.reorder_ppm, 10_000);
        assert_eq!(p.duplicate_ppm, 5_000);
        assert_eq!(p.rate_bps, 1_000_000_000);
        assert_eq!(p.apply(&["reset"]).unwrap(), Impairment::default());
    }

    #[test]
    fn rejects_bad_impairments() {
        let d = Impairment::default();
        assert!(d.apply(&["delay=fast"]).is_err());
        assert!(d.apply(&["loss=200%"]).is_err());
        assert!(d.apply(&["rate=10parsecs"]).is_err());
        assert!(d.apply(&["bogus=1"]).is_err());
        assert!(d.apply(&["delay"]).is_err());
        assert!(d.apply(&["delay=1ms", "jitter=2ms"]).is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500Mbps").unwrap(), 500_000_000);
        assert_eq!(parse_rate("1.5Gbps").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("unlimited").unwrap(), 0);
    }
}
