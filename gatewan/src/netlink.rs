//! Small rtnetlink helpers the host adapters share (tunnels, data plane, transits).

use std::io;

use futures_util::TryStreamExt as _;
use rtnetlink::Handle;

pub fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Keeps the kernel's errno of a netlink NACK (callers retry on some).
pub fn netlink_err(e: rtnetlink::Error) -> io::Error {
    match &e {
        rtnetlink::Error::NetlinkError(m) if m.code.is_some() => m.to_io(),
        _ => io_err(e),
    }
}

/// The index of link `name`, None when there is none. A request for one link, not a dump:
/// a netlink socket runs one dump at a time and answers EBUSY to another, and callers
/// configure links side by side.
pub async fn link_index(handle: &Handle, name: &str) -> io::Result<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(m))
            if m.code.is_some_and(|c| -c.get() == nix::libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(netlink_err(e)),
    }
}
