//! The daemon's state directory: node id (kept for life), restart generation.

use std::path::{Path, PathBuf};

use gatewan_mesh::NodeId;

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
        write_durably(&self.path.join("generation"), &format!("{g}\n"))
    }
}

/// Writes `content` to `path` atomically (a temporary file renamed over it).
fn write_atomic(path: &Path, content: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// As `write_atomic`, and on disk when it returns: the temporary file is synced before
/// the rename (else the rename can reach the disk before the data, leaving an empty
/// file after a crash) and the directory after it (else the rename itself can be lost).
fn write_durably(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::File::open(dir)?.sync_all()
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
}
