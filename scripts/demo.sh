#!/usr/bin/env bash
# The main job end to end on this machine: start the local services, create a sample
# database, back it up (pg_dump → zstd → age → S3), list, verify (integrity, decryption,
# row counts), restore into a new database and compare the counts; then the same for
# OpenBao (raft snapshot → verify → delete secrets → restore → secrets back) and ClickHouse 26
# (a SigNoz-like schema: logs, traces, metrics with their views → restore under other names)
# and Redis (RDB as a replica gets it → FLUSHALL → restore as its primary); finally the weekly
# drill (`worker drill`) over all of them, into scratch databases it drops again.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "starting PostgreSQL, the S3 server, OpenBao and ClickHouse 18.16 and 26 (scripts/services.sh)"
scripts/services.sh start
# shellcheck disable=SC1091
. .dr-services/env

step "building worker and kubectl-dr"
cargo build --bins --quiet
export PATH="$root/target/debug:$PATH"
# `kubectl dr` when kubectl is installed (plugin discovery needs no cluster), else the binary.
if command -v kubectl >/dev/null; then dr() { kubectl dr "$@"; }; else dr() { kubectl-dr "$@"; }; fi

# The demo's key stays (beside the services, never in git) so its backups can be used again.
key=$root/.dr-services/demo-key.txt
if [ ! -f "$key" ]; then
  step "creating an age key pair in $key; the worker only ever sees the public half"
  (umask 077; age-keygen -o "$key" 2>/dev/null)
else
  step "reusing the demo's age key $key; the worker only ever sees the public half"
fi
recipient=$(age-keygen -y "$key")
echo "recipient: $recipient"
# The signing key comes from the services' env (scripts/services.sh makes it once), as the
# Secret kube-dr-signing gives it to the backup pods; readers trust its public half.
echo "signing key: $DR_SIGNING_KEY_FILE; trusted signer (DR_SIGNERS): $DR_SIGNERS"

db=shop_demo
step "creating the sample database $db (users, posts, as in the runbook)"
psql -q -v ON_ERROR_STOP=1 -d postgres <<SQL
DROP DATABASE IF EXISTS $db WITH (FORCE);
DROP DATABASE IF EXISTS ${db}_restored WITH (FORCE);
CREATE DATABASE $db;
\c $db
CREATE TABLE users (id bigserial PRIMARY KEY, username text UNIQUE NOT NULL, email text,
                    password_hash text, created_at timestamptz DEFAULT now());
CREATE TABLE posts (id bigserial PRIMARY KEY, title text, content text, author text,
                    created_at timestamptz DEFAULT now(), updated_at timestamptz);
CREATE INDEX idx_posts_author ON posts (author);
INSERT INTO users (username, email, password_hash)
  SELECT 'user' || g, 'user' || g || '@example.com', md5(g::text) FROM generate_series(1, 20000) g;
INSERT INTO posts (title, content, author)
  SELECT 'post ' || g, repeat('lorem ipsum ', 1 + g % 50), 'user' || (1 + g % 20000) FROM generate_series(1, 100000) g;
SQL

export DR_STORE="s3://$DR_TEST_BUCKET/demo-$(date +%Y%m%d%H%M%S)"
step "worker backup postgres  (store: $DR_STORE)"
DR_LOG_FORMAT=text worker backup postgres --target demo --database "$db" --globals --recipient "$recipient"

step "kubectl dr list"
dr list

step "kubectl dr verify latest --identity … --against the live database"
dr verify latest --identity "$key" --against "postgres://$PGUSER@$PGHOST:$PGPORT/$db"

step "kubectl dr restore latest --globals --to a new database ${db}_restored (roles first: existing ones are skipped)"
dr restore latest --database "$db" --globals --identity "$key" --to "postgres://$PGUSER@$PGHOST:$PGPORT/${db}_restored"

export VAULT_ADDR=$DR_DEMO_VAULT_ADDR VAULT_TOKEN_FILE=$DR_DEMO_VAULT_TOKEN_FILE
vault() { curl -fsS -H "X-Vault-Token: $(cat "$VAULT_TOKEN_FILE")" "$@"; }
step "writing sample secrets into OpenBao at $VAULT_ADDR"
vault -X POST -d '{"type":"kv","options":{"version":"2"}}' "$VAULT_ADDR/v1/sys/mounts/demo-kv" 2>/dev/null || true
for i in 1 2 3; do
  vault -X POST -d "{\"data\":{\"password\":\"demo-secret-$i\"}}" "$VAULT_ADDR/v1/demo-kv/data/app/db$i" >/dev/null
done

step "worker backup vault  (raft snapshot from the active node)"
DR_LOG_FORMAT=text worker backup vault --target demo-vault --recipient "$recipient"

step "kubectl dr list"
dr list

step "kubectl dr verify latest --engine vault --identity … --against the live server"
dr verify latest --engine vault --identity "$key" --against "$VAULT_ADDR"

step "deleting secret app/db2, then kubectl dr restore latest --engine vault"
vault -X DELETE "$VAULT_ADDR/v1/demo-kv/metadata/app/db2"
dr restore latest --engine vault --identity "$key" --to "$VAULT_ADDR" --yes
echo "app/db2 after the restore: $(vault "$VAULT_ADDR/v1/demo-kv/data/app/db2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["data"])')"

