#!/usr/bin/env python3
"""ClickHouse dump benchmark, side by side with the plain HTTP read, in one run.

Builds (once per size) a SigNoz-logs-like table (timestamps, service names, a message,
attributes, trace ids) of ROWS rows in database bench_ch, then measures wall time and peak
memory (RSS of the process tree) of:

  curl '…?query=SELECT <columns> FROM t FORMAT Native' > /dev/null        reading it, nothing else
  curl '…?query=SELECT <columns> FROM t FORMAT TabSeparated' > /dev/null  the fallback format's cost
  curl … FORMAT Native | zstd -1 | age -r KEY | aws s3 cp - s3://…        the by-hand pipeline
  worker backup clickhouse (the same S3 server)                            walk + zstd + age + S3
  worker backup clickhouse of the same rows plus an aggregate-state column (TabSeparated)

The by-hand pipeline and the worker are run RUNS times (environment, default 3) in turns;
the table shows medians and the spread (min-max).

Usage (services from scripts/services.sh; builds release binaries):

  scripts/bench-clickhouse.py [--legacy] [ROWS …]    default: ClickHouse 26 (chdb), 1000000 20000000
  scripts/bench-clickhouse.py --incremental [--legacy] [ROWS_PER_DAY]    default 100000

--incremental builds a SigNoz-like store (logs, traces, metric samples; 30 daily
partitions, ROWS_PER_DAY logs and traces and twice as many samples a day) and runs 7
nights: a new day arrives, 2% of yesterday's rows change (a mutation), the oldest day is
dropped (TTL). Each night is backed up twice, `--incremental` into one store and full into
another; then the newest of each is restored, and the newest day alone (`--since`) of the
incremental one.
It prints stored bytes and time per night side by side, and the restores.

--legacy uses the Debian 18.16 server (attributes as two arrays: it has no Map); the default,
ClickHouse 26's engine behind scripts/chdb-front.py, stores them as SigNoz does, in a
Map(LowCardinality(String), String).
"""
import json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, bench_bucket, measure  # noqa: E402

AUTH = f"{ENV['CLICKHOUSE_USER']}:{ENV['CLICKHOUSE_PASSWORD']}"
LEGACY = "--legacy" in sys.argv
URL = ENV["CLICKHOUSE_URL"] if LEGACY else ENV["DR_CLICKHOUSE26_URL"]
COLUMNS = ("ts, service, severity, body, attr_keys, attr_values, trace_id" if LEGACY
           else "ts, service, severity, body, attributes, trace_id")


def ch(sql):
    return subprocess.run(["curl", "-sS", "--fail-with-body", "-u", AUTH, URL, "--data-binary", sql],
                          capture_output=True, text=True, check=True).stdout.strip()


KEYS = "['http.method', 'http.status_code', 'k8s.pod.name']"
VALUES = "[['GET', 'POST'][number % 2 + 1], toString(200 + number % 5 * 100), concat('pod-', toString(number % 61))]"
ATTRS = f"{KEYS}, {VALUES}" if LEGACY else f"mapFromArrays({KEYS}, {VALUES})"


def build(table, rows):
    if ch(f"SELECT count() FROM system.tables WHERE database = 'bench_ch' AND name = '{table}'") == "1":
        return
    print(f"building bench_ch.{table} ({rows} rows; once)…", file=sys.stderr)
    ch("CREATE DATABASE IF NOT EXISTS bench_ch")
    attrs = ("attr_keys Array(String), attr_values Array(String)" if LEGACY
             else "attributes Map(LowCardinality(String), String)")
    ch(f"""CREATE TABLE bench_ch.{table}_building (ts DateTime, service String, severity LowCardinality(String),
           body String, {attrs}, trace_id FixedString(32))
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
                 {ATTRS},
                 hex(MD5(toString(number)))
               FROM numbers({start}, {n})""")
    ch(f"RENAME TABLE bench_ch.{table}_building TO bench_ch.{table}")


