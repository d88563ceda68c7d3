"""Which tracking URIs the toolkit can use (standard library only: the CLI and the analysis check
``MLFLOW_TRACKING_URI`` with it before MLflow would fail on it with a traceback)."""

from __future__ import annotations

import importlib.util

# database schemes -> the module of the driver SQLAlchemy (as MLflow calls it) picks when the URI names none
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "MySQLdb"}
PLAIN = ("sqlite:///", "http://", "https://")


def uri_problem(uri: str) -> str | None:
    """Why MLflow could not use ``uri`` as this toolkit's store, or None when it can.

    A plain path or ``file:`` (MLflow's file store: no SQL, so none of the toolkit's run queries)
    and unknown schemes are refused; a database scheme needs its driver's module installed
    (``postgresql+psycopg2://`` names one; plain ``postgresql://`` means psycopg).
    """
    if uri.startswith(PLAIN):
        return None
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    dialect, _, driver = scheme.partition("+")
    if dialect in DEFAULT_DRIVERS:
        module = driver or DEFAULT_DRIVERS[dialect]
        if importlib.util.find_spec(module) is None:
            return (f"{scheme}:// needs the Python module {module}, which is not installed (name an installed "
                    f"driver, e.g. {dialect}+psycopg2://, or use an MLflow server: http://...)")
        return None
    return ("must be sqlite:///<absolute path of a file>, postgresql://..., mysql://... or http(s)://<server> "
            f"(got {uri!r})")
