//! Keys and authenticated encryption.
//!
//! * A random 256-bit master key per repository, wrapped in key slots by a key
//!   derived from a passphrase with Argon2id ([`KeySlotKdf`]).
//! * Purpose keys derived from the master key with HKDF-SHA256: the chunk-id key
//!   (keyed BLAKE3), the metadata key (indexes, manifests) and one data key per
//!   writer session (packs), so no AES-GCM key sees anywhere near 2^32 random nonces.
//! * Sealed blob = nonce (12) ‖ AES-256-GCM ciphertext ‖ tag (16); the associated
//!   data binds a blob to its name (chunk id or object key).

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;

pub(crate) const KEY_LEN: usize = 32;

/// A secret string (passphrase, password): never printed, wiped from memory when
/// dropped.
#[derive(Clone)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// Wraps a secret string.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(zeroize::Zeroizing::new(s.into()))
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Key material that is wiped from memory when dropped.
pub(crate) type KeyBytes = zeroize::Zeroizing<[u8; KEY_LEN]>;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;

/// Argon2id cost parameters, stored in each key slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeySlotKdf {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Number of passes over the memory.
    pub t_cost: u32,
    /// Degree of parallelism (lanes).
    pub p_cost: u32,
}

impl Default for KeySlotKdf {
    /// 64 MiB, 3 passes: a few hundred ms, paid once per command.
    fn default() -> Self {
        Self { m_cost: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The tag did not verify: wrong key or name, or altered bytes.
    #[error("authentication failed (wrong key, or the bytes were altered)")]
    Authentication,
    /// Fewer bytes than a nonce and a tag; the length in bytes.
    #[error("sealed blob is too short ({0} bytes)")]
    Truncated(usize),
    /// Argon2 refused the cost parameters or inputs; its message.
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

/// Derive a key-encryption key from a passphrase.
pub(crate) fn derive_kek(passphrase: &[u8], salt: &[u8], kdf: KeySlotKdf) -> Result<KeyBytes, CryptoError> {
    let params = argon2::Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(KEY_LEN))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = KeyBytes::new([0u8; KEY_LEN]);
    argon.hash_password_into(passphrase, salt, &mut *out).map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

/// `N` bytes from the thread's cryptographically secure generator (salts, nonces, keys).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// HKDF-SHA256 expansion of the master key for one purpose.
// Invariant: HKDF-SHA256 expands to at most 255 * 32 bytes; KEY_LEN is 32.
#[allow(clippy::expect_used)]
pub(crate) fn derive_subkey(master: &[u8; KEY_LEN], info: &[u8]) -> KeyBytes {
    let hk = Hkdf::<Sha256>::new(Some(b"pgcairn v1"), master);
    let mut out = KeyBytes::new([0u8; KEY_LEN]);
    hk.expand(info, &mut *out).expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// An AEAD key, or the explicit absence of encryption for repositories created
/// with `--no-encryption`.
#[derive(Clone)]
pub enum Cipher {
    /// AES-256-GCM under one key; sealed blobs carry nonce and tag.
    Aes(Box<Aes256Gcm>),
    /// No encryption: seal and open copy the bytes unchanged.
    Plain,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cipher::Aes(_) => "Cipher::Aes(..)",
            Cipher::Plain => "Cipher::Plain",
        })
    }
}

impl Cipher {
    /// An AES-256-GCM cipher under `key`.
    pub fn aes(key: &[u8; KEY_LEN]) -> Self {
        Cipher::Aes(Box::new(Aes256Gcm::new(key.into())))
    }

    /// Bytes that `seal` adds to a plaintext.
    pub fn overhead(&self) -> usize {
        match self {
            Cipher::Aes(_) => NONCE_LEN + TAG_LEN,
            Cipher::Plain => 0,
        }
    }

    /// Encrypts and authenticates `plaintext` bound to `aad` (the blob's name), under a fresh random nonce.
    // Invariant: AES-GCM refuses only plaintexts over 64 GiB; blobs and metadata are
    // in-memory buffers of a few MiB at most.
    #[allow(clippy::expect_used)]
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        match self {
            Cipher::Plain => plaintext.to_vec(),
            Cipher::Aes(c) => {
                let nonce = random_bytes::<NONCE_LEN>();
                let ct = c
                    .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
                    .expect("AES-GCM encryption cannot fail for in-memory buffers");
                let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
                out
            }
        }
    }

