//! A step's private folder: `home/` (the sfp CLI's HOME, where org logins live), `tmp/`,
//! `work/` (the clone). It is removed when the step ends, whatever the outcome; folders
//! left by a worker that died are removed by the next worker to start or sweep.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::process::alive;

#[derive(Debug)]
pub struct StepDir {
    root: PathBuf,
}

impl StepDir {
    /// `<work root>/<worker pid>-<task run id>`, created with mode 0700.
    pub fn create(work_root: &Path, task_run: Uuid) -> std::io::Result<StepDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(work_root)?;
        let root = work_root.join(format!("{}-{task_run}", std::process::id()));
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&root)?;
        let dir = StepDir { root };
        for sub in ["home", "tmp"] {
            std::fs::DirBuilder::new().mode(0o700).create(dir.root.join(sub))?;
        }
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// The working tree (the clone, or an empty folder).
    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }
}

impl Drop for StepDir {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.root) {
            tracing::error!(dir = %self.root.display(), error = %e, "could not remove a step's folder");
        }
    }
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes step folders whose worker process is gone. Returns how many went.
pub fn sweep_stale(work_root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work_root) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split_once('-')).and_then(|(p, _)| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) && remove(&entry.path()).is_ok() {
            tracing::info!(dir = %entry.path().display(), "removed the folder of a step whose worker died");
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_go_on_drop_and_dead_workers_folders_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let dir = StepDir::create(root.path(), Uuid::new_v4()).unwrap();
        std::fs::write(dir.home().join("secret"), "x").unwrap();
        let path = dir.root().to_path_buf();
        drop(dir);
        assert!(!path.exists());

        // pid 0x7fffffff is never a live process; a live pid (ours) is left alone.
        let stale = root.path().join(format!("{}-{}", i32::MAX, Uuid::new_v4()));
        std::fs::create_dir_all(stale.join("home")).unwrap();
        let live = StepDir::create(root.path(), Uuid::new_v4()).unwrap();
        assert_eq!(sweep_stale(root.path()), 1);
        assert!(!stale.exists());
        assert!(live.root().exists());
    }
}
