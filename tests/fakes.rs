//! Servers that misbehave on purpose, for what no real server here can do: a minimal
//! HTTP server (a Kubernetes API, a Vault that sends a broken snapshot) and a Redis primary
//! that breaks its sync.

/// A minimal HTTP/1.1 server on loopback for what no real server here can do (a Kubernetes
/// API, a Vault that sends a broken snapshot): `handler(method, path, body)` answers each
/// request with a status and a JSON body.
pub async fn fake_http<F>(handler: F) -> String
where
    F: Fn(&str, &str, &str) -> (u16, Vec<u8>) + Send + Sync + 'static,
{
    fake_http_with_headers(move |method, path, body| {
        let (status, reply) = handler(method, path, body);
        (
            status,
            vec![("Content-Type", "application/json".to_string())],
            reply,
        )
    })
    .await
}

/// [`fake_http`] whose handler also chooses the response headers.
pub async fn fake_http_with_headers<F>(handler: F) -> String
where
    F: Fn(&str, &str, &str) -> (u16, Vec<(&'static str, String)>, Vec<u8>) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body.
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_string(), body.to_string());
                        }
                    }
                };
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let (status, headers, reply) = handler(method, path, &body);
                let headers: String = headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}\r\n"))
                    .collect();
                let mut response = format!(
                    "HTTP/1.1 {status} X\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    reply.len()
                )
                .into_bytes();
                response.extend_from_slice(&reply);
                let _ = sock.write_all(&response).await;
            });
        }
    });
    format!("http://{addr}")
}

/// A fake Redis server on loopback for hostile-peer tests: it reads RESP commands and
/// answers PING, INFO (as Redis 7.0.15) and anything else with +OK, except `SYNC`, which
/// it hands to `on_sync` with the connection (whatever that writes is the "snapshot"; the
/// connection closes when it returns). Returns the server's `redis://` URL.
pub fn fake_redis(on_sync: fn(&mut std::net::TcpStream)) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let Some(n) = line.trim().strip_prefix('*') else {
                        continue;
                    };
                    let mut args = Vec::new();
                    for _ in 0..n.parse::<usize>().unwrap_or(0) {
                        let (mut len, mut arg) = (String::new(), String::new());
                        reader.read_line(&mut len).unwrap();
                        reader.read_line(&mut arg).unwrap();
                        args.push(arg.trim().to_uppercase());
                    }
                    let reply: &[u8] = match args.first().map(String::as_str) {
                        Some("PING") => b"+PONG\r\n",
                        Some("INFO") => b"$22\r\nredis_version:7.0.15\r\n\r\n",
                        Some("SYNC") => {
                            on_sync(&mut w);
                            return;
                        }
                        _ => b"+OK\r\n",
                    };
                    let _ = w.write_all(reply);
                }
            });
        }
    });
    url
}
