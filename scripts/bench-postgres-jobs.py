#!/usr/bin/env python3
"""Parallel backup and restore benchmark, side by side with the plain tools, in one run.

Builds (once) a database of about SIZE MiB spread over four tables (the same ~1 KiB rows as
scripts/bench-postgres.py: word salad, jsonb, 10% random bytes; an index on each), since
`pg_dump -j` and `--jobs` parallelise by table. Then, each restore into a fresh database:

  pg_dump -Fc > file ; pg_restore (one stream)              the single-stream anchor
  pg_dump -Fd -j N > dir ; pg_restore -j N dir               what people compare --jobs with
  worker backup postgres --jobs N ; kubectl dr restore --jobs N (S3, one pass, counts)

for N in JOBS (default 1,2,4), with wall time, peak RSS of the whole process tree and of
its largest process, and stored bytes. Each restore runs REPEAT times (default 1), in turn
with the others, and its median is shown: restores of the same data differ by up to 30%
between runs on this machine (page cache, checkpoints). Usage (services from
scripts/services.sh):

  scripts/bench-postgres-jobs.py [SIZE_MIB=1024] [JOBS=1,2,4] [REPEAT=1]
"""
import json, os, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, PG_BIN as BIN, WORDS_SQL, psql, query, measure_with_cpu as measure  # noqa: E402

TABLES = 4


def build_database(db, size_mib):
    if query("postgres", f"SELECT 1 FROM pg_database WHERE datname='{db}'"):
        return
    print(f"building {db} (~{size_mib} MiB in {TABLES} tables; once)…", file=sys.stderr)
    final, db = db, db + "_building"
    psql("postgres", f"DROP DATABASE IF EXISTS {db}")
    psql("postgres", f"CREATE DATABASE {db}")
    psql(db, WORDS_SQL)
    rows = size_mib * 1024 // TABLES
    for t in range(1, TABLES + 1):
        psql(db, f"CREATE TABLE docs_{t} (id bigserial PRIMARY KEY, title text, body text, meta jsonb, blob bytea, created_at timestamptz)")
        for start in range(0, rows, 50_000):
            n = min(50_000, rows - start)
            # md5-derived bytes instead of pgcrypto's random ones: PostgreSQL 18 from PyPI
            # has no pgcrypto, and these compress just as badly.
            psql(db, f"""
                INSERT INTO docs_{t} (title, body, meta, blob, created_at)
                SELECT 'document ' || g || ' ' || md5(g::text),
                       (SELECT string_agg(w, ' ') FROM (SELECT w FROM words WHERE i > g % 2 - 2 ORDER BY random()) s),
                       jsonb_build_object('author', 'user' || (g % 5000), 'tags', jsonb_build_array('t' || (g % 17), 't' || (g % 31)),
                                          'score', (g * 7919) % 1000, 'visible', g % 3 = 0, 'ref', md5((g * 31)::text)),
                       decode(md5(g::text || random()::text) || md5(random()::text) || md5(random()::text) ||
                              md5(random()::text) || md5(random()::text) || md5(random()::text) ||
                              substr(md5(random()::text), 1, 8), 'hex'),
                       now() - (g % 100000) * interval '1 minute'
                FROM generate_series({start + 1}::bigint, {start + n}::bigint) g""")
        psql(db, f"CREATE INDEX docs_{t}_created ON docs_{t} (created_at); CREATE INDEX docs_{t}_title ON docs_{t} (title)")
    psql(db, "DROP TABLE words")
    psql(db, "VACUUM ANALYZE")
    psql("postgres", f"ALTER DATABASE {db} RENAME TO {final}")


def dropdb(*names):
    for n in names:
        subprocess.run([f"{BIN}/dropdb", "--if-exists", "--force", n], env=ENV, check=True)


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    jobs = [int(j) for j in (sys.argv[2] if len(sys.argv) > 2 else "1,2,4").split(",")]
    repeat = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    db = f"bench_tables_{size}"
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    rel = os.path.join(ROOT, "target", "release")
    build_database(db, size)
    dbsize = int(query(db, f"SELECT pg_database_size('{db}')"))
    version = query(db, "SHOW server_version")
    target = f"{db}_r"
    url = f"postgres://$PGUSER@$PGHOST:$PGPORT/{target}"
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as work:
        key = os.path.join(work, "key.txt")
        subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout.strip()
        bucket = ENV["DR_TEST_BUCKET"]
        prefix = f"bench-jobs-{int(time.time())}"
        rows = []  # (name, backup (s, tree, one), stored bytes, restore command)

        def restore(cmd):
            dropdb(target)
            r = measure(cmd)
            dropdb(target)
            return r

        # Backups first (their outputs stay), then the restores in turns.
        dumpfile = os.path.join(work, "plain.dump")
        b = measure(f"{BIN}/pg_dump -Fc -d {db} > {dumpfile}")
        rows.append(("pg_dump -Fc / pg_restore", b, os.path.getsize(dumpfile),
                     f"{BIN}/createdb {target} && {BIN}/pg_restore --no-owner -d {target} {dumpfile}"))
        for n in jobs:
            d = os.path.join(work, f"dir{n}")
            b = measure(f"{BIN}/pg_dump -Fd -j {n} -f {d} -d {db}")
            stored = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
            rows.append((f"pg_dump -Fd -j {n} / pg_restore -j {n}", b, stored,
                         f"{BIN}/createdb {target} && {BIN}/pg_restore --no-owner -j {n} -d {target} {d}"))
        for n in jobs:
            store = f"s3://{bucket}/{prefix}/j{n}"
            b = measure(f"{rel}/worker backup postgres --target bench -d {db} --store {store} -r {recipient} "
                        f"--jobs {n} --log-format text 2>/dev/null >/dev/null")
            listed = json.loads(subprocess.run(f"{rel}/kubectl-dr list --store {store} -o json", shell=True, env=ENV,
                                               capture_output=True, text=True, check=True).stdout)
            stored = listed[-1]["size_bytes"]
            rows.append((f"worker --jobs {n} / kubectl dr restore --jobs {n}", b, stored,
                         f"{rel}/kubectl-dr restore latest --store {store} -i {key} --to {url} --jobs {n} "
                         "--no-progress >/dev/null 2>&1"))
        runs = [[] for _ in rows]
        for _ in range(repeat):
            for i, row in enumerate(rows):
                runs[i].append(restore(row[3]))
        rows = [(name, b, stored, sorted(r)[len(r) // 2]) for (name, b, stored, _), r in zip(rows, runs)]

        print(f"\n{db}: pg_database_size {dbsize / 2**20:.0f} MiB in {TABLES} tables, PostgreSQL {version}, "
              f"{os.cpu_count()} cores; restores: median of {repeat}\n")
        print("| command (backup / restore) | backup s | cores busy | backup peak tree MiB | largest MiB | stored MiB "
              "| restore s | cores busy | restore peak tree MiB | largest MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, (bs, bt, bo, bc), nbytes, (rs, rt, ro, rc) in rows:
            print(f"| {name} | {bs:.1f} | {bc:.0%} | {bt:.1f} | {bo:.1f} | {nbytes / 2**20:.1f} "
                  f"| {rs:.1f} | {rc:.0%} | {rt:.1f} | {ro:.1f} |")
        subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 rm --quiet --recursive s3://{bucket}/{prefix}",
                       shell=True, env=ENV, check=False)


if __name__ == "__main__":
    main()
