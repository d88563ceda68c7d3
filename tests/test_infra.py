"""Infrastructure errors reach the user as one line (issue 27, class 2): a tracking URI answered by a
service that is not MLflow, a server that is down or hangs. Each command says so within seconds (the
probe and MLflow's retries are bounded), exits 1, prints no traceback, writes nothing, and a command
that only reads never says that a study stopped."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading

import pytest

from study.core.paths import REPO_ROOT

COMMANDS = [["study", "run", "experiments/sampling.yaml", "--preset", "smoke", "--dry-run"],
            ["study", "status", "experiments/sampling.yaml", "--preset", "smoke"],
            ["study", "run", "experiments/sampling.yaml", "--preset", "smoke"],
            ["study", "ui", "--links-only"],
            ["analysis", "--out", "{tmp}/results"]]


class _Forbidden(http.server.BaseHTTPRequestHandler):
    code = 403

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


class _Html(_Forbidden):
    code = 200

    def do_GET(self):  # noqa: N802
        body = b"<html>a desktop service</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET


def _serve(handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, uri, tmp_path):
    import os

    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, STUDY_RUN_ROOT=str(tmp_path / "runs"),
               STUDY_RAY_RESULTS=str(tmp_path / "ray"), STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts"))
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(k, None)
    args = [a.format(tmp=tmp_path) for a in cmd]
    # MLflow's own retries would wait about 250 s: 90 s is ample for a bounded answer on a loaded machine
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=90)


@pytest.mark.parametrize("kind", ["forbidden", "html", "down", "hangs"])
def test_a_store_that_is_not_an_mlflow_server_is_one_line(kind, tmp_path):
    server = listener = None
    if kind == "forbidden":
        server, uri = _serve(_Forbidden)
    elif kind == "html":
        server, uri = _serve(_Html)
    elif kind == "down":
        uri = f"http://127.0.0.1:{_free_port()}"
    else:  # accepts connections and never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        # every command once over the kinds (a hanging server costs each its whole 15 s probe)
        for cmd in {"down": COMMANDS, "hangs": COMMANDS[:2], "forbidden": COMMANDS[1:4:2] + COMMANDS[4:],
                    "html": COMMANDS[:1] + COMMANDS[2:3]}[kind]:
            res = _run(cmd, uri, tmp_path)
            err = res.stderr.strip()
            assert res.returncode == 1, (cmd, res.returncode, err)
            assert "Traceback" not in err and len(err.splitlines()) == 1, (cmd, err)
            assert uri in err, (cmd, err)
            if kind in ("down", "hangs"):
                assert "does not answer" in err and "make mlflow-server" in err, (cmd, err)
            else:
                assert "not an MLflow tracking server" in err, (cmd, err)
            assert "the study stopped" not in err, (cmd, err)  # nothing ran: nothing stopped
        assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    finally:
        if server is not None:
            server.shutdown()
        if listener is not None:
            listener.close()


def _run_here(cmd, uri, tmp_path, monkeypatch, capsys):
    """``cmd`` (a row of COMMANDS) as :func:`_run` runs it, in this process (its ``main``, the same exit
    status and stderr; no interpreter and MLflow start per command): for the checks made before MLflow opens
    anything."""
    import types

    from analysis.__main__ import main as analysis_main
    from study.cli import main as study_main

    for key, value in dict(MLFLOW_TRACKING_URI=uri, STUDY_RUN_ROOT=str(tmp_path / "runs"),
                           STUDY_RAY_RESULTS=str(tmp_path / "ray"),
                           STUDY_ARTIFACT_ROOT=str(tmp_path / "artifacts")).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(REPO_ROOT)
    capsys.readouterr()
    main = study_main if cmd[0] == "study" else analysis_main
    code = main([a.format(tmp=tmp_path) for a in cmd[1:]])
    out, err = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)


def _store_cases(tmp_path):
    """(name, MLflow tracking URI, expected exit status, words of the message): stores MLflow cannot open,
    which it would retry on for minutes with hundreds of logged lines (issue 27, class 2)."""
    import os

    (tmp_path / "a-folder.db").mkdir()
    (tmp_path / "notes.db").write_text("not a database\n")
    os.mkfifo(tmp_path / "pipe.db")  # a pipe: opening it would block every command for good
    (tmp_path / "dangling.db").symlink_to(tmp_path / "gone" / "x.db")
    (tmp_path / "dangling-dir").symlink_to(tmp_path / "gone")
    return [("sqlite path is a folder", f"sqlite:///{tmp_path / 'a-folder.db'}", 2, "is a directory"),
            ("sqlite path is a pipe", f"sqlite:///{tmp_path / 'pipe.db'}", 2, "not a regular file"),
            ("sqlite path is a dangling link", f"sqlite:///{tmp_path / 'dangling.db'}", 2, "which does not exist"),
            ("sqlite folder is a dangling link", f"sqlite:///{tmp_path / 'dangling-dir' / 'm.db'}", 2,
             "which does not exist"),
            ("sqlite path in /proc", "sqlite:////proc/x.db", 2, "kernel's proc file system"),
            ("sqlite path is another file", f"sqlite:///{tmp_path / 'notes.db'}", 2, "is not an SQLite database"),
            ("sqlite folder is a file", f"sqlite:///{tmp_path / 'notes.db' / 'm.db'}", 2, "cannot be created"),
            ("database server not listening", f"postgresql+psycopg2://mlflow:secret@127.0.0.1:{_free_port()}/x", 1,
             "database server at 127.0.0.1"),
            ("database URI at another service's port", f"postgresql+psycopg2://mlflow:secret@{_greeter()}/x", 1,
             "but not as a postgresql database server"),
            ("MLflow server with credentials in the URI, down", f"http://user:secret@127.0.0.1:{_free_port()}/", 1,
             "does not answer ("),
            # addresses the client cannot read: a traceback from its parser before, the password shown
            ("server password with a '/'", "http://user:sec/ret@127.0.0.1:5000/", 2, "must be percent-encoded"),
            # the parser's error would quote the password's start as the port
            ("database password with a '/'", "postgresql://user:secretPW/x@127.0.0.1:5432/db", 2,
             "must be percent-encoded"),
            ("server password with a '?'", "http://user:secr?etPW@127.0.0.1:5000", 2, "must be percent-encoded"),
            ("database password with a '#'", "postgresql+psycopg2://mlflow:se#cret@127.0.0.1/x", 2,
             "must be percent-encoded"),
            ("password with an '@'", "http://user:se@cret@127.0.0.1:5000/", 2, "more than one '@'"),
            ("port not a number", "http://127.0.0.1:50o0/", 2, "cannot read the address"),
            ("unclosed IPv6 bracket", "http://[::1", 2, "Invalid IPv6 URL"),
            ("server URI without a host", "https:///mlflow", 2, "names no host")] + ([
            # CI's PostgreSQL (cluster/mlflow_server.sh prepare): MLflow would retry the refused login for ~100 s
            ("database login refused", "postgresql+psycopg2://nobody:secret@127.0.0.1:5432/x", 2,
             "refuses the connection")] if _postgres_here() else [])


def _greeter() -> str:
    """host:port of a service that answers every connection with an HTTP error and hangs up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve():
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}"


