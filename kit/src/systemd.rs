//! The systemd service manager's readiness protocol (`sd_notify(3)`), for the `Type=notify`
//! units the packages install (ADR 0044): systemd then starts what comes `After=` a daemon
//! only once its API answers, and `systemctl start` returns then, not at `exec`.
//!
//! Without `$NOTIFY_SOCKET` (a daemon started by hand, by the lab or by a test) nothing is
//! sent. A message that cannot be sent is logged and otherwise ignored: the daemon works
//! the same, and systemd, not hearing READY, reports the start as failed after its timeout.

use sd_notify::NotifyState;

/// `READY=1`: the daemon is in the mesh and its API socket accepts connections.
pub fn ready() {
    notify(NotifyState::Ready);
}

/// `STOPPING=1`: the daemon is shutting down (it leaves the mesh, then its API stops).
pub fn stopping() {
    notify(NotifyState::Stopping);
}

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, message = %state, "cannot notify the service manager ($NOTIFY_SOCKET)");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    /// Everything that touches `NOTIFY_SOCKET` is in this one test: the environment is the
    /// whole process's, and the kit's other tests run on other threads meanwhile.
    #[test]
    fn ready_and_stopping_reach_the_notify_socket_and_nothing_is_sent_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        // SAFETY: no other test of this crate reads or writes NOTIFY_SOCKET, and std's own
        // environment accesses are serialised.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        super::ready();
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "READY=1\n");
        super::stopping();
        let n = socket.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), "STOPPING=1\n");

        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        super::ready();
        socket.set_nonblocking(true).unwrap();
        let err = socket.recv(&mut buf).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::WouldBlock,
            "sent without NOTIFY_SOCKET"
        );
    }
}
