#!/usr/bin/env python3
"""Backup and restore benchmark, side by side with the plain tools, in one run.

Builds (once) a database of about SIZE MiB with realistic compressibility (varied text,
jsonb, and ~10% incompressible bytea), then measures wall time, peak memory (RSS of the
whole process tree: a shell pipeline counts all its members) and stored bytes of:

  pg_dump -Fc > file                                   the usual runbook step
  pg_dump -Fc | age -r KEY | aws s3 cp - s3://…        the "encrypted to S3" shell pipeline
  worker backup postgres                               this project, same S3 server

and for restores, `pg_restore` from the local pg_dump file versus `kubectl dr restore` from
the store. Usage (services from scripts/services.sh; release binaries are built):

  scripts/bench-postgres.py [SIZE_MIB=1024]

The parallel rows (pg_dump -Fd -j N / pg_restore -j N against --jobs N) are in
scripts/bench-postgres-jobs.py: they need a database of several tables, since every tool
parallelises per table, and this one's single table would show no scaling at all.
"""
import os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, PG_BIN as BIN, WORDS_SQL, psql, query, measure  # noqa: E402


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


def main():
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
    db = f"bench_{size}"
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    rel = os.path.join(ROOT, "target", "release")
    build_database(db, size)
    dbsize = subprocess.run([f"{BIN}/psql", "-tAc", f"SELECT pg_database_size('{db}')", "-d", db],
                            env=ENV, capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as work:
        key = os.path.join(work, "key.txt")
        subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
        recipient = subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True, text=True).stdout.strip()
        bucket = ENV["DR_TEST_BUCKET"]
        prefix = f"bench-{int(time.time())}"
        dumpfile = os.path.join(work, "plain.dump")
        results = []

        s = measure(f"{BIN}/pg_dump -Fc -d {db} > {dumpfile}")
        results.append(("pg_dump -Fc > file", s, os.path.getsize(dumpfile)))
        s = measure(f"{BIN}/pg_dump -Fc -Z0 -d {db} > /dev/null")
        results.append(("pg_dump -Fc -Z0 > /dev/null (raw dump speed)", s, None))
        s = measure(f"{BIN}/pg_dump -Fc -d {db} | age -r {recipient} | "
                    f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet - s3://{bucket}/{prefix}/pipeline.dump.age")
        size_pipe = int(subprocess.run(
            f"aws --endpoint-url $AWS_ENDPOINT_URL s3api head-object --bucket {bucket} --key {prefix}/pipeline.dump.age "
            "--query ContentLength --output text", shell=True, env=ENV, capture_output=True, text=True, check=True).stdout)
        results.append(("pg_dump -Fc | age | aws s3 cp -", s, size_pipe))
        store = f"s3://{bucket}/{prefix}"
        out = subprocess.run(["bash", "-c", f"{rel}/worker backup postgres --target bench -d {db} --store {store} -r {recipient} --log-format text 2>/dev/null"],
                             env=ENV, capture_output=True, text=True)
        # Measured run (the one above warmed nothing of ours; it checks the command works).
        s = measure(f"{rel}/worker backup postgres --target bench -d {db} --store {store} -r {recipient} --log-format text 2>/dev/null >/dev/null")
        manifest = subprocess.run(f"{rel}/kubectl-dr list --store {store} -o json", shell=True, env=ENV,
                                  capture_output=True, text=True, check=True).stdout
        import json
        stored = json.loads(manifest)[-1]["size_bytes"]
        results.append(("worker backup postgres (zstd -1, age, S3)", s, stored))

        base = results[0][1][0]
        print(f"\nbackup of {db}: pg_database_size {int(dbsize) / 2**20:.0f} MiB, {os.cpu_count()} cores\n")
        print(f"{'command':46} {'wall s':>8} {'x pg_dump':>9} {'peak RSS (tree) MiB':>20} {'largest process MiB':>20} {'stored MiB':>11}")
        for name, (secs, tree_mib, one_mib), nbytes in results:
            st = f"{nbytes / 2**20:11.1f}" if nbytes else f"{'-':>11}"
            print(f"{name:46} {secs:8.1f} {secs / base:9.2f} {tree_mib:20.1f} {one_mib:20.1f} {st}")

        # Restores: into fresh databases, plain file vs the store.
        restores = []
        for tag, cmd in [
            ("pg_restore from the local pg_dump file", f"{BIN}/createdb {db}_r1 && {BIN}/pg_restore --no-owner -d {db}_r1 {dumpfile}"),
            ("kubectl dr restore (S3, verify first, counts)",
             f"{rel}/kubectl-dr restore latest --store {store} -i {key} --to postgres://$PGUSER@$PGHOST:$PGPORT/{db}_r2 --no-progress >/dev/null"),
        ]:
            subprocess.run(["bash", "-c", f"{BIN}/dropdb --if-exists {db}_r1; {BIN}/dropdb --if-exists {db}_r2"], env=ENV, check=True)
            restores.append((tag, measure(cmd)))
        subprocess.run(["bash", "-c", f"{BIN}/dropdb --if-exists {db}_r1; {BIN}/dropdb --if-exists {db}_r2"], env=ENV, check=True)
        rbase = restores[0][1][0]
        print(f"\n{'restore':46} {'wall s':>8} {'x plain':>9} {'peak RSS (tree) MiB':>20} {'largest process MiB':>20}")
        for name, (secs, tree_mib, one_mib) in restores:
            print(f"{name:46} {secs:8.1f} {secs / rbase:9.2f} {tree_mib:20.1f} {one_mib:20.1f}")
        subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 rm --quiet --recursive s3://{bucket}/{prefix}",
                       shell=True, env=ENV, check=False)


if __name__ == "__main__":
    main()
