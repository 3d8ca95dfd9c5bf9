#!/usr/bin/env python3
"""Redis backup and restore benchmark, side by side with the by-hand runbook, in one run.

Starts its own redis-server (Debian's), fills it once with KEYS keys of mixed types
(strings, hashes, sets, sorted sets, streams; about 1 GB of RDB at the default 1,000,000),
then takes RUNS turns of each, in turns, and prints medians and spreads (min-max):

  backup   redis-cli --rdb FILE && zstd -1 < FILE | age -r KEY | aws s3 cp - s3://…   by hand
           worker backup redis (replica sync, RDB walked and counted, zstd, age, S3)  this project
  restore  copy the RDB into a stopped server's dir and start it (until it answers)   by hand, local
           aws s3 cp - | age -d | zstd -d > dir/dump.rdb, then start it                 by hand, from S3
           DEBUG RELOAD NOSAVE of the RDB already in the server's dir                  the floor
           kubectl dr restore --engine redis (verified, replica sync, counts)         this project

Wall time and peak RSS of the whole process tree (a pipeline counts all its members; the
Redis servers are not counted, they are the same in every row).

  scripts/bench-redis.py [KEYS=1000000] [RUNS=3]
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, bench_bucket, measure  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A redis-server of the benchmark's own, in `dir`, with persistence off."""

    def __init__(self, dir, port=None):
        self.dir, self.port = dir, port or free_port()
        os.makedirs(dir, exist_ok=True)
        self.proc = None

    def start(self, wait_loaded=True):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--enable-debug-command", "yes",
             "--dbfilename", "dump.rdb", "--logfile", os.path.join(self.dir, "log")])
        while True:
            out = subprocess.run(["redis-cli", "-p", str(self.port), "PING"], capture_output=True, text=True).stdout
            if out.strip() == "PONG" or (out and not wait_loaded):
                return
            time.sleep(0.02)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True,
                              check=True).stdout.strip()


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


WORDS = ("kubernetes cluster backup restore vault secret postgres table index query transaction "
         "snapshot replica node pod service ingress volume claim storage bucket object").split()


