#!/usr/bin/env bash
# An MLflow tracking server backed by PostgreSQL, for studies run from several
# machines (a SLURM job's nodes, the login node) where sqlite on a shared
# filesystem is not safe. `make mlflow-server` runs this script.
#
# What it does (Debian, PostgreSQL parts as root):
#   1. installs Debian's `postgresql` when missing and starts its cluster
#      (pg_ctlcluster; no systemd needed);
#   2. creates the database user and the database when missing; the user's
#      password is generated once and kept in $STATE/db_password (mode 0600);
#   3. runs, in the foreground, `mlflow server` with that database as its
#      backend store and an artifact root of its own (artifacts are uploaded
#      through the server: clients need no access to the directory).
# Point studies at it with MLFLOW_TRACKING_URI=http://HOST:PORT.
#
# Settings (environment):
#   MLFLOW_HOST       address to bind (default 127.0.0.1: this machine only)
#   MLFLOW_PORT       port (default 5000)
#   MLFLOW_DB         database name (default mlflow); MLFLOW_DB_USER (default mlflow)
#   MLFLOW_DB_URI     an existing database (postgresql+psycopg2://user:pw@host:port/db; mysql, mssql and
#                     sqlite URIs too): skips 1-2
#   MLFLOW_ARTIFACTS  artifact root, an absolute path (default <repo>/mlflow-artifacts)
#   MLFLOW_WORKERS    server worker processes (default 2)
# Subcommands: `prepare` does 1-2 only and prints the database URI;
#              `drop-db NAME` drops a database (the tests' own ones).
set -euo pipefail
# a failing command inside $(...) (prepare_db, captured as the URI) stops the script too
shopt -s inherit_errexit

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${MLFLOW_SERVER_STATE:-$ROOT/.mlflow_server}
HOST=${MLFLOW_HOST:-127.0.0.1}
PORT=${MLFLOW_PORT:-5000}
DB=${MLFLOW_DB:-mlflow}
DB_USER=${MLFLOW_DB_USER:-mlflow}
ARTIFACTS=${MLFLOW_ARTIFACTS:-$ROOT/mlflow-artifacts}
WORKERS=${MLFLOW_WORKERS:-2}
MLFLOW=${MLFLOW_BIN:-$ROOT/.venv/bin/mlflow}
log() { echo "[mlflow_server] $*" >&2; }
die() { echo "[mlflow_server] $*" >&2; exit 1; }

shown_uri() {  # $1 on one line without its login and query (either may hold the password)
    local u=${1//[$'\r\n']/|} head
    [[ "$u" == *\?* ]] && u="${u%%\?*}?..."
    # the login ends at the LAST @ (a raw @ in a password), scheme or not ("postgresql:/u:pw@h/db" too)
    if [[ "$u" == *@* ]]; then
        head=${u%@*}
        [[ "$head" == *://* ]] && u="${head%%://*}://...@${u##*@}" || u="...@${u##*@}"
    fi
    printf '%s' "$u"
}

name_ok() { [[ "$1" =~ ^[a-z_][a-z0-9_]*$ ]]; }
name_ok "$DB" || die "MLFLOW_DB: expected lower-case letters, digits and _, got '$DB'"
name_ok "$DB_USER" || die "MLFLOW_DB_USER: expected lower-case letters, digits and _, got '$DB_USER'"
[[ "$PORT" =~ ^[0-9]+$ ]] || die "MLFLOW_PORT: expected a port number, got '$PORT'"
[[ "$ARTIFACTS" = /* ]] || die "MLFLOW_ARTIFACTS: expected an absolute path, got '$ARTIFACTS'"

as_postgres() { runuser -u postgres -- "$@"; }
psql_q() { as_postgres psql -X -q -t -A -v ON_ERROR_STOP=1 -d postgres -c "$1"; }

start_postgres() {
    [ "$(id -u)" = 0 ] || die "must run as root to install or start PostgreSQL (or set MLFLOW_DB_URI)"
    if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
        if ! dpkg -s postgresql >/dev/null 2>&1; then
            log "installing postgresql (Debian)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -q >/dev/null
            apt-get install -y -q postgresql >/dev/null
        fi
    fi
    if [ -z "$(pg_lsclusters -h 2>/dev/null)" ]; then
        local ver
        ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
        log "creating PostgreSQL cluster $ver/main"
        pg_createcluster "$ver" main >/dev/null
    fi
    local ver name status
    read -r ver name _ status _ < <(pg_lsclusters -h | head -n1)
    if [ "$status" != online ]; then
        log "starting PostgreSQL $ver/$name"
        pg_ctlcluster "$ver" "$name" start
    fi
    for _ in $(seq 1 60); do psql_q "SELECT 1" >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "PostgreSQL does not answer; see /var/log/postgresql/"
}

prepare_db() {  # prints the database URI on stdout, and nothing else: the caller captures it as the URI
    local pw pg_port
    {   # what the PostgreSQL tools print (pg_ctlcluster: "Removed stale pid file.") goes to stderr
        start_postgres
        mkdir -p "$STATE" && chmod 700 "$STATE"
        if [ ! -s "$STATE/db_password" ]; then
            (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$STATE/db_password")
        fi
        pw=$(cat "$STATE/db_password")
        if [ -z "$(psql_q "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" ]; then
            log "creating database user $DB_USER"
            psql_q "CREATE ROLE $DB_USER LOGIN PASSWORD '$pw'"
        else
            psql_q "ALTER ROLE $DB_USER PASSWORD '$pw'"
        fi
        if [ -z "$(psql_q "SELECT 1 FROM pg_database WHERE datname = '$DB'")" ]; then
            log "creating database $DB"
            psql_q "CREATE DATABASE $DB OWNER $DB_USER"
        fi
        pg_port=$(pg_lsclusters -h | head -n1 | awk '{print $3}')
    } >&2
    # +psycopg2: SQLAlchemy 2.1 would otherwise ask for psycopg 3
    echo "postgresql+psycopg2://$DB_USER:$pw@127.0.0.1:$pg_port/$DB"
}

case "${1:-serve}" in
    prepare) prepare_db; exit 0 ;;
    drop-db)
        name_ok "${2:-}" || die "usage: $0 drop-db NAME"
        psql_q "DROP DATABASE IF EXISTS $2 WITH (FORCE)" >/dev/null
        exit 0 ;;
    serve) ;;
    *) die "unknown subcommand '$1' (allowed: serve, prepare, drop-db NAME)" ;;
esac

URI=${MLFLOW_DB_URI:-$(prepare_db)}
# one line naming a database (SQLAlchemy's dialects): anything else `mlflow server` would take for
# a folder or a file:// URI, a file store, which it refuses or serves without the database's guarantees
[[ "$URI" =~ ^(postgresql|mysql|mssql|sqlite)(\+[a-z0-9]+)?://[^[:space:]]+$ ]] \
    || die "the database URI is not one line of postgresql+psycopg2://user:pw@host:port/db (or mysql, mssql, sqlite; MLFLOW_DB_URI, or what prepare printed): '$(shown_uri "$URI")'"
[ -x "$MLFLOW" ] || die "no mlflow at $MLFLOW: run 'make setup' first"
mkdir -p "$ARTIFACTS"
log "MLflow server on http://$HOST:$PORT: store $(shown_uri "$URI"), artifacts $ARTIFACTS"
# exec: stopping this script's process stops the server
exec "$MLFLOW" server --backend-store-uri "$URI" --artifacts-destination "$ARTIFACTS" \
    --host "$HOST" --port "$PORT" --workers "$WORKERS"
