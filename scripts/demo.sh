#!/usr/bin/env bash
# The main job end to end on this machine: start the local services, create a sample
# database, back it up (pg_dump → zstd → age → S3), list, verify (integrity, decryption,
# row counts), restore into a new database and compare the counts; then the same for
# OpenBao (raft snapshot → verify → delete secrets → restore → secrets back) and ClickHouse
# (telemetry tables with a materialized view → restore under another database name).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "starting PostgreSQL, the S3 server and OpenBao (scripts/services.sh)"
scripts/services.sh start
# shellcheck disable=SC1091
. .dr-services/env

step "building worker and kubectl-dr"
cargo build --bins --quiet
export PATH="$root/target/debug:$PATH"
# `kubectl dr` when kubectl is installed (plugin discovery needs no cluster), else the binary.
if command -v kubectl >/dev/null; then dr() { kubectl dr "$@"; }; else dr() { kubectl-dr "$@"; }; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step "creating an age key pair; the worker only ever sees the public half"
age-keygen -o "$work/key.txt" 2>/dev/null
recipient=$(age-keygen -y "$work/key.txt")
echo "recipient: $recipient"

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
dr verify latest --identity "$work/key.txt" --against "postgres://$PGUSER@$PGHOST:$PGPORT/$db"

step "kubectl dr restore latest --to a new database ${db}_restored"
dr restore latest --database "$db" --identity "$work/key.txt" --to "postgres://$PGUSER@$PGHOST:$PGPORT/${db}_restored"

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
dr verify latest --engine vault --identity "$work/key.txt" --against "$VAULT_ADDR"

step "deleting secret app/db2, then kubectl dr restore latest --engine vault"
vault -X DELETE "$VAULT_ADDR/v1/demo-kv/metadata/app/db2"
dr restore latest --engine vault --identity "$work/key.txt" --to "$VAULT_ADDR" --yes
echo "app/db2 after the restore: $(vault "$VAULT_ADDR/v1/demo-kv/data/app/db2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["data"])')"

chq() { curl -sS --fail-with-body -u "$CLICKHOUSE_USER:$CLICKHOUSE_PASSWORD" "$CLICKHOUSE_URL/" --data-binary "$1"; }
step "creating ClickHouse database signoz_demo (spans, a per-minute rollup MV) at $CLICKHOUSE_URL"
chq "DROP DATABASE IF EXISTS signoz_demo"
chq "DROP DATABASE IF EXISTS signoz_demo_restored"
chq "CREATE DATABASE signoz_demo"
chq "CREATE TABLE signoz_demo.spans (ts DateTime, service String, duration_ns UInt64, attrs Array(String)) ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (service, ts)"
chq "CREATE TABLE signoz_demo.per_minute (minute DateTime, service String, calls UInt64) ENGINE = SummingMergeTree ORDER BY (service, minute)"
chq "CREATE MATERIALIZED VIEW signoz_demo.per_minute_mv TO signoz_demo.per_minute AS SELECT toStartOfMinute(ts) AS minute, service, count() AS calls FROM signoz_demo.spans GROUP BY minute, service"
chq "INSERT INTO signoz_demo.spans SELECT toDateTime('2026-11-22 00:00:00') + number, concat('svc-', toString(number % 5)), number * 1000, ['k=v'] FROM numbers(200000)"

step "worker backup clickhouse  (one Native part per table, walked for exact counts)"
DR_LOG_FORMAT=text worker backup clickhouse --target demo-signoz --database signoz_demo --recipient "$recipient"

step "kubectl dr verify latest --engine clickhouse --against the live server"
dr verify latest --engine clickhouse --identity "$work/key.txt" --against "$CLICKHOUSE_URL"

step "kubectl dr restore latest --engine clickhouse --database-map signoz_demo=signoz_demo_restored"
dr restore latest --engine clickhouse --identity "$work/key.txt" --to "$CLICKHOUSE_URL" \
  --database-map signoz_demo=signoz_demo_restored --yes

step "done: backed up, verified and restored; counts match"
