//! A store in files: one file per key, replaced atomically, swaps serialized by an advisory lock.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{StoreFuture, UserTokenStore, Versioned};
use crate::error::{BoxError, Error, ErrorKind};

/// A store in a directory, shared by every process on the machine that opens the same directory.
///
/// - Each key is one file, `user-<key in hex>.json`, mode `0600` in a directory created `0700` (on Unix); keys are
///   1 to 100 bytes. A directory every user can write to is refused.
/// - A swap takes an exclusive advisory lock (`flock`) on the key's `.lock` file, reads the version, and replaces
///   the file by writing a temporary file, `fsync`ing it, renaming it over the old one and `fsync`ing the
///   directory: a crash leaves the old record or the new one, never a torn one, and `Ok(true)` means it is on disk.
/// - Reads take no lock (a rename is atomic).
///
/// Advisory locks are honoured by processes that use them (every `FileStore`), and on network file systems
/// only as far as those implement `flock`: keep the directory on a local disk.
#[derive(Clone)]
pub struct FileStore {
    dir: Arc<PathBuf>,
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            Error::build(
                ErrorKind::Store,
                format!(
                    "the token store directory {} could not be created: check the path and its permissions",
                    dir.display()
                ),
            )
            .source(e)
            .finish()
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir).map(|m| m.permissions().mode()).unwrap_or(0);
            if mode & 0o022 != 0 {
                // Others could replace or remove the records (or plant links) there.
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "the token store directory {} is writable by other users (mode {:o}): use a private one \
                         (chmod 700)",
                        dir.display(),
                        mode & 0o7777
                    ),
                ));
            }
        }
        owned_by_us(dir)?;
        sweep(dir);
        Ok(FileStore { dir: Arc::new(dir.to_owned()) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn paths(&self, key: &str) -> Result<(PathBuf, PathBuf), BoxError> {
        super::check_key(key)?;
        let name = format!("user-{}", crate::shared::hex(key.as_bytes()));
        Ok((self.dir.join(format!("{name}.json")), self.dir.join(format!("{name}.lock"))))
    }
}

/// Refuses a directory another user owns: they could replace the records. (A file created there is ours; the
/// directory must be too.)
fn owned_by_us(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let probe = dir.join(format!(".owner-probe-{}-{}", std::process::id(), fastrand::u64(..)));
        let created = options().create_new(true).write(true).open(&probe).and_then(|f| f.metadata());
        let _ = fs::remove_file(&probe);
        let refused = |why: String| Err(Error::new(ErrorKind::InvalidConfig, why));
        match (created, fs::metadata(dir)) {
            (Ok(ours), Ok(theirs)) if ours.uid() != theirs.uid() => {
                return refused(format!(
                    "the token store directory {} belongs to another user (uid {}): use a directory of your own",
                    dir.display(),
                    theirs.uid()
                ));
            }
            (Err(e), _) | (_, Err(e)) => {
                return Err(Error::build(
                    ErrorKind::Store,
                    format!("the token store directory {} cannot be written: check its permissions", dir.display()),
                )
                .source(e)
                .finish());
            }
            _ => {}
        }
    }
    let _ = dir;
    Ok(())
}

/// Removes temporary files that writers which died mid-write left behind (older than ten minutes: a live
/// writer's is milliseconds old).
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(600)));
        if name.starts_with(".user-") && name.ends_with(".tmp") && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.dir).finish()
    }
}

/// The longest a swap waits for another process to release a key's lock (a swap holds it for milliseconds).
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// The largest record file read: a record is well under 1 KiB.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Refuses anything at `path` that is not a plain file (a link, a FIFO, a device): it would not be a record this
/// store wrote, and opening it could block or read without end.
fn plain_file(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(true),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a plain file (a link, a pipe or a device): remove it", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a record file: `version N` on the first line, the record after it. A file without that line (torn by
/// hand, or foreign) reads as version 0 with its bytes as the record: the user's source says it cannot use it, and
/// a sign-in replaces it.
fn read(path: &Path) -> io::Result<Option<Versioned>> {
    if !plain_file(path)? {
        return Ok(None);
    }
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than a token record can be: remove it", path.display()),
        ));
    }
    let header = bytes.iter().position(|&b| b == b'\n').and_then(|newline| {
        let version = std::str::from_utf8(&bytes[..newline]).ok()?.strip_prefix("version ")?.parse::<u64>().ok()?;
        Some((version, newline))
    });
    Ok(Some(match header {
        Some((version, newline)) => Versioned { version, record: bytes[newline + 1..].to_vec() },
        None => Versioned { version: 0, record: bytes },
    }))
}

fn options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Set when the caller stopped waiting for a swap (its future was dropped, e.g. by a timeout): the swap then gives
/// up rather than write what its caller already counts as not written.
struct Abandoned(Arc<AtomicBool>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn abandoned() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "the swap was abandoned by its caller before it wrote")
}

