//! Atomic file writes: a temporary file in the destination directory, synced, then renamed into
//! place. A crash or a full disk never leaves a half-written file under the final name, and a
//! failure leaves no stray temporary file (`tempfile` deletes it when the handle drops).
//! [`write_atomic_all`] does the same for files that belong together.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{dir:?} is read-only (no write permission): choose another folder")]
    ReadOnly { dir: PathBuf },
    #[error("cannot create a temporary file in {dir:?}: {source}")]
    CreateTemp { dir: PathBuf, source: std::io::Error },
    #[error("cannot write {path:?}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot move the finished file into place at {path:?}: {source}")]
    Persist { path: PathBuf, source: std::io::Error },
}

/// Writes `bytes` to `path` atomically, with the mode of an ordinary new file (not 0600).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_all(&[(path, bytes)])
}

/// Writes several files as one unit (a figure and its sidecar): all of them, or none.
///
/// Every file is written and synced to a temporary file first, so a full disk fails before
/// anything is renamed. Then each is renamed into place; if a rename fails, the ones already
/// renamed are undone: a new file is removed, an overwritten one gets its old content back
/// (kept as a hard link until the unit is complete).
pub fn write_atomic_all(files: &[(&Path, &[u8])]) -> Result<(), WriteError> {
    let staged = files.iter().map(|&(path, bytes)| stage(path, bytes)).collect::<Result<Vec<_>, _>>()?;
    let mut done: Vec<(&Path, Option<tempfile::TempPath>)> = Vec::new();
    for (tmp, &(path, _)) in staged.into_iter().zip(files) {
        let backup = backup_of(path);
        if let Err(e) = tmp.persist(path) {
            for (placed, old) in done.into_iter().rev() {
                match old {
                    Some(old) => drop(old.persist(placed)),
                    None => drop(std::fs::remove_file(placed)),
                }
            }
            return Err(WriteError::Persist { path: path.to_path_buf(), source: e.error });
        }
        done.push((path, backup));
    }
    Ok(()) // the backups are deleted as they drop
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    format!(".{name}.")
}

/// `bytes` in a synced temporary file beside `path`.
fn stage(path: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile, WriteError> {
    let dir = dir_of(path);
    // Respect a folder marked read-only even when running as root (who may write anyway).
    if std::fs::metadata(dir).is_ok_and(|m| m.permissions().readonly()) {
        return Err(WriteError::ReadOnly { dir: dir.to_path_buf() });
    }
    let prefix = temp_prefix(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666)); // minus the umask
    }
    let mut tmp =
        builder.tempfile_in(dir).map_err(|source| WriteError::CreateTemp { dir: dir.to_path_buf(), source })?;
    let write_err = |source| WriteError::Write { path: path.to_path_buf(), source };
    tmp.write_all(bytes).map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    Ok(tmp)
}

/// A hard link to the file now at `path`, deleted when dropped; `None` where there is no file
/// (or the file system has no hard links: then a failed unit removes the file instead).
fn backup_of(path: &Path) -> Option<tempfile::TempPath> {
    if !path.is_file() {
        return None;
    }
    let prefix = temp_prefix(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".old");
    builder.make_in(dir_of(path), |link| std::fs::hard_link(path, link)).ok().map(|f| f.into_temp_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_overwrites_and_uses_ordinary_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(entries(dir.path()), vec!["out.bin".to_owned()]);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }

    #[test]
    fn read_only_or_missing_directories_fail_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Refused from the permission bits, so also for root (who could write anyway).
        let err = write_atomic(&ro.join("x"), b"x").unwrap_err();
        assert!(matches!(err, WriteError::ReadOnly { .. }), "{err}");
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(entries(&ro).is_empty());
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = write_atomic(&dir.path().join("no/such/dir/x"), b"x").unwrap_err();
        assert!(matches!(err, WriteError::CreateTemp { .. }), "{err}");
    }

    #[test]
    fn failed_rename_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        let err = write_atomic(&target, b"x").unwrap_err();
        assert!(matches!(err, WriteError::Persist { .. }), "{err}");
        assert_eq!(entries(dir.path()), vec!["taken".to_owned()]);
    }

    #[test]
    fn a_unit_is_written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (fig, sidecar) = (dir.path().join("fig.png"), dir.path().join("fig.png.json"));
        write_atomic_all(&[(&fig, b"figure"), (&sidecar, b"spec")]).unwrap();
        assert_eq!(std::fs::read(&fig).unwrap(), b"figure");
        assert_eq!(std::fs::read(&sidecar).unwrap(), b"spec");
        assert_eq!(entries(dir.path()), vec!["fig.png".to_owned(), "fig.png.json".to_owned()]);

        // The second rename fails (a folder holds its name): a new first file is removed...
        let (new_fig, blocked) = (dir.path().join("new.png"), dir.path().join("new.png.json"));
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("keep"), b"x").unwrap();
        let err = write_atomic_all(&[(&new_fig, b"figure"), (&blocked, b"spec")]).unwrap_err();
        assert!(matches!(err, WriteError::Persist { .. }), "{err}");
        assert!(!new_fig.exists());
        // ... and an overwritten one gets its old content back; no temporary file is left.
        std::fs::remove_file(&sidecar).unwrap();
        std::fs::create_dir(&sidecar).unwrap();
        std::fs::write(sidecar.join("keep"), b"x").unwrap();
        assert!(write_atomic_all(&[(&fig, b"new figure"), (&sidecar, b"spec")]).is_err());
        assert_eq!(std::fs::read(&fig).unwrap(), b"figure");
        assert_eq!(entries(dir.path()), vec!["fig.png", "fig.png.json", "new.png.json"]);
    }
}
