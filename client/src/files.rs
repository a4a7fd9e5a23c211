//! Writing a file whole or not at all, durably: through a fresh temporary file beside it
//! (created new, so never an existing file or a planted link, with its mode from the start),
//! synced, moved into place, and the folder synced.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Whether an existing file at the path may be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it (rename).
    Replace,
    /// Refuse: the first writer wins, later ones fail (a hard link never replaces).
    Keep,
}

/// Writes `bytes` to `path` with `mode`, atomically; creates the parent folder if missing.
pub fn write_atomically(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    existing: Existing,
) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| format!("random: {e}"))?;
    let tmp = path.with_extension(format!("{}.tmp", hex::encode(r)));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        match existing {
            Existing::Replace => std::fs::rename(&tmp, path),
            Existing::Keep => std::fs::hard_link(&tmp, path),
        }
    })();
    // After a rename there is nothing left to remove; after a link or a failure, the temporary.
    let _ = std::fs::remove_file(&tmp);
    written.map_err(|e| format!("{}: {e}", path.display()))?;
    // The move itself is durable once the folder is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn replace_or_keep_and_the_mode_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f");
        write_atomically(&p, b"one", 0o600, Existing::Keep).unwrap();
        assert!(write_atomically(&p, b"two", 0o600, Existing::Keep).is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write_atomically(&p, b"three", 0o600, Existing::Replace).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary is left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
