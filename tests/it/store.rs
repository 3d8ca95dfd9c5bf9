//! The store conformance suite, run against S3 (s3s-fs over HTTP), Azure Blob (Azurite),
//! GCS (fake-gcs-server) and the local directory.

use std::sync::Arc;

use bytes::Bytes;
use dr_tests::{noise, unique, TestStore};
use drkit::store::{BodyChunk, DeleteStore, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Sends `bytes` in 1 MiB chunks, then `End` if asked.
fn feed(bytes: Vec<u8>, end: bool) -> mpsc::Receiver<BodyChunk> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for chunk in bytes.chunks(1 << 20) {
            if tx
                .send(BodyChunk::Data(Bytes::copy_from_slice(chunk)))
                .await
                .is_err()
            {
                return;
            }
        }
        if end {
            let _ = tx.send(BodyChunk::End).await;
        }
    });
    rx
}

async fn get_all(store: &dyn DeleteStore, key: &str) -> Vec<u8> {
    store.get_bytes(key, u64::MAX).await.expect("get")
}

async fn streams_round_trip_across_parts(t: TestStore) {
    let store = t.open().await;
    // 20 MiB + a tail: three multipart parts on S3, the last one short.
    let body = noise(20 * 1024 * 1024 + 12345, 1);
    let n = store
        .put_stream(
            "a/big.bin",
            feed(body.clone(), true),
            &CancellationToken::new(),
        )
        .await
        .expect("put_stream");
    assert_eq!(n, body.len() as u64);
    assert!(
        get_all(store.as_ref(), "a/big.bin").await == body,
        "content differs"
    );
    let listed = store.list("a/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "a/big.bin");
    assert_eq!(listed[0].size, body.len() as u64);
}

async fn small_streams_and_bytes(t: TestStore) {
    let store = t.open().await;
    store
        .put_bytes("m/manifest.json", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(get_all(store.as_ref(), "m/manifest.json").await, b"{}");
    let n = store
        .put_stream(
            "m/small",
            feed(b"tiny".to_vec(), true),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(n, 4);
    assert_eq!(get_all(store.as_ref(), "m/small").await, b"tiny");
    let empty = store
        .put_stream("m/empty", feed(Vec::new(), true), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(empty, 0);
    assert!(get_all(store.as_ref(), "m/empty").await.is_empty());
}

async fn stream_without_end_leaves_nothing(t: TestStore) {
    let uploads = dr_tests::s3_uploads();
    let store = t.open().await;
    // Both the single-request path and the multipart path.
    for len in [1000, 18 * 1024 * 1024] {
        let err = store
            .put_stream(
                "x/partial",
                feed(noise(len, 2), false),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Incomplete { .. }), "{err}");
    }
    assert!(store.list("").await.unwrap().is_empty());
    assert!(t.files().is_empty(), "left behind: {:?}", t.files());
    dr_tests::assert_no_upload_leaked(&uploads).await;
}

async fn cancellation_aborts_the_upload(t: TestStore) {
    let uploads = dr_tests::s3_uploads();
    let store: Arc<dyn DeleteStore> = t.open().await;
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel(4);
    let upload = {
        let (store, cancel) = (store.clone(), cancel.clone());
        tokio::spawn(async move { store.put_stream("c/obj", rx, &cancel).await })
    };
    for chunk in noise(12 * 1024 * 1024, 3).chunks(1 << 20) {
        tx.send(BodyChunk::Data(Bytes::copy_from_slice(chunk)))
            .await
            .unwrap();
    }
    cancel.cancel();
    let err = upload.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Cancelled { .. }), "{err}");
    drop(tx);
    assert!(store.list("").await.unwrap().is_empty());
    assert!(t.files().is_empty(), "left behind: {:?}", t.files());
    dr_tests::assert_no_upload_leaked(&uploads).await;
}

async fn missing_objects_are_not_found(t: TestStore) {
    let store = t.open().await;
    let err = store
        .get("no/such/key")
        .await
        .err()
        .expect("missing key must fail");
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("no/such/key"));
}

async fn delete_is_idempotent(t: TestStore) {
    let store = t.open().await;
    store
        .put_bytes("d/one", Bytes::from_static(b"1"))
        .await
        .unwrap();
    store
        .put_bytes("d/two", Bytes::from_static(b"2"))
        .await
        .unwrap();
    store.delete("d/one").await.unwrap();
    store.delete("d/one").await.unwrap();
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["d/two".to_string()]);
}

async fn list_respects_prefixes(t: TestStore) {
    let store = t.open().await;
    for key in ["pg/a/1", "pg/ab/2", "pg/b/3", "vault/a/4"] {
        store
            .put_bytes(key, Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let keys = |p: &'static str| {
        let store = store.clone();
        async move {
            store
                .list(p)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(keys("pg/a/").await, vec!["pg/a/1"]);
    assert_eq!(keys("pg/a").await, vec!["pg/a/1", "pg/ab/2"]);
    assert_eq!(keys("").await.len(), 4);
    assert!(keys("nothing/").await.is_empty());
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod s3 {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::s3()).await })*
        }
        mod local {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::local()).await })*
        }
        mod azure {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::azure()).await })*
        }
        mod gcs {
            $(#[tokio::test(flavor = "multi_thread")]
            async fn $test() { super::$test(dr_tests::TestStore::gcs()).await })*
        }
    };
}

