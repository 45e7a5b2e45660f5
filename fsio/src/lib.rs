//! kdx-fsio: the two file primitives every kdx crate that writes shares.
//!
//! - [`write_atomic`]: a file is written to a temporary name beside it and renamed into
//!   place, so a reader (or a crash) sees the old file or the new one, never half of one.
//! - [`hex`] and [`sha256_hex`]: content hashes as lowercase hex, for cache keys,
//!   fingerprints and manifests.

#![warn(missing_docs)]

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created with
/// its parents), flushed to disk, then renamed over `path`. On any error the temporary file is
/// removed and the error names `path` (not the temporary name) and what failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        bail!("cannot write {}: the path has no file name", path.display());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("writing {}: creating its directory", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {} ({} bytes)", path.display(), bytes.len()));
    }
    Ok(())
}

/// Removes the temporary files that [`write_atomic`] left in `dir` when its process was
/// killed mid-write (`.<name>.tmp<pid>` of a process that no longer runs). Returns how many.
/// Temporaries of a live process are left alone: it may be writing them now.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp")).and_then(|(_, pid)| pid.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Lowercase hex of some bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of some bytes, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_sha256() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/out.csv");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.csv")]);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let own = format!(".a.csv.tmp{}", std::process::id());
        for name in [".a.csv.tmp4294967", own.as_str(), "a.csv", ".b.json.tmpx"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        assert_eq!(remove_stale_temporaries(dir.path()), 1);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec![own, ".b.json.tmpx".to_string(), "a.csv".to_string()]);
    }

    #[test]
    fn a_failed_write_names_the_destination_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a non-empty directory: the rename fails.
        let p = dir.path().join("taken");
        std::fs::create_dir_all(p.join("inside")).unwrap();
        let e = format!("{:#}", write_atomic(&p, b"x").unwrap_err());
        assert!(e.starts_with(&format!("writing {} (1 bytes)", p.display())), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("taken")], "no temporary file left");
    }
}
