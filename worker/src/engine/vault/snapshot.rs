//! The shape of a raft snapshot, checked while it streams: a gzip'd tar holding `meta.json`,
//! `state.bin`, `SHA256SUMS` and `SHA256SUMS.sealed`, where `SHA256SUMS` lists the sha256 of
//! the first two. A snapshot that is empty, cut short, or whose sums do not match would
//! be refused by the server at restore time, months after the backup "succeeded"; checking
//! here turns that into a failed backup tonight (and into a failed `verify --identity`).
//!
//! The inspector reads through its input exactly once, so the backup tees the HTTP body into
//! the encoder while inspecting it: no second download, no temporary file.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Files every snapshot holds.
const REQUIRED: [&str; 4] = ["meta.json", "state.bin", "SHA256SUMS", "SHA256SUMS.sealed"];

/// Why a snapshot is not a usable raft snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No bytes at all.
    #[error("the snapshot is empty")]
    Empty,
    /// Not a gzip'd tar, or cut short.
    #[error("the snapshot is not a gzip'd tar archive or is cut short: {0}")]
    Malformed(String),
    /// A file every raft snapshot has is missing.
    #[error("the snapshot lacks {0}")]
    MissingFile(&'static str),
    /// A file does not match its SHA256SUMS line.
    #[error("the snapshot's {file} does not match its SHA256SUMS (the snapshot is damaged)")]
    SumMismatch {
        /// The file inside the snapshot.
        file: String,
    },
    /// meta.json does not parse.
    #[error("the snapshot's meta.json is unreadable: {0}")]
    BadMeta(String),
}

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// Raft index and term the snapshot was taken at.
    pub index: u64,
    /// Raft term of the snapshot.
    pub term: u64,
    /// Size of `state.bin` (the key/value state) in bytes.
    pub state_bytes: u64,
    /// Total bytes read from the input (the gzip'd snapshot).
    pub snapshot_bytes: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Meta {
    index: u64,
    term: u64,
}

