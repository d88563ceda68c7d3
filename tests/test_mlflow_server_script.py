"""``cluster/mlflow_server.sh`` against stand-in PostgreSQL tools (no database, no root, no server).

The script captures ``prepare_db``'s standard output as the database URI. Whatever a
PostgreSQL tool prints there must not end up in it: with a stale pid file after a crash,
``pg_ctlcluster ... start`` prints "Removed stale pid file.", and the two-line "URI" then
made ``mlflow server`` fall back to a file store and exit. Stand-ins on ``PATH`` play a
cluster that is down with such a pid file; the server binary is a stand-in that records
its arguments.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "cluster" / "mlflow_server.sh"

STUBS = {
    # root, as the script requires for PostgreSQL
    "id": 'if [ "${1:-}" = -u ]; then echo 0; else /usr/bin/id "$@"; fi',
    # a cluster that is down until pg_ctlcluster starts it
    "pg_lsclusters": 'if [ -e "$STUB_STATE/started" ]; then s=online; else s=down; fi\n'
                     'echo "15 main 5432 $s postgres /var/lib/postgresql/15/main /var/log/pg.log"',
    # what the real one prints on stdout after an unclean stop
    "pg_ctlcluster": 'touch "$STUB_STATE/started"; echo "Removed stale pid file."',
    "runuser": 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"',
    # chatty, as a psql without -q would be: every statement echoes its tag on stdout
    "psql": 'for a in "$@"; do q=$a; done\n'
            'case "$q" in "SELECT 1") echo 1 ;; SELECT*) ;; CREATE\\ ROLE*) echo "CREATE ROLE" ;;\n'
            '  ALTER*) echo "ALTER ROLE" ;; CREATE\\ DATABASE*) echo "CREATE DATABASE" ;; esac',
    # the server: records the arguments it was given
    "mlflow": 'printf "%s\\n" "$@" > "$STUB_STATE/mlflow-args"',
}


def _stubbed(tmp_path: Path, **overrides: str) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {**STUBS, **overrides}.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_STATE=str(state),
                MLFLOW_SERVER_STATE=str(tmp_path / "server-state"), MLFLOW_BIN=str(bin_dir / "mlflow"),
                MLFLOW_ARTIFACTS=str(tmp_path / "artifacts"), MLFLOW_PORT="5099")


def test_prepare_prints_only_the_uri_when_postgresql_starts_with_a_stale_pid_file(tmp_path):
    env = _stubbed(tmp_path)
    res = subprocess.run(["bash", str(SCRIPT), "prepare"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("postgresql+psycopg2://mlflow:"), res.stdout
    assert lines[0].endswith("@127.0.0.1:5432/mlflow")
    # the tools' own words went to stderr, where the user still sees them
    assert "Removed stale pid file." in res.stderr and "CREATE DATABASE" in res.stderr


def test_serve_hands_the_server_the_database_uri_and_nothing_else(tmp_path):
    env = _stubbed(tmp_path)
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    args = (Path(env["STUB_STATE"]) / "mlflow-args").read_text().splitlines()
    uri = args[args.index("--backend-store-uri") + 1]
    assert uri.startswith("postgresql+psycopg2://mlflow:") and uri.endswith("@127.0.0.1:5432/mlflow"), args


def test_a_database_uri_that_is_not_one_line_is_refused_before_the_server_starts(tmp_path):
    env = _stubbed(tmp_path)
    for bad in ("Removed stale pid file.\npostgresql+psycopg2://u:secret@h:5432/db", "/var/lib/mlruns",
                "file:///var/lib/mlruns", "postgresql://u:se@cret@h:5432/db ", "postgresql://u:secret@h/db\r",
                "http://h:5432/db?user=u&password=secret", "postgresql:/u:secret@h/db", "u:secret@h:5432/db"):
        res = subprocess.run(["bash", str(SCRIPT)], env=dict(env, MLFLOW_DB_URI=bad), capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 1, res.stderr
        assert "the database URI is not one line of postgresql+psycopg2://" in res.stderr, res.stderr
        assert "secret" not in res.stderr and "cret" not in res.stderr, res.stderr  # no part of a password
        assert len(res.stderr.splitlines()) == 1, res.stderr  # one line, whatever the URI held (\n, \r)
        assert not (Path(env["STUB_STATE"]) / "mlflow-args").exists()  # the server never started


def test_a_database_uri_is_logged_without_its_password(tmp_path):
    env = _stubbed(tmp_path)
    for uri, shown in [("postgresql+psycopg2://u:se@cret@h:5432/db", "store postgresql+psycopg2://...@h:5432/db,"),
                       ("postgresql://h:5432/db?user=u&password=secret", "store postgresql://h:5432/db?...,"),
                       ("sqlite:////tmp/mlflow.db", "store sqlite:////tmp/mlflow.db,")]:
        res = subprocess.run(["bash", str(SCRIPT)], env=dict(env, MLFLOW_DB_URI=uri), capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0 and shown in res.stderr, res.stderr
        assert "cret" not in res.stderr, res.stderr
        args = (Path(env["STUB_STATE"]) / "mlflow-args").read_text().splitlines()
        assert args[args.index("--backend-store-uri") + 1] == uri  # the server gets the URI itself


def test_a_failing_postgresql_step_stops_serve_before_the_server_starts(tmp_path):
    """prepare_db runs inside $(...): without inherit_errexit a failed CREATE DATABASE went on to start
    the server on a database that does not exist."""
    failing = STUBS["psql"].replace('CREATE\\ DATABASE*) echo "CREATE DATABASE"',
                                    'CREATE\\ DATABASE*) echo "ERROR: permission denied" >&2; exit 3')
    assert failing != STUBS["psql"]
    env = _stubbed(tmp_path, psql=failing)
    for argv in (["bash", str(SCRIPT)], ["bash", str(SCRIPT), "prepare"]):
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 3, (argv, res.returncode, res.stderr)
        assert "permission denied" in res.stderr
        assert not (Path(env["STUB_STATE"]) / "mlflow-args").exists()
