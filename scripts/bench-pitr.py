#!/usr/bin/env python3
"""PostgreSQL point-in-time recovery benchmark, side by side with the plain tools, in one run.

On a private PostgreSQL server (the services' binaries, a fresh data directory) loaded by
pgbench (-c 4 -j 2, TPC-B), it measures:

  archive, live         `worker archive postgres` (default --max-lag 60s) into S3 while
                        pgbench runs SECONDS: pgbench's TPS, WAL written, the archiver's CPU
                        (its process tree: worker and pg_receivewal), and the RPO: for every
                        transaction pgbench committed (pgbench_history.mtime), how long until
                        the store held it (the archiver's log says what each upload holds),
                        median, p99 and max
  archive, backlog      the archiver stopped while pgbench writes SECONDS more; then the time
                        and CPU to store that backlog: the worker (zstd, age, S3, signed
                        entries) against pg_receivewal alone into a local directory (its own
                        slot, --endpos)
  restore               the newest base backup plus all the WAL after it, replayed until
                        the server promoted: `kubectl dr restore --time latest --to-datadir
                        --start` (the WAL through wal-fetch from S3) against the by-hand way:
                        the base backup's tar from a local file and the WAL from
                        pg_receivewal's local directory (restore_command = cp)

Usage (services from scripts/services.sh; release binaries built; runs as root or as the
postgres user): scripts/bench-pitr.py [SECONDS=60] [SCALE=20]
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from benchlib import ENV, PG_BIN, bench_bucket  # noqa: E402

WORKER = os.path.join(ROOT, "target/release/worker")
KUBECTL_DR = os.path.join(ROOT, "target/release/kubectl-dr")
ROOT_USER = os.geteuid() == 0


def as_pg(cmd):
    return ["runuser", "-u", "postgres", "--"] + cmd if ROOT_USER else cmd


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def chown(path):
    if ROOT_USER:
        subprocess.run(["chown", "-R", "postgres", path], check=True)


class Server:
    """A private server on a fresh data directory, stopped at exit."""

    def __init__(self, base):
        self.dir = os.path.join(base, "server")
        self.data = os.path.join(self.dir, "data")
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "pw"), "w") as f:
            f.write(ENV["PGPASSWORD"] + "\n")
        chown(self.dir)
        subprocess.run(as_pg([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth-host=scram-sha-256",
                              "--auth-local=trust", f"--pwfile={self.dir}/pw"]), check=True, capture_output=True)
        self.port = free_port()
        self.start(self.data, self.port)

    @staticmethod
    def start(data, port, log=None):
        log = log or os.path.join(os.path.dirname(data), "log")
        subprocess.run(as_pg([f"{PG_BIN}/pg_ctl", "-D", data, "-l", log, "-w", "-t", "120", "start", "-o",
                              f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={os.path.dirname(data)} "
                              "-c shared_buffers=256MB -c max_wal_size=8GB -c checkpoint_timeout=30min "
                              "-c synchronous_commit=off"]), check=True, capture_output=True)

    @staticmethod
    def stop(data):
        subprocess.run(as_pg([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"]), capture_output=True)

    def env(self):
        e = dict(ENV)
        e.update(PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres", PGDATABASE="postgres")
        return e

    def sql(self, q):
        return subprocess.run([f"{PG_BIN}/psql", "-tAc", q], env=self.env(), capture_output=True, text=True,
                              check=True).stdout.strip()


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def cpu_of(pid):
    """utime+stime seconds of a process tree, its waited-for children included."""
    total = 0.0
    from benchlib import tree
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def pgbench(server, seconds):
    out = subprocess.run(["pgbench", "-c", "4", "-j", "2", "-T", str(seconds), "-n", "postgres"], env=server.env(),
                         capture_output=True, text=True, check=True).stdout
    tps = [line for line in out.splitlines() if line.startswith("tps")]
    return float(tps[0].split("=")[1].split()[0]) if tps else 0.0


class Archiver:
    def __init__(self, server, store, recipient, spool, log):
        self.log = log
        env = server.env()
        env.update(DR_LOG_FORMAT="json")
        self.proc = subprocess.Popen([WORKER, "archive", "postgres", "--target", "bench", "--store", store, "-r",
                                      recipient, "--spool", spool, "--pg-bin-dir", PG_BIN],
                                     env=env, stderr=open(log, "a"), stdout=subprocess.DEVNULL)
        self.cpu = 0.0
        deadline = time.time() + 30
        while "WAL archiver started" not in open(log).read():
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit(f"the archiver did not start:\n{open(log).read()}")
            time.sleep(0.2)

    def sample_cpu(self):
        self.cpu = max(self.cpu, cpu_of(self.proc.pid))
        return self.cpu

    def stop(self):
        self.sample_cpu()
        self.proc.terminate()
        _, status, usage = os.wait4(self.proc.pid, 0)
        self.cpu = max(self.cpu, usage.ru_utime + usage.ru_stime)
        return self.cpu


def uploads(log):
    """(time stored, newest commit it holds) of every upload the archiver logged."""
    out = []
    for line in open(log):
        try:
            j = json.loads(line)
        except ValueError:
            continue
        f = j.get("fields", j)
        msg = f.get("message", "")
        if msg.startswith("WAL stored") and f.get("last_commit", "-") != "-":
            out.append((when(j["timestamp"]), when(f["last_commit"])))
    return sorted(out)


def when(text):
    """An RFC 3339 UTC time with up to nanoseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6].ljust(6, '0')}+00:00")


