#!/usr/bin/env python3
"""ClickHouse dump benchmark, side by side with the plain HTTP read, in one run.

Builds (once per size) a SigNoz-logs-like table (timestamps, service names, a message,
attribute arrays, trace ids) of ROWS rows in database bench_ch, then measures wall time and
peak memory (RSS of the process tree) of:

  curl '…?query=SELECT <columns> FROM t FORMAT Native' > /dev/null     reading it, nothing else
  worker backup clickhouse (local store)                                walk + zstd + age + store

Usage (services from scripts/services.sh; builds release binaries):

  scripts/bench-clickhouse.py [ROWS …]        default: 1000000 20000000
"""
import os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, measure  # noqa: E402

AUTH = f"{ENV['CLICKHOUSE_USER']}:{ENV['CLICKHOUSE_PASSWORD']}"
URL = ENV["CLICKHOUSE_URL"]
COLUMNS = "ts, service, severity, body, attr_keys, attr_values, trace_id"


def ch(sql):
    return subprocess.run(["curl", "-sS", "--fail-with-body", "-u", AUTH, URL, "--data-binary", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


def build(table, rows):
    if ch(f"SELECT count() FROM system.tables WHERE database = 'bench_ch' AND name = '{table}'") == "1":
        return
    print(f"building bench_ch.{table} ({rows} rows; once)…", file=sys.stderr)
    ch("CREATE DATABASE IF NOT EXISTS bench_ch")
    ch(f"""CREATE TABLE bench_ch.{table}_building (ts DateTime, service String, severity LowCardinality(String),
           body String, attr_keys Array(String), attr_values Array(String), trace_id FixedString(32))
           ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (service, ts)""")
    batch = 5_000_000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        ch(f"""INSERT INTO bench_ch.{table}_building SELECT
                 toDateTime('2026-11-01 00:00:00') + intDiv(number, 20),
                 concat('service-', toString(number % 23)),
                 ['INFO', 'WARN', 'ERROR', 'DEBUG'][number % 4 + 1],
                 concat('request ', toString(number), ' handled in ', toString(number % 977), ' ms for user ',
                        toString(cityHash64(number) % 100000), ' path /api/v1/items/', toString(number % 5000)),
                 ['http.method', 'http.status_code', 'k8s.pod.name'],
                 [['GET', 'POST'][number % 2 + 1], toString(200 + number % 5 * 100), concat('pod-', toString(number % 61))],
                 hex(MD5(toString(number)))
               FROM numbers({start}, {n})""")
    ch(f"RENAME TABLE bench_ch.{table}_building TO bench_ch.{table}")


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 20_000_000]
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    worker = os.path.join(ROOT, "target", "release", "worker")
    key = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = next(l.split(": ")[1] for l in key.splitlines() if l.startswith("# public key"))
    results = []
    for rows in sizes:
        table = f"logs_{rows}"
        build(table, rows)
        native = int(ch(f"SELECT count() FROM bench_ch.{table}"))
        assert native == rows, (native, rows)
        plain = measure(f"curl -sS --fail -u '{AUTH}' '{URL}' --data-binary "
                        f"'SELECT {COLUMNS} FROM bench_ch.{table} FORMAT Native' > /dev/null")
        with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as store:
            # One table per run: the others are excluded.
            ours = measure(f"DR_LOG_FORMAT=json {worker} backup clickhouse --target bench --database bench_ch "
                           + " ".join(f"--exclude 'bench_ch.logs_{r}'" for r in sizes if r != rows)
                           + " --exclude 'bench_ch.*_building'"
                           + f" --store file://{store} -r {recipient} > /dev/null")
            stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs)
        results.append((rows, plain, ours, stored))
    print(f"\n{'rows':>12}  {'curl Native':>12}  {'worker':>12}  {'ratio':>6}  {'worker peak RSS':>16}  {'stored':>10}")
    for rows, plain, ours, stored in results:
        print(f"{rows:>12}  {plain[0]:>10.1f} s  {ours[0]:>10.1f} s  {ours[0] / plain[0]:>5.2f}×  "
              f"{ours[2]:>12.1f} MiB  {stored / 1048576:>6.1f} MiB")


if __name__ == "__main__":
    main()
