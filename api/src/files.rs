//! Files only their owner may read: secrets, keys, state, route tables, backups. One place
//! writes them, so every such file is private from its first byte and never seen
//! half-written.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Replaces `path` with `bytes`, atomically (a temporary file beside it, synced, then renamed
/// over it), mode 0600 from its creation.
pub fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut draft_name = std::ffi::OsString::from(".");
    draft_name.push(name);
    draft_name.push(format!(".{}.tmp", std::process::id()));
    let draft = path.with_file_name(draft_name);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&draft)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&draft, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&draft);
    }
    written
}

/// Publishes `bytes` at `path` unless a file is there already, mode 0600: written beside it,
/// synced, then hard-linked into place, so readers never see it half-written and, of several
/// processes doing this at once, the first wins. Returns whether this call made it.
pub fn publish_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let draft = path.with_extension(format!("{}.draft", std::process::id()));
    let linked = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&draft)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&draft, path)
    })();
    let _ = std::fs::remove_file(&draft);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// The key in `path`: 32 random bytes as 64 hex digits, made with [`publish_owner_only`]
/// when there is none (so instances starting together agree on one). Returns the digits and
/// whether this call made the key.
pub fn key_file(path: &Path) -> std::io::Result<(String, bool)> {
    let read = || -> std::io::Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let key = text.trim();
                if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(Some(key.to_owned()))
                } else {
                    Err(std::io::Error::other(format!(
                        "{} does not hold a 64-hex-digit key",
                        path.display()
                    )))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    if let Some(key) = read()? {
        return Ok((key, false));
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let made = publish_owner_only(path, hex::encode(key).as_bytes())?;
    let key = read()?.ok_or_else(|| std::io::Error::other("the key vanished"))?;
    Ok((key, made))
}

/// Creates `path`, empty and readable only by its owner; fails if it exists.
pub fn create_new_owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates `path` (and its parents) readable only by its owner, if missing.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_are_private_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_owner_only(&path, b"one").unwrap();
        write_owner_only(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let (first, made) = key_file(&path).unwrap();
        assert!(made && first.len() == 64);
        assert_eq!(key_file(&path).unwrap(), (first, false));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "short").unwrap();
        assert!(key_file(&path).is_err());
    }
}
