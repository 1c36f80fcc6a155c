//! Member signing keys and the signature trailer (ADR 0032).
//!
//! Every record a member publishes, and every control message in which it asserts an
//! identity, ends with one protobuf field, number 127, of 96 bytes: the signer's 32-byte
//! Ed25519 public key and a 64-byte signature over every byte before the field. Because
//! the field comes last, a receiver checks it without re-encoding anything, and a record
//! forwarded verbatim (with fields this version does not know) still verifies.
//!
//! What is signed is the prefix behind a domain label (`DOMAIN_RECORD` or
//! `DOMAIN_CONTROL`), so that a signed control message can never pass for a record nor
//! the other way round.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// Field 127, wire type 2 (length-delimited), as a varint: (127 << 3) | 2 = 1018.
const TRAILER_TAG: [u8; 2] = [0xfa, 0x07];
/// The field's length, 96, as a varint.
const TRAILER_LEN: u8 = 96;
pub const PUBLIC_KEY_BYTES: usize = 32;
const SIGNATURE_BYTES: usize = 64;
/// Bytes the trailer adds to what it signs.
pub const TRAILER_BYTES: usize = TRAILER_TAG.len() + 1 + PUBLIC_KEY_BYTES + SIGNATURE_BYTES;

/// Domain labels: what kind of message a signature is for.
pub const DOMAIN_RECORD: &[u8] = b"gatewan record v1\0";
pub const DOMAIN_CONTROL: &[u8] = b"gatewan control v1\0";
/// foca's SWIM packets (their header asserts the sender's identity).
pub const DOMAIN_SWIM: &[u8] = b"gatewan swim v1\0";

/// A member's signing key, kept for life in its state directory (`signing_key`).
#[derive(Clone)]
pub struct MemberKey {
    key: SigningKey,
}

impl fmt::Debug for MemberKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret: the fingerprint names the key.
        write!(f, "MemberKey({})", fingerprint(&self.public()))
    }
}

impl MemberKey {
    /// The key whose secret seed is `seed` (32 bytes from the OS for a real member).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        MemberKey {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed, to be stored (mode 0600) and nowhere else.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// `body` followed by the trailer that signs it in `domain`.
    pub fn sign(&self, domain: &[u8], body: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&signed_message(domain, body));
        let mut out = Vec::with_capacity(body.len() + TRAILER_BYTES);
        out.extend_from_slice(body);
        out.extend_from_slice(&TRAILER_TAG);
        out.push(TRAILER_LEN);
        out.extend_from_slice(&self.public().0);
        out.extend_from_slice(&sig.to_bytes());
        out
    }
}

/// An Ed25519 public key as it travels: 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_BYTES]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", fingerprint(self))
    }
}

impl PublicKey {
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 2 * PUBLIC_KEY_BYTES || !s.is_ascii() {
            return None;
        }
        let mut b = [0u8; PUBLIC_KEY_BYTES];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(PublicKey(b))
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self)
    }
}

/// Names a member's key on the API, in logs and in config: the first 8 bytes of
/// BLAKE3(public key), 16 lowercase hex digits (the format of the mesh key fingerprints).
pub fn fingerprint(key: &PublicKey) -> String {
    hex(&blake3::hash(&key.0).as_bytes()[..8])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn signed_message(domain: &[u8], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + body.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(body);
    m
}

/// Why a trailer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrailerError {
    #[error("no signature trailer (field 127 of 96 bytes must come last)")]
    Missing,
    #[error("signer key is not a valid Ed25519 public key")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
}

