//! Finding the PostgreSQL server programs.

use std::path::{Path, PathBuf};

use crate::Error;

const REQUIRED: [&str; 2] = ["initdb", "pg_ctl"];

/// The folder holding `initdb` and `pg_ctl`: the configured one, else Debian's
/// `/usr/lib/postgresql/<version>/bin` (15 preferred, then the newest), else the `PATH`.
pub(crate) fn find_bin_dir(configured: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(dir) = configured {
        return if has_programs(dir) {
            Ok(dir.to_path_buf())
        } else {
            Err(Error::BinariesNotFound(format!(" in {}", dir.display())))
        };
    }
    let debian = Path::new("/usr/lib/postgresql");
    let preferred = debian.join("15/bin");
    if has_programs(&preferred) {
        return Ok(preferred);
    }
    if let Ok(entries) = std::fs::read_dir(debian) {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| has_programs(bin))
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Ok(bin);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|dir| has_programs(dir)).ok_or_else(|| Error::BinariesNotFound(String::new()))
}

fn has_programs(dir: &Path) -> bool {
    REQUIRED.iter().all(|p| dir.join(p).is_file())
}
