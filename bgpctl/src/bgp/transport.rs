//! TCP for BGP: the listening socket, outgoing connections, and TCP-MD5 signatures
//! (RFC 2385) on both, set with `setsockopt(TCP_MD5SIG)` per peer address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Longest TCP-MD5 key the kernel accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MD5_MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of `<linux/tcp.h>`; libc does not define it.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MD5_MAX_KEY_LEN],
}

/// Installs (or, with an empty key, removes) the TCP-MD5 key for `peer` on `fd`. An IPv4
/// peer on an IPv6 socket (dual-stack listener) is keyed by its IPv4-mapped address, which
/// the kernel stores as an IPv4 key.
pub fn set_md5(fd: RawFd, socket_is_v6: bool, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MD5_MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 password longer than 80 octets",
        ));
    }
    // SAFETY: all-zero is a valid bit pattern for this plain C struct.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let storage = &mut sig.addr as *mut libc::sockaddr_storage;
    match (peer, socket_is_v6) {
        (IpAddr::V4(v4), false) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(storage as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        }
        (IpAddr::V4(_), true) | (IpAddr::V6(_), true) => {
            let v6 = match peer {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(storage as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
        }
        (IpAddr::V6(_), false) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IPv6 peer on an IPv4 socket",
            ));
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a valid tcp_md5sig that outlives the call; the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const TcpMd5Sig as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds the passive listener. `[::]` listens dual-stack. TCP-MD5 keys for the peers that
/// have a password are installed on the listening socket, so the kernel verifies the SYN.
pub fn bind_listener(addr: SocketAddr, md5: &[(IpAddr, Vec<u8>)]) -> io::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    for (peer, key) in md5 {
        if addr.is_ipv4() && peer.is_ipv6() {
            continue;
        }
        set_md5(socket.as_raw_fd(), addr.is_ipv6(), *peer, key)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

/// Opens a connection to `peer`, from `local` if given, with the TCP-MD5 key if given.
pub async fn connect(
    peer: SocketAddr,
    local: Option<IpAddr>,
    md5: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = if peer.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(key) = md5 {
        set_md5(socket.as_raw_fd(), peer.is_ipv6(), peer.ip(), key)?;
    }
    if let Some(local) = local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(peer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The peer's address as configured: IPv4-mapped IPv6 (dual-stack accept) back to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