def _postgres_here() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("uri, shown", [
    ("http://user:secret@host:5000/", "http://user:***@host:5000/"),
    ("postgresql+psycopg2://mlflow:secret@127.0.0.1:5432/x", "postgresql+psycopg2://mlflow:***@127.0.0.1:5432/x"),
    ("http://user:sec/ret@host/", "http://user:***@host/"),  # the parser reads "sec" as the port
    ("http://user:se#cr?et@host/", "http://user:***@host/"),
    ("http://user:se@cret@host/", "http://user:***@host/"),
    ("mysql+pymysql://u:secret@[::1]:3306/db", "mysql+pymysql://u:***@[::1]:3306/db"),
    ("http://user@host/", "http://user@host/"),  # no password
    ("http://host:5000/a@b", "http://host:5000/a@b"),  # an '@' in the path, no user
    ("sqlite:////tmp/a@b:c/x.db", "sqlite:////tmp/a@b:c/x.db"),
])
def test_a_uri_is_shown_without_its_password(uri, shown):
    from analysis.uri import shown_uri

    assert shown_uri(uri) == shown


def test_a_store_that_cannot_be_opened_is_one_line(tmp_path, monkeypatch, capsys):
    """Every command, on each kind of store it cannot open: one line naming the setting and the cause,
    the password hidden, nothing written, at once (each command's main in this process; the commands as
    processes: the tests of a server that is not MLflow's, above)."""
    for name, uri, code, words in _store_cases(tmp_path):
        for cmd in (COMMANDS[0], COMMANDS[1], COMMANDS[4]) if code == 2 else COMMANDS[:3] + COMMANDS[4:]:
            res = _run_here(cmd, uri, tmp_path, monkeypatch, capsys)
            err = res.stderr.strip()
            assert res.returncode == code, (name, cmd, res.returncode, err)
            assert "Traceback" not in err and len(err.splitlines()) == 1, (name, cmd, err)
            assert words in err and "MLFLOW_TRACKING_URI" in err, (name, cmd, err)
            assert not any(w in err for w in ("secret", "cret", "sec/", "secr", "PW")), (name, cmd, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-folder.db", "dangling-dir", "dangling.db", "notes.db",
                                                          "pipe.db"]
    assert list((tmp_path / "a-folder.db").iterdir()) == []


