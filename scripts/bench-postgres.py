#!/usr/bin/env python3
"""Backup and restore benchmark, side by side with the plain tools, in one run.

Builds (once) a database of about SIZE MiB with realistic compressibility (varied text,
jsonb, and ~10% incompressible bytea), then measures wall time, peak memory (RSS of the
whole process tree: a shell pipeline counts all its members) and stored bytes of:

  pg_dump -Fc > file                                   the usual runbook step
  pg_dump -Fc | age -r KEY | aws s3 cp - s3://…        the "encrypted to S3" shell pipeline
  worker backup postgres                               this project, same S3 server

and for restores, into fresh databases, each followed by what the worker does after its
load (ANALYZE, and an exact count of every table):

  pg_restore -d DB file (+ ANALYZE, counts)                     a local -Fc file
  pg_restore --single-transaction -d DB file (+ ANALYZE, counts) as the worker loads
  aws s3 cp - | age -d | zstd -d | pg_restore --single-transaction   by hand, the worker's ciphertext
  kubectl dr restore --timings                                  verify first, load, ANALYZE, counts

with the restore's stages as the worker timed them (`--timings`): store read, sha256, age,
zstd (each the time spent in that layer), the wait on pg_restore, ANALYZE and counts.
Every row runs RUNS times (environment, default 5), the rows in turns, and the table shows
the median and the spread (min-max). Usage (services from scripts/services.sh; release
binaries are built):

  scripts/bench-postgres.py [SIZE_MIB=1024]        one table of ~1 KiB rows (text, jsonb, bytea)
  scripts/bench-postgres.py --pgbench [SCALE=30]   pgbench -i -s SCALE (3 M accounts at 30), an
                                                   events table of 2 M rows with an index, and
                                                   25,000 large objects

The parallel rows (pg_dump -Fd -j N / pg_restore -j N against --jobs N) are in
scripts/bench-postgres-jobs.py: they need a database of several tables, since every tool
parallelises per table, and this one's single table would show no scaling at all.
"""
import json, os, re, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, PG_BIN as BIN, WORDS_SQL, bench_bucket, psql, query, measure  # noqa: E402


def build_database(db, size_mib):
    if query("postgres", f"SELECT 1 FROM pg_database WHERE datname='{db}'"):
        return
    print(f"building {db} (~{size_mib} MiB; once)…", file=sys.stderr)
    final, db = db, db + "_building"
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    psql(db, "CREATE EXTENSION pgcrypto")
    psql(db, "CREATE TABLE docs (id bigserial PRIMARY KEY, title text, body text, meta jsonb, blob bytea, created_at timestamptz)")
    psql(db, WORDS_SQL)
    # ~1 KiB a row: ~650 B of word salad, ~200 B jsonb, 100 random bytes, small fields.
    rows = size_mib * 1024
    batch = 50_000
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        psql(db, f"""
            INSERT INTO docs (title, body, meta, blob, created_at)
            SELECT 'document ' || g || ' ' || md5(g::text),
                   -- correlated with g, so it runs per row (an uncorrelated one runs once)
                   (SELECT string_agg(w, ' ') FROM (SELECT w FROM words WHERE i > g % 2 - 2 ORDER BY random()) s),
                   jsonb_build_object('author', 'user' || (g % 5000), 'tags', jsonb_build_array('t' || (g % 17), 't' || (g % 31)),
                                      'score', (g * 7919) % 1000, 'visible', g % 3 = 0, 'ref', md5((g * 31)::text)),
                   gen_random_bytes(100),
                   now() - (g % 100000) * interval '1 minute'
            FROM generate_series({start + 1}::bigint, {start + n}::bigint) g""")
    psql(db, "DROP TABLE words")
    psql(db, "VACUUM ANALYZE docs")
    psql("postgres", f"ALTER DATABASE {db} RENAME TO {final}")


