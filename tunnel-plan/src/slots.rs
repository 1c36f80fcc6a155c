//! Tunnel slots claimed through the mesh (ADR 0042), pure: no clock, no I/O.
//!
//! A gatewan without `tunnels.slot` claims a free slot once it has seen the mesh's
//! claims, announces it in its NodeRecord and keeps it in state_dir. Two gatewans may still
//! claim one slot (they started together, or in two halves of a partitioned mesh): every
//! member then agrees, from the records alone, who keeps it ([`SlotClaim::beats`]): a
//! pinned slot first, then the earlier claim, then the lower node id. The holder keeps its
//! tunnels; the other gets none and claims another slot, once. A pinned slot never moves:
//! two gatewans pinned to one slot leave the loser without tunnels, reported, never
//! flapping.
//!
//! Determinism: every function here is a function of its arguments; the caller passes in
//! both clocks (monotonic for the wait before the first claim, Unix time only to stamp a
//! claim, which every member compares the same way).

use std::collections::{BTreeMap, BTreeSet};

use gatewan_mesh::store::StateStore;
use gatewan_mesh::{MemberInfo, MemberState, NodeId};

use crate::GatewanView;

/// Before its first claim a gatewan waits to have seen the mesh's claims: at least this
/// long after it started, so its first gossip rounds can bring them in...
pub const SETTLE_MIN_MS: u64 = 1_000;
/// ...and at most this long: a gatewan alone (the first of a mesh, or cut off) claims
/// anyway, and a conflict found later is resolved like any other.
pub const SETTLE_MAX_MS: u64 = 5_000;

/// A gatewan's claim on a slot, as its NodeRecord announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SlotClaim {
    pub slot: u32,
    /// When the slot was claimed, Unix ms; 0 from gatewans of an earlier version.
    pub claimed_ms: u64,
    /// Set by `tunnels.slot`: never renumbered.
    pub pinned: bool,
}

impl SlotClaim {
    /// Whether the slot was set by hand: pinned, or announced by a gatewan of an earlier
    /// version (no claim time), whose slots were all set by hand and which cannot move.
    pub fn by_hand(&self) -> bool {
        self.pinned || self.claimed_ms == 0
    }

    fn rank(&self, id: NodeId) -> (bool, u64, NodeId) {
        // Between slots set by hand the claim time means nothing: the node id decides.
        let by_hand = self.by_hand();
        (!by_hand, if by_hand { 0 } else { self.claimed_ms }, id)
    }

    /// Whether the gatewan `id` with this claim keeps the slot over `other_id` with
    /// `other`: set by hand over claimed, then the earlier claim (the gatewan already in
    /// place keeps its tunnels; the newcomer moves), then the lower node id. A total
    /// order, so every member picks the same holder without talking.
    pub fn beats(&self, id: NodeId, other: &SlotClaim, other_id: NodeId) -> bool {
        self.rank(id) < other.rank(other_id)
    }
}

/// The holder of every slot among `gatewans`: the one whose claim beats the others'.
pub fn holders<'a>(gatewans: impl IntoIterator<Item = &'a GatewanView>) -> BTreeMap<u32, NodeId> {
    let mut best: BTreeMap<u32, (SlotClaim, NodeId)> = BTreeMap::new();
    for g in gatewans {
        let c = g.claim();
        match best.get(&c.slot) {
            Some((b, bid)) if !c.beats(g.id, b, *bid) => {}
            _ => {
                best.insert(c.slot, (c, g.id));
            }
        }
    }
    best.into_iter().map(|(s, (_, id))| (s, id)).collect()
}

/// Where a gatewan starts looking for a free slot: a hash of its name, so that gatewans
/// starting together spread over the slots instead of all trying slot 0, and a gatewan
/// whose state_dir was lost finds its old slot again if it is still free.
pub fn preferred_slot(name: &str, max_slots: u64) -> u32 {
    let h = blake3::hash(format!("gatewan tunnel slot v1\0{name}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_be_bytes(b) % max_slots.max(1)) as u32
}

/// The first slot not in `taken` from the preferred one on, wrapping; None when every
/// slot below `max_slots` is taken.
pub fn free_slot(name: &str, taken: &BTreeSet<u32>, max_slots: u64) -> Option<u32> {
    let max = u32::try_from(max_slots).unwrap_or(u32::MAX);
    let start = preferred_slot(name, max_slots);
    (start..max).chain(0..start).find(|s| !taken.contains(s))
}

/// Another gatewan's claim, as the mesh holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherClaim {
    pub id: NodeId,
    pub name: String,
    /// None while it has not claimed a slot.
    pub claim: Option<SlotClaim>,
}

/// What the mesh lets a gatewan know before its first claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeshSeen {
    /// Live members other than us.
    pub live_others: usize,
    /// Of those, the ones whose NodeRecord we hold.
    pub with_record: usize,
}

