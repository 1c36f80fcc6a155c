//! Sealing of every mesh datagram under a keyring (XChaCha20-Poly1305).
//!
//! The primary key seals; every installed key opens, so keys can be rotated across a
//! running mesh: install the new key everywhere, make it primary everywhere, then remove
//! the old one everywhere (the procedure of `serf keys`).
//!
//! Datagram layout: `version(1) | nonce(24) | ciphertext(timestamp_ms(8) | payload) | tag(16)`.
//! The random 24-byte nonce never repeats in practice, so no per-key counter has to
//! survive restarts; the authenticated timestamp and the nonce feed the replay filter.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub const KEY_LEN: usize = 32;
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const TS_LEN: usize = 8;
/// Bytes a sealed datagram carries beyond its payload.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TS_LEN + TAG_LEN;

/// A 32-byte mesh key.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; KEY_LEN]);

impl MeshKey {
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        <[u8; KEY_LEN]>::try_from(b).ok().map(MeshKey)
    }

    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        rand::fill(&mut k);
        MeshKey(k)
    }

    pub fn from_base64(s: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("not base64: {e}"))?;
        MeshKey::from_bytes(&raw)
            .ok_or_else(|| format!("a key is {KEY_LEN} bytes, this one is {}", raw.len()))
    }

    /// The key itself, to send sealed to another member (a cluster-wide install).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn to_base64(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Names a key in logs and the API without revealing it.
    pub fn fingerprint(&self) -> String {
        let h = blake3::hash(&self.0);
        h.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshKey({})", self.fingerprint())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("the keyring must keep at least one key")]
    LastKey,
    #[error("key {0} is primary: make another key primary first")]
    RemovePrimary(String),
    #[error("no installed key matches {0:?}")]
    NotFound(String),
    #[error("the keyring holds at most {MAX_KEYS} keys")]
    Full,
    #[error("cannot save the keyring file: {0}")]
    Persist(String),
}

/// A change of the keyring, asked through the API of one member and, cluster-wide, sent
/// by it to every other member (`MeshCore::start_keyring_query`).
#[derive(Debug, Clone)]
pub enum KeyringOp {
    Install(MeshKey),
    /// Make primary: a key (base64) or its fingerprint.
    Use(String),
    /// A key (base64) or its fingerprint.
    Remove(String),
}

impl KeyringOp {
    pub fn apply(&self, ring: &mut Keyring) -> Result<(), KeyringError> {
        match self {
            KeyringOp::Install(k) => ring.install(k.clone()),
            KeyringOp::Use(k) => ring.use_key(k),
            KeyringOp::Remove(k) => ring.remove(k),
        }
    }

    /// As asked by another member: the state asked for is what counts, so removing a key
    /// that is not installed is not an error (an earlier request or an operator did it).
    pub fn apply_as_asked(&self, ring: &mut Keyring) -> Result<(), KeyringError> {
        match (self, self.apply(ring)) {
            (KeyringOp::Remove(_), Err(KeyringError::NotFound(_))) => Ok(()),
            (_, r) => r,
        }
    }

    /// The same change naming keys by fingerprint, as it is sent to other members: a key
    /// to install travels (sealed), a key to use or remove is only named.
    pub fn by_fingerprint(&self) -> KeyringOp {
        let fp = |s: &str| {
            MeshKey::from_base64(s.trim())
                .map_or_else(|_| s.trim().to_string(), |k| k.fingerprint())
        };
        match self {
            KeyringOp::Install(k) => KeyringOp::Install(k.clone()),
            KeyringOp::Use(k) => KeyringOp::Use(fp(k)),
            KeyringOp::Remove(k) => KeyringOp::Remove(fp(k)),
        }
    }
}

/// At most this many keys at once; a rotation needs two.
pub const MAX_KEYS: usize = 8;

/// The installed keys; the first is primary.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(MeshKey, XChaCha20Poly1305)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(k, _)| k))
            .finish()
    }
}

/// Why a datagram could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Too short, or an unknown version byte.
    Malformed,
    /// No installed key authenticates it.
    Unauthenticated,
}

impl Keyring {
    pub fn new(primary: MeshKey) -> Self {
        let cipher = XChaCha20Poly1305::new((&primary.0).into());
        Keyring {
            keys: vec![(primary, cipher)],
        }
    }

    /// Builds a keyring from keys, the first being primary. Duplicates are dropped.
    pub fn from_keys(keys: impl IntoIterator<Item = MeshKey>) -> Option<Self> {
        let mut it = keys.into_iter();
        let mut ring = Keyring::new(it.next()?);
        for k in it {
            let _ = ring.install(k);
        }
        Some(ring)
    }

    pub fn keys(&self) -> impl Iterator<Item = &MeshKey> {
        self.keys.iter().map(|(k, _)| k)
    }

    pub fn primary(&self) -> &MeshKey {
        &self.keys[0].0
    }

