"""Which tracking URIs the toolkit can use, and how it talks to an sqlite store.

Standard library only at import: the CLI and the analysis check ``MLFLOW_TRACKING_URI`` with
:func:`uri_problem` before MLflow would fail on it with a traceback.

The sqlite policy (:func:`use_sqlite_policy`, applied by every client the toolkit makes): a
study's driver is the store's one writer of cell runs (the analysis writes its parent run's
results, another study its own runs); writes are short transactions. Each sqlite connection
waits up to :data:`SQLITE_BUSY_TIMEOUT_S` for a lock another process holds (MLflow sets 20 s on
each of its sessions; the hook here sets the same on every connection, the ones opened outside
a session included, instead of sqlite's 5 s), and the database is put in write-ahead-log mode
when it lies on a local file system, so that readers (``status``, the analysis, ``make ui``)
and the writer never block each other. WAL needs memory shared between the processes that open
the file, which a network file system (NFS, Lustre, GPFS, ...) does not give: there the
database keeps sqlite's rollback journal, and a cluster is better served by a tracking server
(``make mlflow-server``). A process killed inside a transaction leaves it rolled back in both
modes. No transaction is left open by a signal: handlers only record (``study.interrupt``).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import threading

# database schemes -> the module of the driver SQLAlchemy (as MLflow calls it) picks when the URI names none
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "MySQLdb"}
PLAIN = ("sqlite:///", "http://", "https://")


def uri_problem(uri: str) -> str | None:
    """Why MLflow could not use ``uri`` as this toolkit's store, or None when it can.

    A plain path or ``file:`` (MLflow's file store: no SQL, so none of the toolkit's run queries)
    and unknown schemes are refused; a database scheme needs its driver's module installed
    (``postgresql+psycopg2://`` names one; plain ``postgresql://`` means psycopg).
    """
    if uri.startswith("sqlite:///"):
        path, _, query = uri[len("sqlite:///"):].partition("?")
        if query:
            # MLflow hands the path alone to sqlite: mode=ro, cache=... would be dropped without a word
            return (f"an sqlite URI takes no options (got ?{query}: MLflow would ignore them, and write a store "
                    "declared read-only): remove them")
        if path != ":memory:" and not path.startswith("/"):
            return (f"an sqlite URI needs an absolute path: sqlite:////<absolute path> (four slashes; got "
                    f"{shown_uri(uri)!r}, which would name another store in each folder a command runs from)")
        return None
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    dialect, _, driver = scheme.partition("+")
    if scheme in ("http", "https") or dialect in DEFAULT_DRIVERS:
        problem = _address_problem(uri, dialect)
        if problem:
            return problem
    if uri.startswith(PLAIN):
        return None
    if dialect in DEFAULT_DRIVERS:
        module = driver or DEFAULT_DRIVERS[dialect]
        if importlib.util.find_spec(module) is None:
            other = {"postgresql": "psycopg2", "mysql": "pymysql"}[dialect]
            if other != module and importlib.util.find_spec(other) is not None:
                instead = f"name an installed driver: {dialect}+{other}://"
            else:
                instead = f"install one (pip install {other}, then {dialect}+{other}://)"
            return (f"{scheme}:// needs the Python module {module}, which is not installed ({instead}, or use an "
                    "MLflow server: http://...)")
        return None
    return ("must be sqlite:///<absolute path of a file>, postgresql://..., mysql://... or http(s)://<server> "
            f"(got {shown_uri(uri)!r})")


def _address_problem(uri: str, dialect: str) -> str | None:
    """Why the host and port of a server's or database's URI cannot be read (what the client would fail on
    with a traceback, or read as another address), or None. A character of the user or password that
    URIs reserve (``/ ? # @ : [ ]``) must be percent-encoded (``%2F``, ``%40``, ...)."""
    from urllib.parse import urlsplit

    shown = shown_uri(uri)
    encode = ("; a reserved character (/ ? # @ : [ ]) in the user or password must be percent-encoded "
              "(%2F %3F %23 %40 %3A %5B %5D)") if "@" in uri else ""
    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        # the parser's words quote what it read as the port: with a user in the URI, that may be the
        # password (or its start, up to the reserved character), so they are not shown then
        why = "" if "@" in uri else f" ({err})"
        return f"cannot read the address in {shown!r}{why}{encode}"
    if parts.netloc.count("@") > 1:
        return f"cannot read the address in {shown!r} (more than one '@'){encode}"
    if dialect in ("http", "https"):
        if not host:
            return f"names no host: {dialect}://<host>[:<port>][/<path>] (got {shown!r})"
        if port == 0:
            return f"port 0 is no server's port (got {shown!r})"
    elif port == 0 or (not host and parts.netloc.rpartition("@")[2]):
        return f"cannot read the address in {shown!r}{encode}"
    return None


SQLITE_BUSY_TIMEOUT_S = 20  # MLflow's own value for its sessions (mlflow.store.db.utils)
# file systems whose locking or shared memory WAL cannot rely on (fstype as /proc/mounts names it)
NETWORK_FILE_SYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "glusterfs",
                        "fuse.glusterfs", "ceph", "fuse.ceph", "fuse.sshfs", "9p", "afs", "ocfs2")
_policy_lock = threading.Lock()
_policy_on = False


def file_system(path: str) -> str:
    """The type of the file system holding ``path`` (the longest mount point above it in
    /proc/mounts), or '' where that cannot be read."""
    try:
        with open("/proc/mounts") as fh:
            mounts = [line.split()[1:3] for line in fh if len(line.split()) >= 3]
    except OSError:
        return ""
    real = os.path.realpath(path)
    best, kind = "", ""
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind


def _on_connect(dbapi_connection, connection_record) -> None:
    import sqlite3

    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
        files = [row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main" and row[2]]
        if files and file_system(files[0]) not in NETWORK_FILE_SYSTEMS:
            cursor.execute("PRAGMA journal_mode = WAL")  # persistent: a no-op once the file is in WAL mode
    finally:
        cursor.close()


def use_sqlite_policy() -> None:
    """Apply the sqlite policy of the module docstring to every SQLAlchemy connection this process
    opens from now on (an event listener on all engines; idempotent)."""
    global _policy_on
    with _policy_lock:
        if _policy_on:
            return
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        event.listen(Engine, "connect", _on_connect)
        _policy_on = True


# ------------------------------------------------------------------ a tracking server

# MLflow's HTTP client retries a request 7 times with backoff (about 250 s in silence when the server is
# down); the toolkit's commands bound it unless the user set these: about 14 s of retries, 10 s a request
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
PROBE_TIMEOUTS_S = (5.0, 9.0)  # two tries, 1 s apart: a verdict within 15 s (a busy server gets the longer one)
SERVER_HINT = "start one with `make mlflow-server` (127.0.0.1:5000) or point MLFLOW_TRACKING_URI at a running one"


class ServerProblem(Exception):
    """The tracking server does not answer (``down``), or something else answers at its address."""

    def __init__(self, message: str, down: bool):
        super().__init__(message)
        self.down = down


def bound_http_retries() -> None:
    """Set :data:`HTTP_RETRY_DEFAULTS` where the environment does not set them."""
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def check_server(uri: str) -> None:
    """For an ``http(s)://`` store: that an MLflow tracking server answers there, within 15 s; else
    :class:`ServerProblem` naming the address, the cause and what to do. Standard library only."""
    import json
    import time
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    request, context = _probe_request(uri)
    last = ""
    for attempt, timeout in enumerate(PROBE_TIMEOUTS_S):
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                body = resp.read(1 << 16)
            try:
                json.loads(body or b"{}")
            except ValueError:
                raise ServerProblem(f"MLFLOW_TRACKING_URI={shown_uri(uri)} is answered by something that is not an MLflow "
                                    f"tracking server (HTTP {resp.status}, not JSON): another service on that "
                                    f"port? {SERVER_HINT}", down=False) from None
            return
        except urllib.error.HTTPError as err:
            what = ("it asks for credentials (MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD), or it is "
                    "another service on that port" if err.code in (401, 403) else "another service on that port")
            raise ServerProblem(f"MLFLOW_TRACKING_URI={shown_uri(uri)} is answered by something that is not an MLflow tracking "
                                f"server's API (HTTP {err.code} {err.reason}): {what}; {SERVER_HINT}",
                                down=False) from None
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
            if attempt == 0:
                time.sleep(1.0)
    if "WRONG_VERSION_NUMBER" in last or "wrong version number" in last:  # plain HTTP where TLS was asked for
        raise ServerProblem(f"MLFLOW_TRACKING_URI={shown_uri(uri)}: something answers there without TLS ({last}): "
                            "use http:// for a server that does not speak https", down=False)
    raise ServerProblem(f"the MLflow tracking server at {shown_uri(uri)} does not answer ({last}); {SERVER_HINT}", down=True)


def _probe_request(uri: str):
    """The request :func:`check_server` sends, as MLflow's client would send it: credentials from the URI
    (``http://user:password@host``, which MLflow's HTTP library turns into basic auth) or from
    ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``, and its TLS
    settings (``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``). Returns
    ``(urllib Request, ssl context or None)``."""
    import base64
    import ssl
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/api/2.0/mlflow/experiments/search",
                      "max_results=1", ""))
    user = unquote(parts.username) if parts.username else os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = (unquote(parts.password) if parts.password is not None
                else os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = "Bearer " + os.environ["MLFLOW_TRACKING_TOKEN"]
    context = None
    if parts.scheme == "https":
        if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
            context = ssl._create_unverified_context()
        else:
            cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or os.environ.get("REQUESTS_CA_BUNDLE")
            context = ssl.create_default_context(cafile=cafile or None)
    return urllib.request.Request(url, headers=headers), context




def shown_uri(uri: str) -> str:
    """``uri`` as a message may show it: a password in it (``scheme://user:password@host``) as ``***``.

    A password holding a reserved character that is not percent-encoded (``/ # ? @``) breaks the
    address's parsing: then everything up to the URI's last ``@`` is hidden (more than the password
    where a path holds an ``@``, never less)."""
    import re
    from urllib.parse import urlsplit

    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)(.*)", uri, flags=re.DOTALL)
    if not m:
        return uri
    try:
        urlsplit(uri).port
    except ValueError:
        return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/:@?#]*):.*@", r"\1:***@", uri, flags=re.DOTALL)
    scheme, netloc, rest = m.groups()
    user, at, host = netloc.rpartition("@")
    if not at or ":" not in user:
        return uri
    return f"{scheme}{user.split(':', 1)[0]}:***@{host}{rest}"