/// What a member's mesh view tells the claimer of `me`: every other gatewan's claim as
/// its NodeRecord announces it (live or not: a gatewan down for now comes back with its
/// slot), and how many live members we hold the NodeRecord of.
pub fn mesh_claims(
    me: NodeId,
    members: &[MemberInfo],
    store: &StateStore,
) -> (Vec<OtherClaim>, MeshSeen) {
    let others = store
        .gatewans()
        .filter(|g| g.id != me)
        .map(|g| OtherClaim {
            id: g.id,
            name: g.name.clone(),
            claim: g.tunnel_slot.map(|slot| SlotClaim {
                slot,
                claimed_ms: g.tunnel_slot_claimed_ms,
                pinned: g.tunnel_slot_pinned,
            }),
        })
        .collect();
    // A restarted member is listed twice (its previous life Down): count nodes once.
    let live: BTreeSet<NodeId> = members
        .iter()
        .filter(|m| !m.local && m.id.node != me && m.state != MemberState::Down)
        .map(|m| m.id.node)
        .collect();
    let with_record = live.iter().filter(|n| store.node(**n).is_some()).count();
    (
        others,
        MeshSeen {
            live_others: live.len(),
            with_record,
        },
    )
}

/// Why the claimer holds no slot, or holds one without tunnels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotTrouble {
    /// Every slot below the limit is taken.
    NoFreeSlot { max_slots: u64 },
    /// Our pinned slot is held by another gatewan pinned to it (or by one of an earlier
    /// version, whose slots were all set by hand), with the lower node id: we keep it
    /// and get no tunnel.
    PinnedConflict { slot: u32, holder: String },
}

impl std::fmt::Display for SlotTrouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SlotTrouble::NoFreeSlot { max_slots } => write!(
                f,
                "no free tunnel slot: all {max_slots} are taken (widen tunnels.pool_v4 or tunnels.ports)"
            ),
            SlotTrouble::PinnedConflict { slot, holder } => write!(
                f,
                "tunnels.slot {slot} is also pinned by {holder}, which keeps it: this gatewan gets no tunnel until one of the two pins changes (or is removed)"
            ),
        }
    }
}

/// The claim a gatewan announces at start: its pin (`tunnels.slot`), else the claim kept
/// in state_dir, else none yet.
pub fn initial_claim(pinned: Option<u32>, stored: Option<SlotClaim>) -> Option<SlotClaim> {
    match pinned {
        Some(slot) => Some(SlotClaim {
            slot,
            claimed_ms: 0,
            pinned: true,
        }),
        None => stored.map(|c| SlotClaim { pinned: false, ..c }),
    }
}

/// One gatewan's slot: the pinned one, or the claim it made, kept or renewed.
#[derive(Debug, Clone)]
pub struct Claimer {
    id: NodeId,
    name: String,
    pinned: Option<u32>,
    claim: Option<SlotClaim>,
    started_ms: u64,
    renumberings: u64,
    trouble: Option<SlotTrouble>,
}

impl Claimer {
    /// `stored` is the claim kept in state_dir (ignored when `pinned`); `now_ms` is the
    /// monotonic clock.
    pub fn new(
        id: NodeId,
        name: &str,
        pinned: Option<u32>,
        stored: Option<SlotClaim>,
        now_ms: u64,
    ) -> Claimer {
        Claimer {
            id,
            name: name.to_string(),
            pinned,
            claim: initial_claim(pinned, stored),
            started_ms: now_ms,
            renumberings: 0,
            trouble: None,
        }
    }

    /// The slot we announce, if any.
    pub fn claim(&self) -> Option<SlotClaim> {
        self.claim
    }

    /// Times we gave a slot up to a gatewan whose claim beat ours.
    pub fn renumberings(&self) -> u64 {
        self.renumberings
    }

    /// What keeps us from a slot with tunnels, if anything.
    pub fn trouble(&self) -> Option<&SlotTrouble> {
        self.trouble.as_ref()
    }

