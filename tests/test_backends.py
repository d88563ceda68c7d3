"""The cluster backend seam: the registry the CLI picks from, and a runner that only calls the interface."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import store_client, write_smoke_study
from study.backends import backend_names, load_backend
from study.core.errors import UserError
from study.retry import DEFAULT_MAX_FAILURES, RetryPolicy
from study.runner import execute_study, run_study
from study.studyfile import load_study


class FakeExecutor:
    """Records what the runner asks; finishes nothing."""

    def __init__(self, calls: list):
        self.calls = calls

    def check(self, study):
        self.calls.append("executor.check")

    def slots(self, study):
        return 3

    def run(self, study, cells, sink, retry):
        self.calls.append(("run", [c.cell_id for c in cells], sink.parent_id is not None, retry))
        return {}

    def close(self):
        self.calls.append("close")


class FakeBackend:
    """A backend whose driver runs here (``submits`` False: it hands the runner a FakeExecutor) or is
    submitted (``submits`` True); ``bad`` makes its option check fail."""

    name = "fake"

    def __init__(self, bad: bool = False, submits: bool = False):
        self.bad, self.submits, self.calls = bad, submits, []

    def check(self, study):
        self.calls.append("check")
        if self.bad:
            raise UserError("bad option", source="--fake")

    def describe(self, study):
        self.calls.append("describe")
        return "fake: 1 machine"

    def executor(self):
        return None if self.submits else FakeExecutor(self.calls)

    def submit(self, study, todo, done, *, sets, retry, wait, batch):
        self.calls.append(("submit", len(todo), done, sets, retry, wait, batch))
        return 7


def test_registry_names_the_backends_and_builds_them():
    assert {"local", "serial", "slurm"} <= set(backend_names())  # declared in their modules (BACKENDS = {...})
    options = {"config_file": None, "overrides": {"nodes": "2"}, "extra": {}}
    for name in backend_names():
        backend = load_backend(name, options)
        assert backend.name == name and backend.options == options
    with pytest.raises(UserError) as err:
        load_backend("no-such-backend")
    assert "--cluster" in str(err.value) and ", ".join(backend_names()) in str(err.value)


@pytest.fixture
def backend_package(tmp_path, monkeypatch):
    """A package of backend modules of its own (``pkg_<test>``), scanned in place of cluster/; returns
    a writer of its modules (``write(module, text)`` -> the package's name)."""
    import sys

    import study.backends as backends

    name = f"pkg_{tmp_path.name}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backends, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(backends, "BACKEND_PACKAGE", name)
    backends._registry.cache_clear()
    yield lambda module, text: ((tmp_path / name / f"{module}.py").write_text(text), name)[1]
    backends._registry.cache_clear()
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


# a name no module of cluster/ may take (a user's new backend could be "moon")
PROBE = """
from cluster.serial import SerialBackend

BACKENDS = {"probe-backend": "ProbeBackend"}


class ProbeBackend(SerialBackend):
    name = "probe-backend"
"""


def test_a_backend_is_one_module_that_declares_it(backend_package):
    """Adding a backend is its module alone: the registry reads the module's BACKENDS literal without
    importing it (a module that is not picked is never imported), and --cluster builds it."""
    import sys

    package = backend_package("probe", PROBE.replace("BACKENDS = ", "BACKENDS: dict[str, str] = "))  # annotated too
    backend_package("helpers", "raise RuntimeError('not a backend: never imported')\n")
    assert backend_names() == ("probe-backend",)
    assert f"{package}.probe" not in sys.modules  # listed, not imported
    backend = load_backend("probe-backend", {"x": 1})
    assert backend.name == "probe-backend" and backend.options == {"x": 1} and backend.executor() is not None
    assert f"{package}.probe" in sys.modules and f"{package}.helpers" not in sys.modules


@pytest.mark.parametrize("text, words", [
    ("BACKENDS = {'local': 'Other'}\n", "backend 'local' is declared twice"),
    ("BACKENDS = {'probe': Probe}\n", "must be a literal dict of backend name -> factory name"),
    ("BACKENDS = ['probe']\n", "must be a literal dict"),
])
def test_a_bad_declaration_is_one_user_error(backend_package, text, words):
    backend_package("a", "BACKENDS = {'local': 'LocalBackend'}\n")
    backend_package("b", text)
    with pytest.raises(UserError) as err:
        backend_names()
    assert words in str(err.value) and err.value.exit_code == 2, str(err.value)


def test_a_declared_factory_the_module_lacks_is_one_user_error(backend_package, capsys):
    """A name the module does not define: one line naming the module and the name, at --cluster time; a
    module that does not parse: one line naming its file and line, for every command (the CLI lists them)."""
    from study.cli import main

    backend_package("probe", "BACKENDS = {'probe-backend': 'Missing'}\n")
    with pytest.raises(UserError) as err:
        load_backend("probe-backend")
    assert "declares a backend built by 'Missing'" in str(err.value), str(err.value)
    backend_package("broken", "BACKENDS = {'x': 'X'\n")
    import study.backends

    study.backends._registry.cache_clear()  # the registry is read once per process
    assert main(["status", "experiments/sampling.yaml"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "broken.py:1" in lines[0] and "Traceback" not in lines[0], lines


def test_runner_uses_the_backend_it_is_handed(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    path = write_smoke_study(tmp_path, "seam")
    bad = FakeBackend(bad=True)
    with pytest.raises(UserError, match="bad option"):
        run_study(str(path), backend=bad, preset="smoke", dry_run=True)
    assert bad.calls == ["check"] and not (tmp_path / "mlflow.db").exists()  # nothing written

    dry = FakeBackend()
    assert run_study(str(path), backend=dry, preset="smoke", dry_run=True) == 0
    assert dry.calls == ["check", "describe"] and "fake: 1 machine" in capsys.readouterr().out

    # a backend that submits its driver: the runner chooses the cells by the retry policy, hands them over
    sub = FakeBackend(submits=True)
    n = len(load_study(path, "smoke", {"epochs": 1}).cells)
    assert run_study(str(path), backend=sub, preset="smoke", sets={"epochs": 1}, rerun_failed=True, wait=True) == 7
    assert sub.calls == ["check", ("submit", n, 0, {"epochs": 1}, RetryPolicy(1, True), True, False)]


def test_the_runner_owns_the_lifecycle_and_the_executor_only_runs_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("STUDY_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    path = write_smoke_study(tmp_path, "seam2")
    study = load_study(path, "smoke")
    backend = FakeBackend()
    # nothing finished by the fake: every cell is missing and the study fails; the parent run is open
    # (the sink) when the executor runs, the executor is closed at the end
    assert run_study(str(path), backend=backend, preset="smoke") == 1
    assert backend.calls == ["check", ("run", [c.cell_id for c in study.cells], True, RetryPolicy(1, False)), "close"]
    parent = store_client(tmp_path).search_runs(
        [store_client(tmp_path).get_experiment_by_name("seam2").experiment_id], "tags.role = 'parent'")
    assert len(parent) == 1 and parent[0].info.status == "FAILED"

    # a batch keeps the executor for the next one; the caller closes it
    calls: list = []
    executor = FakeExecutor(calls)
    assert execute_study(study, executor=executor, retry=RetryPolicy(0, False), keep=True) == 1
    assert calls == [("run", [c.cell_id for c in study.cells], True, RetryPolicy(0, False))]


def test_retry_policy_chooses_the_cells():
    """FINISHED never again; FAILED only with rerun_failed; KILLED, RUNNING and absent always."""
    from types import SimpleNamespace

    cells = [SimpleNamespace(cell_id=c) for c in "abcde"]
    status = {"a": "FINISHED", "b": "FAILED", "c": "KILLED", "d": "RUNNING"}
    todo, done = RetryPolicy(rerun_failed=False).cells_to_run(cells, status)
    assert [c.cell_id for c in todo] == ["c", "d", "e"] and done == 1
    todo, done = RetryPolicy(rerun_failed=True).cells_to_run(cells, status)
    assert [c.cell_id for c in todo] == ["b", "c", "d", "e"] and done == 1
    assert RetryPolicy().max_failures == DEFAULT_MAX_FAILURES
    assert RetryPolicy(rerun_failed=False).failed_hint(2) == "2 failed (rerun with --rerun-failed)"
    assert RetryPolicy(rerun_failed=True).failed_hint(2) == RetryPolicy(rerun_failed=False).failed_hint(0) == ""
    from study.retry import flag_words

    assert flag_words(True) == ["--rerun-failed"] and flag_words(False) == ["--no-rerun-failed"]
    assert flag_words(None) == []


def test_the_policy_is_read_from_one_place(monkeypatch, tmp_path):
    """Changing retry.py's defaults changes what a run does: the runner builds its policy there."""
    from study import retry

    study = load_study(write_smoke_study(tmp_path, "pol"), "smoke")
    assert retry.policy_for(study) == RetryPolicy(study.max_failures, retry.RERUN_FAILED_BY_DEFAULT)
    monkeypatch.setattr(retry, "RERUN_FAILED_BY_DEFAULT", False)
    assert retry.policy_for(study) == RetryPolicy(study.max_failures, False)
    monkeypatch.setattr(retry, "RERUN_FAILED_BY_DEFAULT", True)
    assert retry.policy_for(study).rerun_failed and "default: yes" in retry.flag_help()
    assert not retry.policy_for(study, False).rerun_failed  # --no-rerun-failed opts out


def test_slurm_flags_with_the_local_backend_are_one_error(tmp_path):
    """--nodes (or any SLURM flag) without --cluster slurm would be ignored: one error, exit 2, nothing written."""
    import subprocess
    import sys

    from conftest import store_env

    study = tmp_path / "s.yaml"
    study.write_text("name: s\nfixed: {method: interclr}\nfactors: {sampling: [hard, semi-hard]}\nseeds: [0]\n")
    for flags, word in ((["--nodes", "2"], "--nodes"), (["--time", "5"], "--time"),
                        (["--slurm-opt", "nice=1"], "--slurm-opt")):
        res = subprocess.run([sys.executable, "-m", "study", "run", str(study), "--preset", "smoke", "--dry-run",
                              *flags], capture_output=True, text=True, timeout=120, env=store_env(tmp_path),
                             cwd=Path(__file__).resolve().parents[1])
        assert res.returncode == 2 and word in res.stderr and "--cluster slurm" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_the_serial_backend_runs_a_study_without_ray(tmp_path, monkeypatch, capsys):
    """``--cluster serial`` (cluster/serial.py): every cell in a child process, one at a time, no Ray in the
    driver; its epochs reach the store once each, a failing trial is retried from its run directory and
    then FAILED with its error, and --rerun-failed finishes the study with every cell run exactly once."""
    import sys

    from conftest import fake_trial_env, store_env
    from study.cli import main

    env = fake_trial_env(store_env(tmp_path), epoch_s=0.01, fail=["semi-hard/1"], fail_once=["hard/1"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = write_smoke_study(tmp_path, "ser", epochs=3)
    args = ["run", str(path), "--preset", "smoke", "--cluster", "serial"]
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` in the driver fails
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "serial: one cell at a time, no Ray" in out and "finished 3/4, failed 1" in out, out
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name("ser").experiment_id
    runs = client.search_runs([exp], "tags.role = 'cell'")
    by_level = {(r.data.tags["level"], r.data.params["seed"]): r for r in runs}
    assert len(runs) == 4 and by_level[("semi-hard", "1")].info.status == "FAILED"
    assert "told to fail at epoch 1" in by_level[("semi-hard", "1")].data.tags["error"]
    # status, a command without backend words, tells the serial run's own way to rerun (the parent's tag)
    from study import resume

    monkeypatch.setattr(resume, "_REMEMBERED", [])
    monkeypatch.setattr(resume, "LAUNCH_FLAGS", [])
    assert main(["status", str(path), "--preset", "smoke"]) == 0
    assert "--preset smoke --cluster serial --rerun-failed" in capsys.readouterr().out
    for key in (("semi-hard", "0"), ("hard", "0"), ("hard", "1")):  # hard/1 failed once, then resumed
        r = by_level[key]
        assert r.info.status == "FINISHED" and "knn_top1" in r.data.metrics
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1, 2, 3]
    monkeypatch.setenv("STUDY_FAKE_TRIAL", "{}")  # the cause mended
    assert main(args + ["--rerun-failed"]) == 0
    runs = client.search_runs([exp], "tags.role = 'cell'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert main(args) == 0 and "4 finished, 0 to run" in capsys.readouterr().out
    # inline (a debugger's mode): the trials in this very process, the same store writes
    monkeypatch.setenv("STUDY_SERIAL_INLINE", "1")
    path = write_smoke_study(tmp_path, "inline", epochs=2)
    assert main(["run", str(path), "--preset", "smoke", "--cluster", "serial"]) == 0
    exp = client.get_experiment_by_name("inline").experiment_id
    runs = client.search_runs([exp], "tags.role = 'cell'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" and "knn_top1" in r.data.metrics for r in runs)
    from cluster import tune_run

    assert tune_run.REPORT_SINK is None  # the reports go back to Tune in this process
