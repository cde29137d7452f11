//! Finding the programs a step runs: the sfp CLI, node (which runs it) and git.

use std::path::{Path, PathBuf};

use sfp_workflows::SourcePolicy;

use crate::process::which;
use crate::step::Toolbox;

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error(
        "the sfp CLI was not found: pass --sfp-bin (or SFP_WORKER_SFP_BIN), or put `sfp` on PATH; scripts/setup installs @flxbl-io/sfp"
    )]
    NoSfp,
    #[error("{0} is not an executable file")]
    NotExecutable(PathBuf),
    #[error("{0} was not found on PATH")]
    Missing(&'static str),
}

/// Locates the tools on the worker's own PATH (`search_path`), or the given sfp.
pub fn locate(
    sfp: Option<&Path>,
    search_path: &str,
    work_root: PathBuf,
    sources: SourcePolicy,
) -> Result<Toolbox, ToolsError> {
    let sfp = match sfp {
        Some(p) => {
            let p = std::fs::canonicalize(p).map_err(|_| ToolsError::NotExecutable(p.to_path_buf()))?;
            if which(
                p.file_name().and_then(|n| n.to_str()).unwrap_or(""),
                &p.parent().unwrap_or(Path::new("/")).to_string_lossy(),
            )
            .is_none()
            {
                return Err(ToolsError::NotExecutable(p));
            }
            p
        }
        None => which("sfp", search_path).ok_or(ToolsError::NoSfp)?,
    };
    let node = which("node", search_path).ok_or(ToolsError::Missing("node"))?;
    let git = which("git", search_path).ok_or(ToolsError::Missing("git"))?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in [
        node.parent(),
        git.parent(),
        Some(Path::new("/usr/local/bin")),
        Some(Path::new("/usr/bin")),
        Some(Path::new("/bin")),
    ]
    .into_iter()
    .flatten()
    {
        if !dirs.iter().any(|d| d == dir) {
            dirs.push(dir.to_path_buf());
        }
    }
    let path = std::env::join_paths(&dirs).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(Toolbox { sfp, git, path, work_root, sources, registries: Vec::new(), control_plane: None })
}