def store_problem(uri: str, write: bool = True) -> tuple[str, int] | None:
    """Why the store at ``uri`` cannot be opened, found without MLflow (which would retry for minutes
    and log hundreds of lines first), or None:

    - sqlite: the file is a directory or not an SQLite database, or a file stands where its folder
      would be; the file or its folder is read-only (for a store not made yet: only for a command that
      writes, ``write``);
    - postgresql / mysql: nothing listens at the database's host and port, or what answers there does
      not speak the database's protocol (checked within 5 s each).
    An ``http(s)://`` server is :func:`check_server`'s. Returns (message, exit status), the message to be
    prefixed with the setting (``MLFLOW_TRACKING_URI=<uri>``): 2 where the URI
    names something that is not a store (the user's input), 1 where the machine or a service is at fault."""
    if uri.startswith("sqlite:///"):
        return _sqlite_problem(uri, write)
    scheme = uri.split("://", 1)[0].partition("+")[0]
    if scheme in DEFAULT_DRIVERS:
        return _database_problem(uri, scheme)
    return None


# file systems of the kernel's own state: no file can be made there
VIRTUAL_FILE_SYSTEMS = ("proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs")


def _sqlite_problem(uri: str, write: bool) -> tuple[str, int] | None:
    import stat
    from pathlib import Path

    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    db = Path(rest)
    # the nearest entry on the way, links not followed: a dangling link is an entry that leads nowhere
    entry = next(p for p in (db, *db.parents) if os.path.lexists(p))
    if entry.is_symlink() and not entry.exists():
        return f"{entry} is a symbolic link to {os.readlink(entry)}, which does not exist", 2
    kind = file_system(str(entry))
    if kind in VIRTUAL_FILE_SYSTEMS:
        return f"{db} lies in the kernel's {kind} file system, where no store can be made", 2
    if entry != db:
        if not entry.is_dir():  # a file where a folder must be: the URI's fault
            return f"the store {db} cannot be created: {entry} is not a directory", 2
        if write and not os.access(entry, os.W_OK | os.X_OK):  # a read-only or forbidden folder: the machine's
            return (f"the store {db} cannot be created: {entry} is not writable (read-only or forbidden): make "
                    "it writable, or use a store elsewhere"), 1
        return None
    if db.is_dir():
        return f"{db} is a directory, not an sqlite database file", 2
    if not stat.S_ISREG(db.stat().st_mode):
        return f"{db} is not a regular file (a pipe or a device), not an sqlite database file", 2
    if db.stat().st_size and not _opens_as_sqlite(db):
        return f"{db} is not an SQLite database (another file at that path?)", 2
    # an existing store, even for a command that only reads: MLflow's engine writes when it opens the
    # file (its schema check, the journal mode), and sqlite keeps its journal beside it; read-only, MLflow
    # retries for minutes before it fails
    if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK | os.X_OK):
        what = db if not os.access(db, os.W_OK) else db.parent
        return (f"{what} is read-only (MLflow writes an sqlite store when it opens it, even to read, and sqlite "
                "its journal beside it): make it writable, or copy the store to a writable folder and point "
                "MLFLOW_TRACKING_URI at the copy"), 1
    return None


