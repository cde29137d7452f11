//! Envelope encryption of one secret: a fresh 32-byte data key encrypts the value
//! (XChaCha20-Poly1305, random 24-byte nonce), and the key-encryption key wraps the data key
//! the same way. The secret's row id is associated data of both, so a ciphertext moved to
//! another row, or a data key moved to another row or key id, fails to decrypt.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use uuid::Uuid;
use zeroize::Zeroize;

use super::keyring::{KEY_LEN, Kek};

const NONCE_LEN: usize = 24;

/// What the database keeps of a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kek_id: String,
    pub wrapped_key: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CipherError {
    #[error("the secret does not decrypt (wrong key, or not this row's ciphertext)")]
    Decrypt,
    #[error("the secret is malformed")]
    Malformed,
}

fn value_aad(id: Uuid) -> Vec<u8> {
    let mut aad = b"sfp-vault/value/v1|".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad
}

fn key_aad(id: Uuid, kek_id: &str) -> Vec<u8> {
    let mut aad = b"sfp-vault/key/v1|".to_vec();
    aad.extend_from_slice(id.as_bytes());
    aad.push(b'|');
    aad.extend_from_slice(kek_id.as_bytes());
    aad
}

fn encrypt(key: &[u8; KEY_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 encrypts any length the vault stores");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    out
}

fn decrypt(key: &[u8; KEY_LEN], aad: &[u8], data: &[u8]) -> Result<Vec<u8>, CipherError> {
    if data.len() < NONCE_LEN + 16 {
        return Err(CipherError::Malformed);
    }
    let (nonce, body) = data.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CipherError::Malformed)?;
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    cipher.decrypt(&XNonce::from(nonce), Payload { msg: body, aad }).map_err(|_| CipherError::Decrypt)
}

fn unwrap_key(kek: &Kek, id: Uuid, wrapped: &[u8]) -> Result<[u8; KEY_LEN], CipherError> {
    let mut raw = decrypt(kek.bytes(), &key_aad(id, &kek.id), wrapped)?;
    if raw.len() != KEY_LEN {
        raw.zeroize();
        return Err(CipherError::Malformed);
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&raw);
    raw.zeroize();
    Ok(key)
}

/// Encrypts `plaintext` for the row `id` under `kek`.
pub fn seal(kek: &Kek, id: Uuid, plaintext: &[u8]) -> Sealed {
    let mut data_key = [0u8; KEY_LEN];
    rand::rng().fill_bytes(&mut data_key);
    let ciphertext = encrypt(&data_key, &value_aad(id), plaintext);
    let wrapped_key = encrypt(kek.bytes(), &key_aad(id, &kek.id), &data_key);
    data_key.zeroize();
    Sealed { kek_id: kek.id.clone(), wrapped_key, ciphertext }
}

/// Decrypts the row `id`'s secret; `kek` must be the key named by `sealed.kek_id`.
pub fn unseal(kek: &Kek, id: Uuid, sealed: &Sealed) -> Result<Vec<u8>, CipherError> {
    if kek.id != sealed.kek_id {
        return Err(CipherError::Decrypt);
    }
    let mut data_key = unwrap_key(kek, id, &sealed.wrapped_key)?;
    let plain = decrypt(&data_key, &value_aad(id), &sealed.ciphertext);
    data_key.zeroize();
    plain
}

/// Wraps the row's data key under `new` instead of `old`; the value's ciphertext is untouched.
pub fn rewrap(old: &Kek, new: &Kek, id: Uuid, wrapped: &[u8]) -> Result<Vec<u8>, CipherError> {
    let mut data_key = unwrap_key(old, id, wrapped)?;
    let out = encrypt(new.bytes(), &key_aad(id, &new.id), &data_key);
    data_key.zeroize();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_row_and_key() {
        let kek = Kek::generate();
        let other_kek = Kek::generate();
        let id = Uuid::new_v4();
        let sealed = seal(&kek, id, b"force://PlatformCLI::5Aep861_secret@login.salesforce.com");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"5Aep861"), "the value is not in the ciphertext");
        assert_eq!(unseal(&kek, id, &sealed).unwrap(), b"force://PlatformCLI::5Aep861_secret@login.salesforce.com");
        assert_eq!(unseal(&kek, Uuid::new_v4(), &sealed), Err(CipherError::Decrypt), "another row");
        let mut renamed = sealed.clone();
        renamed.kek_id = other_kek.id.clone();
        assert_eq!(unseal(&other_kek, id, &renamed), Err(CipherError::Decrypt), "another key");
        let mut tampered = sealed.clone();
        *tampered.ciphertext.last_mut().unwrap() ^= 1;
        assert_eq!(unseal(&kek, id, &tampered), Err(CipherError::Decrypt));
        let rewrapped = Sealed {
            kek_id: other_kek.id.clone(),
            wrapped_key: rewrap(&kek, &other_kek, id, &sealed.wrapped_key).unwrap(),
            ciphertext: sealed.ciphertext.clone(),
        };
        assert_eq!(unseal(&other_kek, id, &rewrapped).unwrap(), unseal(&kek, id, &sealed).unwrap());
        assert_ne!(seal(&kek, id, b"x").ciphertext, seal(&kek, id, b"x").ciphertext, "fresh nonces");
    }
}
