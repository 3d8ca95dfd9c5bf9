"""Measurement helpers shared by the benchmark scripts: the services' environment, and a
shell command's wall time and peak memory (RSS of its whole process tree, sampled every
20 ms, since a pipeline's cost is the sum of its members)."""
import os, subprocess, sys, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_env():
    env = dict(os.environ)
    path = os.path.join(env.get("DR_SERVICES_DIR", os.path.join(ROOT, ".dr-services")), "env")
    for line in open(path):
        if line.startswith("export "):
            k, v = line[7:].strip().split("=", 1)
            env[k] = v.strip("'")
    return env


ENV = load_env()
PG_BIN = ENV["DR_PG_BIN_DIR"]

# A word list the benchmark databases draw their text from (a temporary table `words`).
WORDS_SQL = """CREATE TABLE words AS SELECT w, row_number() OVER () AS i FROM unnest(string_to_array(
  'kubernetes cluster backup restore vault secret postgres table index query transaction snapshot replica '
  'node pod service ingress volume claim storage bucket object encryption key manifest retention policy '
  'daily weekly monthly error warning latency throughput request response user session token payment '
  'order invoice customer product inventory shipment address email phone status pending active closed', ' ')) w;"""


def psql(db, sql):
    subprocess.run([f"{PG_BIN}/psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql], env=ENV, check=True)


def query(db, sql):
    return subprocess.run([f"{PG_BIN}/psql", "-tAc", sql, "-d", db], env=ENV, capture_output=True, text=True,
                          check=True).stdout.strip()


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks():
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def measure(cmd, **kw):
    """Runs a shell command; returns (seconds, peak tree RSS MiB, peak single-process RSS MiB)."""
    return measure_with_cpu(cmd, **kw)[:3]


def measure_with_cpu(cmd, **kw):
    """As measure, plus how busy the machine's cores were meanwhile (0..1, every process,
    the database server included): 1.0 means more parallelism cannot help here."""
    busy0, total0 = cpu_ticks()
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], env=ENV, **kw)
    peak_tree = peak_one = 0
    done = threading.Event()

    def sample():
        nonlocal peak_tree, peak_one
        while not done.is_set():
            sizes = [rss_kib(p) for p in tree(proc.pid)]
            peak_tree = max(peak_tree, sum(sizes))
            peak_one = max([peak_one] + sizes)
            time.sleep(0.02)

    t = threading.Thread(target=sample)
    t.start()
    rc = proc.wait()
    done.set()
    t.join()
    secs = time.monotonic() - start
    if rc != 0:
        sys.exit(f"benchmark step failed ({rc}): {cmd}")
    busy1, total1 = cpu_ticks()
    return secs, peak_tree / 1024, peak_one / 1024, (busy1 - busy0) / max(1, total1 - total0)




def bench_bucket():
    """A bucket of the benchmarks' own: the tests' bucket holds thousands of objects, and
    s3s-fs walks a bucket's directory to answer a listing, which would be timed too."""
    name = "dr-bench"
    subprocess.run(f"aws --endpoint-url $AWS_ENDPOINT_URL s3 mb s3://{name}", shell=True, env=ENV,
                   capture_output=True)
    return name