fn swap(
    path: &Path,
    lock_path: &Path,
    expected: Option<u64>,
    new: &Versioned,
    gave_up: &AtomicBool,
) -> io::Result<bool> {
    plain_file(lock_path)?;
    let lock = options().create(true).truncate(false).write(true).open(lock_path)?;
    // Polled rather than awaited, so a lock another process never releases costs this thread a bounded wait, not
    // a blocking thread for good.
    let deadline = std::time::Instant::now() + LOCK_PATIENCE;
    loop {
        if gave_up.load(Ordering::Acquire) {
            return Err(abandoned());
        }
        match lock.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} stayed locked by another process for {LOCK_PATIENCE:?}", lock_path.display()),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    let current = read(path)?.map(|r| r.version);
    if current != expected {
        return Ok(false);
    }
    if gave_up.load(Ordering::Acquire) {
        return Err(abandoned());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("record"),
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = (|| {
        let mut file = options().create_new(true).write(true).open(&temp)?;
        file.write_all(format!("version {}\n", new.version).as_bytes())?;
        file.write_all(&new.record)?;
        file.sync_all()?;
        if gave_up.load(Ordering::Acquire) {
            return Err(abandoned());
        }
        fs::rename(&temp, path)?;
        // The rename itself is durable once the directory is.
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map(|()| true)
    // The lock is released when `lock` is dropped.
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> io::Result<T> + Send + 'static) -> Result<T, BoxError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Into::into),
        Err(join) => Err(format!("the file store's blocking task failed: {join}").into()),
    }
}

impl UserTokenStore for FileStore {
    fn load<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Versioned>> {
        Box::pin(async move {
            let (path, _) = self.paths(key)?;
            blocking(move || read(&path)).await
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        new: &'a Versioned,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let (path, lock) = self.paths(key)?;
            let new = new.clone();
            let gave_up = Arc::new(AtomicBool::new(false));
            let _abandoned = Abandoned(Arc::clone(&gave_up));
            blocking(move || swap(&path, &lock, expected, &new, &gave_up)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tga-file-store-{}-{}", std::process::id(), fastrand::u64(..)));
        fs::create_dir_all(&dir).unwrap();
        #[cfg(unix)]
        fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        dir
    }

    #[tokio::test]
    async fn swaps_only_on_the_expected_version_and_keeps_files_private() {
        let dir = temp_dir();
        let store = FileStore::open(dir.join("store")).unwrap();
        let one = Versioned { version: 1, record: b"{\"a\":1}".to_vec() };
        let two = Versioned { version: 2, record: b"{\"a\":2}\nsecond line".to_vec() };
        assert_eq!(store.load("mona").await.unwrap(), None);
        assert!(!store.compare_and_swap("mona", Some(1), &one).await.unwrap());
        assert!(store.compare_and_swap("mona", None, &one).await.unwrap());
        assert!(!store.compare_and_swap("mona", None, &one).await.unwrap());
        assert!(store.compare_and_swap("mona", Some(1), &two).await.unwrap());
        assert_eq!(store.load("mona").await.unwrap(), Some(two.clone()));
        // Another key, another file; odd keys are hex-encoded into the name.
        assert!(store.compare_and_swap("../../etc/passwd", None, &one).await.unwrap());
        let names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| n.starts_with("user-") && !n.contains("..") && !n.ends_with(".tmp")), "{names:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let (path, _) = store.paths("mona").unwrap();
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
            assert_eq!(fs::metadata(store.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        }
        assert!(store.load("").await.is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let open = dir.join("open");
            fs::create_dir(&open).unwrap();
            fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
            let refused = FileStore::open(&open).unwrap_err();
            assert_eq!(refused.kind(), ErrorKind::InvalidConfig, "{refused}");
        }
        assert!(store.load(&"k".repeat(101)).await.is_err());
        // A torn or foreign file reads as version 0, which a swap can replace; a link or a pipe is refused.
        let (path, _) = store.paths("mona").unwrap();
        fs::write(&path, b"garbage").unwrap();
        assert_eq!(store.load("mona").await.unwrap().unwrap().version, 0);
        assert!(store.compare_and_swap("mona", Some(0), &one).await.unwrap());
        #[cfg(unix)]
        {
            fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
            assert!(store.load("mona").await.is_err());
            assert!(store.compare_and_swap("mona", None, &one).await.is_err());
            fs::remove_file(&path).unwrap();
        }
        assert!(format!("{two:?}").contains("redacted") && !format!("{two:?}").contains("second"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_swap_its_caller_gave_up_on_never_writes() {
        let dir = temp_dir();
        let store = FileStore::open(&dir).unwrap();
        let one = Versioned { version: 1, record: b"1".to_vec() };
        assert!(store.compare_and_swap("k", None, &one).await.unwrap());
        // Another process holds the key's lock.
        let (_, lock_path) = store.paths("k").unwrap();
        let held = File::options().write(true).open(&lock_path).unwrap();
        held.lock().unwrap();
        let two = Versioned { version: 2, record: b"2".to_vec() };
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), store.compare_and_swap("k", Some(1), &two));
        assert!(waited.await.is_err(), "still waiting for the lock");
        held.unlock().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(store.load("k").await.unwrap().unwrap().version, 1, "the abandoned swap did not write");
        fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_swaps_from_many_handles_never_both_win() {
        let dir = temp_dir();
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let store = FileStore::open(&dir).unwrap();
            tasks.push(tokio::spawn(async move {
                let mut wins = 0u64;
                for _ in 0..50 {
                    let current = store.load("k").await.unwrap().map(|r| r.version);
                    let next = Versioned { version: current.unwrap_or(0) + 1, record: task.to_string().into_bytes() };
                    if store.compare_and_swap("k", current, &next).await.unwrap() {
                        wins += 1;
                    }
                }
                wins
            }));
        }
        let mut wins = 0;
        for task in tasks {
            wins += task.await.unwrap();
        }
        let last = FileStore::open(&dir).unwrap().load("k").await.unwrap().unwrap();
        // Every win moved the version by exactly one: no two swaps from one version both succeeded.
        assert_eq!(last.version, wins);
        assert!(wins >= 50);
        fs::remove_dir_all(dir).unwrap();
    }
}