def build_pgbench(db, scale):
    """pgbench's tables at SCALE, an indexed events table, and large objects."""
    if query("postgres", f"SELECT 1 FROM pg_database WHERE datname='{db}'"):
        return
    print(f"building {db} (pgbench scale {scale}, events, large objects; once)…", file=sys.stderr)
    final, db = db, db + "_building"
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    subprocess.run([f"{BIN}/pgbench", "-i", "-q", "-s", str(scale), db], env=ENV, check=True,
                   capture_output=True)
    psql(db, """CREATE TABLE events (id bigserial PRIMARY KEY, account int NOT NULL, kind text NOT NULL,
                payload jsonb, at timestamptz NOT NULL)""")
    psql(db, """INSERT INTO events (account, kind, payload, at)
                SELECT g % 3000000, (ARRAY['login','transfer','logout','error'])[g % 4 + 1],
                       jsonb_build_object('amount', g % 10000, 'ref', md5(g::text)),
                       now() - (g % 500000) * interval '1 second'
                FROM generate_series(1, 2000000) g""")
    psql(db, "CREATE INDEX events_account_at ON events (account, at)")
    # 25,000 large objects of 1-8 KiB (pg_dump writes each as its own blob entry).
    psql(db, """SELECT lo_from_bytea(0, decode(repeat(md5(g::text), 32 * (g % 8 + 1)), 'hex'))
                FROM generate_series(1, 25000) g""")
    psql(db, "VACUUM ANALYZE")
    psql("postgres", f"ALTER DATABASE {db} RENAME TO {final}")


