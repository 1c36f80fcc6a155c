//! The gatewan's WireGuard private key, kept in its state directory.

use gatewan_kit::state_dir::StateDir;

/// The WireGuard private key, generated on first start, kept 0600, never logged.
pub fn wireguard_key(dir: &StateDir) -> std::io::Result<[u8; 32]> {
    let f = dir.path().join("wireguard.key");
    match std::fs::read_to_string(&f) {
        Ok(s) => wireguard_control::Key::from_base64(s.trim())
            .map(|k| k.0)
            .map_err(|_| {
                std::io::Error::other(format!(
                    "{}: not a WireGuard key (base64 of 32 bytes)",
                    f.display()
                ))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => new_wireguard_key(dir),
        Err(e) => Err(e),
    }
}

/// Replaces the WireGuard private key with a new one (kept before it is used, so a
/// crash in between restarts with the key the peers are told about).
pub fn new_wireguard_key(dir: &StateDir) -> std::io::Result<[u8; 32]> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = dir.path().join("wireguard.key");
    let key = wireguard_control::Key::generate_private();
    let tmp = f.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(file, "{}", key.to_base64())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &f)?;
    Ok(key.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_kept_0600_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("state")).unwrap();
        let k = wireguard_key(&s).unwrap();
        let s2 = StateDir::open(&d.path().join("state")).unwrap();
        assert_eq!(wireguard_key(&s2).unwrap(), k);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(s.path().join("wireguard.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(new_wireguard_key(&s).unwrap(), k);
        assert_ne!(wireguard_key(&s2).unwrap(), k);
    }
}
