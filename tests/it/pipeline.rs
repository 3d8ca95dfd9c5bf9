//! The encode/decode pipeline and the integrity checks, through the library on a real
//! store: a good part verifies with and without the key; a failed producer, a foreign key,
//! a flipped byte and a truncated object are each caught and classified.

use std::io::Write;

use dr_tests::{Keys, TestStore};
use drkit::catalog::{Compression, Engine, Manifest, PartFormat};
use drkit::engine::{BackupRun, PartSpec};
use drkit::pipeline::encode::{EncodeError, EncodeSettings};
use drkit::pipeline::keys::{parse_recipients, Identities};
use drkit::progress::NoProgress;
use drkit::store::WriteStore;
use drkit::verify::{check_part, VerifyError};
use tokio_util::sync::CancellationToken;

fn settings(keys: &Keys, compression: Compression) -> EncodeSettings {
    EncodeSettings {
        recipients: parse_recipients(&keys.recipient, "test").unwrap(),
        compression,
        zstd_level: 3,
        zstd_threads: 2,
        signing: None,
    }
}

/// Stores one 3 MiB part of compressible text and commits the backup.
async fn backup(
    store: &dyn WriteStore,
    keys: &Keys,
    compression: Compression,
) -> (Manifest, Vec<u8>) {
    let plain: Vec<u8> = (0..100_000)
        .flat_map(|i| format!("row {i} of the test data\n").into_bytes())
        .collect();
    let run = BackupRun::start(
        store,
        Engine::Postgres,
        "pipe",
        settings(keys, compression),
        CancellationToken::new(),
    )
    .unwrap();
    let spec = PartSpec {
        name: "db-x".into(),
        format: "test".into(),
        extension: "txt",
        database: Some("x".into()),
        section: None,
    };
    let body = plain.clone();
    run.store_part(spec, move |out: &mut dyn Write| Ok(out.write_all(&body)?))
        .await
        .unwrap();
    (
        run.commit("test".into(), Default::default()).await.unwrap(),
        plain,
    )
}

/// `check_part` of the backup's first part, decrypting it with `ids` and the engines'
/// content checks (as `verify --identity` does).
async fn decrypt_first(
    store: &dyn drkit::store::ReadStore,
    m: &Manifest,
    ids: &Identities,
) -> Result<(), VerifyError> {
    check_part(
        store,
        m,
        &m.parts[0],
        Some(drkit::engine::registry::decrypt(ids)),
        &NoProgress,
    )
    .await
}