@pytest.mark.parametrize("variable", ["STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT"])
def test_a_folder_the_run_would_write_to_is_checked_before_anything_is_written(variable, tmp_path, capsys,
                                                                               monkeypatch):
    """A run folder that cannot be made (a file in its way): `run` and its dry run say so at once, exit 2,
    and write nothing (no store, no run, no folder)."""
    from study.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for key, value in {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
                       "STUDY_RUN_ROOT": str(tmp_path / "runs"), "STUDY_RAY_RESULTS": str(tmp_path / "ray"),
                       "STUDY_ARTIFACT_ROOT": str(tmp_path / "artifacts"), variable: str(blocker / "sub")}.items():
        monkeypatch.setenv(key, value)
    for extra in (["--dry-run"], []):
        assert main(["run", str(REPO_ROOT / "experiments" / "sampling.yaml"), "--preset", "smoke", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"${variable}" in err and "is a file, not a folder" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_an_empty_file_is_no_store_and_reading_it_writes_nothing(tmp_path):
    """An empty file where the store should be is no store yet: `status`, the dry run and the analysis say
    so and leave it empty (reading it through MLflow would make the tables, and a lock beside it)."""
    store = tmp_path / "empty.db"
    store.write_bytes(b"")
    uri = f"sqlite:///{store}"
    for cmd, code, words in ((COMMANDS[0], 0, "no store at"), (COMMANDS[1], 0, "no cell of this study has run"),
                             (COMMANDS[4], 2, "is empty")):
        res = _run(cmd, uri, tmp_path)
        assert res.returncode == code and words in res.stdout + res.stderr, (cmd, res.returncode, res.stdout, res.stderr)
    assert store.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_the_store_check_keeps_this_processs_sqlite_locks(tmp_path):
    """The sqlite store check reads the file through sqlite, never with a descriptor of its own: closing one
    would drop every POSIX lock of this process's open connections on the file, and another process would
    then checkpoint and delete the write-ahead log under them (a corrupt store: "file is not a database",
    seen in a study whose analysis ran mid-study). Here: a connection holds the store; after the check,
    another process still cannot take the store for itself (switch its journal mode)."""
    import sqlite3

    from analysis.uri import store_problem

    db = tmp_path / "mlflow.db"
    held = sqlite3.connect(db)
    held.execute("PRAGMA journal_mode=WAL")
    held.execute("CREATE TABLE t (x)")
    held.commit()
    held.execute("SELECT * FROM t").fetchall()

    def other_process_takes_it() -> str:
        code = ("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1], timeout=0.2)\ntry:\n"
                "    print(c.execute('PRAGMA journal_mode=DELETE').fetchone()[0])\n"
                "except sqlite3.OperationalError as e:\n    print(e)")
        return subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                              timeout=60).stdout.strip()

    assert other_process_takes_it() == "database is locked"
    for write in (False, True):
        assert store_problem(f"sqlite:///{db}", write=write) is None
    assert other_process_takes_it() == "database is locked"  # this process's locks are still there
    (tmp_path / "notes.db").write_text("not a database\n")
    assert "is not an SQLite database" in store_problem(f"sqlite:///{tmp_path / 'notes.db'}")[0]
    held.close()


def test_a_read_only_store_is_one_line_for_every_command(tmp_path, monkeypatch, capsys):
    """An existing sqlite store on a read-only mount (or without write permission): MLflow writes it when
    it opens it, even to read, and retried for ~105 s before a traceback; now every command, those that
    only read included, says so in one line at once, exit 1, and writes nothing."""
    import os
    import subprocess

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    db = sqlite3_store(src / "m.db")
    mounted = os.geteuid() == 0
    if mounted:  # root passes every permission check: a read-only bind mount of the folder
        subprocess.run(["mount", "--bind", str(src), str(ro)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True)
    else:
        ro.rmdir()
        src.rename(ro)
        (ro / db.name).chmod(0o444)
        ro.chmod(0o555)
    try:
        before = (ro / "m.db").read_bytes()
        for cmd in COMMANDS[:2] + COMMANDS[3:]:
            res = _run_here(cmd, f"sqlite:///{ro / 'm.db'}", tmp_path, monkeypatch, capsys)
            err = res.stderr.strip()
            assert res.returncode == 1, (cmd, res.returncode, err)
            assert "Traceback" not in err and len(err.splitlines()) == 1, (cmd, err)
            assert "is read-only" in err and "MLFLOW_TRACKING_URI" in err, (cmd, err)
        # a new store in the read-only folder: the machine's fault too (exit 1), for the commands that write
        res = _run_here(COMMANDS[0], f"sqlite:///{ro / 'new.db'}", tmp_path, monkeypatch, capsys)
        assert res.returncode == 1 and "cannot be created" in res.stderr and "not writable" in res.stderr, res.stderr
        assert (ro / "m.db").read_bytes() == before and sorted(p.name for p in ro.iterdir()) == ["m.db"]
        assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def sqlite3_store(path):
    """A small sqlite database at ``path`` (the checks run before MLflow reads its tables)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE experiments (experiment_id INTEGER)")
    return path
