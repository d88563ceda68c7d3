"""The one YAML reader of the toolkit: study files, cluster config files, ``--set`` and ``--slurm-opt`` values.

Every YAML text the toolkit reads goes through :func:`load_yaml_text`, so all of
them follow the same rules:

- YAML 1.2 scalars (ruamel.yaml's safe, pure-Python loader): ``1e-3`` and
  ``1E5`` are floats, ``on``/``off``/``yes``/``no`` are strings (only
  ``true``/``false`` are booleans), ``0o17`` is octal, ``~`` and an empty value
  are null. YAML 1.1 (PyYAML) read ``1e-3`` as a string and ``off`` as false.
- A key given twice in one mapping, at any depth, is one error naming the
  file, the key's path and both line numbers (YAML forbids it; PyYAML kept the
  last copy silently).

Every problem is one :class:`~study.core.errors.UserError` naming the file (or the
flag) it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.core.errors import UserError, key_path


def _loader():
    from ruamel.yaml import YAML

    # typ="safe" builds plain dicts/lists/scalars only; pure=True is the YAML 1.2 parser
    # (the optional C extension follows libyaml's YAML 1.1 rules)
    return YAML(typ="safe", pure=True)


def _key_text(node) -> str:
    return str(node.value) if not isinstance(node.value, list) else node.tag


def _find_duplicate(node, path: tuple[str | int, ...] = ()) -> tuple[str, str, str] | None:
    """(dotted key path, first place, second place) of the first key given twice, depth first;
    a place is 'line N' (or 'line N, column M' when both copies share a line)."""
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    if isinstance(node, MappingNode):
        seen: dict[tuple[str, str], Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode):
                ident = (key_node.tag, key_node.value)
                mark = key_node.start_mark
                if ident in seen:
                    first = seen[ident]
                    if first.line == mark.line:
                        places = [f"line {m.line + 1}, column {m.column + 1}" for m in (first, mark)]
                    else:
                        places = [f"line {m.line + 1}" for m in (first, mark)]
                    return key_path(path + (key_node.value,)), places[0], places[1]
                seen[ident] = mark
            found = _find_duplicate(value_node, path + (_key_text(key_node),))
            if found:
                return found
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            found = _find_duplicate(item, path + (i,))
            if found:
                return found
    return None


def load_yaml_text(text: str, source: str) -> Any:
    """The value of one YAML document (None when empty). ``source`` names the file or flag in errors."""
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = _loader()
    try:
        # compose first: the node tree knows the line of each key, so a duplicate names both
        node = yaml.compose(text)
        dup = _find_duplicate(node) if node is not None else None
        if dup:
            key, first, second = dup
            raise UserError(f"given twice, at {first} and at {second} (a key may appear once)",
                            source=source, key=key)
        return _loader().load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or str(err)
        raise UserError(f"broken YAML{where}: {problem}", source=source) from None
    except YAMLError as err:
        raise UserError(f"broken YAML: {err}", source=source) from None


def read_yaml(path: Path, what: str) -> Any:
    """The parsed contents of ``path`` (None for an empty file); ``what`` names the file's role."""
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise UserError(f"no such {what}" if not path.exists() else "not a file", source=src)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read: {err}", source=src) from None
    return load_yaml_text(text, src)


def parse_scalar(text: str, source: str) -> Any:
    """A command-line value (``--set k=VALUE``, ``--slurm-opt k=VALUE``) read by the same rules as a file.

    ``0.5`` -> 0.5, ``1e-3`` -> 0.001, ``true`` -> True, ``off`` -> 'off', ``[8, 16]`` -> [8, 16],
    ``~`` or nothing -> None. Text that is not valid YAML (``a: b: c``) stays the string it is;
    a flow mapping with a key given twice is an error.
    """
    try:
        return load_yaml_text(text, source)
    except UserError as err:
        if "given twice" in str(err):
            raise
        return text


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a kill) sees the
    old file or the new one, never half of one. Torch-free (the checkpoints' own writer is
    ``study.train.checkpoint.atomic_write_text``)."""
    import os

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
