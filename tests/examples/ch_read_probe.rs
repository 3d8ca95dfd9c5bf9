//! Where does a ClickHouse dump spend its time? Reads one table's Native result three ways:
//! bytes only (async), through the sync bridge, and through the bridge plus the walker.
//! Usage: cargo run --release -p dr-tests --example ch-read-probe -- DB.TABLE
use std::io::Read;
use std::time::Instant;

use futures::TryStreamExt;
use tokio_util::io::{StreamReader, SyncIoBridge};

#[tokio::main]
async fn main() {
    let table = std::env::args().nth(1).expect("DB.TABLE");
    let env = dr_tests::services();
    let client = reqwest::Client::new();
    let fetch = || {
        client
            .post(&env["CLICKHOUSE_URL"])
            .basic_auth(&env["CLICKHOUSE_USER"], Some(&env["CLICKHOUSE_PASSWORD"]))
            .body(format!("SELECT * FROM {table} FORMAT Native"))
            .send()
    };
    let t = Instant::now();
    let mut stream = fetch().await.unwrap().bytes_stream();
    let (mut bytes, mut chunks) = (0usize, 0usize);
    while let Some(c) = stream.try_next().await.unwrap() {
        bytes += c.len();
        chunks += 1;
    }
    println!(
        "async bytes only: {bytes} bytes in {chunks} chunks, {:.2} s",
        t.elapsed().as_secs_f64()
    );

    for walk in [false, true] {
        let t = Instant::now();
        let body = fetch()
            .await
            .unwrap()
            .bytes_stream()
            .map_err(std::io::Error::other);
        let mut reader = SyncIoBridge::new(StreamReader::new(body));
        let n = tokio::task::spawn_blocking(move || {
            if walk {
                drkit::engine::clickhouse::native::walk(
                    std::io::BufReader::with_capacity(256 * 1024, reader),
                    |_| {},
                )
                .unwrap()
                .rows
            } else {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    let n = reader.read(&mut buf).unwrap();
                    if n == 0 {
                        break total;
                    }
                    total += n as u64;
                }
            }
        })
        .await
        .unwrap();
        println!(
            "sync bridge{}: {n}, {:.2} s",
            if walk { " + walk (rows)" } else { " (bytes)" },
            t.elapsed().as_secs_f64()
        );
    }
}