    /// Installs a key for opening. Installing a key twice is not an error.
    pub fn install(&mut self, key: MeshKey) -> Result<(), KeyringError> {
        if self.keys.iter().any(|(k, _)| *k == key) {
            return Ok(());
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        let cipher = XChaCha20Poly1305::new((&key.0).into());
        self.keys.push((key, cipher));
        Ok(())
    }

    fn find(&self, key_or_fingerprint: &str) -> Result<usize, KeyringError> {
        let wanted = key_or_fingerprint.trim();
        let by_key = MeshKey::from_base64(wanted).ok();
        self.keys
            .iter()
            .position(|(k, _)| Some(k) == by_key.as_ref() || k.fingerprint() == wanted)
            .ok_or_else(|| KeyringError::NotFound(wanted.to_string()))
    }

    /// Makes an installed key primary (it seals from now on).
    pub fn use_key(&mut self, key_or_fingerprint: &str) -> Result<(), KeyringError> {
        let i = self.find(key_or_fingerprint)?;
        let k = self.keys.remove(i);
        self.keys.insert(0, k);
        Ok(())
    }

    pub fn remove(&mut self, key_or_fingerprint: &str) -> Result<(), KeyringError> {
        let i = self.find(key_or_fingerprint)?;
        if i == 0 {
            return Err(if self.keys.len() == 1 {
                KeyringError::LastKey
            } else {
                KeyringError::RemovePrimary(self.keys[0].0.fingerprint())
            });
        }
        self.keys.remove(i);
        Ok(())
    }

    /// Seals `payload` with the primary key. `nonce` must be fresh random bytes.
    pub fn seal(&self, payload: &[u8], timestamp_ms: u64, nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(TS_LEN + payload.len());
        plain.extend_from_slice(&timestamp_ms.to_be_bytes());
        plain.extend_from_slice(payload);
        let aad = [VERSION];
        let ct = self.keys[0]
            .1
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            // XChaCha20-Poly1305 only fails on inputs beyond 256 GiB.
            .expect("datagram within AEAD limits");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a datagram with any installed key, primary first.
    pub fn open(&self, datagram: &[u8]) -> Result<Opened, OpenError> {
        if datagram.len() < SEAL_OVERHEAD || datagram[0] != VERSION {
            return Err(OpenError::Malformed);
        }
        let (nonce, ct) = datagram[1..].split_at(NONCE_LEN);
        let aad = [VERSION];
        for (_, cipher) in &self.keys {
            if let Ok(plain) =
                cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
            {
                let mut ts = [0u8; TS_LEN];
                ts.copy_from_slice(&plain[..TS_LEN]);
                let mut nonce_id = [0u8; 16];
                nonce_id.copy_from_slice(&nonce[..16]);
                return Ok(Opened {
                    timestamp_ms: u64::from_be_bytes(ts),
                    nonce_id: u128::from_be_bytes(nonce_id),
                    payload: plain[TS_LEN..].to_vec(),
                });
            }
        }
        Err(OpenError::Unauthenticated)
    }
}

/// An authenticated datagram.
#[derive(Debug)]
pub struct Opened {
    pub timestamp_ms: u64,
    /// 128 bits of the random nonce: identifies the datagram for the replay filter.
    pub nonce_id: u128,
    pub payload: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> (Keyring, MeshKey) {
        let k = MeshKey::generate();
        (Keyring::new(k.clone()), k)
    }

    #[test]
    fn roundtrip_and_rotation() {
        let (mut a, k1) = ring();
        let k2 = MeshKey::generate();
        let b = Keyring::new(k1.clone());
        let sealed = a.seal(b"hello", 42, [7; 24]);
        let o = b.open(&sealed).unwrap();
        assert_eq!((o.payload.as_slice(), o.timestamp_ms), (&b"hello"[..], 42));

        a.install(k2.clone()).unwrap();
        a.use_key(&k2.fingerprint()).unwrap();
        // b does not know k2 yet: a's new datagrams are refused, a still opens b's.
        assert_eq!(
            b.open(&a.seal(b"x", 1, [1; 24])).unwrap_err(),
            OpenError::Unauthenticated
        );
        assert!(a.open(&b.seal(b"y", 1, [2; 24])).is_ok());
        assert_eq!(
            a.remove(&k2.to_base64()),
            Err(KeyringError::RemovePrimary(k2.fingerprint()))
        );
        a.remove(&k1.fingerprint()).unwrap();
        assert_eq!(a.remove(&k2.fingerprint()), Err(KeyringError::LastKey));
        assert!(matches!(a.use_key("nope"), Err(KeyringError::NotFound(_))));
    }

    #[test]
    fn tampering_is_refused() {
        let (a, _) = ring();
        let sealed = a.seal(b"payload", 1, [3; 24]);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(a.open(&bad).is_err(), "flipped byte {i} accepted");
        }
        for n in 0..sealed.len() {
            assert!(a.open(&sealed[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_open(data in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let (a, _) = ring();
            prop_assert!(a.open(&data).is_err());
        }

        #[test]
        fn seal_open_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..1400), ts: u64, nonce: [u8; 24]) {
            let (a, _) = ring();
            let o = a.open(&a.seal(&data, ts, nonce)).unwrap();
            prop_assert_eq!(o.payload, data);
            prop_assert_eq!(o.timestamp_ms, ts);
        }
    }
}
