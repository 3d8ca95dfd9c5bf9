//! A store in a local directory (`file:///dir`): the default for the demo, for a NAS mount,
//! or for users without S3. Objects are files.
//!
//! Durability: an object is written to a hidden temporary file, flushed (tokio's `File`
//! holds a failed background write until the next write or flush, and `sync_all` does not
//! report it: that is how a full disk once produced a 0-byte manifest and a "committed"
//! backup), checked for its length, `fsync`ed, renamed into place, and its directory is
//! `fsync`ed. Every error on that path fails the write; nothing half-written ever appears
//! under its real name.
//!
//! Reading: only regular files, opened without following a final symlink and without
//! blocking on a FIFO, and only under keys that pass [`super::key_is_safe`].

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    BodyChunk, DeleteStore, ObjectMeta, ObjectReader, PendingUpload, ReadStore, StoreError,
    WriteStore,
};

/// Marks in-flight files; listing skips them (they are the local twin of a multipart upload).
const PARTIAL_MARK: &str = ".partial-";

/// A store in a local directory (`file:///…`): tests, the demo, a mounted volume.
#[derive(Debug)]
pub struct LocalStore {
    root: PathBuf,
    location: String,
}

impl LocalStore {
    async fn walk(
        &self,
        prefix: &str,
        what: Walk,
    ) -> Result<Vec<(ObjectMeta, std::fs::Metadata)>, StoreError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        // Start the walk at the deepest directory the prefix names.
        let start = match prefix.rfind('/') {
            Some(i) => root.join(&prefix[..i]),
            None => root.clone(),
        };
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&start, &root, &prefix, what, &mut out).map(|()| out)
        })
        .await
        .expect("listing task panicked")
        .map_err(Self::io("list", &self.root))
    }

    /// Opens an existing store directory; never creates one.
    ///
    /// # Errors
    /// [`StoreError::Missing`] when the directory does not exist, [`StoreError::Io`] when it
    /// is not a directory or cannot be read.
    pub async fn open(root: &Path) -> Result<Self, StoreError> {
        let store = Self::at(root);
        match tokio::fs::metadata(root).await {
            Ok(m) if m.is_dir() => Ok(store),
            Ok(_) => Err(StoreError::Io {
                op: "open store directory",
                path: root.display().to_string(),
                source: std::io::Error::other("not a directory"),
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::Missing {
                location: store.location,
            }),
            Err(source) => Err(StoreError::Io {
                op: "open store directory",
                path: root.display().to_string(),
                source,
            }),
        }
    }

    /// Opens the store directory, creating it (and its parents) when missing: for backups.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub async fn create(root: &Path) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|source| StoreError::Io {
                op: "create store directory",
                path: root.display().to_string(),
                source,
            })?;
        Self::open(root).await
    }

    fn at(root: &Path) -> Self {
        LocalStore {
            root: root.to_path_buf(),
            location: format!("file://{}", root.display()),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if super::key_is_safe(key) {
            Ok(self.root.join(key))
        } else {
            Err(StoreError::BadKey {
                location: self.location.clone(),
                key: key.to_string(),
            })
        }
    }

    fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> StoreError + 'p {
        move |source| StoreError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }

    fn not_found(&self, key: &str) -> StoreError {
        StoreError::NotFound {
            location: self.location.clone(),
            key: key.to_string(),
        }
    }
}

/// What [`walk`] collects: finished objects, or the temporary files of unfinished uploads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    Objects,
    Partials,
}

fn walk(
    dir: &Path,
    root: &Path,
    prefix: &str,
    what: Walk,
    out: &mut Vec<(ObjectMeta, std::fs::Metadata)>,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            walk(&path, root, prefix, what, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("walk stays under root");
            let key = rel.to_string_lossy().replace('\\', "/");
            let partial = key.contains(PARTIAL_MARK);
            if key.starts_with(prefix) && partial == (what == Walk::Partials) {
                let meta = entry.metadata()?;
                out.push((
                    ObjectMeta {
                        key,
                        size: meta.len(),
                    },
                    meta,
                ));
            }
        }
    }
    Ok(())
}

#[async_trait]
impl ReadStore for LocalStore {
    fn location(&self) -> &str {
        &self.location
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out: Vec<ObjectMeta> = self
            .walk(prefix, Walk::Objects)
            .await?
            .into_iter()
            .map(|(o, _)| o)
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn get(&self, key: &str) -> Result<ObjectReader, StoreError> {
        let path = self.path(key)?;
        let opened = tokio::task::spawn_blocking({
            let path = path.clone();
            move || open_regular(&path)
        })
        .await
        .expect("open task panicked");
        let not_regular = |what| StoreError::NotRegular {
            location: self.location.clone(),
            key: key.to_string(),
            what,
        };
        match opened {
            Ok(Ok(f)) => Ok(Box::pin(super::rate::Limited::new(
                tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::from_std(f)),
            ))),
            Ok(Err(what)) => Err(not_regular(what)),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(key)),
            // O_NOFOLLOW on a symlink.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(not_regular("a symbolic link")),
            Err(e) => Err(Self::io("open", &path)(e)),
        }
    }

    async fn pending_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, StoreError> {
        Ok(self
            .walk(prefix, Walk::Partials)
            .await?
            .into_iter()
            .filter_map(|(o, meta)| {
                let (key, _) = o.key.split_once(PARTIAL_MARK)?;
                Some(PendingUpload {
                    key: key.to_string(),
                    started: meta.modified().ok()?.into(),
                    handle: o.key,
                })
            })
            .collect())
    }
}

