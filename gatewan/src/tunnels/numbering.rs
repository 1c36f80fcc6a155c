//! What of the tunnels' numbering this gatewan keeps in state_dir (ADR 0042): its claimed
//! tunnel slot and its transits' positions. Both are part of every tunnel's index (hence
//! interface name, addresses, ports, MAC and RD), so both must survive restarts and
//! config edits: a restarted gatewan announces the slot it held, and a transit added to
//! the config, anywhere in the list, takes a free position without moving the others.
//! Pure but for [`load`]/[`save`].

use std::collections::BTreeMap;
use std::path::Path;

use crate::tunnels::plan::MAX_TRANSITS;
use crate::tunnels::plan::slots::SlotClaim;

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Numbering {
    /// The slot claimed through the mesh; never a pinned one (the config holds that).
    pub claim: Option<SlotClaim>,
    /// Transit name → position.
    pub positions: BTreeMap<String, u32>,
}

/// The positions of `transits` (configured names, in config order): a transit keeps the
/// position it had, a new one takes the lowest free position. A transit no longer
/// configured frees its position. Transits beyond [`MAX_TRANSITS`] get none (the config
/// refuses them before this is called).
pub fn positions(previous: &BTreeMap<String, u32>, transits: &[&str]) -> BTreeMap<String, u32> {
    let mut out: BTreeMap<String, u32> = BTreeMap::new();
    let mut used = [false; MAX_TRANSITS];
    for name in transits {
        if let Some(&p) = previous.get(*name)
            && let Some(slot) = used.get_mut(p as usize)
            && !*slot
        {
            *slot = true;
            out.insert((*name).to_string(), p);
        }
    }
    for name in transits {
        if out.contains_key(*name) {
            continue;
        }
        if let Some(p) = used.iter().position(|u| !u) {
            used[p] = true;
            out.insert((*name).to_string(), p as u32);
        }
    }
    out
}

/// Reads what [`save`] wrote; a missing file or a line that does not parse is nothing
/// kept (the slot is then claimed anew and positions follow the config's order, as a
/// gatewan of an earlier version had them).
pub fn load(path: &Path) -> Numbering {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Numbering::default();
    };
    let mut n = Numbering::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["slot", slot, claimed_ms] => {
                if let (Ok(slot), Ok(claimed_ms)) = (slot.parse(), claimed_ms.parse()) {
                    n.claim = Some(SlotClaim {
                        slot,
                        claimed_ms,
                        pinned: false,
                    });
                }
            }
            ["transit", name, position] => {
                if let Ok(p) = position.parse() {
                    n.positions.insert((*name).to_string(), p);
                }
            }
            _ => {}
        }
    }
    n
}

/// Writes `n` atomically (a temporary file, then rename), so a crash mid-write keeps the
/// previous numbering rather than none.
pub fn save(path: &Path, n: &Numbering) -> std::io::Result<()> {
    let mut text = String::from("# Kept by gatewan (ADR 0042): do not edit while it runs.\n");
    if let Some(c) = n.claim {
        text.push_str(&format!("slot {} {}\n", c.slot, c.claimed_ms));
    }
    for (name, p) in &n.positions {
        text.push_str(&format!("transit {name} {p}\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    #[test]
    fn a_first_start_numbers_transits_in_config_order_as_earlier_versions_did() {
        assert_eq!(
            positions(&BTreeMap::new(), &["lumen", "cogent"]),
            map(&[("lumen", 0), ("cogent", 1)])
        );
    }

    #[test]
    fn a_transit_inserted_first_takes_a_free_position_and_moves_no_other() {
        let before = positions(&BTreeMap::new(), &["lumen", "cogent"]);
        let after = positions(&before, &["telia", "lumen", "cogent"]);
        assert_eq!(after, map(&[("lumen", 0), ("cogent", 1), ("telia", 2)]));
    }

    #[test]
    fn a_removed_transit_frees_its_position_for_the_next_new_one() {
        let before = map(&[("lumen", 0), ("cogent", 1), ("telia", 2)]);
        let after = positions(&before, &["cogent", "telia"]);
        assert_eq!(after, map(&[("cogent", 1), ("telia", 2)]));
        let again = positions(&after, &["ntt", "cogent", "telia"]);
        assert_eq!(again["ntt"], 0);
    }

    #[test]
    fn a_damaged_file_cannot_give_two_transits_one_position() {
        let damaged = map(&[("lumen", 1), ("cogent", 1), ("telia", 9)]);
        let p = positions(&damaged, &["lumen", "cogent", "telia"]);
        assert_eq!(p, map(&[("lumen", 1), ("cogent", 0), ("telia", 2)]));
    }

    #[test]
    fn the_numbering_survives_a_restart_and_a_bad_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tunnel-numbering");
        assert_eq!(load(&path), Numbering::default());
        let n = Numbering {
            claim: Some(SlotClaim {
                slot: 17,
                claimed_ms: 1_764_800_000_000,
                pinned: false,
            }),
            positions: map(&[("lumen", 0), ("cogent", 2)]),
        };
        save(&path, &n).unwrap();
        assert_eq!(load(&path), n);
        std::fs::write(&path, "slot x 1\ntransit lumen 0\ngarbage\n").unwrap();
        assert_eq!(
            load(&path),
            Numbering {
                claim: None,
                positions: map(&[("lumen", 0)])
            }
        );
    }
}
