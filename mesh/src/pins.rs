//! Key pinning (ADR 0033): the first key seen validly signing for a node id is that
//! node's key for good. Anything signed for the node by another key is a forgery, even
//! by a holder of the mesh keyring. Pins are kept in the state directory (`pinned_keys`)
//! so a restart does not reopen the first-sight window.

use std::collections::BTreeMap;

use super::identity::NodeId;
use super::signing::PublicKey;

/// Most pins held: far above any mesh, it bounds what a keyring holder inventing node
/// ids can make us keep (past it, new ids are refused, known ones still checked).
pub const MAX_PINS: usize = 65_536;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPins {
    pins: BTreeMap<NodeId, PublicKey>,
}

/// What a check of a signer against the pins found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// The node's pinned key signed.
    Matches,
    /// First valid sight of the node: its key is pinned now.
    Pinned,
    /// The node is pinned to another key: a forgery.
    Mismatch,
    /// First sight, but the table is full: refused, not pinned.
    Full,
}

impl KeyPins {
    /// Checks `key` as the signer for `node`, pinning it on first sight.
    pub fn check(&mut self, node: NodeId, key: PublicKey) -> PinCheck {
        match self.pins.get(&node) {
            Some(k) if *k == key => PinCheck::Matches,
            Some(_) => PinCheck::Mismatch,
            None if self.pins.len() >= MAX_PINS => PinCheck::Full,
            None => {
                self.pins.insert(node, key);
                PinCheck::Pinned
            }
        }
    }

    pub fn get(&self, node: &NodeId) -> Option<&PublicKey> {
        self.pins.get(node)
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// The `pinned_keys` file: one `NODE_ID HEX_PUBLIC_KEY` a line, `#` starts a comment.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# gatewan pinned member keys: node id, Ed25519 public key\n");
        for (node, key) in &self.pins {
            s.push_str(&format!("{node} {}\n", key.to_hex()));
        }
        s
    }

    /// Reads a `pinned_keys` file; an error names the line.
    pub fn parse(text: &str) -> Result<KeyPins, String> {
        let mut pins = KeyPins::default();
        for (i, line) in text.lines().enumerate() {
            let l = line.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let mut parts = l.split_whitespace();
            let (Some(node), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `NODE_ID PUBLIC_KEY`", i + 1));
            };
            let node: NodeId = node
                .parse()
                .map_err(|e| format!("line {}: bad node id: {e}", i + 1))?;
            let key = PublicKey::from_hex(key)
                .ok_or_else(|| format!("line {}: public key is not 64 hex digits", i + 1))?;
            if pins.pins.insert(node, key).is_some_and(|k| k != key) {
                return Err(format!("line {}: {node} pinned twice", i + 1));
            }
        }
        Ok(pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::MemberKey;

    fn k(b: u8) -> PublicKey {
        MemberKey::from_seed([b; 32]).public()
    }

    #[test]
    fn the_first_key_seen_is_pinned_and_another_key_is_a_mismatch_from_then_on() {
        let mut pins = KeyPins::default();
        let n = NodeId([1; 16]);
        assert_eq!(pins.check(n, k(1)), PinCheck::Pinned);
        assert_eq!(pins.check(n, k(1)), PinCheck::Matches);
        assert_eq!(pins.check(n, k(2)), PinCheck::Mismatch);
        // The mismatch did not move the pin.
        assert_eq!(pins.get(&n), Some(&k(1)));
        assert_eq!(pins.check(NodeId([2; 16]), k(2)), PinCheck::Pinned);
    }

    #[test]
    fn pins_survive_a_round_trip_through_their_file() {
        let mut pins = KeyPins::default();
        pins.check(NodeId([1; 16]), k(1));
        pins.check(NodeId([2; 16]), k(2));
        let back = KeyPins::parse(&pins.to_text()).unwrap();
        assert_eq!(back, pins);
    }

    #[test]
    fn a_bad_pins_file_names_the_line() {
        let good = format!("{} {}\n", NodeId([1; 16]), k(1).to_hex());
        assert!(
            KeyPins::parse(&format!("# c\n{good}junk\n"))
                .unwrap_err()
                .starts_with("line 3")
        );
        let short = format!("{} abcd\n", NodeId([1; 16]));
        assert!(KeyPins::parse(&short).unwrap_err().contains("64 hex"));
        let twice = format!("{good}{} {}\n", NodeId([1; 16]), k(2).to_hex());
        assert!(KeyPins::parse(&twice).unwrap_err().contains("pinned twice"));
    }

    #[test]
    fn a_full_table_refuses_new_nodes_but_still_checks_known_ones() {
        let mut pins = KeyPins::default();
        for i in 0..MAX_PINS as u32 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            pins.pins.insert(NodeId(id), k(1));
        }
        assert_eq!(pins.check(NodeId([0xff; 16]), k(1)), PinCheck::Full);
        assert_eq!(pins.check(NodeId([0; 16]), k(1)), PinCheck::Matches);
        assert_eq!(pins.check(NodeId([0; 16]), k(2)), PinCheck::Mismatch);
    }
}

/// The `revocations` file: the signed Revocation records held (ADR 0033), base64, one a
/// line, `#` starts a comment. They are checked again when read back.
pub fn revocations_to_text(records: &[bytes::Bytes]) -> String {
    use base64::Engine as _;
    let mut s = String::from("# gatewan revocations: signed Revocation records, base64\n");
    for r in records {
        s.push_str(&base64::engine::general_purpose::STANDARD.encode(r));
        s.push('\n');
    }
    s
}

/// Reads a `revocations` file; an error names the line.
pub fn revocations_from_text(text: &str) -> Result<Vec<bytes::Bytes>, String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let b = base64::engine::general_purpose::STANDARD
            .decode(l)
            .map_err(|e| format!("line {}: not base64: {e}", i + 1))?;
        out.push(bytes::Bytes::from(b));
    }
    Ok(out)
}

#[cfg(test)]
mod revocation_file_tests {
    use super::*;

    #[test]
    fn revocations_survive_a_round_trip_through_their_file_and_junk_names_its_line() {
        let records = vec![
            bytes::Bytes::from_static(b"\x01\x02"),
            bytes::Bytes::from_static(b"xyz"),
        ];
        assert_eq!(
            revocations_from_text(&revocations_to_text(&records)).unwrap(),
            records
        );
        assert!(
            revocations_from_text("# c\n!!!\n")
                .unwrap_err()
                .starts_with("line 2")
        );
    }
}
