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
