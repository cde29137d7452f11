//! The key-encryption keys (KEKs): 32-byte keys with ids, kept in a 0600 file outside the
//! database (`<data dir>/vault-keys.json`, or `vault.keys_file`). The database stores only
//! which id is active. Rotation adds a key; old keys stay until no secret uses them.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::VaultError;

pub const KEY_LEN: usize = 32;

/// One key-encryption key.
pub struct Kek {
    pub id: String,
    bytes: [u8; KEY_LEN],
}

impl Kek {
    pub fn generate() -> Kek {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        let mut tag = [0u8; 4];
        rand::rng().fill_bytes(&mut tag);
        let id = format!(
            "kek-{}-{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Kek { id, bytes }
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl Drop for Kek {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    /// The key new secrets are wrapped with.
    active: String,
    /// id → base64 of the 32 key bytes.
    keys: BTreeMap<String, String>,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        for v in self.keys.values_mut() {
            v.zeroize();
        }
    }
}

/// The keys of a key file.
#[derive(Debug)]
pub struct Keyring {
    pub path: PathBuf,
    pub active: String,
    keys: Vec<Kek>,
}

impl Keyring {
    /// Reads the key file, creating it with one new key if it does not exist.
    pub fn open_or_create(path: &Path) -> Result<Keyring, VaultError> {
        if path.exists() {
            return Keyring::open(path);
        }
        let key = Kek::generate();
        let ring = Keyring { path: path.to_path_buf(), active: key.id.clone(), keys: vec![key] };
        // Never over another server's new file: written aside, then linked into place only
        // if nothing is there yet (servers of one database share the file).
        let aside = path.with_extension(format!("new-{}", std::process::id()));
        Keyring { path: aside.clone(), active: ring.active.clone(), keys: Vec::new() }.write_keys(&ring.keys)?;
        let linked = std::fs::hard_link(&aside, path);
        let _ = std::fs::remove_file(&aside);
        match linked {
            Ok(()) => Ok(ring),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Keyring::open(path),
            Err(e) => Err(VaultError::Keys(format!("cannot create the key file {}: {e}", path.display()))),
        }
    }

    pub fn open(path: &Path) -> Result<Keyring, VaultError> {
        let raw = std::fs::read(path)
            .map_err(|e| VaultError::Keys(format!("cannot read the key file {}: {e}", path.display())))?;
        let file: KeyFile = serde_json::from_slice(&raw)
            .map_err(|e| VaultError::Keys(format!("the key file {} is not valid: {e}", path.display())))?;
        let mut keys = Vec::new();
        for (id, b64) in &file.keys {
            let mut decoded = STANDARD
                .decode(b64)
                .map_err(|_| VaultError::Keys(format!("key {id} in {} is not base64", path.display())))?;
            if decoded.len() != KEY_LEN {
                decoded.zeroize();
                return Err(VaultError::Keys(format!("key {id} in {} is not 32 bytes", path.display())));
            }
            let mut bytes = [0u8; KEY_LEN];
            bytes.copy_from_slice(&decoded);
            decoded.zeroize();
            keys.push(Kek { id: id.clone(), bytes });
        }
        if !keys.iter().any(|k| k.id == file.active) {
            return Err(VaultError::Keys(format!("the active key {} is not in {}", file.active, path.display())));
        }
        Ok(Keyring { path: path.to_path_buf(), active: file.active.clone(), keys })
    }

    /// Writes the file atomically (a 0600 temporary file renamed over it).
    pub fn save(&self) -> Result<(), VaultError> {
        self.write_keys(&self.keys)
    }

    fn write_keys(&self, keys: &[Kek]) -> Result<(), VaultError> {
        let file = KeyFile {
            active: self.active.clone(),
            keys: keys.iter().map(|k| (k.id.clone(), STANDARD.encode(k.bytes))).collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| VaultError::Keys(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let written = (|| {
            if let Some(parent) = self.path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        bytes.zeroize();
        written.map_err(|e| VaultError::Keys(format!("cannot write the key file {}: {e}", self.path.display())))
    }

    pub fn get(&self, id: &str) -> Option<&Kek> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn active_key(&self) -> &Kek {
        self.get(&self.active).expect("the active key is in the ring (checked when loaded)")
    }

    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Adds a new key and makes it the active one; returns its id.
    pub fn add_active(&mut self) -> String {
        let key = Kek::generate();
        let id = key.id.clone();
        self.keys.push(key);
        self.active = id.clone();
        id
    }

    /// Removes keys (never the active one).
    pub fn retire(&mut self, ids: &[String]) {
        self.keys.retain(|k| k.id == self.active || !ids.contains(&k.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault-keys.json");
        let ring = Keyring::open_or_create(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Keyring::open(&path).unwrap();
        assert_eq!(again.active, ring.active);
        assert_eq!(again.active_key().bytes(), ring.active_key().bytes());
        let mut rotated = again;
        let old = rotated.active.clone();
        let new = rotated.add_active();
        rotated.save().unwrap();
        let reread = Keyring::open(&path).unwrap();
        assert_eq!(reread.active, new);
        assert!(reread.get(&old).is_some(), "old keys stay until retired");
        assert!(!format!("{reread:?}").contains(&STANDARD.encode(reread.active_key().bytes())));
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        std::fs::write(&path, r#"{"active":"a","keys":{"a":"c2hvcnQ="}}"#).unwrap();
        let err = Keyring::open(&path).unwrap_err().to_string();
        assert!(err.contains("not 32 bytes") && err.contains("k.json"), "{err}");
    }
}