def rpo(server, log, since):
    stored = uploads(log)
    # mtime is a timestamp without time zone in the server's zone, UTC here (initdb's).
    mtimes = server.sql(f"SELECT to_char(mtime, 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM pgbench_history "
                        f"WHERE mtime >= '{since.replace(tzinfo=None).isoformat()}' ORDER BY mtime").split()
    lags = []
    for m in mtimes[:: max(1, len(mtimes) // 20000)]:
        t = datetime.fromisoformat(m).replace(tzinfo=timezone.utc)
        held = next((ts for ts, c in stored if c >= t), None)
        if held is not None:
            lags.append((held - t).total_seconds())
    lags.sort()
    if not lags:
        return None
    return statistics.median(lags), lags[int(len(lags) * 0.99) - 1], lags[-1], len(lags)


def wait_for_log(log, needle, timeout):
    deadline = time.time() + timeout
    while needle not in open(log).read():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {needle!r} in {log}")
        time.sleep(0.2)


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    scale = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    base = tempfile.mkdtemp(prefix="bench-pitr-")
    os.chmod(base, 0o755)
    chown(base)
    key = os.path.join(base, "key.txt")
    subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
    os.chmod(key, 0o644)
    recipient = subprocess.run(["age-keygen", "-y", key], capture_output=True, text=True, check=True).stdout.strip()
    store = f"s3://{bench_bucket()}/pitr-{int(time.time())}"
    server = Server(base)
    rows = []
    version = "?"
    try:
        subprocess.run(["pgbench", "-i", "-s", str(scale), "-q", "postgres"], env=server.env(), check=True,
                       capture_output=True)
        version = server.sql("SHOW server_version")
        spool = os.path.join(base, "spool")
        log = os.path.join(base, "archiver.log")
        # A slot of our own keeps all WAL from here on in the server's pg_wal: the by-hand
        # restore replays it from there (local WAL), and pg_receivewal drains it.
        server.sql("SELECT pg_create_physical_replication_slot('bench_rw', true)")
        archiver = Archiver(server, store, recipient, spool, log)
        out = subprocess.run([WORKER, "backup", "postgres", "--physical", "--target", "bench", "--store", store, "-r",
                              recipient, "--pg-bin-dir", PG_BIN], env=server.env(), capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        # The same base by hand, for the restore comparison.
        tar = os.path.join(base, "base.tar")
        subprocess.run(f"{PG_BIN}/pg_basebackup -D - -Ft -X none -c fast > {tar}", shell=True, env=server.env(),
                       check=True, capture_output=True)

        # 1. live
        since = datetime.now(timezone.utc)
        lsn0 = lsn(server.sql("SELECT pg_current_wal_lsn()"))
        cpu0 = archiver.sample_cpu()
        t0 = time.monotonic()
        tps = pgbench(server, seconds)
        live_secs = time.monotonic() - t0
        wal_live = lsn(server.sql("SELECT pg_current_wal_lsn()")) - lsn0
        cpu_live = archiver.sample_cpu() - cpu0
        time.sleep(65)  # one --max-lag: the last commits reach the store
        r = rpo(server, log, since)
        cpu_total = archiver.stop()
        rows.append(("archive, live", f"pgbench {tps:.0f} TPS, {wal_live / 2**20:.0f} MiB WAL in {live_secs:.0f} s "
                     f"({wal_live / 2**20 / live_secs:.1f} MiB/s)", f"archiver CPU {cpu_live:.1f} s "
                     f"({100 * cpu_live / live_secs:.0f}% of a core)"))
        if r:
            rows.append(("RPO (commit → in the store)", f"median {r[0]:.1f} s, p99 {r[1]:.1f} s, max {r[2]:.1f} s",
                         f"{r[3]} commits sampled, --max-lag 60s"))

        # 2. backlog: WAL written while nothing archives
        lsn1 = lsn(server.sql("SELECT pg_current_wal_lsn()"))
        pgbench(server, seconds)
        server.sql("SELECT pg_switch_wal()")
        end = lsn(server.sql("SELECT pg_current_wal_lsn()"))
        backlog = end - lsn1
        seg = 16 << 20
        last_whole = (end // seg) * seg  # everything before the segment being written
        last_name = server.sql(f"SELECT pg_walfile_name('{last_whole >> 32:X}/{last_whole & 0xFFFFFFFF:X}'::pg_lsn - 1)")
        t0 = time.monotonic()
        archiver = Archiver(server, store, recipient, spool, log)
        wait_for_log(log, f'"file":"{last_name}"', 3600)
        w_secs = time.monotonic() - t0
        w_cpu = archiver.stop() - 0.0
        rw_dir = os.path.join(base, "rw")
        os.makedirs(rw_dir)
        chown(rw_dir)
        endpos = f"{last_whole >> 32:X}/{last_whole & 0xFFFFFFFF:X}"
        t0 = time.monotonic()
        p = subprocess.Popen(as_pg([f"{PG_BIN}/pg_receivewal", "-D", rw_dir, "--slot", "bench_rw", "--endpos", endpos,
                                    "--no-loop", "--no-sync"]), env=server.env(), stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        rw_secs = time.monotonic() - t0
        rw_cpu = usage.ru_utime + usage.ru_stime
        drained = end - lsn0  # pg_receivewal's slot holds everything since the base
        rows.append((f"backlog {backlog / 2**20:.0f} MiB: worker → S3", f"{w_secs:.1f} s "
                     f"({backlog / 2**20 / w_secs:.0f} MiB/s)", f"CPU {w_cpu:.1f} s, {w_cpu / (backlog / 2**30):.1f} s/GiB "
                     "(zstd, age, sha256, record scan, S3, signed entries)"))
        rows.append((f"backlog {drained / 2**20:.0f} MiB: pg_receivewal → disk", f"{rw_secs:.1f} s "
                     f"({drained / 2**20 / rw_secs:.0f} MiB/s)", f"CPU {rw_cpu:.1f} s, {rw_cpu / (drained / 2**30):.1f} s/GiB"))

        # 3. restore: base + all the WAL after it, replayed until promoted
        wal_total = end - lsn0
        data1 = os.path.join(base, "r1", "data")
        os.makedirs(os.path.dirname(data1))
        chown(os.path.dirname(data1))
        port = free_port()
        opts = f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={os.path.dirname(data1)} -c shared_buffers=256MB -c max_wal_size=8GB"
        env = dict(ENV)
        env.pop("DR_STORE", None)
        t0 = time.monotonic()
        out = subprocess.run(as_pg([KUBECTL_DR, "restore", "--engine", "postgres", "--target", "bench", "--time",
                                    "latest", "--to-datadir", data1, "--store", store, "--identity", key, "--start",
                                    "--server-options", opts, "--server-bin-dir", PG_BIN]),
                             env=env, capture_output=True, text=True)
        k_secs = time.monotonic() - t0
        if out.returncode != 0:
            sys.exit(f"restore failed:\n{out.stderr}")
        Server.stop(data1)
        # The same with the WAL fetched into pg_wal first, in one process.
        data3 = os.path.join(base, "r3", "data")
        os.makedirs(os.path.dirname(data3))
        chown(os.path.dirname(data3))
        t0 = time.monotonic()
        out = subprocess.run(as_pg([KUBECTL_DR, "restore", "--engine", "postgres", "--target", "bench", "--time",
                                    "latest", "--to-datadir", data3, "--store", store, "--identity", key, "--start",
                                    "--wal-into-datadir", "--server-options",
                                    opts.replace(os.path.dirname(data1), os.path.dirname(data3)).replace(
                                        str(port), str(free_port())), "--server-bin-dir", PG_BIN]),
                             env=env, capture_output=True, text=True)
        p_secs = time.monotonic() - t0
        if out.returncode != 0:
            sys.exit(f"restore failed:\n{out.stderr}")
        Server.stop(data3)
        data2 = os.path.join(base, "r2", "data")
        os.makedirs(data2)
        os.chmod(data2, 0o700)
        chown(os.path.dirname(data2))
        t0 = time.monotonic()
        subprocess.run(["tar", "-x", "-f", tar, "-C", data2], check=True)
        # Local WAL: the server's own pg_wal (the bench_rw slot kept all of it).
        with open(os.path.join(data2, "postgresql.auto.conf"), "a") as f:
            f.write(f"\nrestore_command = 'cp {server.data}/pg_wal/%f %p'\nrecovery_target_action = 'promote'\n")
        open(os.path.join(data2, "recovery.signal"), "w").close()
        chown(os.path.dirname(data2))
        log2 = os.path.join(os.path.dirname(data2), "log")
        subprocess.run(as_pg([f"{PG_BIN}/pg_ctl", "-D", data2, "-l", log2, "-W", "start", "-o", opts.replace(
            os.path.dirname(data1), os.path.dirname(data2)).replace(str(port), str(free_port()))]), check=True,
            capture_output=True)
        while "database system is ready to accept connections" not in open(log2).read():
            time.sleep(0.1)
        h_secs = time.monotonic() - t0
        Server.stop(data2)
        rows.append((f"restore: base + {wal_total / 2**20:.0f} MiB WAL, kubectl dr --start",
                     f"{k_secs:.1f} s", "verify the base, unpack, wal-fetch each segment from S3, replay"))
        rows.append(("restore: the same, --wal-into-datadir", f"{p_secs:.1f} s",
                     "the WAL fetched and checked in one process, then replayed from pg_wal"))
        rows.append(("restore by hand: local tar + local WAL (cp)", f"{h_secs:.1f} s",
                     "tar -x of pg_basebackup's tar, restore_command = cp from pg_wal, replay"))
    finally:
        Server.stop(server.data)
    width = max(len(r[0]) for r in rows)
    print(f"# PostgreSQL {version} point-in-time recovery, pgbench scale {scale} (-c 4 -j 2), {seconds} s per phase")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:<44}  {note}")
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
