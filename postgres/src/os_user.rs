//! Running the cluster's programs as an unprivileged account when we are root.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::unistd::{Gid, Uid, User};

use crate::Error;

/// The account the cluster runs as, when it is not the current one.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl RunAs {
    /// `Some` when this process is root: PostgreSQL refuses to run as root, so its
    /// programs run as `name` instead.
    pub fn for_current_process(name: &str) -> Result<Option<RunAs>, Error> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        let user = User::from_name(name).ok().flatten().ok_or_else(|| Error::NoOsUser(name.to_string()))?;
        Ok(Some(RunAs { name: user.name, uid: user.uid, gid: user.gid }))
    }

    /// Gives `path` to this account.
    pub fn chown(&self, path: &Path) -> Result<(), Error> {
        std::os::unix::fs::chown(path, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
            .map_err(Error::io("changing the owner of", path))
    }

    /// Fails with a clear message when some folder above `path` is closed to this account.
    pub fn check_traversable(&self, path: &Path) -> Result<(), Error> {
        for dir in path.ancestors().skip(1) {
            let Ok(meta) = std::fs::metadata(dir) else { continue };
            let mode = meta.mode();
            let ok = mode & 0o001 != 0
                || (meta.uid() == self.uid.as_raw() && mode & 0o100 != 0)
                || (meta.gid() == self.gid.as_raw() && mode & 0o010 != 0);
            if !ok {
                return Err(Error::NotTraversable { user: self.name.clone(), path: dir.to_path_buf() });
            }
        }
        Ok(())
    }
}
