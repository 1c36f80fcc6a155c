//! The keyring file: base64 keys, one per line, the first is primary; `#` starts a comment.
//! Rewritten atomically (mode 0600) after every runtime change so restarts keep it.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::seal::{Keyring, MeshKey};

pub fn load(path: &Path) -> Result<Keyring, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read keyring {}: {e} (create one with `gatewan keygen > {}`)",
            path.display(),
            path.display()
        )
    })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "keyring is readable by group or others: chmod 600 it");
    }
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        keys.push(
            MeshKey::from_base64(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?,
        );
    }
    Keyring::from_keys(keys)
        .ok_or_else(|| format!("{}: no key in the keyring file", path.display()))
}

pub fn save(path: &Path, keys: &[MeshKey]) -> std::io::Result<()> {
    let mut text =
        String::from("# gatewan mesh keyring: the first key is primary (seals), all keys open\n");
    for k in keys {
        text.push_str(&k.to_base64());
        text.push('\n');
    }
    crate::durable::write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        let keys = [MeshKey::generate(), MeshKey::generate()];
        save(&p, &keys).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let ring = load(&p).unwrap();
        assert_eq!(ring.primary(), &keys[0]);
        assert_eq!(ring.keys().count(), 2);
        std::fs::write(&p, "not-a-key\n").unwrap();
        assert!(load(&p).unwrap_err().contains(":1:"));
    }
}