/// Counts what passes through, copies it to `out` when there is one, and remembers whether
/// reading or copying failed: such a failure is the connection or the store, not damage.
struct Tee<'a, R> {
    inner: R,
    out: Option<&'a mut dyn Write>,
    bytes: u64,
    failed: bool,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        if let Some(out) = self.out.as_mut() {
            out.write_all(&buf[..n])
                .inspect_err(|_| self.failed = true)?;
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Inspects a snapshot read from `input`, copying every byte to `out` (when given) as it
/// goes; reads `input` to its end either way.
///
/// # Errors
/// [`SnapshotError`] for a snapshot of the wrong shape; I/O errors of `input` or `out` come
/// back as [`SnapshotInspectError::Io`] so a broken connection is not mistaken for damage.
pub fn inspect(
    input: impl Read,
    out: Option<&mut dyn Write>,
) -> Result<SnapshotFacts, SnapshotInspectError> {
    let mut tee = Tee {
        inner: input,
        out,
        bytes: 0,
        failed: false,
    };
    let facts = inspect_archive(&mut tee);
    // Whatever the verdict, pass the rest through: a backup's part holds exactly what the
    // server sent (the inspection above already read the gzip trailer and its CRC).
    let rest = io::copy(&mut tee, &mut io::sink());
    if tee.bytes == 0 && !tee.failed {
        return Err(SnapshotError::Empty.into());
    }
    let facts = match (facts, rest) {
        (Err(Failure::Io(e)), _) | (_, Err(e)) if tee.failed => {
            return Err(SnapshotInspectError::Io(e))
        }
        (Err(Failure::Io(e)), _) => return Err(SnapshotError::Malformed(e.to_string()).into()),
        (Err(Failure::Bad(e)), _) => return Err(e.into()),
        (Ok(_), Err(e)) => return Err(SnapshotInspectError::Io(e)),
        (Ok(facts), Ok(_)) => facts,
    };
    Ok(SnapshotFacts {
        snapshot_bytes: tee.bytes,
        ..facts
    })
}

enum Failure {
    Bad(SnapshotError),
    Io(io::Error),
}

impl From<SnapshotError> for Failure {
    fn from(e: SnapshotError) -> Self {
        Failure::Bad(e)
    }
}

/// An inspection that could not finish, or that found a bad snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotInspectError {
    /// The snapshot is not one.
    #[error(transparent)]
    Bad(#[from] SnapshotError),
    /// Copying it on failed.
    #[error(transparent)]
    Io(io::Error),
}

fn inspect_archive<R: Read>(tee: &mut Tee<'_, R>) -> Result<SnapshotFacts, Failure> {
    let mut gz = flate2::read::GzDecoder::new(&mut *tee);
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let mut listed: Option<String> = None;
    let mut meta: Option<Meta> = None;
    let mut state_bytes = 0u64;
    let mut seen = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut gz);
        let entries = archive.entries().map_err(Failure::Io)?;
        for entry in entries {
            let mut entry = entry.map_err(Failure::Io)?;
            let name = entry.path().map_err(Failure::Io)?.display().to_string();
            let mut hasher = Sha256::new();
            let mut content = Vec::new();
            let small = name == "meta.json" || name.starts_with("SHA256SUMS");
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = entry.read(&mut buf).map_err(Failure::Io)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
                if small && content.len() < 1 << 20 {
                    content.extend_from_slice(&buf[..n]);
                }
            }
            match name.as_str() {
                "meta.json" => {
                    meta = Some(
                        serde_json::from_slice(&content)
                            .map_err(|e| SnapshotError::BadMeta(e.to_string()))?,
                    );
                }
                "state.bin" => state_bytes = size,
                "SHA256SUMS" => listed = Some(String::from_utf8_lossy(&content).into_owned()),
                _ => {}
            }
            sums.insert(name.clone(), hex::encode(hasher.finalize()));
            seen.push(name);
        }
    }
    // Reading the gzip stream to its end checks its CRC and length trailer.
    io::copy(&mut gz, &mut io::sink()).map_err(Failure::Io)?;
    if seen.is_empty() {
        return Err(SnapshotError::Malformed("no files in the archive".into()).into());
    }
    for file in REQUIRED {
        if !seen.iter().any(|s| s == file) {
            return Err(SnapshotError::MissingFile(file).into());
        }
    }
    let listed = listed.expect("SHA256SUMS is required above");
    let mut checked = 0;
    for line in listed.lines().filter(|l| !l.trim().is_empty()) {
        let (hash, file) = line
            .split_once(char::is_whitespace)
            .map(|(h, f)| (h.trim(), f.trim().trim_start_matches('*')))
            .ok_or_else(|| SnapshotError::Malformed(format!("bad SHA256SUMS line {line:?}")))?;
        match sums.get(file) {
            Some(actual) if actual.eq_ignore_ascii_case(hash) => checked += 1,
            _ => {
                return Err(SnapshotError::SumMismatch {
                    file: file.to_string(),
                }
                .into())
            }
        }
    }
    if checked == 0 {
        return Err(SnapshotError::Malformed("SHA256SUMS lists no files".into()).into());
    }
    let meta = meta.expect("meta.json is required above");
    Ok(SnapshotFacts {
        index: meta.index,
        term: meta.term,
        state_bytes,
        snapshot_bytes: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    /// Builds a snapshot the way the server does, with optional damage.
    fn snapshot(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            tar.append_data(&mut header, name, data.as_slice()).unwrap();
        }
        let tar = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    fn good_files() -> Vec<(&'static str, Vec<u8>)> {
        let meta = br#"{"Version":1,"ID":"bolt-snapshot","Index":35,"Term":3,"Size":9}"#.to_vec();
        let state = b"state-bin".to_vec();
        let sums = format!("{}  meta.json\n{}  state.bin\n", sha(&meta), sha(&state)).into_bytes();
        vec![
            ("meta.json", meta),
            ("state.bin", state),
            ("SHA256SUMS", sums),
            ("SHA256SUMS.sealed", b"sealed".to_vec()),
        ]
    }

    #[test]
    fn reads_facts_and_copies_every_byte() {
        let snap = snapshot(&good_files());
        let mut copy = Vec::new();
        let facts = inspect(snap.as_slice(), Some(&mut copy)).unwrap();
        assert_eq!(copy, snap);
        assert_eq!(facts.index, 35);
        assert_eq!(facts.term, 3);
        assert_eq!(facts.state_bytes, 9);
        assert_eq!(facts.snapshot_bytes, snap.len() as u64);
    }

    #[test]
    fn refuses_empty_input() {
        let err = inspect(&b""[..], None).unwrap_err();
        assert!(
            matches!(err, SnapshotInspectError::Bad(SnapshotError::Empty)),
            "{err}"
        );
    }

    #[test]
    fn refuses_garbage_and_truncation() {
        let err = inspect(&b"{\"errors\":[\"permission denied\"]}"[..], None).unwrap_err();
        assert!(
            matches!(err, SnapshotInspectError::Bad(SnapshotError::Malformed(_))),
            "{err}"
        );
        let snap = snapshot(&good_files());
        for cut in [10, snap.len() / 2, snap.len() - 4] {
            let mut copy = Vec::new();
            let err = inspect(&snap[..cut], Some(&mut copy)).unwrap_err();
            assert!(
                matches!(err, SnapshotInspectError::Bad(_)),
                "cut at {cut}: {err}"
            );
            assert_eq!(copy.len(), cut, "everything read is passed on");
        }
    }

    #[test]
    fn refuses_missing_files() {
        for missing in REQUIRED {
            let files: Vec<_> = good_files()
                .into_iter()
                .filter(|(n, _)| *n != missing)
                .collect();
            let err = inspect(snapshot(&files).as_slice(), None).unwrap_err();
            assert!(err.to_string().contains(missing), "{missing}: {err}");
        }
    }

    #[test]
    fn refuses_a_state_that_does_not_match_its_sum() {
        let mut files = good_files();
        files[1].1 = b"state-bix".to_vec();
        let err = inspect(snapshot(&files).as_slice(), None).unwrap_err();
        assert!(
            matches!(&err, SnapshotInspectError::Bad(SnapshotError::SumMismatch { file }) if file == "state.bin"),
            "{err}"
        );
    }

    #[test]
    fn transport_errors_are_not_called_damage() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            }
        }
        let err = inspect(Broken, None).unwrap_err();
        assert!(matches!(err, SnapshotInspectError::Io(_)), "{err}");
    }
}
