//! Seeds a store with many synthetic backups (a manifest and one small part each, dated
//! one per hour going back from now) for the list/prune benchmark.
//!
//!   cargo run --release -p dr-tests --example seed-backups -- s3://dr-test/bench-prune 10000

use bytes::Bytes;
use chrono::{Duration, Utc};
use drkit::catalog::{
    BackupId, BackupRef, Compression, Manifest, Part, TableCount, FORMAT_VERSION,
};
use drkit::store::{self, DeleteStore, WriteStore};
use futures::stream::{self, StreamExt};

async fn seed(store: &dyn DeleteStore, target: &str, hours_ago: i64) {
    let started = Utc::now() - Duration::hours(hours_ago);
    let b = BackupRef {
        engine: "postgres".into(),
        target: target.into(),
        id: BackupId::new(started),
    };
    let part = Part {
        name: "db-app".into(),
        file: "db-app.pgdump.zst.age".into(),
        format: "pg_dump-custom".into(),
        compression: Compression::Zstd,
        ciphertext_bytes: 64,
        ciphertext_sha256: "0".repeat(64),
        plaintext_bytes: 128,
        database: Some("app".into()),
        tables: vec![TableCount {
            schema: "public".into(),
            name: "users".into(),
            rows: 42,
        }],
    };
    let m = Manifest {
        format_version: FORMAT_VERSION,
        id: b.id.clone(),
        engine: b.engine.clone(),
        target: b.target.clone(),
        started_at: started,
        finished_at: started,
        tool: "seed-backups".into(),
        server_version: "15".into(),
        recipients: vec![],
        parts: vec![part],
    };
    let w: &dyn WriteStore = store;
    w.put_bytes(
        &b.part_key("db-app.pgdump.zst.age"),
        Bytes::from(vec![0u8; 64]),
    )
    .await
    .expect("put part");
    w.put_bytes(
        &b.manifest_key(),
        Bytes::from(serde_json::to_vec(&m).unwrap()),
    )
    .await
    .expect("put manifest");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, count) = match args.as_slice() {
        [_, url, count] => (url.clone(), count.parse::<i64>().expect("count")),
        _ => panic!("usage: seed-backups STORE_URL COUNT"),
    };
    let store = store::open(&url.parse().expect("store url"), &Default::default())
        .await
        .expect("open store");
    let started = std::time::Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(32, |i| {
            let store = store.clone();
            // Two targets, so the benchmark also exercises per-series planning.
            async move {
                seed(
                    store.as_ref(),
                    if i % 2 == 0 { "main" } else { "replica" },
                    i / 2,
                )
                .await
            }
        })
        .await;
    eprintln!(
        "seeded {count} backups in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}