def _opens_as_sqlite(db) -> bool:
    """Whether sqlite reads ``db`` as a database, asked through sqlite itself (a read-only connection).

    Never with a file descriptor of our own: closing any descriptor of the database file drops every
    POSIX lock this process holds on it, those of its open sqlite connections included; another
    process's connection then believes itself the last one, checkpoints and deletes the write-ahead
    log under them, and the database is corrupt ("file is not a database"; sqlite.org/howtocorrupt.html,
    2.2). sqlite's own connections share their locks within the process, so this probe is safe."""
    import sqlite3
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=SQLITE_BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return True  # cannot open it read-only here (permissions): MLflow's own opening says why
    try:
        conn.execute("PRAGMA schema_version").fetchone()
        return True
    except sqlite3.DatabaseError as err:
        text = str(err)
        return not ("not a database" in text or "encrypted" in text)
    finally:
        conn.close()


@functools.lru_cache(maxsize=8)  # one probe per command: the load checks and the store's opening ask in turn
def _database_problem(uri: str, scheme: str) -> tuple[str, int] | None:
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(uri)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        return str(err), 2
    if not host or host.startswith("/"):
        return None  # a Unix socket: the driver's to find
    port = port or {"postgresql": 5432, "mysql": 3306}[scheme]
    try:
        conn = socket.create_connection((host, port), timeout=5)
    except OSError as err:
        cause = err.strerror or type(err).__name__
        return (f"the {scheme} database server at {host}:{port} does not answer ({cause}): start it (`bash cluster/mlflow_server.sh prepare` starts this machine's PostgreSQL), or point "
                "MLFLOW_TRACKING_URI at a running one"), 1
    try:
        with conn:
            if _speaks(conn, scheme):
                return _login_problem(uri, scheme, f"{host}:{port}")
            how = "answers, but not"
    except OSError:  # silent, or the connection dropped: a driver would wait on it for minutes
        how = "listens, but does not answer"
    return (f"something at {host}:{port} {how} as a {scheme} database server within 5 s (another service on "
            "that port?): point MLFLOW_TRACKING_URI at the database's own host and port"), 1