    /// Appends to `out` what [`Cipher::seal`] makes of the concatenation of `parts`,
    /// encrypting in place: one buffer instead of three copies (archive-push seals a
    /// segment's compressed frames once per WAL segment).
    // Invariant: as for `seal`.
    #[allow(clippy::expect_used)]
    pub fn seal_parts_into(&self, aad: &[u8], parts: &[Vec<u8>], out: &mut Vec<u8>) {
        let len: usize = parts.iter().map(Vec::len).sum();
        out.reserve(len + self.overhead());
        let Cipher::Aes(c) = self else {
            parts.iter().for_each(|p| out.extend_from_slice(p));
            return;
        };
        let nonce = random_bytes::<NONCE_LEN>();
        out.extend_from_slice(&nonce);
        let start = out.len();
        parts.iter().for_each(|p| out.extend_from_slice(p));
        let tag = c
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[start..])
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&tag);
    }

    /// Decrypts a sealed blob, failing unless it authenticates under this key and `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Cipher::Plain => Ok(sealed.to_vec()),
            Cipher::Aes(c) => {
                if sealed.len() < NONCE_LEN + TAG_LEN {
                    return Err(CryptoError::Truncated(sealed.len()));
                }
                let (nonce, ct) = sealed.split_at(NONCE_LEN);
                c.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Authentication)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The in-place sealing of several parts opens as one plaintext.
        #[test]
        fn seal_parts_into_opens_as_their_concatenation(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..5)) {
            let whole: Vec<u8> = parts.concat();
            for c in [Cipher::aes(&random_bytes()), Cipher::Plain] {
                let mut out = b"head".to_vec();
                c.seal_parts_into(b"aad", &parts, &mut out);
                prop_assert_eq!(&out[..4], b"head");
                prop_assert_eq!(c.open(b"aad", &out[4..]).unwrap(), whole.clone());
                prop_assert!(c.open(b"other", &out[4..]).is_err() || matches!(c, Cipher::Plain));
            }
        }

        #[test]
        fn seal_open_round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let c = Cipher::aes(&random_bytes());
            let sealed = c.seal(&aad, &data);
            prop_assert_eq!(sealed.len(), data.len() + c.overhead());
            prop_assert_eq!(c.open(&aad, &sealed).unwrap(), data);
        }

        #[test]
        fn any_flipped_bit_fails(data in proptest::collection::vec(any::<u8>(), 1..512), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let c = Cipher::aes(&random_bytes());
            let mut sealed = c.seal(b"id", &data);
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            prop_assert!(c.open(b"id", &sealed).is_err());
        }
    }

    #[test]
    fn wrong_aad_or_key_fails() {
        let key = random_bytes();
        let c = Cipher::aes(&key);
        let sealed = c.seal(b"a", b"hello");
        assert!(matches!(c.open(b"b", &sealed), Err(CryptoError::Authentication)));
        assert!(Cipher::aes(&random_bytes()).open(b"a", &sealed).is_err());
    }

    #[test]
    fn kek_depends_on_passphrase_and_salt() {
        let kdf = KeySlotKdf { m_cost: 256, t_cost: 1, p_cost: 1 };
        let a = derive_kek(b"pw", b"saltsaltsaltsalt", kdf).unwrap();
        assert_eq!(a, derive_kek(b"pw", b"saltsaltsaltsalt", kdf).unwrap());
        assert_ne!(a, derive_kek(b"pw2", b"saltsaltsaltsalt", kdf).unwrap());
        assert_ne!(a, derive_kek(b"pw", b"saltsaltsaltsal2", kdf).unwrap());
    }

    #[test]
    fn subkeys_differ_by_purpose() {
        let m = random_bytes();
        assert_ne!(derive_subkey(&m, b"a"), derive_subkey(&m, b"b"));
    }
}