def build_tsv(table, rows):
    """The same rows plus an aggregate state column: the worker dumps it as TabSeparated."""
    name = f"{table}_agg"
    if ch(f"SELECT count() FROM system.tables WHERE database = 'bench_ch' AND name = '{name}'") == "1":
        return name
    print(f"building bench_ch.{name} (once)…", file=sys.stderr)
    ch(f"CREATE TABLE bench_ch.{name} ENGINE = MergeTree ORDER BY (service, ts) AS SELECT *, "
       f"initializeAggregation('sumState', toUInt64(1)) AS state FROM bench_ch.{table}")
    return name


def backup_one(worker, recipient, keep, everything, store=None, extra=""):
    """Runs the worker on one table of bench_ch (the others excluded), into `store` (an
    S3 URL) or a temporary directory."""
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as tmp:
        target = store or f"file://{tmp}"
        excludes = " ".join(f"--exclude 'bench_ch.{t}'" for t in everything if t != keep)
        result = measure(f"CLICKHOUSE_URL={URL} DR_LOG_FORMAT=json {worker} backup clickhouse --target bench "
                         f"--database bench_ch {excludes} --exclude 'bench_ch.*_building' "
                         f"--store {target} -r {recipient} {extra} > /dev/null")
        if store:
            listed = subprocess.run([os.path.join(os.path.dirname(worker), "kubectl-dr"), "list", "--store", store,
                                     "-o", "json"], env=ENV, capture_output=True, text=True, check=True).stdout
            stored = json.loads(listed)[-1]["size_bytes"]
        else:
            stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    return result, stored


def spread(runs):
    secs = [r[0] for r in runs]
    return statistics.median(secs), min(secs), max(secs)


def main():
    sizes = [int(a) for a in sys.argv[1:] if not a.startswith("--")] or [1_000_000, 20_000_000]
    runs = int(os.environ.get("RUNS", "3"))
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    worker = os.path.join(ROOT, "target", "release", "worker")
    key = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = next(l.split(": ")[1] for l in key.splitlines() if l.startswith("# public key"))
    bucket = bench_bucket()
    # Short: s3s-fs (it keeps objects as files) fails multipart keys past ~127 bytes.
    prefix = f"c{int(time.time()) % 100000}"
    results = []
    try:
        for rows in sizes:
            table = f"logs_{rows}"
            build(table, rows)
            agg = build_tsv(table, rows) if rows <= 1_000_000 else None
            native = int(ch(f"SELECT count() FROM bench_ch.{table}"))
            assert native == rows, (native, rows)
            everything = ch("SELECT name FROM system.tables WHERE database = 'bench_ch'").split()
            select = f"'SELECT {COLUMNS} FROM bench_ch.{table} FORMAT Native'"
            plain = measure(f"curl -sS --fail -u '{AUTH}' '{URL}' --data-binary {select} > /dev/null")
            tsv = measure(f"curl -sS --fail -u '{AUTH}' '{URL}' --data-binary "
                          f"'SELECT {COLUMNS} FROM bench_ch.{table} FORMAT TabSeparated' > /dev/null")
            hand_key = f"{prefix}/hand-{rows}.native.zst.age"
            hand, ours, stored = [], [], 0
            for n in range(runs):
                hand.append(measure(
                    f"curl -sS --fail -u '{AUTH}' '{URL}' --data-binary {select} | zstd -1 -q | "
                    f"age -r {recipient} | aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet - s3://{bucket}/{hand_key}"))
                run, stored = backup_one(worker, recipient, table, everything, f"s3://{bucket}/{prefix}/w{rows}")
                ours.append(run)
            hand_stored = int(subprocess.run(
                f"aws --endpoint-url $AWS_ENDPOINT_URL s3api head-object --bucket {bucket} --key {hand_key} "
                "--query ContentLength --output text", shell=True, env=ENV, capture_output=True, text=True,
                check=True).stdout)
            agg_run = backup_one(worker, recipient, agg, everything) if agg else None
            # Memory per stream: the same backup with one partition at a time.
            one_stream, _ = backup_one(worker, recipient, table, everything, f"s3://{bucket}/{prefix}/p{rows}",
                                       "--parallel 1")
            results.append((rows, plain, tsv, hand, hand_stored, ours, stored, agg_run, one_stream))
    finally:
        subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 rm --quiet --recursive s3://{bucket}/{prefix}",
                       shell=True, env=ENV, check=False)
    server = "ClickHouse 18.16 server" if LEGACY else "ClickHouse 26 engine (chdb front)"
    print(f"\n{server}, {os.cpu_count()} cores; by hand and worker: median (min-max) of {runs} runs in turns, "
          "both into the services' S3")
    print(f"{'rows':>12}  {'curl Native':>11}  {'curl TSV':>8}  {'by hand (curl|zstd|age|aws)':>28}  "
          f"{'worker':>20}  {'ratio':>6}  {'peak RSS hand/worker':>21}  {'stored hand/worker':>20}  "
          f"{'TSV-path worker':>15}  {'worker --parallel 1 (time, peak RSS)':>36}")
    for rows, plain, tsv, hand, hand_stored, ours, stored, agg_run, one_stream in results:
        h, w = spread(hand), spread(ours)
        agg_time = f"{agg_run[0][0]:>13.1f} s" if agg_run else f"{'-':>15}"
        print(f"{rows:>12}  {plain[0]:>9.1f} s  {tsv[0]:>6.1f} s  {h[0]:>12.1f} s ({h[1]:.1f}-{h[2]:.1f})  "
              f"{w[0]:>6.1f} s ({w[1]:.1f}-{w[2]:.1f})  {w[0] / h[0]:>5.2f}×  "
              f"{max(r[1] for r in hand):>8.0f} / {max(r[2] for r in ours):>5.0f} MiB  "
              f"{hand_stored / 1048576:>7.1f} / {stored / 1048576:>6.1f} MiB  {agg_time}  "
              f"{one_stream[0]:>20.1f} s, {one_stream[2]:>5.0f} MiB")