/// Checks that `bytes` ends with a trailer whose signature (in `domain`) verifies over
/// everything before it; returns that prefix and the signer's key.
pub fn verify<'a>(domain: &[u8], bytes: &'a [u8]) -> Result<(&'a [u8], PublicKey), TrailerError> {
    let split = bytes
        .len()
        .checked_sub(TRAILER_BYTES)
        .ok_or(TrailerError::Missing)?;
    let (body, trailer) = bytes.split_at(split);
    let (header, rest) = trailer.split_at(TRAILER_TAG.len() + 1);
    if header[..TRAILER_TAG.len()] != TRAILER_TAG || header[TRAILER_TAG.len()] != TRAILER_LEN {
        return Err(TrailerError::Missing);
    }
    let (key, sig) = rest.split_at(PUBLIC_KEY_BYTES);
    let key: [u8; PUBLIC_KEY_BYTES] = key.try_into().map_err(|_| TrailerError::Missing)?;
    let sig: [u8; SIGNATURE_BYTES] = sig.try_into().map_err(|_| TrailerError::Missing)?;
    let verifying = VerifyingKey::from_bytes(&key).map_err(|_| TrailerError::BadKey)?;
    // Strict: no small-order keys, no malleable signatures, so one record has one valid
    // signature per key and fingerprints of equal records agree.
    verifying
        .verify_strict(&signed_message(domain, body), &Signature::from_bytes(&sig))
        .map_err(|_| TrailerError::BadSignature)?;
    Ok((body, PublicKey(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MemberKey {
        MemberKey::from_seed([b; 32])
    }

    #[test]
    fn a_signed_body_verifies_and_gives_back_the_body_and_the_signer() {
        let signed = key(1).sign(DOMAIN_RECORD, b"some record bytes");
        assert_eq!(signed.len(), 17 + TRAILER_BYTES);
        let (body, signer) = verify(DOMAIN_RECORD, &signed).unwrap();
        assert_eq!(body, b"some record bytes");
        assert_eq!(signer, key(1).public());
    }

    #[test]
    fn an_empty_body_is_signed_too() {
        let signed = key(1).sign(DOMAIN_RECORD, b"");
        assert_eq!(verify(DOMAIN_RECORD, &signed).unwrap().0, b"");
    }

    #[test]
    fn a_truncated_trailer_is_missing() {
        let signed = key(1).sign(DOMAIN_RECORD, b"body");
        for cut in 1..=TRAILER_BYTES {
            assert!(verify(DOMAIN_RECORD, &signed[..signed.len() - cut]).is_err());
        }
        assert_eq!(verify(DOMAIN_RECORD, b""), Err(TrailerError::Missing));
    }

    #[test]
    fn a_trailer_of_another_length_or_field_is_missing() {
        let mut signed = key(1).sign(DOMAIN_RECORD, b"body");
        let at = signed.len() - TRAILER_BYTES;
        signed[at + 2] = 95;
        assert_eq!(verify(DOMAIN_RECORD, &signed), Err(TrailerError::Missing));
        signed[at + 2] = TRAILER_LEN;
        signed[at] = 0xf2; // field 126
        assert_eq!(verify(DOMAIN_RECORD, &signed), Err(TrailerError::Missing));
    }

    #[test]
    fn a_flipped_bit_anywhere_fails() {
        let signed = key(1).sign(DOMAIN_RECORD, b"a record body of some length");
        for i in 0..signed.len() {
            let mut bad = signed.clone();
            bad[i] ^= 0x04;
            assert!(verify(DOMAIN_RECORD, &bad).is_err(), "bit flipped at {i}");
        }
    }

    #[test]
    fn a_swapped_key_fails() {
        let mut signed = key(1).sign(DOMAIN_RECORD, b"body");
        let at = signed.len() - PUBLIC_KEY_BYTES - SIGNATURE_BYTES;
        signed[at..at + PUBLIC_KEY_BYTES].copy_from_slice(&key(2).public().0);
        assert_eq!(
            verify(DOMAIN_RECORD, &signed),
            Err(TrailerError::BadSignature)
        );
    }

    #[test]
    fn a_signature_in_one_domain_does_not_verify_in_the_other() {
        let signed = key(1).sign(DOMAIN_CONTROL, b"body");
        assert_eq!(
            verify(DOMAIN_RECORD, &signed),
            Err(TrailerError::BadSignature)
        );
    }

    #[test]
    fn fingerprints_and_hex_round_trip() {
        let k = key(3).public();
        assert_eq!(PublicKey::from_hex(&k.to_hex()), Some(k));
        assert_eq!(PublicKey::from_hex("zz"), None);
        assert_eq!(k.fingerprint().len(), 16);
        assert_ne!(k.fingerprint(), key(4).public().fingerprint());
        assert!(!format!("{:?}", key(3)).contains(&hex(&key(3).seed())));
    }
}
