//! kdx-fsio: the file primitives every kdx crate that writes (or reads TSV) shares.
//!
//! - [`write_atomic`]: a file is written to a temporary name beside it and renamed into
//!   place, so a reader (or a crash) sees the old file or the new one, never half of one.
//! - [`hex`] and [`sha256_hex`]: content hashes as lowercase hex, for cache keys,
//!   fingerprints and manifests.
//! - [`tsv`]: the one reader of TAB-separated files, each record with its line number.

#![warn(missing_docs)]

pub mod tsv;

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created with
/// its parents), flushed to disk, then renamed over `path`. On any error the temporary file is
/// removed and the error names `path` (not the temporary name) and what failed.
///
/// The temporary is created exclusively (`O_CREAT | O_EXCL`, so never through a link planted
/// at its name) under an unpredictable name, and the rename only ever replaces a regular
/// file: a `path` that is a symbolic link, a device, a FIFO or a directory is refused,
/// naming what it is. Files a user names on the command line go through [`write_output`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_file() {
            bail!(
                "cannot write {}: it is {}, not a regular file (kdx replaces only regular files here)",
                path.display(),
                kind(&m)
            );
        }
    }
    replace_regular(path, bytes)
}

/// Writes `bytes` to an output the user named, as the shell's `>` would: a regular file (or a
/// new one) is replaced atomically as by [`write_atomic`]; a symbolic link is followed (the
/// file it points to is replaced, the link stays); a device, FIFO or socket (`/dev/stdout`,
/// `/dev/null`, a named pipe) is written through and stays what it is.
pub fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut out = Output::create(path)?;
    out.write_all(bytes).with_context(|| format!("writing {} ({} bytes)", path.display(), bytes.len()))?;
    out.commit()
}

/// An output the user named, written as a stream (`kdx embed -o`, whose input may be larger
/// than memory), under the rules of [`write_output`]: a regular file (or a new one, or the
/// file a link points to) is written to an exclusive temporary beside it and renamed into
/// place by [`Output::commit`] (dropped without a commit, the temporary is removed and the
/// old file stays); a device or FIFO is written through.
pub struct Output {
    file: std::fs::File,
    /// The temporary and the file it becomes; `None` when written through.
    rename: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The path the user gave, for messages.
    path: std::path::PathBuf,
}

impl Output {
    /// Opens `path` for writing (see [`Output`]).
    pub fn create(path: &Path) -> Result<Output> {
        let context = || format!("writing {}", path.display());
        let regular = |target: &Path| -> Result<Output> {
            let (file, tmp) = create_temporary(target, &unpredictable_suffix()).with_context(context)?;
            Ok(Output { file, rename: Some((tmp, target.to_path_buf())), path: path.to_path_buf() })
        };
        let Ok(link) = std::fs::symlink_metadata(path) else {
            return regular(path);
        };
        if link.is_dir() {
            bail!("cannot write {}: it is a directory", path.display());
        }
        // What the path resolves to: a link to a regular file is replaced at its target.
        let target = std::fs::metadata(path)
            .with_context(|| format!("cannot write {}: it is a symbolic link to nothing", path.display()))?;
        if target.is_file() {
            return regular(&std::fs::canonicalize(path).with_context(context)?);
        }
        if target.is_dir() {
            bail!("cannot write {}: it leads to a directory", path.display());
        }
        let file = std::fs::OpenOptions::new().write(true).open(path).with_context(context)?;
        Ok(Output { file, rename: None, path: path.to_path_buf() })
    }

    /// Whether the output can be rewound (a file, a device such as `/dev/null`), which a
    /// format whose header is written last needs; a FIFO cannot.
    pub fn seekable(&mut self) -> bool {
        use std::io::Seek;
        self.file.stream_position().is_ok()
    }

    /// The open file, to rewind it (see [`Output::seekable`]).
    pub fn file(&mut self) -> &mut std::fs::File {
        &mut self.file
    }

