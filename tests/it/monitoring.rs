//! Monitoring on the real tools: the alert rules under `promtool` (check and unit tests),
//! the PrometheusRule equal to the plain rules file, the Grafana dashboard's queries on the
//! real Prometheus, metrics pushed to the real Pushgateway (a failure keeps the last
//! success; prune adds its metric without erasing them), Prometheus firing
//! `KubeDrBackupFailed` from those pushes, and the dead man's switch against a local
//! endpoint (start and end share a rid, the exit code and log tail arrive, the body limit
//! holds, the URL never shows, a hanging endpoint costs at most its timeout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dr_tests::*;
use drkit::observe::push;

fn monitoring_dir() -> std::path::PathBuf {
    repo_root().join("manifests/monitoring")
}

fn promtool(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("promtool (Debian prometheus, installed by scripts/services.sh)");
    eprintln!(
        "$ promtool {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_rules_pass_promtool_and_the_prometheusrule_holds_the_same_groups() {
    assert!(promtool(&["check", "rules", "rules.yml"]).status.success());
    let tests = promtool(&["test", "rules", "rules.test.yml"]);
    assert!(tests.status.success());
    assert!(String::from_utf8_lossy(&tests.stdout).contains("SUCCESS"));

    let read = |f: &str| -> serde_yaml::Value {
        serde_yaml::from_str(&std::fs::read_to_string(monitoring_dir().join(f)).unwrap()).unwrap()
    };
    let plain = read("rules.yml");
    let operator = read("prometheusrule.yaml");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], plain["groups"],
        "prometheusrule.yaml differs from rules.yml: run python3 scripts/monitoring-rules.py"
    );
    // Every alert of ours names what to run next and carries engine and target.
    for group in plain["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            let description = rule["annotations"]["description"].as_str().unwrap();
            assert!(rule["annotations"]["summary"].is_string(), "{name}");
            assert!(description.contains("kubectl"), "{name}: {description}");
            if name.starts_with("KubeDr") {
                let expr = rule["expr"].as_str().unwrap();
                assert!(expr.contains("by (engine, target)"), "{name}: {expr}");
            }
        }
    }
}

/// Instant query on the test Prometheus.
async fn prometheus_query(query: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{}/api/v1/query", svc("DR_TEST_PROMETHEUS")))
        .query(&[("query", query)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_dashboards_queries_are_valid_on_the_real_prometheus() {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let known = [
        push::LAST_ATTEMPT,
        push::LAST_SUCCESS,
        push::SUCCESS,
        push::DURATION,
        push::STORED_BYTES,
        push::ROWS,
        push::PRUNE_DELETED,
    ];
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let metrics: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("kube_dr_"))
                .collect();
            assert!(!metrics.is_empty(), "{expr}");
            for m in metrics {
                assert!(known.contains(&m), "unknown metric {m} in {expr}");
            }
            let query = expr.replace("$engine", ".*").replace("$target", ".*");
            let answer = prometheus_query(&query).await;
            assert_eq!(answer["status"], "success", "{query}: {answer}");
        }
    }
}

