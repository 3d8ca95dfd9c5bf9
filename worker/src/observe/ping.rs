//! A dead man's switch in the healthchecks.io protocol (also spoken by self-hosted
//! healthchecks, Cronitor-compatible endpoints and Uptime Kuma push monitors): `GET
//! <url>/start?rid=<uuid>` when a run starts, `POST <url>/<exit code>?rid=<uuid>` with the
//! log's tail when it ends. The monitor pages when the end ping is late or non-zero, so a
//! CronJob that stops running is noticed too.
//!
//! The URL (`DR_PING_URL`, from a Secret) is a credential: it is never logged. Each ping
//! has a few attempts within a fixed deadline, and a failure is a warning: the backup's own
//! result stands.

use std::time::Duration;

/// Body limit when the server does not announce one (healthchecks' default).
pub const DEFAULT_BODY_LIMIT: usize = 10_000;

/// The environment variable holding the URL.
pub const ENV_URL: &str = "DR_PING_URL";
/// The environment variable holding the deadline of one ping (e.g. `10s`).
pub const ENV_TIMEOUT: &str = "DR_PING_TIMEOUT";

/// Attempts per ping within its deadline.
const ATTEMPTS: u32 = 3;

/// One run's pings.
#[derive(Debug, Clone)]
pub struct Ping {
    base: String,
    rid: String,
    deadline: Duration,
    client: reqwest::Client,
}

impl Ping {
    /// The ping of this run, when `DR_PING_URL` is set.
    ///
    /// # Errors
    /// A URL that is not http(s), or a `DR_PING_TIMEOUT` that does not parse; the message
    /// never holds the URL.
    pub fn from_env() -> Result<Option<Ping>, String> {
        let Some(url) = std::env::var(ENV_URL).ok().filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let deadline = match std::env::var(ENV_TIMEOUT) {
            Ok(t) => humantime::parse_duration(&t)
                .map_err(|e| format!("{ENV_TIMEOUT}={t:?} is not a duration: {e}"))?,
            Err(_) => Duration::from_secs(10),
        };
        Ping::new(url.trim(), deadline).map(Some)
    }

    /// A ping to `url` (without its `/start` or exit-code suffix).
    ///
    /// # Errors
    /// A URL that is not http(s) (the message does not repeat it).
    pub fn new(url: &str, deadline: Duration) -> Result<Ping, String> {
        let parsed = url::Url::parse(url)
            .map_err(|e| format!("the ping URL ({ENV_URL}) does not parse: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.query().is_some() {
            return Err(format!(
                "the ping URL ({ENV_URL}) must be http(s)://… without a query"
            ));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3).min(deadline))
            .timeout(deadline / ATTEMPTS)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Ping {
            base: url.trim_end_matches('/').to_string(),
            rid: run_id(),
            deadline,
            client,
        })
    }

    /// This run's id (`rid`), which pairs the start and end pings.
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// Signals the start; returns the body limit the server announces (`Ping-Body-Limit`).
    pub async fn start(&self) -> usize {
        let url = format!("{}/start?rid={}", self.base, self.rid);
        match self.send(|c| c.get(&url)).await {
            Some(response) => response
                .headers()
                .get("Ping-Body-Limit")
                .and_then(|v| v.to_str().ok()?.trim().parse().ok())
                .unwrap_or(DEFAULT_BODY_LIMIT),
            None => DEFAULT_BODY_LIMIT,
        }
    }

    /// Signals the end with the exit code and `body` (already cut to the limit).
    pub async fn finish(&self, exit_code: u8, body: Vec<u8>) {
        let url = format!("{}/{exit_code}?rid={}", self.base, self.rid);
        if self
            .send(|c| c.post(&url).body(body.clone()))
            .await
            .is_some()
        {
            tracing::info!(exit_code, rid = %self.rid, "end pinged");
        }
    }

    /// Sends with a few attempts inside the deadline; `None` (after a warning) when none
    /// got a 2xx answer. Errors are described without the URL.
    async fn send(
        &self,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Option<reqwest::Response> {
        let attempts = async {
            let mut last = String::new();
            for attempt in 0..ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                match request(&self.client).send().await {
                    Ok(r) if r.status().is_success() => return Ok(r),
                    Ok(r) => last = format!("the server answered {}", r.status()),
                    Err(e) if e.is_timeout() => last = "no answer in time".into(),
                    Err(e) if e.is_connect() => last = "cannot connect".into(),
                    Err(_) => last = "the request failed".into(),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(self.deadline, attempts).await {
            Ok(Ok(r)) => Some(r),
            Ok(Err(why)) => {
                tracing::warn!(reason = %why, "could not ping the ping URL ({ENV_URL}); the backup's own result stands");
                None
            }
            Err(_) => {
                tracing::warn!(deadline = ?self.deadline, "no answer from the ping URL ({ENV_URL}) in time; the backup's own result stands");
                None
            }
        }
    }
}

/// A random UUID (version 4) as text.
fn run_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_uuids() {
        let a = run_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, run_id());
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        let err = Ping::new("ftp://hc/secret-uuid", Duration::from_secs(1)).unwrap_err();
        assert!(!err.contains("secret-uuid"), "{err}");
        assert!(Ping::new("https://hc-ping.com/uuid", Duration::from_secs(1)).is_ok());
    }
}
