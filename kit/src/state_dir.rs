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

    /// Raises and returns the restart generation.
    pub fn next_generation(&self) -> std::io::Result<u32> {
        let f = self.path.join("generation");
        let prev = match std::fs::read_to_string(&f) {
            Ok(s) => s.trim().parse::<u32>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let next = prev.wrapping_add(1);
        write_atomic(&f, &format!("{next}\n"))?;
        Ok(next)
    }

    /// Records a generation raised at runtime (rejoin after being declared down).
    pub fn store_generation(&self, g: u32) -> std::io::Result<()> {
        write_atomic(&self.path.join("generation"), &format!("{g}\n"))
    }
}

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
}
