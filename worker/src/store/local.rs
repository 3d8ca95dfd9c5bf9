//! A store in a local directory (`file:///dir`): the default for the demo, for a NAS mount,
//! or for users without S3. Objects are files; a stream is written to a hidden temporary
//! file and renamed into place only when complete, so a crash never leaves a half object
//! under its real name.

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

    /// Opens (and creates if needed) the directory.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directory cannot be created.
    pub async fn open(root: &Path) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|source| StoreError::Io {
                op: "create store directory",
                path: root.display().to_string(),
                source,
            })?;
        Ok(LocalStore {
            root: root.to_path_buf(),
            location: format!("file://{}", root.display()),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        // Keys come from the catalog (validated segments), never raw user input; still,
        // refuse anything that would leave the root.
        assert!(
            !key.split('/').any(|s| s == ".." || s.is_empty()) || key.is_empty(),
            "key {key:?} escapes the store"
        );
        self.root.join(key)
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
        let path = self.path(key);
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::pin(tokio::io::BufReader::with_capacity(256 * 1024, f))),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(Self::io("open", &path)(e)),
        }
    }
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
        let path = self.path(key);
        let dir = path.parent().expect("keys have a directory");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Self::io("create directory", dir))?;
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
            file.sync_all().await.map_err(Self::io("sync", &tmp))?;
            tokio::fs::rename(&tmp, &path)
                .await
                .map_err(Self::io("rename", &path))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}

#[async_trait]
impl DeleteStore for LocalStore {
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.remove(key).await
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

    async fn abort_upload(&self, upload: &PendingUpload) -> Result<(), StoreError> {
        // The handle is the temporary file's key.
        self.remove(&upload.handle).await
    }
}

impl LocalStore {
    /// Removes a file (a missing one is fine), then the directories it leaves empty up to
    /// the root, so listings stay tidy.
    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
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
