//! Seeds a store with many synthetic backups (a manifest and one small part each, dated
//! one per hour going back from now) for the list/prune benchmark.
//!
//!   cargo run --release -p dr-tests --example seed-backups -- s3://dr-test/bench-prune 10000

use chrono::{Duration, Utc};
use drkit::store::{self, DeleteStore};
use futures::stream::{self, StreamExt};

async fn seed(store: &dyn DeleteStore, target: &str, hours_ago: i64) {
    dr_tests::write_synthetic_backup(store, target, Utc::now() - Duration::hours(hours_ago), true)
        .await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, count) = match args.as_slice() {
        [_, url, count] => (url.clone(), count.parse::<i64>().expect("count")),
        _ => panic!("usage: seed-backups STORE_URL COUNT"),
    };
    let store = store::open(
        &url.parse().expect("store url"),
        &Default::default(),
        store::OpenMode::CreateIfMissing,
    )
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