def _login_problem(uri: str, scheme: str, where: str) -> tuple[str, int] | None:
    """Why the database server at ``where`` refuses the URI's login or database (MLflow would retry that
    for about 100 s, logging each try), found by connecting once through the URI's driver; or None."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    try:
        engine = sqlalchemy.create_engine(uri, poolclass=NullPool, connect_args={"connect_timeout": 5})
    except Exception as err:  # noqa: BLE001 - a URI its driver cannot parse: the message says why
        return f"{type(err).__name__}: {err}", 2
    try:
        with engine.connect():
            return None
    except Exception as err:  # noqa: BLE001 - the driver's own error says what the server refused
        text = str(getattr(err, "orig", None) or err).strip()
        reason = text.split("FATAL:", 1)[-1].strip().splitlines()[0] if text else type(err).__name__
        return (f"the {scheme} database server at {where} refuses the connection ({reason}): check the user, "
                "password and database name in MLFLOW_TRACKING_URI"), 2
    finally:
        engine.dispose()


# PostgreSQL's SSLRequest (frontend/backend protocol 3.0): length 8, code 1234.5679; a server answers one byte
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


def _speaks(conn, scheme: str) -> bool:
    """Whether the peer of ``conn`` speaks the database's protocol, by its first bytes (no login, nothing
    for the server to log): PostgreSQL answers an SSLRequest with exactly ``S`` or ``N`` (or an error
    message, ``E``); a MySQL server greets first, a packet of sequence 0 holding its protocol version 10
    (or an error packet, 0xff). Raises OSError when the peer says nothing within the socket's timeout."""
    if scheme == "postgresql":
        conn.sendall(_PG_SSL_REQUEST)
        head = conn.recv(64)
        return head in (b"S", b"N") or head[:1] == b"E"
    head = conn.recv(64)
    return len(head) >= 5 and head[3] == 0 and head[4] in (10, 0xFF)
