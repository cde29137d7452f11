//! The instance's data folder: the lock that makes one server per folder, the runtime file
//! that tells other commands where the running server listens, and the admin login.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

const PID_FILE: &str = "sfp-server.pid";
const RUNTIME_FILE: &str = "runtime.json";
pub const ADMIN_CREDENTIALS_FILE: &str = "admin-credentials.json";
pub const SECRETS_FILE: &str = "secrets.json";
/// The Supabase anon and service-role keys of this instance (mode 0600), written at start.
pub const API_KEYS_FILE: &str = "api-keys.json";

/// Secrets generated for this instance at first start (mode 0600).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct InstanceSecrets {
    /// Signs user JWTs (HS256).
    pub jwt_secret: String,
}

pub struct DataDir {
    root: PathBuf,
}

/// Held while a server runs on the folder; dropping it releases the folder.
pub struct InstanceLock {
    pid_file: PathBuf,
    _lock: Flock<File>,
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Where the running server can be reached; written once it is ready.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub api_url: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub database: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCredentials {
    pub email: String,
    pub password: String,
}

impl DataDir {
    /// Creates the folder if needed. A new folder is readable by other accounts (mode 0755)
    /// because the PostgreSQL account must pass through it; secrets inside are 0600.
    pub fn create(root: &Path) -> anyhow::Result<DataDir> {
        let root = std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))?;
        if !root.exists() {
            std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(DataDir { root })
    }

    /// The folder as it is, without creating anything.
    pub fn existing(root: &Path) -> anyhow::Result<DataDir> {
        let root = std::path::absolute(root).with_context(|| format!("resolving {}", root.display()))?;
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Takes the folder for this process, or says which process has it.
    pub fn lock(&self) -> anyhow::Result<InstanceLock> {
        let path = self.path(PID_FILE);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o644).open(&path)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "another sfp-server (pid {}) is running with the data folder {}; stop it with `sfp-server stop --data-dir {}`",
                    pid.trim(),
                    self.root.display(),
                    self.root.display()
                );
            }
        };
        lock.set_len(0)?;
        write!(&mut *lock, "{}", std::process::id())?;
        lock.sync_all()?;
        Ok(InstanceLock { pid_file: path, _lock: lock })
    }

    /// The pid of the server running on this folder, if one is (its lock is held).
    pub fn running_pid(&self) -> Option<i32> {
        let path = self.path(PID_FILE);
        let file = OpenOptions::new().read(true).open(&path).ok()?;
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(_) => None, // nobody holds it: a stale file
            Err(_) => std::fs::read_to_string(&path).ok()?.trim().parse().ok(),
        }
    }

    pub fn write_runtime(&self, info: &RuntimeInfo) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(info)?;
        let path = self.path(RUNTIME_FILE);
        let tmp = self.path("runtime.json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn read_runtime(&self) -> Option<RuntimeInfo> {
        let text = std::fs::read_to_string(self.path(RUNTIME_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn remove_runtime(&self) {
        let _ = std::fs::remove_file(self.path(RUNTIME_FILE));
    }

    /// The administrator's login, generated on first start and kept (mode 0600). Returns
    /// whether it was generated now.
    pub fn admin_credentials(&self, email: &str) -> anyhow::Result<(AdminCredentials, bool)> {
        let path = self.path(ADMIN_CREDENTIALS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let creds = serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
            return Ok((creds, false));
        }
        let password: String = rand::rng().sample_iter(&Alphanumeric).take(24).map(char::from).collect();
        let creds = AdminCredentials { email: email.to_owned(), password };
        sfp_postgres::write_private(&path, &serde_json::to_vec_pretty(&creds)?)?;
        Ok((creds, true))
    }
}

impl DataDir {
    /// The instance's secrets, generated once and kept (mode 0600).
    pub fn instance_secrets(&self) -> anyhow::Result<InstanceSecrets> {
        let path = self.path(SECRETS_FILE);
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            return serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()));
        }
        let jwt_secret: String = rand::rng().sample_iter(&Alphanumeric).take(64).map(char::from).collect();
        let secrets = InstanceSecrets { jwt_secret };
        sfp_postgres::write_private(&path, &serde_json::to_vec_pretty(&secrets)?)?;
        Ok(secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn admin_credentials_are_generated_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::create(&dir.path().join("d")).unwrap();
        let (first, created) = data.admin_credentials("a@b.c").unwrap();
        assert!(created);
        assert_eq!(first.password.len(), 24);
        let (again, created_again) = data.admin_credentials("other@b.c").unwrap();
        assert!(!created_again);
        assert_eq!(again.password, first.password);
        assert_eq!(again.email, "a@b.c");
        let mode = std::fs::metadata(data.path(ADMIN_CREDENTIALS_FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn one_lock_per_folder() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::create(dir.path()).unwrap();
        assert_eq!(data.running_pid(), None);
        let lock = data.lock().unwrap();
        assert_eq!(data.running_pid(), Some(std::process::id() as i32));
        let err = data.lock().err().expect("second lock refused").to_string();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(lock);
        assert_eq!(data.running_pid(), None);
        assert!(data.lock().is_ok());
    }
}
