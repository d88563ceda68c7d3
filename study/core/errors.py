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
