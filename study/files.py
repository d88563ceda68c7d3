"""Reading the user's YAML files: every problem is one UserError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.errors import UserError


def read_yaml(path: Path, what: str) -> Any:
    """The parsed contents of ``path`` (None for an empty file); ``what`` names the file's role."""
    import yaml

    src = str(path)
    if not path.is_file():
        raise UserError(f"no such {what}" if not path.exists() else "not a file", source=src)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"broken YAML{where}: {getattr(err, 'problem', err)}", source=src) from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read: {err}", source=src) from None
