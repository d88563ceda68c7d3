"""Every page of an MLflow listing (standard library only; the client is MLflow's).

``search_experiments`` and ``search_runs`` return one page (1,000 by default) and a token for the
next: a store shared by a team holds more than one page of experiments, and a study's experiment can
hold more than one page of runs, and whatever lies past the first page must not vanish from a
report, a status or the linking of finished cells (mlflow#3881). Every listing of the toolkit goes
through these two functions.
"""

from __future__ import annotations

PAGE = 1000  # rows per request (MLflow's own limit for runs is 50,000, its default 1,000)
EXPERIMENTS_PER_SEARCH = 100  # experiments one search_runs takes at a time


def all_experiments(client, **kwargs) -> list:
    """Every experiment ``client.search_experiments(**kwargs)`` lists, over all its pages."""
    out, token = [], None
    while True:
        page = client.search_experiments(max_results=PAGE, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def all_runs(client, experiment_ids, filter_string: str = "", **kwargs) -> list:
    """Every run of ``experiment_ids`` matching ``filter_string``, over all pages and all experiments
    (searched ``EXPERIMENTS_PER_SEARCH`` at a time; an ``order_by`` holds within each such group)."""
    ids, out = list(experiment_ids), []
    for i in range(0, len(ids), EXPERIMENTS_PER_SEARCH):
        token = None
        while True:
            page = client.search_runs(ids[i:i + EXPERIMENTS_PER_SEARCH], filter_string=filter_string,
                                      max_results=PAGE, page_token=token, **kwargs)
            out.extend(page)
            token = page.token
            if not token:
                break
    return out


def experiment_holding_study(client, name: str):
    """The active experiment whose parent run is study ``name`` (tag ``study``) though named otherwise (its
    experiment renamed in the MLflow UI or with the client), or None."""
    from mlflow.entities import ViewType

    from study.core.names import Tag, role_filter

    ids = [e.experiment_id for e in all_experiments(client) if e.name != name]
    found = all_runs(client, ids, f"{role_filter(Tag.PARENT)} and tags.{Tag.STUDY} = '{name}'",
                     run_view_type=ViewType.ACTIVE_ONLY) if ids else []
    return client.get_experiment(found[0].info.experiment_id) if found else None


_RENAMED = "renamed in the MLflow UI or with the client?"


def _rename_command(experiment_id: str, name: str) -> str:
    return f"mlflow experiments rename --experiment-id {experiment_id} --new-name '{name}'"


def moved_study_text(name: str, moved) -> str:
    """Why study ``name`` is not under its own name: ``moved`` (from :func:`experiment_holding_study`) holds
    it; the command that renames it back."""
    return (f"the store holds study '{name}' in experiment {moved.experiment_id}, now named '{moved.name}' "
            f"({_RENAMED}): rename it back ({_rename_command(moved.experiment_id, name)}) to go on with its runs")


def foreign_study_text(experiment, held: str) -> str:
    """Why ``experiment`` cannot serve the study of its name: its parent run is study ``held``'s."""
    return (f"the store's experiment '{experiment.name}' (id {experiment.experiment_id}) holds the runs of study "
            f"'{held}' ({_RENAMED}): rename it back ({_rename_command(experiment.experiment_id, held)})")