def tables(db):
    return query(db, "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                     "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").split()


def stats(runs):
    secs = [r[0] for r in runs]
    return statistics.median(secs), min(secs), max(secs)


TIMING = re.compile(r"^  (\S.*?)\s+([0-9.]+) s$", re.M)


def main():
    runs = int(os.environ.get("RUNS", "5"))
    if "--pgbench" in sys.argv:
        scale = next((int(a) for a in sys.argv[1:] if a.isdigit()), 30)
        db = f"bench_pgbench_{scale}"
        subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
        build_pgbench(db, scale)
    else:
        size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
        db = f"bench_{size}"
        subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
        build_database(db, size)
    rel = os.path.join(ROOT, "target", "release")
    dbsize = subprocess.run([f"{BIN}/psql", "-tAc", f"SELECT pg_database_size('{db}')", "-d", db],
                            env=ENV, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as work:
        key = os.path.join(work, "key.txt")
        subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout.strip()
        bucket = bench_bucket()
        prefix = f"bench-{int(time.time())}"
        dumpfile = os.path.join(work, "plain.dump")
        results = []

        results = {}

        def add(name, m, nbytes=None):
            results.setdefault(name, ([], []))
            results[name][0].append(m)
            if nbytes:
                results[name][1].append(nbytes)

        store = f"s3://{bucket}/{prefix}"
        pipe_key = f"{prefix}/pipeline.dump.age"
        for _ in range(runs):
            add("pg_dump -Fc > file", measure(f"{BIN}/pg_dump -Fc -d {db} > {dumpfile}"), os.path.getsize(dumpfile))
            m = measure(f"{BIN}/pg_dump -Fc -d {db} | age -r {recipient} | "
                        f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet - s3://{bucket}/{pipe_key}")
            size_pipe = int(subprocess.run(
                f"aws --endpoint-url $AWS_ENDPOINT_URL s3api head-object --bucket {bucket} --key {pipe_key} "
                "--query ContentLength --output text", shell=True, env=ENV, capture_output=True, text=True,
                check=True).stdout)
            add("pg_dump -Fc | age | aws s3 cp -", m, size_pipe)
            m = measure(f"{rel}/worker backup postgres --target bench -d {db} --store {store} -r {recipient} "
                        "--log-format text 2>/dev/null >/dev/null")
            listed = json.loads(subprocess.run(f"{rel}/kubectl-dr list --store {store} -o json", shell=True,
                                               env=ENV, capture_output=True, text=True, check=True).stdout)
            add("worker backup postgres (zstd -1, age, S3)", m, listed[-1]["size_bytes"])

        base = statistics.median([m[0] for m in results["pg_dump -Fc > file"][0]])
        print(f"\nbackup of {db}: pg_database_size {int(dbsize) / 2**20:.0f} MiB, {os.cpu_count()} cores, "
              f"median (min-max) of {runs} runs in turns\n")
        print(f"{'command':46} {'wall s':>8} {'min-max':>13} {'x pg_dump':>9} {'peak RSS (tree) MiB':>20} "
              f"{'largest process MiB':>20} {'stored MiB':>11}")
        for name, (ms, sizes) in results.items():
            med, lo, hi = stats(ms)
            st = f"{statistics.median(sizes) / 2**20:11.1f}" if sizes else f"{'-':>11}"
            print(f"{name:46} {med:8.1f} {lo:6.1f}-{hi:<6.1f} {med / base:9.2f} {max(m[1] for m in ms):20.1f} "
                  f"{max(m[2] for m in ms):20.1f} {st}")

        # Restores: into fresh databases, each followed by the worker's own after-work
        # (ANALYZE and an exact count of every table), so the rows compare like for like.
        newest = listed[-1]["id"]
        manifest = json.loads(subprocess.run(
            f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet {store}/postgres/bench/{newest}/manifest.json -",
            shell=True, env=ENV, capture_output=True, text=True, check=True).stdout)
        part = next(p["file"] for p in manifest["parts"] if p["file"].startswith("db-"))
        counts = os.path.join(work, "counts.sql")
        with open(counts, "w") as f:
            f.writelines(f"SELECT count(*) FROM {t};\n" for t in tables(db))
        after = "{{ {psql} -q -c ANALYZE & {psql} -q -f " + counts + " >/dev/null; wait; }}"
        target = "postgres://$PGUSER@$PGHOST:$PGPORT/"
        restores = {}
        rows = [
            ("pg_restore file + ANALYZE, counts", "{bin}/pg_restore --no-owner -d {db} " + dumpfile),
            ("pg_restore --single-transaction file + same",
             "{bin}/pg_restore --single-transaction --no-owner -d {db} " + dumpfile),
            ("aws s3 cp | age -d | zstd -d | pg_restore -1 + same",
             f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet {store}/postgres/bench/{newest}/{part} - | "
             f"age -d -i {key} | zstd -d -q | " + "{bin}/pg_restore --single-transaction --no-owner -d {db}"),
        ]
        breakdown = {}
        for n in range(runs):
            for i, (name, cmd) in enumerate(rows):
                into = f"{db}_r{i}"
                psql("postgres", f"DROP DATABASE IF EXISTS {into}")
                psql("postgres", f"CREATE DATABASE {into}")
                psql_into = f"{BIN}/psql -d {into}"
                full = cmd.format(bin=BIN, db=into) + " && " + after.format(psql=psql_into)
                restores.setdefault(name, []).append(measure(full))
            into = f"{db}_rw"
            psql("postgres", f"DROP DATABASE IF EXISTS {into}")
            err = os.path.join(work, "timings.txt")
            restores.setdefault("kubectl dr restore (verify, load, ANALYZE, counts)", []).append(measure(
                f"{rel}/kubectl-dr restore latest --engine postgres --target bench --store {store} -i {key} "
                f"--to {target}{into} --no-progress --timings >/dev/null 2>{err}"))
            for stage, secs in TIMING.findall(open(err).read().split("timings:", 1)[-1]):
                breakdown.setdefault(stage.strip(), []).append(float(secs))
        for i in range(len(rows)):
            psql("postgres", f"DROP DATABASE IF EXISTS {db}_r{i}")
        psql("postgres", f"DROP DATABASE IF EXISTS {db}_rw")
        rbase = statistics.median([m[0] for m in restores[rows[0][0]]])
        print(f"\n{'restore (each + ANALYZE and counts)':52} {'wall s':>8} {'min-max':>13} {'x pg_restore':>12} "
              f"{'peak RSS (tree) MiB':>20}")
        for name, ms in restores.items():
            med, lo, hi = stats(ms)
            print(f"{name:52} {med:8.1f} {lo:6.1f}-{hi:<6.1f} {med / rbase:12.2f} {max(m[1] for m in ms):20.1f}")
        if breakdown:
            print("\nkubectl dr restore, its stages (--timings; median of the runs):")
            for stage, secs in breakdown.items():
                print(f"  {stage:40} {statistics.median(secs):8.2f} s   ({min(secs):.2f}-{max(secs):.2f})")
        subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 rm --quiet --recursive s3://{bucket}/{prefix}",
                       shell=True, env=ENV, check=False)


if __name__ == "__main__":
    main()