fn part_key(m: &Manifest) -> String {
    m.backup_ref().part_key(&m.parts[0].file)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_part_verifies_with_and_without_the_key() {
    for compression in [Compression::Zstd, Compression::None] {
        let (t, keys) = (TestStore::s3(), Keys::generate());
        let store = t.open().await;
        let (m, plain) = backup(store.as_ref(), &keys, compression).await;
        assert_eq!(m.parts[0].plaintext_bytes, plain.len() as u64);
        if compression == Compression::Zstd {
            assert!(
                m.parts[0].ciphertext_bytes < plain.len() as u64 / 4,
                "zstd did not compress"
            );
        }
        let ids = Identities::from_file(&keys.identity).unwrap();
        check_part(store.as_ref(), &m, &m.parts[0], None, &NoProgress)
            .await
            .unwrap();
        decrypt_first(store.as_ref(), &m, &ids).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_producer_commits_nothing() {
    let (t, keys) = (TestStore::s3(), Keys::generate());
    let store = t.open().await;
    let run = BackupRun::start(
        store.as_ref(),
        Engine::Postgres,
        "pipe",
        settings(&keys, Compression::Zstd),
        CancellationToken::new(),
    )
    .unwrap();
    let spec = PartSpec {
        name: "db-x".into(),
        format: "test".into(),
        extension: "txt",
        database: None,
        section: None,
    };
    let err = run
        .store_part(spec, |out: &mut dyn Write| -> Result<(), _> {
            out.write_all(&vec![7u8; 20 << 20])?;
            Err("the dump tool died".into())
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, EncodeError::Source(_)), "{err}");
    assert_eq!(err.to_string(), "the dump tool died");
    assert!(t.files().is_empty(), "left behind: {:?}", t.files());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_foreign_key_is_named_as_such() {
    let (t, keys, other) = (TestStore::local(), Keys::generate(), Keys::generate());
    let store = t.open().await;
    let (m, _) = backup(store.as_ref(), &keys, Compression::Zstd).await;
    let wrong = Identities::from_file(&other.identity).unwrap();
    let err = decrypt_first(store.as_ref(), &m, &wrong).await.unwrap_err();
    assert!(matches!(err, VerifyError::WrongKey { .. }), "{err}");
    assert!(
        !err.is_check_failure(),
        "a wrong key is an operator error, not a bad backup"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&keys.recipient) && msg.contains("--identity"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_fails_the_check() {
    let (t, keys) = (TestStore::s3(), Keys::generate());
    let store = t.open().await;
    let (m, _) = backup(store.as_ref(), &keys, Compression::Zstd).await;
    let path = t.object_path(&part_key(&m));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    let err = check_part(store.as_ref(), &m, &m.parts[0], None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::HashMismatch { .. }), "{err}");
    assert!(err.is_check_failure());
    let ids = Identities::from_file(&keys.identity).unwrap();
    let err = decrypt_first(store.as_ref(), &m, &ids).await.unwrap_err();
    assert!(err.is_check_failure(), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_object_fails_the_check() {
    let (t, keys) = (TestStore::local(), Keys::generate());
    let store = t.open().await;
    let (m, _) = backup(store.as_ref(), &keys, Compression::Zstd).await;
    let path = t.object_path(&part_key(&m));
    let len = std::fs::metadata(&path).unwrap().len();
    // Cut exactly at an age chunk boundary past the header: only EOF handling catches it.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 1000).unwrap();

    let err = check_part(store.as_ref(), &m, &m.parts[0], None, &NoProgress)
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::SizeMismatch { .. }), "{err}");
    let ids = Identities::from_file(&keys.identity).unwrap();
    let err = decrypt_first(store.as_ref(), &m, &ids).await.unwrap_err();
    assert!(err.is_check_failure(), "{err}");
    assert!(err.to_string().contains("use another backup"), "{err}");
}

/// A part that is intact and decrypts but whose content is not what its format promises
/// (a "raft snapshot" that is not one, a Native result that ends in an exception) fails
/// `verify --identity` as a check (exit 1), while the keyless integrity check, which cannot
/// look inside, passes.
#[tokio::test]
async fn content_check_catches_a_snapshot_that_is_not_one() {
    content_check_case(
        Engine::Vault,
        PartFormat::VaultSnapshot,
        b"not a gzip'd tar at all",
        "not a gzip'd tar",
    )
    .await;
}

#[tokio::test]
async fn content_check_catches_a_native_result_that_ends_in_an_exception() {
    let mut native = vec![1u8, 2];
    native.extend(b"\x01x\x05UInt8\x01\x02");
    native.extend(b"Code: 60, e.displayText() = DB::Exception: Table t doesn't exist.\n");
    content_check_case(
        Engine::Clickhouse,
        PartFormat::ClickhouseNative,
        &native,
        "Table t doesn't exist",
    )
    .await;
}

async fn content_check_case(engine: Engine, format: PartFormat, content: &[u8], expected: &str) {
    let store = TestStore::s3();
    let opened = store.open().await;
    let keys = Keys::generate();
    let run = BackupRun::start(
        opened.as_ref(),
        engine,
        "pipe",
        settings(&keys, Compression::Zstd),
        CancellationToken::new(),
    )
    .unwrap();
    let spec = PartSpec {
        name: "p".into(),
        format,
        extension: "bin",
        database: None,
        section: None,
    };
    let content = content.to_vec();
    run.store_part(
        spec,
        move |out: &mut dyn Write| Ok(out.write_all(&content)?),
    )
    .await
    .unwrap();
    let m = run
        .commit("2.7.2".into(), Default::default())
        .await
        .unwrap();
    let ids = Identities::from_file(&keys.identity).unwrap();
    check_part(opened.as_ref(), &m, &m.parts[0], None, &NoProgress)
        .await
        .expect("integrity alone passes");
    let err = decrypt_first(opened.as_ref(), &m, &ids).await.unwrap_err();
    assert!(matches!(err, VerifyError::BadContent { .. }), "{err}");
    assert!(err.is_check_failure());
    assert!(err.to_string().contains(expected), "{err}");
}