/// The Pushgateway's current value of each kube_dr metric of one target.
async fn pushed(target: &str) -> HashMap<String, f64> {
    pushed_lines("kube_dr_", target)
        .await
        .iter()
        .map(|l| {
            assert!(
                l.contains("job=\"kube_dr\"") && l.contains("engine=\"command\""),
                "{l}"
            );
            let (name, value) = l.split_once('{').unwrap();
            let value = value.rsplit_once(' ').unwrap().1;
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_pushes_every_metric_and_a_failure_keeps_the_last_success() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let target = unique("mon");
    let gateway = svc("DR_TEST_PUSHGATEWAY");
    let env = [("DR_PUSHGATEWAY_URL", gateway.as_str())];

    let out = backup_command(&store, &keys, &target, &["sh", "-c", "seq 1 5000"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(stderr(&out).contains("metrics pushed"), "{}", stderr(&out));
    let first = pushed(&target).await;
    for name in [
        push::LAST_ATTEMPT,
        push::LAST_SUCCESS,
        push::SUCCESS,
        push::DURATION,
        push::STORED_BYTES,
        push::ROWS,
    ] {
        assert!(first.contains_key(name), "{name} missing: {first:?}");
    }
    assert_eq!(first[push::SUCCESS], 1.0);
    assert!(first[push::STORED_BYTES] > 0.0);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - first[push::LAST_SUCCESS]).abs() < 120.0, "{first:?}");

    std::thread::sleep(Duration::from_millis(1100));
    let out = backup_command(&store, &keys, &target, &["false"], &env);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let second = pushed(&target).await;
    assert_eq!(second[push::SUCCESS], 0.0);
    assert_eq!(
        second[push::LAST_SUCCESS],
        first[push::LAST_SUCCESS],
        "a failed attempt moved the last success"
    );
    assert_eq!(second[push::STORED_BYTES], first[push::STORED_BYTES]);
    assert!(second[push::LAST_ATTEMPT] > first[push::LAST_ATTEMPT]);

    // A second good backup, then a prune that deletes one: its metric joins the group and
    // the backup metrics stay.
    let out = backup_command(&store, &keys, &target, &["sh", "-c", "seq 1 10"], &env);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = run(
        "worker",
        &[
            "prune",
            "--keep-last",
            "1",
            "--store",
            store.url(),
            "--target",
            &target,
        ],
        &env,
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let after = pushed(&target).await;
    assert_eq!(after[push::PRUNE_DELETED], 1.0, "{after:?}");
    assert_eq!(after[push::SUCCESS], 1.0);
    assert!(after[push::LAST_SUCCESS] > first[push::LAST_SUCCESS]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_gateway_never_fails_the_backup() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    // A port nothing listens on: the gateway is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = backup_command(
        &store,
        &keys,
        "mon-down",
        &["echo", "hi"],
        &[("DR_PUSHGATEWAY_URL", &url)],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not push metrics"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        store
            .files()
            .iter()
            .filter(|f| f.ends_with("manifest.json"))
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_fires_backup_failed_from_the_pushed_metrics() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let target = unique("mon-fail");
    let gateway = svc("DR_TEST_PUSHGATEWAY");
    let out = backup_command(
        &store,
        &keys,
        &target,
        &["false"],
        &[("DR_PUSHGATEWAY_URL", &gateway)],
    );
    assert_eq!(code(&out), 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let alerts: serde_json::Value =
            reqwest::get(format!("{}/api/v1/alerts", svc("DR_TEST_PROMETHEUS")))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let firing = alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "KubeDrBackupFailed"
                    && a["labels"]["target"] == target.as_str()
            });
        if let Some(alert) = firing {
            if alert["state"] == "firing" {
                assert_eq!(alert["labels"]["engine"], "command");
                assert_eq!(alert["labels"]["severity"], "warning");
                assert!(alert["annotations"]["description"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("command/{target} failed")));
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "KubeDrBackupFailed never fired: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

type Requests = Arc<Mutex<Vec<(String, String, String)>>>;

/// A healthchecks-like endpoint that records each request and announces `limit`.
async fn ping_server(limit: usize) -> (String, Requests) {
    let seen: Requests = Arc::default();
    let log = seen.clone();
    let url = fake_http_with_headers(move |method, path, body| {
        log.lock()
            .unwrap()
            .push((method.to_string(), path.to_string(), body.to_string()));
        (
            200,
            vec![("Ping-Body-Limit", limit.to_string())],
            b"OK".to_vec(),
        )
    })
    .await;
    (url, seen)
}

/// The rid of a ping path (`…?rid=…`).
fn rid(path: &str) -> &str {
    path.split_once("?rid=").map(|(_, r)| r).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dead_mans_switch_pings_start_and_end_with_the_exit_code_and_log_tail() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    let (server, seen) = ping_server(10_000).await;
    let url = format!("{server}/secret-check-uuid");
    let out = backup_command(
        &store,
        &keys,
        "mon-ping",
        &["echo", "hi"],
        &[("DR_PING_URL", &url)],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("secret-check-uuid"),
        "{}",
        stderr(&out)
    );
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (start, end) = (&requests[0], &requests[1]);
    assert_eq!(start.0, "GET");
    assert!(
        start.1.starts_with("/secret-check-uuid/start?rid="),
        "{start:?}"
    );
    assert_eq!(end.0, "POST");
    assert!(end.1.starts_with("/secret-check-uuid/0?rid="), "{end:?}");
    assert_eq!(rid(&start.1), rid(&end.1));
    assert_eq!(rid(&start.1).len(), 36);
    assert!(end.2.contains("backup committed"), "{}", end.2);

    // A failing command: its exit code 2, its stderr in the tail, cut to the server's limit.
    let (server, seen) = ping_server(400).await;
    let url = format!("{server}/check-2");
    let noisy = "for i in $(seq 1 200); do echo \"noise $i\" >&2; done; echo 'boom: the state lock is held' >&2; exit 3";
    let out = backup_command(
        &store,
        &keys,
        "mon-ping",
        &["sh", "-c", noisy],
        &[("DR_PING_URL", &url)],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let requests = seen.lock().unwrap().clone();
    let end = requests.iter().find(|r| r.0 == "POST").expect("end ping");
    assert!(end.1.starts_with("/check-2/2?rid="), "{end:?}");
    assert!(end.2.len() <= 400, "{} bytes", end.2.len());
    assert!(end.2.contains("boom: the state lock is held"), "{}", end.2);

    // A limit smaller than the last line: the end of that line (the error), not nothing.
    let (server, seen) = ping_server(60).await;
    let url = format!("{server}/check-3");
    let long =
        "echo 'noise' >&2; echo \"boom: $(printf 'x%.0s' $(seq 1 300)) end-of-error\" >&2; exit 3";
    let out = backup_command(
        &store,
        &keys,
        "mon-ping",
        &["sh", "-c", long],
        &[("DR_PING_URL", &url)],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let requests = seen.lock().unwrap().clone();
    let end = requests.iter().find(|r| r.0 == "POST").expect("end ping");
    assert!(end.1.starts_with("/check-3/2?rid="), "{end:?}");
    assert!(!end.2.is_empty(), "the end ping's body is empty");
    assert!(end.2.len() <= 60, "{} bytes", end.2.len());
    let last_line = stderr(&out).lines().last().unwrap_or_default().to_string();
    assert!(end.2.trim_end().ends_with("end-of-error"), "{:?}", end.2);
    assert!(
        last_line.ends_with(end.2.trim_end()),
        "the body is not the end of the final error line {last_line:?}: {:?}",
        end.2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_ping_endpoint_costs_at_most_its_timeout() {
    let (store, keys) = (TestStore::local(), Keys::generate());
    // Accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hang", listener.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for sock in listener.incoming().take(8) {
            open.push(sock);
        }
        std::thread::sleep(Duration::from_secs(60));
    });
    let started = Instant::now();
    let out = backup_command(
        &store,
        &keys,
        "mon-hang",
        &["echo", "hi"],
        &[("DR_PING_URL", &url), ("DR_PING_TIMEOUT", "2s")],
    );
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the ping URL (DR_PING_URL)"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("/hang"), "{}", stderr(&out));
    // Two pings of at most 2 s each, plus the backup itself.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    drop(held);
}
