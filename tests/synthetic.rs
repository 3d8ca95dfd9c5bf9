//! Backups written by hand into a store, for formats and states the worker never writes
//! (old format versions, forged or damaged manifests), and signatures made for them.

use super::*;

/// Writes a backup as the worker lays it out (one small part, then the manifest unless
/// `complete` is false), started at `started`: for retention tests and benchmarks that need
/// many backups quickly.
pub async fn write_synthetic_backup(
    store: &dyn drkit::store::DeleteStore,
    target: &str,
    started: chrono::DateTime<chrono::Utc>,
    complete: bool,
) -> drkit::catalog::BackupRef {
    use drkit::catalog::{
        BackupId, BackupRef, Compression, Manifest, Part, TableCount, FORMAT_VERSION,
    };
    let b = BackupRef {
        engine: "postgres".into(),
        target: target.into(),
        id: BackupId::new(started),
    };
    let file = "db-app.pgdump.zst.age";
    let part = vec![0u8; 64];
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&part))
    };
    store
        .put_bytes(&b.part_key(file), bytes::Bytes::from(part))
        .await
        .expect("put part");
    if complete {
        let m = Manifest {
            format_version: FORMAT_VERSION,
            id: b.id.clone(),
            engine: b.engine.as_str().into(),
            target: b.target.clone(),
            started_at: started,
            finished_at: started,
            tool: "synthetic".into(),
            server_version: "15".into(),
            // Shaped like a real recipient: the catalog checks manifests before trusting them.
            recipients: vec![format!("age1{}", "q".repeat(58))],
            parts: vec![Part {
                name: "db-app".into(),
                file: file.into(),
                format: "pg_dump-custom".into(),
                compression: Compression::Zstd,
                ciphertext_bytes: 64,
                // The real sum: synthetic backups pass an integrity-only verify.
                ciphertext_sha256: sha,
                header_sha256: None,
                plaintext_bytes: 128,
                database: Some("app".into()),
                tables: vec![TableCount {
                    schema: "public".into(),
                    name: "users".into(),
                    rows: 42,
                }],
                section: None,
                partition: None,
                from: None,
            }],
            facts: Default::default(),
            base: None,
        };
        let json = serde_json::to_vec(&m).expect("json");
        sign_manifest(store, &b, &json).await;
        store
            .put_bytes(&b.manifest_key(), bytes::Bytes::from(json))
            .await
            .expect("put manifest");
    }
    b
}

/// Writes `manifest.json.minisig` for these manifest bytes with the suite's key, as the
/// worker does before it commits.
pub async fn sign_manifest(
    store: &dyn drkit::store::DeleteStore,
    b: &drkit::catalog::BackupRef,
    manifest: &[u8],
) {
    let key = drkit::catalog::SigningKey::from_file(&suite_signer().key_file).expect("suite key");
    let sig = key.sign(manifest, b).expect("sign");
    store
        .put_bytes(&b.signature_key(), bytes::Bytes::from(sig))
        .await
        .expect("put signature");
}