# ClickHouse 26 (the engine of chdb-core behind scripts/chdb-front.py) with a SigNoz-like
# schema: Map(LowCardinality(String), …) attributes, aggregating views, sketches.
CH26=$DR_CLICKHOUSE26_URL
chq() { curl -sS --fail-with-body -u "$CLICKHOUSE_USER:$CLICKHOUSE_PASSWORD" "$CH26/" --data-binary "$1"; }
sql_file() { # FILE: runs its ;-separated statements with the demo's database names
  python3 - "$1" <<'PY' | while IFS= read -r -d '' stmt; do chq "$stmt" >/dev/null; done
import sys
text = open(sys.argv[1]).read()
for k, v in {"logs": "signoz_logs", "traces": "signoz_traces", "metrics": "signoz_metrics", "rows": "50000"}.items():
    text = text.replace("{" + k + "}", v)
text = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("--"))
for stmt in (s.strip() for s in text.split(";\n")):
    if stmt:
        sys.stdout.write(stmt.rstrip(";") + "\0")
PY
}
step "creating a SigNoz-like schema on ClickHouse $(chq 'SELECT version()') at $CH26 (logs, traces, metrics, views, sketches)"
for db in signoz_logs signoz_traces signoz_metrics signoz_logs_restored signoz_traces_restored signoz_metrics_restored; do
  chq "DROP DATABASE IF EXISTS $db"
done
sql_file "$root/tests/fixtures/signoz-like.sql"
sql_file "$root/tests/fixtures/signoz-like-data.sql"

step "worker backup clickhouse  (Native parts walked for exact counts; aggregate states as TabSeparated)"
CLICKHOUSE_URL=$CH26 DR_LOG_FORMAT=text worker backup clickhouse --target demo-signoz \
  --database signoz_logs --database signoz_traces --database signoz_metrics --recipient "$recipient"

step "kubectl dr verify latest --engine clickhouse --against the live server"
dr verify latest --engine clickhouse --identity "$key" --against "$CH26"

step "kubectl dr restore latest --engine clickhouse --database-map signoz_*=signoz_*_restored"
dr restore latest --engine clickhouse --identity "$key" --to "$CH26" --yes \
  --database-map signoz_logs=signoz_logs_restored --database-map signoz_traces=signoz_traces_restored \
  --database-map signoz_metrics=signoz_metrics_restored

step "starting a Redis (redis-server, password-protected) with keys of every type"
# It stays running after the demo, like the other services (scripts/services.sh stop ends it),
# so the rebuild at the end can be tried again by hand.
redis_dir=$root/.dr-services/demo-redis
if [ -f "$redis_dir/pid" ]; then kill "$(cat "$redis_dir/pid")" 2>/dev/null || true; sleep 0.5; fi
rm -rf "$redis_dir"; mkdir -p "$redis_dir"
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis_pw=demo-Redis-Secret
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$redis_dir" --save "" --appendonly no \
  --repl-diskless-sync-delay 0 --requirepass "$redis_pw" --logfile "$redis_dir/log" --daemonize yes --pidfile "$redis_dir/pid"
rcli() { REDISCLI_AUTH=$redis_pw redis-cli -p "$redis_port" "$@"; }
for _ in $(seq 1 50); do [ "$(rcli ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
rcli mset user:1 ann user:2 bob >/dev/null
rcli hset session:42 user ann cart 3 >/dev/null
rcli expire session:42 3600 >/dev/null
rcli rpush queue a b c >/dev/null
rcli zadd leaderboard 10 ann 7 bob >/dev/null
rcli xadd events '*' kind login user ann >/dev/null
export REDIS_URL=redis://127.0.0.1:$redis_port REDIS_PASSWORD=$redis_pw
rcli info keyspace | tail -n +2

step "worker backup redis  (the RDB a replica would get; CRC64 and keys per db checked as it streams)"
DR_LOG_FORMAT=text worker backup redis --target demo-cache --recipient "$recipient"

step "kubectl dr verify latest --engine redis --against the live server"
dr verify latest --engine redis --identity "$key" --against "$REDIS_URL"

step "FLUSHALL, then kubectl dr restore latest --engine redis --clean (a full sync from this machine)"
rcli flushall >/dev/null
rcli set written-after-the-disaster 1 >/dev/null
dr restore latest --engine redis --identity "$key" --to "$REDIS_URL" --clean --yes
echo "user:1 after the restore: $(rcli get user:1); session:42 expires in $(rcli ttl session:42) s; role: $(rcli info replication | grep -o 'role:[a-z]*')"

step "worker drill: every target's newest backup restored into <db>__drill scratch databases, counted, dropped (Vault and Redis: integrity and content checked)"
DR_LOG_FORMAT=text worker drill --identity "$key" \
  --to "postgres=postgres://$PGUSER@$PGHOST:$PGPORT" --to "clickhouse=$CH26" > /dev/null

# The rebuild day, planned against the same servers: every backup checked, every destination
# inspected, nothing changed. The same line is printed below for trying it again.
rebuild=(restore --all --identity "$key" --dry-run --clean --state "$root/.dr-services/demo-rebuild.json"
  --to "postgres=postgres://$PGUSER@$PGHOST:$PGPORT" --to "vault=$VAULT_ADDR"
  --to "clickhouse=$CH26" --to "redis=$REDIS_URL")
step "kubectl dr restore --all --dry-run: the rebuild day, planned (nothing changes)"
dr "${rebuild[@]}"

step "done: backed up, verified, restored and drilled; counts match"
cat <<EOF
The backups stay in $DR_STORE, and the services (Redis too) keep running; look again with
  . .dr-services/env && export DR_STORE=$DR_STORE
  target/debug/kubectl-dr list          # or kubectl dr …, after scripts/install.sh
  target/debug/kubectl-dr verify latest --engine postgres --identity $key
  VAULT_TOKEN_FILE=$VAULT_TOKEN_FILE REDIS_PASSWORD=$redis_pw \\
    target/debug/kubectl-dr ${rebuild[*]}
Stop the services with: scripts/services.sh stop   (their data stays in .dr-services/)
EOF