TABLES = {
    # name: (columns, the day's rows as a SELECT over numbers(N) with `day` the partition)
    "logs": ("ts DateTime, service LowCardinality(String), severity LowCardinality(String), body String, trace_id String",
             "toDateTime(day) + intDiv(number, 2), concat('service-', toString(number % 23)), "
             "['INFO', 'WARN', 'ERROR'][number % 3 + 1], concat('request ', toString(number), ' took ', "
             "toString(number % 977), ' ms'), hex(MD5(concat(toString(day), toString(number))))"),
    "traces": ("ts DateTime, trace_id String, span String, duration_ns UInt64, status UInt8",
               "toDateTime(day) + intDiv(number, 2), hex(MD5(concat(toString(day), toString(number)))), "
               "concat('GET /api/', toString(number % 300)), number * 7919 % 100000000, number % 3"),
    "samples": ("ts DateTime, metric LowCardinality(String), fingerprint UInt64, value Float64",
                "toDateTime(day) + intDiv(number, 4), concat('metric_', toString(number % 40)), "
                "cityHash64(number % 5000), number / 3"),
}
# What a late change does to 2% of yesterday's rows (a column outside the sorting key).
UPDATES = {"logs": "body = concat(body, ' (late)')", "traces": "status = status + 1",
           "samples": "value = value + 1"}
FIRST_DAY = "2026-10-01"


def day_rows(table, per_day):
    return per_day * 2 if table == "samples" else per_day


def add_day(db, day, per_day):
    for t, (_, select) in TABLES.items():
        rows = select.replace("day", f"toDate('{day}')")
        ch(f"INSERT INTO {db}.{t} SELECT {rows} FROM numbers({day_rows(t, per_day)})")


def wait_mutations(db):
    import time
    while ch(f"SELECT count() FROM system.mutations WHERE database = '{db}' AND is_done = 0") != "0":
        time.sleep(0.2)