def fill(server, keys):
    """KEYS keys: 40% strings (2,000 hex characters), 20% hashes (12 fields), 15% sets (16 members),
    15% sorted sets (16 members), 10% streams (6 entries), 10% of all with an expiry."""
    print(f"filling redis with {keys} keys (once per run of this script)…", file=sys.stderr)
    pipe = subprocess.Popen(["redis-cli", "-p", str(server.port), "--pipe"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    buf = []
    for i in range(keys):
        kind = i % 20
        w = [WORDS[(i * 7 + j) % len(WORDS)] for j in range(8)]
        if kind < 8:
            # Random hex (as tokens and hashes are): LZF in the RDB cannot shrink it, zstd halves it.
            buf.append(resp("SET", f"s:{i}", os.urandom(1000).hex()))
        elif kind < 12:
            fields = []
            for j in range(12):
                fields += [f"f{j}", f"{w[j % 8]}-{i * 31 + j}"]
            buf.append(resp("HSET", f"h:{i}", *fields))
        elif kind < 15:
            buf.append(resp("SADD", f"set:{i}", *[f"{w[j % 8]}{i + j}" for j in range(16)]))
        elif kind < 18:
            za = []
            for j in range(16):
                za += [(i * 13 + j) % 1000, f"m{j}-{w[j % 8]}"]
            buf.append(resp("ZADD", f"z:{i}", *za))
        else:
            for j in range(6):
                buf.append(resp("XADD", f"x:{i}", "*", "event", w[j % 8], "n", i + j))
        if i % 10 == 3:
            buf.append(resp("EXPIRE", f"{'s' if kind < 8 else 'h' if kind < 12 else 'set' if kind < 15 else 'z' if kind < 18 else 'x'}:{i}", 86400 * 30))
        if len(buf) >= 5000:
            pipe.stdin.write(b"".join(buf))
            buf = []
    pipe.stdin.write(b"".join(buf))
    pipe.stdin.close()
    pipe.wait()


def spread(values):
    return f"{statistics.median(values):8.1f} {min(values):6.1f}-{max(values):<6.1f}"


def main():
    keys = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    subprocess.run(["cargo", "build", "--release", "--bins", "--quiet"], cwd=ROOT, check=True)
    rel = os.path.join(ROOT, "target", "release")
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".dr-services")) as work:
        source = Server(os.path.join(work, "source"))
        source.start()
        target = Server(os.path.join(work, "target"))
        try:
            fill(source, keys)
            nkeys = int(source.cli("DBSIZE"))
            key = os.path.join(work, "key.txt")
            subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
            recipient = subprocess.run(["age-keygen", "-y", key], check=True, capture_output=True,
                                       text=True).stdout.strip()
            bucket = bench_bucket()
            prefix = f"bench-redis-{int(time.time())}"
            store = f"s3://{bucket}/{prefix}"
            rdb = os.path.join(work, "hand.rdb")
            env = f"REDIS_URL=redis://127.0.0.1:{source.port}"
            rows = {"backup": {}, "restore": {}}

            def add(section, name, m):
                rows[section].setdefault(name, []).append(m)

            by_hand = (f"redis-cli -p {source.port} --rdb {rdb} >/dev/null 2>&1 && zstd -1 -q -c < {rdb} | age -r {recipient} | "
                       f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet - s3://{bucket}/{prefix}/hand.rdb.zst.age")
            worker = (f"{env} {rel}/worker backup redis --target bench --store {store} -r {recipient} "
                      "--log-format text 2>/dev/null >/dev/null")
            for _ in range(runs):
                add("backup", "redis-cli --rdb, zstd -1 | age | aws s3 cp -", measure(by_hand))
                add("backup", "worker backup redis (S3)", measure(worker))
            rdb_bytes = os.path.getsize(rdb)
            stored = json.loads(subprocess.run(f"{rel}/kubectl-dr list --store {store} -o json", shell=True, env=ENV,
                                               capture_output=True, text=True, check=True).stdout)[-1]["size_bytes"]

            # Restores: into the same empty server each time.
            def fresh_target(with_rdb):
                target.stop()
                shutil.rmtree(target.dir, ignore_errors=True)
                os.makedirs(target.dir)
                if with_rdb:
                    shutil.copy(rdb, os.path.join(target.dir, "dump.rdb"))

            for _ in range(runs):
                fresh_target(False)
                # By hand: the file is decrypted already (the pipeline's other half is timed
                # in the backup rows); copy it in and start the server until it answers.
                start = time.monotonic()
                shutil.copy(rdb, os.path.join(target.dir, "dump.rdb"))
                target.start()
                add("restore", "copy RDB into dir, start redis-server", (time.monotonic() - start, 0.0, 0.0))
                assert int(target.cli("DBSIZE")) == nkeys
                # By hand from the store: fetch, decrypt and decompress into the dir, start.
                fresh_target(False)
                start = time.monotonic()
                subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 cp --quiet s3://{bucket}/{prefix}/hand.rdb.zst.age - | "
                               f"age -d -i {key} | zstd -d -q > {target.dir}/dump.rdb", shell=True, env=ENV, check=True)
                target.start()
                add("restore", "aws s3 cp | age -d | zstd -d > dir, start", (time.monotonic() - start, 0.0, 0.0))
                assert int(target.cli("DBSIZE")) == nkeys
                # The floor: the server reloading the file it already has.
                add("restore", "DEBUG RELOAD NOSAVE (the load alone)",
                    measure(f"redis-cli -p {target.port} DEBUG RELOAD NOSAVE >/dev/null"))
                fresh_target(False)
                target.start()
                add("restore", "kubectl dr restore --engine redis (S3)", measure(
                    f"{rel}/kubectl-dr restore latest --engine redis --target bench --store {store} -i {key} "
                    f"--to redis://127.0.0.1:{target.port} --no-progress >/dev/null 2>&1"))
                assert int(target.cli("DBSIZE")) == nkeys, "the restore lost keys"
            print(f"\nRedis {source.cli('INFO', 'server').split('redis_version:')[1].split()[0]}: {nkeys} keys, "
                  f"RDB {rdb_bytes / 2**20:.0f} MiB, stored {stored / 2**20:.0f} MiB, {os.cpu_count()} cores, "
                  f"median and min-max of {runs} runs taken in turns\n")
            for section, items in rows.items():
                base = statistics.median([m[0] for m in next(iter(items.values()))])
                print(f"{section:48} {'wall s':>8} {'min-max':>13} {'x hand':>7} {'peak RSS MiB (tree)':>20}")
                for name, ms in items.items():
                    secs = [m[0] for m in ms]
                    rss = max(m[1] for m in ms)
                    rss_s = f"{rss:20.0f}" if rss else f"{'-':>20}"
                    print(f"{name:48} {spread(secs)} {statistics.median(secs) / base:7.2f} {rss_s}")
                print()
        finally:
            source.stop()
            target.stop()
            subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 rm --quiet --recursive {store}",
                           shell=True, env=ENV, check=False)


if __name__ == "__main__":
    main()
