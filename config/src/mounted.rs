//! Secrets and ConfigMaps mounted as folders, the way Kubernetes mounts them: one file per key,
//! plus hidden `..data` and timestamped entries that the visible names link to.
//!
//! Only the bytes: what they mean (certificates, keys, CA bundles) is the reader's business.

use std::io;
use std::path::Path;

/// Every visible file of `dir`, in name order, each followed by a newline; `None` when `dir`
/// does not exist. Hidden entries are skipped, symlinks followed and sub-folders ignored.
/// Errors name the path that failed.
pub fn read_folder(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let failed = |what: &str, path: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("cannot {what} {}: {e}", path.display()))
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed("read", dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| failed("list", dir, e))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        out.extend_from_slice(&std::fs::read(&path).map_err(|e| failed("read", &path, e))?);
        out.push(b'\n');
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_files_in_name_order_hidden_and_folders_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.crt"), "B").unwrap();
        std::fs::write(dir.path().join("a.crt"), "A").unwrap();
        std::fs::write(dir.path().join("..data"), "hidden").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c.crt"), "C").unwrap();
        assert_eq!(read_folder(dir.path()).unwrap().unwrap(), b"A\nB\n");
        assert_eq!(read_folder(&dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, "x").unwrap();
        let e = read_folder(&file).unwrap_err();
        assert!(e.to_string().contains("not-a-folder"), "{e}");
    }
}