/// Opens a file for reading only if it is a regular file: a final symlink is not followed
/// (a part pointing at `/dev/zero` would never end) and a FIFO does not block the open.
/// The inner `Err` names what the path is instead.
fn open_regular(path: &Path) -> std::io::Result<Result<std::fs::File, &'static str>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let ft = file.metadata()?.file_type();
    Ok(if ft.is_file() {
        Ok(file)
    } else if ft.is_dir() {
        Err("a directory")
    } else if ft.is_fifo() {
        Err("a FIFO")
    } else if ft.is_char_device() || ft.is_block_device() {
        Err("a device")
    } else {
        Err("not a plain file")
    })
}

/// `fsync`s a directory, so a rename or a new entry in it survives a crash.
async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .expect("sync task panicked")
}

#[async_trait]
impl WriteStore for LocalStore {
    async fn put_bytes(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel(2);
        tx.send(BodyChunk::Data(data))
            .await
            .expect("receiver alive");
        tx.send(BodyChunk::End).await.expect("receiver alive");
        self.put_stream(key, rx, &CancellationToken::new())
            .await
            .map(|_| ())
    }

    async fn put_stream(
        &self,
        key: &str,
        mut body: mpsc::Receiver<BodyChunk>,
        cancel: &CancellationToken,
    ) -> Result<u64, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys have a directory").to_path_buf();
        let created_dirs = self.create_dirs(&dir).await?;
        let tmp = PathBuf::from(format!(
            "{}{PARTIAL_MARK}{:08x}",
            path.display(),
            rand::random::<u32>()
        ));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(Self::io("create", &tmp))?;
        let result: Result<u64, StoreError> = async {
            let mut written = 0u64;
            loop {
                let chunk = tokio::select! {
                    () = cancel.cancelled() => return Err(StoreError::Cancelled {
                        location: self.location.clone(), key: key.to_string() }),
                    chunk = body.recv() => chunk,
                };
                match chunk {
                    Some(BodyChunk::Data(bytes)) => {
                        super::rate::upload(bytes.len()).await;
                        file.write_all(&bytes)
                            .await
                            .map_err(Self::io("write", &tmp))?;
                        written += bytes.len() as u64;
                    }
                    Some(BodyChunk::End) => break,
                    None => {
                        return Err(StoreError::Incomplete {
                            location: self.location.clone(),
                            key: key.to_string(),
                        })
                    }
                }
            }
            // The last write's error (ENOSPC) surfaces here, not in sync_all.
            file.flush().await.map_err(Self::io("write", &tmp))?;
            file.sync_all().await.map_err(Self::io("sync", &tmp))?;
            let found = file.metadata().await.map_err(Self::io("stat", &tmp))?.len();
            if found != written {
                return Err(StoreError::ShortWrite {
                    location: self.location.clone(),
                    key: key.to_string(),
                    expected: written,
                    found,
                });
            }
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(Self::io("rename", &path))?;
            sync_dir(&dir).await.map_err(Self::io("sync", &dir))?;
            for d in &created_dirs {
                if let Some(parent) = d.parent() {
                    sync_dir(parent).await.map_err(Self::io("sync", parent))?;
                }
            }
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

impl LocalStore {
    /// Creates `dir` and its missing parents below the root; returns the ones it created,
    /// whose parents must be synced for the new entries to be durable.
    async fn create_dirs(&self, dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
        let mut missing = Vec::new();
        let mut d = dir;
        while d != self.root && !tokio::fs::try_exists(d).await.unwrap_or(false) {
            missing.push(d.to_path_buf());
            match d.parent() {
                Some(p) => d = p,
                None => break,
            }
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Self::io("create directory", dir))?;
        Ok(missing)
    }
}

#[async_trait]
impl DeleteStore for LocalStore {
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.remove(key).await
    }

    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        // The handle is the temporary file's key.
        self.remove(&upload.handle).await
    }
}

impl LocalStore {
    /// Removes a file (a missing one is fine), then the directories it leaves empty up to
    /// the root, so listings stay tidy.
    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Self::io("delete", &path)(e)),
        }
        self.remove_empty_dirs(&path).await;
        Ok(())
    }

    async fn remove_empty_dirs(&self, path: &Path) {
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}
