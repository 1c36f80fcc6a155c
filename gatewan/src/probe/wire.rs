//! The probe packet on the wire: a fixed 40-byte datagram, big-endian, sent inside the
//! tunnel between the two echo sockets of its ends.
//!
//! ```text
//!  0      4    5     8              16        24      32              40
//!  | GWP1 |kind| 0 0 0| tunnel index | cookie  |  seq  | timestamp (ns) |
//! ```
//!
//! The prober picks the cookie (random per tunnel per daemon start) and the timestamp (its
//! own monotonic clock); the responder echoes the whole packet with the kind flipped, so
//! a reply can be matched to exactly one prober and one run of it.

use thiserror::Error;

/// Every probe packet is exactly this long.
pub const LEN: usize = 40;
pub const MAGIC: [u8; 4] = *b"GWP1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request = 1,
    Reply = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub tunnel_index: u64,
    pub cookie: u64,
    pub seq: u64,
    /// Nanoseconds on the prober's clock; meaningless to the responder, echoed as is.
    pub timestamp_ns: u64,
}

/// Why a datagram is not a probe packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("{0} bytes, a probe is {LEN}")]
    Length(usize),
    #[error("bad magic")]
    Magic,
    #[error("unknown kind {0}")]
    Kind(u8),
    #[error("non-zero padding")]
    Padding,
}

impl Packet {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.tunnel_index.to_be_bytes());
        b[16..24].copy_from_slice(&self.cookie.to_be_bytes());
        b[24..32].copy_from_slice(&self.seq.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ns.to_be_bytes());
        b
    }

    pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
        let b: &[u8; LEN] = buf.try_into().map_err(|_| DecodeError::Length(buf.len()))?;
        if b[0..4] != MAGIC {
            return Err(DecodeError::Magic);
        }
        let kind = match b[4] {
            1 => Kind::Request,
            2 => Kind::Reply,
            k => return Err(DecodeError::Kind(k)),
        };
        // Padding must be zero so the bytes stay free for a later version to use.
        if b[5..8] != [0, 0, 0] {
            return Err(DecodeError::Padding);
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_be_bytes(w)
        };
        Ok(Packet {
            kind,
            tunnel_index: word(8),
            cookie: word(16),
            seq: word(24),
            timestamp_ns: word(32),
        })
    }

    /// The answer to this request: everything echoed, only the kind changes.
    pub fn reply(&self) -> Packet {
        Packet {
            kind: Kind::Reply,
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Packet {
        Packet {
            kind: Kind::Request,
            tunnel_index: 0x0102_0304_0506_0708,
            cookie: 0x1112_1314_1516_1718,
            seq: 0x2122_2324_2526_2728,
            timestamp_ns: 0x3132_3334_3536_3738,
        }
    }

    #[test]
    fn layout_is_big_endian_and_fixed() {
        let b = sample().encode();
        assert_eq!(&b[0..8], b"GWP1\x01\0\0\0");
        assert_eq!(&b[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            &b[16..24],
            &[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18]
        );
        assert_eq!(
            &b[24..32],
            &[0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28]
        );
        assert_eq!(
            &b[32..40],
            &[0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38]
        );
        assert_eq!(sample().reply().encode()[4], 2);
    }

    #[test]
    fn rejects_with_a_reason() {
        let good = sample().encode();
        assert_eq!(Packet::decode(&good[..39]), Err(DecodeError::Length(39)));
        assert_eq!(Packet::decode(&[]), Err(DecodeError::Length(0)));
        let mut long = [0u8; 41];
        long[..40].copy_from_slice(&good);
        assert_eq!(Packet::decode(&long), Err(DecodeError::Length(41)));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(Packet::decode(&b), Err(DecodeError::Magic));
        for k in [0u8, 3, 255] {
            let mut b = good;
            b[4] = k;
            assert_eq!(Packet::decode(&b), Err(DecodeError::Kind(k)));
        }
        for i in 5..8 {
            let mut b = good;
            b[i] = 1;
            assert_eq!(Packet::decode(&b), Err(DecodeError::Padding));
        }
    }

    #[test]
    fn reply_echoes_everything_but_the_kind() {
        let r = sample().reply();
        assert_eq!(r.kind, Kind::Reply);
        assert_eq!(
            Packet {
                kind: Kind::Request,
                ..r
            },
            sample()
        );
    }

    fn any_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Request), Just(Kind::Reply)]
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Packet::decode(&b);
        }

        #[test]
        fn random_40_bytes_decode_only_when_well_formed(
            b in proptest::array::uniform32(any::<u8>()),
            tail in any::<[u8; 8]>(),
            with_magic: bool,
        ) {
            let mut buf = [0u8; LEN];
            buf[..32].copy_from_slice(&b);
            buf[32..].copy_from_slice(&tail);
            // Without help random bytes almost never get past the magic.
            if with_magic {
                buf[..4].copy_from_slice(&MAGIC);
            }
            match Packet::decode(&buf) {
                // Whatever decodes re-encodes to the same bytes: nothing is silently dropped.
                Ok(p) => prop_assert_eq!(p.encode(), buf),
                Err(_) => prop_assert!(buf[0..4] != MAGIC || !(1..=2).contains(&buf[4]) || buf[5..8] != [0, 0, 0]),
            }
        }

        #[test]
        fn roundtrip(kind in any_kind(), tunnel_index: u64, cookie: u64, seq: u64, timestamp_ns: u64) {
            let p = Packet { kind, tunnel_index, cookie, seq, timestamp_ns };
            prop_assert_eq!(Packet::decode(&p.encode()), Ok(p));
        }
    }
}