    /// Finishes the output: flushed to disk and renamed into place (or, written through,
    /// flushed).
    pub fn commit(mut self) -> Result<()> {
        let context = || format!("writing {}", self.path.display());
        self.file.flush().with_context(context)?;
        if let Some((tmp, target)) = self.rename.take() {
            let done = self.file.sync_all().and_then(|_| std::fs::rename(&tmp, &target));
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done.with_context(context)?;
        }
        Ok(())
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // Not committed (an error on the way): the old file stays, the temporary goes.
        if let Some((tmp, _)) = self.rename.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes a new directory `dir` holding `files` (relative paths, subdirectories created)
/// all at once: they are written into a fresh directory `.<name>.tmp<pid>-<random>` beside
/// it (created exclusively, so nothing planted there is followed) and that is renamed to
/// `dir`. A reader, or a crash, sees no `dir` or the whole of it. An existing `dir` is
/// refused unless it is an empty directory, so nothing already written is replaced.
pub fn write_dir_atomic(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        let empty = m.is_dir() && std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !empty {
            bail!(
                "cannot write {}: it exists already (remove it, or choose another directory)",
                dir.display()
            );
        }
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = dir.file_name() else {
        bail!("cannot write {}: the path has no directory name", dir.display());
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("writing {}: creating {}", dir.display(), parent.display()))?;
    let tmp = parent.join(format!(".{}.tmp{}", name.to_string_lossy(), unpredictable_suffix()));
    std::fs::create_dir(&tmp)
        .with_context(|| format!("writing {}: creating {}", dir.display(), tmp.display()))?;
    let result = (|| -> Result<()> {
        for (rel, bytes) in files {
            anyhow::ensure!(
                Path::new(rel).components().all(|c| matches!(c, std::path::Component::Normal(_))),
                "`{rel}` is not a plain relative path"
            );
            replace_regular(&tmp.join(rel), bytes)?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.with_context(|| format!("writing {}", dir.display()))
}

/// What a non-regular file is, for messages.
fn kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// A name no other process can predict: the pid, and 64 bits from the standard library's
/// randomly keyed hasher (seeded from the operating system's random source).
fn unpredictable_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    format!("{}-{:016x}", std::process::id(), h.finish())
}

/// The temporary-and-rename write of a path that is absent or a regular file.
fn replace_regular(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_regular_via(path, bytes, &unpredictable_suffix())
}

/// [`replace_regular`] through the temporary `.<name>.tmp<suffix>` (tests choose the
/// suffix to collide with a planted link).
fn replace_regular_via(path: &Path, bytes: &[u8], suffix: &str) -> Result<()> {
    let context = || format!("writing {} ({} bytes)", path.display(), bytes.len());
    let (mut f, tmp) = create_temporary(path, suffix).with_context(context)?;
    let result = f.write_all(bytes).and_then(|_| f.sync_all()).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(context)
}

/// Creates `.<name>.tmp<suffix>` beside `path` (and `path`'s directory), exclusively: never
/// through anything already at that name, a planted link included.
fn create_temporary(path: &Path, suffix: &str) -> Result<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        bail!("cannot write {}: the path has no file name", path.display());
    };
    std::fs::create_dir_all(dir).context("creating its directory")?;
    let tmp = dir.join(format!(".{}.tmp{suffix}", name.to_string_lossy()));
    // create_new is O_CREAT | O_EXCL: it fails on anything already at the name, a link
    // included, instead of following it. O_NOFOLLOW says the same for the last component.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    Ok((f, tmp))
}

/// Removes the temporary files that [`write_atomic`] left in `dir` when its process was
/// killed mid-write (`.<name>.tmp<pid>-<random>`, or the older `.<name>.tmp<pid>`, of a
/// process that no longer runs). Returns how many.
/// Temporaries of a live process are left alone: it may be writing them now.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp"))
            .map(|(_, rest)| rest.split('-').next().unwrap_or(rest));
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// FNV-1a, 64-bit: for each byte, `h = (h ^ byte) * 0x100000001b3` (wrapping), starting from
/// `0xcbf29ce484222325`. Stable by definition — the same value on every machine and Rust
/// version forever, which std's `DefaultHasher` is not — so the corpus's splits and the
/// framework's n-gram buckets can depend on it.
///
/// `stable_hash64(b"")` is `0xcbf29ce484222325` and `stable_hash64(b"a")` is
/// `0xaf63dc4c8601ec8c` (the published FNV-1a test vectors).
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(FNV_OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
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
    fn a_directory_is_written_whole_and_never_over_another() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("export");
        write_dir_atomic(&dir, &[("a.json", b"{}".to_vec()), ("sub/b.bin", vec![1, 2])]).unwrap();
        assert_eq!(std::fs::read(dir.join("sub/b.bin")).unwrap(), [1, 2]);
        // Only the directory itself is left: no temporary beside it.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
        let err = write_dir_atomic(&dir, &[("a.json", b"[]".to_vec())]).unwrap_err();
        assert!(format!("{err:#}").contains("exists already"), "{err:#}");
        assert_eq!(std::fs::read(dir.join("a.json")).unwrap(), b"{}");
        // A path that leaves the directory is refused and nothing is left behind.
        let other = tmp.path().join("other");
        assert!(write_dir_atomic(&other, &[("../escape", vec![0])]).is_err());
        assert!(!other.exists() && !tmp.path().join("escape").exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

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
        let names: Vec<_> =
            std::fs::read_dir(p.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
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
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![own, ".b.json.tmpx".to_string(), "a.csv".to_string()]);
    }

    #[test]
    fn a_failed_write_names_the_destination_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a non-empty directory: write_atomic refuses it up front, and
        // the rename underneath fails (and cleans up) if it ever got that far.
        let p = dir.path().join("taken");
        std::fs::create_dir_all(p.join("inside")).unwrap();
        let e = format!("{:#}", write_atomic(&p, b"x").unwrap_err());
        assert!(e.starts_with(&format!("cannot write {}: it is a directory", p.display())), "{e}");
        let e = format!("{:#}", replace_regular(&p, b"x").unwrap_err());
        assert!(e.starts_with(&format!("writing {} (1 bytes)", p.display())), "{e}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("taken")], "no temporary file left");
    }

    #[test]
    fn a_streamed_output_appears_whole_on_commit_and_not_at_all_without() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.tsv");
        std::fs::write(&p, "old").unwrap();
        let names =
            || std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
        // Dropped half-written (an error on the way): the old file stays, nothing else.
        let mut o = Output::create(&p).unwrap();
        o.write_all(b"half").unwrap();
        drop(o);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(names(), vec![std::ffi::OsString::from("out.tsv")]);
        // Written in pieces, rewound, committed.
        let mut o = Output::create(&p).unwrap();
        assert!(o.seekable());
        o.write_all(b"xx, ").unwrap();
        o.write_all(b"rows").unwrap();
        use std::io::Seek;
        o.file().seek(std::io::SeekFrom::Start(0)).unwrap();
        o.write_all(b"2").unwrap();
        o.commit().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2x, rows");
        assert_eq!(names(), vec![std::ffi::OsString::from("out.tsv")]);
    }

    #[test]
    fn links_planted_at_temporary_names_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The names the old write path used: `.<name>.tmp<pid>` for the next pids.
        let pid = std::process::id();
        for p in pid..pid + 20 {
            std::os::unix::fs::symlink(&victim, dir.path().join(format!(".out.csv.tmp{p}"))).unwrap();
        }
        write_atomic(&dir.path().join("out.csv"), b"result").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("out.csv")).unwrap(), b"result");
        // Even a link planted at the very temporary name is not followed: the write fails,
        // the victim keeps its contents and the link stays (it is not this write's to remove).
        let planted = dir.path().join(".out.csv.tmpguessed");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let e = format!(
            "{:#}",
            replace_regular_via(&dir.path().join("out.csv"), b"evil", "guessed").unwrap_err()
        );
        assert!(e.contains("writing") && e.contains("exists"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(planted.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(dir.path().join("out.csv")).unwrap(), b"result");
    }

    fn mkfifo(p: &Path) {
        let ok = std::process::Command::new("mkfifo").arg(p).status().unwrap().success();
        assert!(ok, "mkfifo {}", p.display());
    }

    #[test]
    fn internal_writes_refuse_links_fifos_and_directories_and_leave_them() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = format!("{:#}", write_atomic(&link, b"x").unwrap_err());
        assert!(e.contains("link.csv") && e.contains("a symbolic link"), "{e}");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let e = format!("{:#}", write_atomic(&fifo, b"x").unwrap_err());
        assert!(e.contains("a FIFO"), "{e}");
        use std::os::unix::fs::FileTypeExt;
        assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
    }

    #[test]
    fn user_outputs_follow_links_and_write_through_fifos_as_the_shell_would() {
        let dir = tempfile::tempdir().unwrap();
        // A link to a regular file: the file is replaced, the link stays.
        let real = dir.path().join("real.tsv");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.tsv");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_output(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        // A FIFO is written through and is still a FIFO afterwards.
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(&fifo).unwrap())
        };
        write_output(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        use std::os::unix::fs::FileTypeExt;
        assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
        // A directory and a dangling link are refused, naming them.
        let e = format!("{:#}", write_output(dir.path(), b"x").unwrap_err());
        assert!(e.contains("is a directory"), "{e}");
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let e = format!("{:#}", write_output(&dangling, b"x").unwrap_err());
        assert!(e.contains("a symbolic link to nothing"), "{e}");
    }
}