conformance!(
    streams_round_trip_across_parts,
    small_streams_and_bytes,
    stream_without_end_leaves_nothing,
    cancellation_aborts_the_upload,
    missing_objects_are_not_found,
    delete_is_idempotent,
    list_respects_prefixes,
);

#[tokio::test]
async fn unreachable_s3_is_reported_as_such() {
    let store = drkit::store::s3::S3Store::new(
        dr_tests::s3_client("http://127.0.0.1:1"),
        "bucket",
        &unique("p"),
    );
    let err = drkit::store::ReadStore::list(&store, "").await.unwrap_err();
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string().contains("cannot reach s3://bucket/"),
        "{err}"
    );
}

/// A key that could leave its directory is refused before any request is built: the
/// client points at a closed port, so a request that went out would be `Unreachable`.
#[tokio::test]
async fn unsafe_keys_never_reach_the_s3_server() {
    let store = drkit::store::s3::S3Store::new(
        dr_tests::s3_client("http://127.0.0.1:1"),
        "bucket",
        &unique("p"),
    );
    for key in ["a/../x", "/etc/passwd", "a/a%2F..%2Fb", "a/x\ny"] {
        let err = match drkit::store::ReadStore::get(&store, key).await {
            Ok(_) => panic!("{key:?} was read"),
            Err(e) => e,
        };
        assert!(matches!(err, StoreError::BadKey { .. }), "{key:?}: {err}");
        let err = drkit::store::WriteStore::put_bytes(&store, key, bytes::Bytes::new())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::BadKey { .. }), "{key:?}: {err}");
    }
}

/// The Azure and GCS stores, pointed at a closed port: a listing is `Unreachable`, naming
/// the store, and a key that could leave its directory is refused before any request.
#[tokio::test]
async fn cloud_stores_refuse_unsafe_keys_and_name_an_unreachable_endpoint() {
    let closed = |name: &str| {
        match name {
        "AZURE_STORAGE_CONNECTION_STRING" => Some(
            "AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1"
                .to_string(),
        ),
        "STORAGE_EMULATOR_HOST" => Some("127.0.0.1:1".to_string()),
        _ => None,
    }
    };
    let prefix = unique("p");
    let stores: Vec<Arc<dyn DeleteStore>> = vec![
        Arc::new(drkit::store::azure::AzureStore::from_vars("c", &prefix, &closed, "").unwrap()),
        Arc::new(drkit::store::gcs::GcsStore::from_vars("b", &prefix, &closed, None).unwrap()),
    ];
    for store in stores {
        let err = store.list("").await.unwrap_err();
        assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&prefix), "{err}");
        for key in ["a/../x", "/etc/passwd", "a/a%2F..%2Fb", "a/x\ny"] {
            let err = match store.get(key).await {
                Ok(_) => panic!("{key:?} was read"),
                Err(e) => e,
            };
            assert!(matches!(err, StoreError::BadKey { .. }), "{key:?}: {err}");
            let err = store.put_bytes(key, Bytes::new()).await.unwrap_err();
            assert!(matches!(err, StoreError::BadKey { .. }), "{key:?}: {err}");
            let err = store.delete(key).await.unwrap_err();
            assert!(matches!(err, StoreError::BadKey { .. }), "{key:?}: {err}");
        }
    }
}

/// Without any account setting, an Azure store says which variables to set.
#[test]
fn an_azure_store_without_an_account_says_what_to_set() {
    let err =
        drkit::store::azure::AzureStore::from_vars("c", "p", &|_| None, "DR_COPY_").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("DR_COPY_AZURE_STORAGE_CONNECTION_STRING"),
        "{msg}"
    );
    assert!(msg.contains("az://c/p"), "{msg}");
}

/// A hostile (or broken) GCS endpoint: an error answer of 20 MB gives a one-line error, and
/// a 20 MB listing page is refused instead of parsed.
#[tokio::test]
async fn a_gcs_server_sending_absurd_answers_gets_bounded_errors() {
    let url = dr_tests::fake_http_with_headers(|_, path, _| {
        let huge = 20 * 1024 * 1024;
        if path.starts_with("/storage/v1/b/deny/") {
            (403, vec![], vec![b'x'; huge])
        } else {
            let mut body = br#"{"items":["#.to_vec();
            body.resize(huge, b' ');
            (200, vec![("Content-Type", "application/json".into())], body)
        }
    })
    .await;
    let env = |name: &str| (name == "STORAGE_EMULATOR_HOST").then(|| url.clone());
    let deny = drkit::store::gcs::GcsStore::from_vars("deny", "p", &env, None).unwrap();
    let err = drkit::store::ReadStore::list(&deny, "").await.unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err}");
    assert!(
        err.to_string().len() < 1000,
        "{} bytes of error",
        err.to_string().len()
    );
    let huge = drkit::store::gcs::GcsStore::from_vars("huge", "p", &env, None).unwrap();
    let err = drkit::store::ReadStore::list(&huge, "").await.unwrap_err();
    assert!(err.to_string().contains("larger than 16 MiB"), "{err}");
}
