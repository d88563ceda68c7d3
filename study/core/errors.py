"""User-facing errors.

Every mistake a user can make (a bad study file, an unknown ``--set`` key,
a missing dataset) raises :class:`UserError`. The command line turns it into
one message on stderr and exit status 2, before anything is written.
"""

from __future__ import annotations


def key_path(parts) -> str:
    """A key's place in a file as errors write it: names joined by dots, list items by index.

    ``("factors", "sampling", 1, "set")`` -> ``"factors.sampling[1].set"`` (pydantic's
    error locations and the YAML duplicate finder both go through here).
    """
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class UserError(Exception):
    """Bad input from the user: reported as one message, exit status 2."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.message = message  # without the source and key: for re-raising with another source
        parts = []
        if source:
            parts.append(str(source))
        if key:
            parts.append(f"key '{key}'")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class DataError(UserError):
    """A dataset that is missing or unreadable; the message says how to get it."""


class InfrastructureError(UserError):
    """The machine or a service failed (a full disk, a read-only or forbidden folder, too many open
    files), not the user's input: one message, exit status 1."""

    exit_code = 1


# errno -> what it means for a study, and what to do
_OS_CAUSES = {
    28: ("the disk is full", "free space"),  # ENOSPC
    122: ("the disk quota is exceeded", "free space or raise the quota"),  # EDQUOT
    30: ("the file system is read-only", "point the toolkit at a writable folder"),  # EROFS
    13: ("permission denied", "fix the folder's permissions or point the toolkit elsewhere"),  # EACCES
    1: ("operation not permitted", "fix the folder's permissions or point the toolkit elsewhere"),  # EPERM
    24: ("too many open files", "raise the limit (ulimit -n)"),  # EMFILE
    20: ("a file stands where a folder should be", "move it, or point the toolkit at another folder"),  # ENOTDIR
    21: ("a folder stands where a file should be", "move it, or point the toolkit at another file"),  # EISDIR
}
# what the command to run once the cause is mended does: a study's run resumes
RESUME = "then run the same command again (finished cells are kept, the others resume)"
# what the store's drivers say instead of an errno (sqlite, PostgreSQL)
_TEXT_CAUSES = {
    "database or disk is full": ("the disk holding the MLflow store is full", "free space"),
    "No space left on device": ("the disk is full", "free space"),
    "could not extend file": ("the disk holding the database is full", "free space"),
    "attempt to write a readonly database": ("the MLflow store is read-only", "fix its permissions"),
    "Disk quota exceeded": ("the disk quota is exceeded", "free space or raise the quota"),
}


def infrastructure_text(text: str) -> str | None:
    """The cause named by an error's text (a trial's error, as Ray passes it on), or None."""
    for mark, (cause, _) in _TEXT_CAUSES.items():
        if mark in text:
            return cause
    for number, (cause, _) in _OS_CAUSES.items():
        if f"[Errno {number}]" in text:
            return cause
    return None


def infrastructure_from_text(text: str, then: str = RESUME) -> InfrastructureError | None:
    """:func:`infrastructure_error` for an error known only by its text (a trial's, as Ray passes it on):
    the cause, the file the text names (``[Errno 30] Read-only file system: '/path'``) and what to do."""
    import re

    for mark, (cause, todo) in _TEXT_CAUSES.items():
        if mark in text:
            return InfrastructureError(f"{cause} ({mark}): {todo}, {then}")
    for number, (cause, todo) in _OS_CAUSES.items():
        hit = re.search(rf"\[Errno {number}\][^\n]*", text)
        if hit:
            path = re.search(r"'([^'\n]+)'", hit.group(0))  # the first file the line names, if any
            return InfrastructureError(f"{cause}{f' ({path.group(1)})' if path else ''}: {todo}, {then}")
    return None


def infrastructure_error(err: BaseException | None, then: str = RESUME) -> InfrastructureError | None:
    """An :class:`InfrastructureError` naming the resource, the cause and what to do when ``err`` (or an
    exception it was raised from) is a failure of the machine: a full disk, a read-only or forbidden
    folder, a file where a folder should be, too many open files; else None. ``then``: what to do once
    it is mended (default: a study's resume; the analysis says to rebuild)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _OS_CAUSES:
            cause, todo = _OS_CAUSES[err.errno]
            where = f" ({err.filename})" if err.filename else ""
            return InfrastructureError(f"{cause}{where}: {todo}, {then}")
        text = str(err)
        for mark, (cause, todo) in _TEXT_CAUSES.items():
            if mark in text:
                return InfrastructureError(f"{cause} ({mark}): {todo}, {then}")
        err = err.__cause__ or err.__context__
    return None