    /// Looks at the others' claims and returns our claim when it is new (to store in
    /// state_dir and announce); None when nothing changed. `now_ms` is monotonic,
    /// `unix_ms` stamps a new claim.
    pub fn step(
        &mut self,
        others: &[OtherClaim],
        seen: MeshSeen,
        max_slots: u64,
        now_ms: u64,
        unix_ms: u64,
    ) -> Option<SlotClaim> {
        let me = self.id;
        let held_by_better = |c: &SlotClaim| {
            others.iter().filter(|o| o.id != me).find(|o| {
                o.claim
                    .is_some_and(|oc| oc.slot == c.slot && oc.beats(o.id, c, me))
            })
        };
        if let Some(slot) = self.pinned {
            let mine = SlotClaim {
                slot,
                claimed_ms: 0,
                pinned: true,
            };
            self.trouble = held_by_better(&mine).map(|o| SlotTrouble::PinnedConflict {
                slot,
                holder: o.name.clone(),
            });
            return None;
        }
        let keep = match &self.claim {
            Some(c) => held_by_better(c).is_none() && u64::from(c.slot) < max_slots,
            None => {
                let waited = now_ms.saturating_sub(self.started_ms);
                let seen_all = seen.live_others > 0 && seen.with_record >= seen.live_others;
                if !(waited >= SETTLE_MAX_MS || (seen_all && waited >= SETTLE_MIN_MS)) {
                    return None;
                }
                false
            }
        };
        if keep {
            self.trouble = None;
            return None;
        }
        let taken: BTreeSet<u32> = others
            .iter()
            .filter(|o| o.id != me)
            .filter_map(|o| o.claim.map(|c| c.slot))
            .collect();
        match free_slot(&self.name, &taken, max_slots) {
            Some(slot) => {
                let c = SlotClaim {
                    slot,
                    claimed_ms: unix_ms,
                    pinned: false,
                };
                if self.claim.is_some() {
                    self.renumberings += 1;
                }
                self.claim = Some(c);
                self.trouble = None;
                Some(c)
            }
            None => {
                // Keep announcing what we had (if anything): dropping it would free the
                // slot for nobody, and its tunnels stay off while another holds it.
                self.trouble = Some(SlotTrouble::NoFreeSlot { max_slots });
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn other(n: u8, slot: u32, claimed_ms: u64, pinned: bool) -> OtherClaim {
        OtherClaim {
            id: id(n),
            name: format!("gw{n}"),
            claim: Some(SlotClaim {
                slot,
                claimed_ms,
                pinned,
            }),
        }
    }

    const SEEN: MeshSeen = MeshSeen {
        live_others: 2,
        with_record: 2,
    };

    #[test]
    fn pinned_beats_claimed_then_the_earlier_claim_then_the_lower_id() {
        let pinned = SlotClaim {
            slot: 1,
            claimed_ms: 9_000,
            pinned: true,
        };
        let early = SlotClaim {
            slot: 1,
            claimed_ms: 1_000,
            pinned: false,
        };
        let late = SlotClaim {
            slot: 1,
            claimed_ms: 2_000,
            pinned: false,
        };
        assert!(pinned.beats(id(9), &early, id(1)));
        assert!(early.beats(id(9), &late, id(1)));
        assert!(late.beats(id(1), &late, id(2)));
        // A gatewan of an earlier version (no claim time) set its slot by hand.
        let earlier_version = SlotClaim {
            slot: 1,
            claimed_ms: 0,
            pinned: false,
        };
        assert!(earlier_version.by_hand());
        assert!(earlier_version.beats(id(9), &early, id(1)));
        assert!(pinned.beats(id(1), &earlier_version, id(9)));
        assert!(!late.beats(id(2), &late, id(1)));
        // Exactly one of two distinct claimants beats the other.
        for (a, b) in [(pinned, early), (early, late), (late, late)] {
            assert_ne!(a.beats(id(3), &b, id(4)), b.beats(id(4), &a, id(3)));
        }
    }

    #[test]
    fn a_new_gatewan_waits_to_have_seen_the_mesh_then_claims_a_free_slot() {
        let mut c = Claimer::new(id(5), "gw5", None, None, 0);
        let others = [other(1, 0, 10, false), other(2, 1, 20, false)];
        let unseen = MeshSeen {
            live_others: 2,
            with_record: 1,
        };
        assert_eq!(c.step(&others, SEEN, 4, 500, 100), None, "too early");
        assert_eq!(
            c.step(&others, unseen, 4, 1_500, 100),
            None,
            "a record missing"
        );
        let claim = c.step(&others, SEEN, 4, 1_500, 100).expect("claims");
        assert!(claim.slot >= 2 && !claim.pinned && claim.claimed_ms == 100);
        assert_eq!(c.step(&others, SEEN, 4, 2_000, 200), None, "kept");
        assert_eq!(c.renumberings(), 0);
    }

    #[test]
    fn a_gatewan_alone_claims_after_the_longest_wait() {
        let mut c = Claimer::new(id(5), "gw5", None, None, 0);
        let alone = MeshSeen {
            live_others: 0,
            with_record: 0,
        };
        assert_eq!(c.step(&[], alone, 512, 4_999, 1), None);
        assert!(c.step(&[], alone, 512, 5_000, 1).is_some());
    }

    #[test]
    fn the_later_claim_renumbers_once_and_the_earlier_keeps_its_slot() {
        let mut early = Claimer::new(
            id(9),
            "gw9",
            None,
            Some(SlotClaim {
                slot: 3,
                claimed_ms: 1_000,
                pinned: false,
            }),
            0,
        );
        let mut late = Claimer::new(
            id(1),
            "gw1",
            None,
            Some(SlotClaim {
                slot: 3,
                claimed_ms: 2_000,
                pinned: false,
            }),
            0,
        );
        let as_other = |c: &Claimer, n: u8| OtherClaim {
            id: id(n),
            name: format!("gw{n}"),
            claim: c.claim(),
        };
        let (e, l) = (as_other(&early, 9), as_other(&late, 1));
        assert_eq!(
            early.step(std::slice::from_ref(&l), SEEN, 8, 10, 5_000),
            None
        );
        let moved = late
            .step(std::slice::from_ref(&e), SEEN, 8, 10, 5_000)
            .expect("renumbers");
        assert_ne!(moved.slot, 3);
        assert_eq!(moved.claimed_ms, 5_000);
        assert_eq!(late.renumberings(), 1);
        // Now apart: nobody moves again.
        let l = as_other(&late, 1);
        assert_eq!(early.step(&[l], SEEN, 8, 20, 6_000), None);
        assert_eq!(late.step(&[e], SEEN, 8, 20, 6_000), None);
        assert_eq!(late.renumberings(), 1);
    }

    #[test]
    fn a_claimed_slot_gives_way_to_a_pinned_one_and_a_pinned_conflict_never_moves() {
        let stored = SlotClaim {
            slot: 2,
            claimed_ms: 1,
            pinned: false,
        };
        let mut claimed = Claimer::new(id(1), "gw1", None, Some(stored), 0);
        let moved = claimed
            .step(&[other(7, 2, 0, true)], SEEN, 8, 10, 50)
            .expect("gives way");
        assert_ne!(moved.slot, 2);

        let mut pinned = Claimer::new(id(9), "gw9", Some(2), None, 0);
        for t in 0..5 {
            assert_eq!(pinned.step(&[other(1, 2, 0, true)], SEEN, 8, t, t), None);
        }
        assert_eq!(pinned.claim().map(|c| c.slot), Some(2), "never moves");
        assert_eq!(
            pinned.trouble(),
            Some(&SlotTrouble::PinnedConflict {
                slot: 2,
                holder: "gw1".into()
            })
        );
        // The holder of the pin sees no trouble.
        let mut holder = Claimer::new(id(1), "gw1", Some(2), None, 0);
        assert_eq!(holder.step(&[other(9, 2, 0, true)], SEEN, 8, 1, 1), None);
        assert_eq!(holder.trouble(), None);
    }

    #[test]
    fn a_stored_claim_outside_the_pools_is_claimed_again() {
        let stored = SlotClaim {
            slot: 40,
            claimed_ms: 1,
            pinned: false,
        };
        let mut c = Claimer::new(id(1), "gw1", None, Some(stored), 0);
        let again = c.step(&[], SEEN, 8, 0, 9).expect("within the new limit");
        assert!(again.slot < 8);
    }

    #[test]
    fn with_every_slot_taken_the_trouble_is_reported_and_nothing_claimed() {
        let mut c = Claimer::new(id(9), "gw9", None, None, 0);
        let others = [other(1, 0, 1, false), other(2, 1, 1, false)];
        assert_eq!(c.step(&others, SEEN, 2, 10_000, 1), None);
        assert_eq!(c.trouble(), Some(&SlotTrouble::NoFreeSlot { max_slots: 2 }));
    }

    #[test]
    fn free_slot_starts_at_the_preferred_one_and_wraps() {
        let max = 16;
        let p = preferred_slot("gw-a", max);
        assert_eq!(free_slot("gw-a", &BTreeSet::new(), max), Some(p));
        let all_but_one: BTreeSet<u32> = (0..16).filter(|&s| s != (p + 15) % 16).collect();
        assert_eq!(free_slot("gw-a", &all_but_one, max), Some((p + 15) % 16));
        let all: BTreeSet<u32> = (0..16).collect();
        assert_eq!(free_slot("gw-a", &all, max), None);
    }
}