def incremental(per_day):
    import datetime
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    worker = os.path.join(ROOT, "target", "release", "worker")
    plugin = os.path.join(ROOT, "target", "release", "kubectl-dr")
    key = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
    recipient = next(l.split(": ")[1] for l in key.splitlines() if l.startswith("# public key"))
    db = "bench_chain"
    ch(f"DROP DATABASE IF EXISTS {db}")
    ch(f"CREATE DATABASE {db}")
    for t, (cols, _) in TABLES.items():
        ch(f"CREATE TABLE {db}.{t} ({cols}) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY ts")
    first = datetime.date.fromisoformat(FIRST_DAY)
    print(f"building {db}: 30 days of {per_day} logs and traces and {2 * per_day} samples a day…",
          file=sys.stderr)
    for d in range(30):
        add_day(db, first + datetime.timedelta(days=d), per_day)
    work = tempfile.mkdtemp(dir=os.path.join(ROOT, ".dr-services"), prefix="bench-chain-")
    stores = {kind: os.path.join(work, kind) for kind in ("incremental", "full")}
    with open(os.path.join(work, "key.txt"), "w") as f:
        f.write(key)

    def size(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

    def backup(kind):
        before = size(stores[kind])
        flag = "--incremental" if kind == "incremental" else ""
        secs, _, rss = measure(f"CLICKHOUSE_URL={URL} DR_LOG_FORMAT=json {worker} backup clickhouse --target signoz "
                               f"--database {db} {flag} --store file://{stores[kind]} -r {recipient} "
                               f"> /dev/null 2>> {work}/log")
        return secs, size(stores[kind]) - before, rss

    nights = [(0, backup("incremental"), backup("full"))]
    for night in range(1, 8):
        today = first + datetime.timedelta(days=29 + night)
        add_day(db, today, per_day)
        yesterday = today - datetime.timedelta(days=1)
        for t, change in UPDATES.items():
            ch(f"ALTER TABLE {db}.{t} UPDATE {change} WHERE toDate(ts) = '{yesterday}' "
               f"AND cityHash64(toString(ts)) % 50 = 0")
            ch(f"ALTER TABLE {db}.{t} DROP PARTITION '{first + datetime.timedelta(days=night - 1)}'")
        wait_mutations(db)
        nights.append((night, backup("incremental"), backup("full")))

    def restore(kind, extra=""):
        target = f"{db}_restored"
        ch(f"DROP DATABASE IF EXISTS {target}")
        secs, _, rss = measure(f"{plugin} restore latest --engine clickhouse --target signoz -i {work}/key.txt "
                               f"--to {URL} --database-map {db}={target} --yes --no-progress "
                               f"--store file://{stores[kind]} {extra} > /dev/null 2>> {work}/log")
        rows = int(ch(f"SELECT sum(rows) FROM system.parts WHERE active AND database = '{target}'") or 0)
        ch(f"DROP DATABASE IF EXISTS {target}")
        return secs, rss, rows

    chain = restore("incremental")
    whole = restore("full")
    newest_day = first + datetime.timedelta(days=36)
    newest = restore("incremental", f"--since {newest_day}T00:00:00Z")
    server = "ClickHouse 18.16 server" if LEGACY else "ClickHouse 26 engine (chdb front)"
    print(f"\n{server}: 30 daily partitions, {per_day} logs + {per_day} traces + {2 * per_day} samples a day")
    print(f"{'night':>5}  {'incremental':>12}  {'stored':>10}  {'full':>8}  {'stored':>10}  {'time ratio':>10}")
    for night, inc, full in nights:
        print(f"{night:>5}  {inc[0]:>10.1f} s  {inc[1] / 1048576:>6.1f} MiB  {full[0]:>6.1f} s  "
              f"{full[1] / 1048576:>6.1f} MiB  {inc[0] / full[0]:>9.2f}×")
    inc_total = sum(n[1][1] for n in nights[1:])
    full_total = sum(n[2][1] for n in nights[1:])
    one_full = nights[0][2][1]
    print(f"nights 1-7 stored: incremental {inc_total / 1048576:.1f} MiB ({inc_total / one_full:.2f}× one full "
          f"backup), full {full_total / 1048576:.1f} MiB ({full_total / one_full:.2f}×)")
    print(f"peak RSS of the worker: incremental {max(n[1][2] for n in nights):.0f} MiB, "
          f"full {max(n[2][2] for n in nights):.0f} MiB")
    print(f"restore of the newest: chain {chain[0]:.1f} s ({chain[2]} rows), full {whole[0]:.1f} s "
          f"({whole[2]} rows): {chain[0] / whole[0]:.2f}×; the newest day alone (--since {newest_day}) "
          f"{newest[0]:.1f} s ({newest[2]} rows)")
    ch(f"DROP DATABASE IF EXISTS {db}")
    subprocess.run(["rm", "-rf", work], check=True)


if __name__ == "__main__":
    if "--incremental" in sys.argv:
        incremental(next((int(a) for a in sys.argv[1:] if not a.startswith("--")), 100_000))
    else:
        main()
