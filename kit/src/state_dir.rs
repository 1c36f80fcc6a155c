//! The daemon's state directory: node id and signing key (kept for life), restart
//! generation, the signing keys pinned for other members.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use gatewan_mesh::durable::write_private;
use gatewan_mesh::{KeyPins, MemberKey, NodeId};

/// The signing key file: the 32-byte Ed25519 secret seed, raw.
const SIGNING_KEY_BYTES: usize = 32;

#[derive(Debug, Clone)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Creates the directory (0700) if needed.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)?;
        Ok(StateDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node id, generated on first start and kept.
    pub fn node_id(&self) -> std::io::Result<NodeId> {
        let f = self.path.join("node_id");
        match std::fs::read_to_string(&f) {
            Ok(s) => s.trim().parse().map_err(|e| {
                std::io::Error::other(format!(
                    "{}: not a node id ({e}); remove it to get a new id",
                    f.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = NodeId::random();
                write_atomic(&f, &format!("{id}\n"))?;
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    /// The member's signing key (ADR 0032): created on first start (mode 0600, written
    /// to a temporary file, synced, renamed into place) and never rewritten. A file of the
    /// wrong size, or readable by others, is an error naming it: a member whose key
    /// changed would be taken for a forger by every member that pinned the old one.
    pub fn signing_key(&self) -> std::io::Result<MemberKey> {
        let f = self.path.join("signing_key");
        match std::fs::read(&f) {
            Ok(bytes) => {
                let mode = std::fs::metadata(&f)?.permissions().mode();
                if mode & 0o077 != 0 {
                    return Err(std::io::Error::other(format!(
                        "{}: mode {:o} lets group or others read the member's secret key: chmod 600 it",
                        f.display(),
                        mode & 0o777
                    )));
                }
                let seed: [u8; SIGNING_KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                    std::io::Error::other(format!(
                        "{}: {} bytes, a signing key has {SIGNING_KEY_BYTES}; restore it from a \
                         backup (a new key makes the other members drop this one's records)",
                        f.display(),
                        bytes.len()
                    ))
                })?;
                Ok(MemberKey::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; SIGNING_KEY_BYTES];
                rand::fill(&mut seed);
                let key = MemberKey::from_seed(seed);
                write_private(&f, &key.seed())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The keys pinned for other members (ADR 0033); none before the first save.
    pub fn pinned_keys(&self) -> std::io::Result<KeyPins> {
        let f = self.pins_file();
        match std::fs::read_to_string(&f) {
            Ok(text) => KeyPins::parse(&text)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", f.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyPins::default()),
            Err(e) => Err(e),
        }
    }

    /// The signed revocations saved before (ADR 0033); none before the first save.
    pub fn revocations(&self) -> std::io::Result<Vec<bytes::Bytes>> {
        let f = self.revocations_file();
        match std::fs::read_to_string(&f) {
            Ok(text) => gatewan_mesh::pins::revocations_from_text(&text)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", f.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Where the mesh task saves the revocations after every change.
    pub fn revocations_file(&self) -> PathBuf {
        self.path.join("revocations")
    }

    /// Where the mesh task saves the pins after every change.
    pub fn pins_file(&self) -> PathBuf {
        self.path.join("pinned_keys")
    }

    /// The last generation stored, 0 if none.
    pub fn generation(&self) -> std::io::Result<u32> {
        let f = self.path.join("generation");
        match std::fs::read_to_string(&f) {
            Ok(s) => s.trim().parse::<u32>().map_err(|e| {
                // A generation we cannot read could be below one already used: starting
                // over at 1 would lose to our own previous lives in every member's view.
                std::io::Error::other(format!(
                    "{}: not a generation ({e}); write the last one used (or a larger \
                     number) in it",
                    f.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Raises the restart generation and returns it once it is on disk: the file and
    /// its directory are synced before the daemon uses the value, so a crash right
    /// after cannot bring back the previous one.
    pub fn next_generation(&self) -> std::io::Result<u32> {
        let next = self.generation()?.checked_add(1).ok_or_else(|| {
            std::io::Error::other("the generation is at its maximum (4294967295)")
        })?;
        self.store_generation(next)?;
        Ok(next)
    }

    /// Records a generation raised at runtime (a rejoin), durably, before it is
    /// announced. Never lowers the stored one.
    pub fn store_generation(&self, g: u32) -> std::io::Result<()> {
        if self.generation().is_ok_and(|held| held >= g) {
            return Ok(());
        }
        // On disk when it returns (file and directory synced): see `write_private`.
        write_private(&self.path.join("generation"), format!("{g}\n").as_bytes())
    }
}

/// Writes `content` to `path` atomically (a temporary file renamed over it).
fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_kept_and_generation_grows() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("state")).unwrap();
        let id = s.node_id().unwrap();
        assert_eq!(s.node_id().unwrap(), id);
        assert_eq!(s.next_generation().unwrap(), 1);
        assert_eq!(s.next_generation().unwrap(), 2);
        let s2 = StateDir::open(&d.path().join("state")).unwrap();
        assert_eq!(s2.node_id().unwrap(), id);
        assert_eq!(s2.next_generation().unwrap(), 3);
    }

    #[test]
    fn a_restart_after_a_runtime_rejoin_gets_a_larger_generation() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert_eq!(s.next_generation().unwrap(), 1);
        // The mesh rejoined twice while running (generations 2, then 3).
        s.store_generation(2).unwrap();
        s.store_generation(3).unwrap();
        // A late or repeated store never lowers it.
        s.store_generation(2).unwrap();
        let restarted = StateDir::open(d.path()).unwrap();
        assert_eq!(restarted.next_generation().unwrap(), 4);
        assert!(!d.path().join("generation.tmp").exists());
    }

    #[test]
    fn an_unreadable_generation_stops_the_start_instead_of_starting_over() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        std::fs::write(d.path().join("generation"), "garbage\n").unwrap();
        let e = s.next_generation().unwrap_err().to_string();
        assert!(e.contains("not a generation"), "{e}");
        std::fs::write(d.path().join("generation"), "4294967295\n").unwrap();
        let e = s.next_generation().unwrap_err().to_string();
        assert!(e.contains("maximum"), "{e}");
    }

    #[test]
    fn the_signing_key_is_created_once_private_and_kept() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let key = s.signing_key().unwrap();
        let f = d.path().join("signing_key");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&f).unwrap(), key.seed());
        assert_eq!(s.signing_key().unwrap().public(), key.public());
        assert!(!d.path().join("signing_key.tmp").exists());
    }

    #[test]
    fn a_signing_key_of_the_wrong_size_or_readable_by_others_is_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let f = d.path().join("signing_key");
        write_private(&f, &[7; 31]).unwrap();
        let e = s.signing_key().unwrap_err().to_string();
        assert!(e.contains("signing_key") && e.contains("31 bytes"), "{e}");
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, [7; 32]).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = s.signing_key().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        // Never rewritten, even when refused.
        assert_eq!(std::fs::read(&f).unwrap(), [7; 32]);
    }

    #[test]
    fn pinned_keys_are_read_back_and_a_bad_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert!(s.pinned_keys().unwrap().is_empty());
        let mut pins = KeyPins::default();
        pins.check(NodeId([1; 16]), MemberKey::from_seed([1; 32]).public());
        write_private(&s.pins_file(), pins.to_text().as_bytes()).unwrap();
        assert_eq!(s.pinned_keys().unwrap(), pins);
        std::fs::write(s.pins_file(), "nonsense\n").unwrap();
        let e = s.pinned_keys().unwrap_err().to_string();
        assert!(e.contains("pinned_keys: line 1"), "{e}");
    }
}
