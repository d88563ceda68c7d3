"""Studies on SLURM: options, the job's own code path, and a real one-node SLURM.

- Options: the cluster config file and flags are checked before anything is
  written (exit 2, one message), without importing submitit or ray.
- The job itself (Ray head + a joining Ray node + the Tune driver) through
  submitit's LocalExecutor: no SLURM needed.
- Against a real SLURM (``cluster/slurm_setup.sh`` starts one here; skipped
  with the reason when ``sinfo`` does not answer): submit and wait; requeue
  the running job mid-study; cancel a job and resume it by running the same
  command again. Each ends with every cell FINISHED exactly once and no
  metric step logged twice.

The job and scheduler tests run the fake trial (:mod:`cluster.fake_trial`):
what they test is the job, Ray and SLURM, not what a cell trains. One real
study trains real cells on SLURM: the two-node study.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMOKE_STUDY, fake_trial_env, store_client, store_env, write_smoke_study

from study.retry import RetryPolicy
from study.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _slurm_unavailable() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not found); `bash cluster/slurm_setup.sh` as root starts a one-node one"
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sinfo does not answer ({err}); start SLURM with `bash cluster/slurm_setup.sh`"
    if res.returncode != 0:
        return f"sinfo does not answer ({res.stderr.strip()}); start SLURM with `bash cluster/slurm_setup.sh`"
    states = res.stdout.split()
    if not any(s.startswith(("idle", "mix", "alloc")) for s in states):
        return f"no usable SLURM node (states: {', '.join(states) or 'none'})"
    return None


SLURM_MISSING = _slurm_unavailable()
needs_slurm = pytest.mark.skipif(SLURM_MISSING is not None, reason=str(SLURM_MISSING))


def _slurm_nodes_usable() -> int:
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=20)
    return len({line.split()[0] for line in res.stdout.splitlines()
                if line.split()[1].startswith(("idle", "mix", "alloc"))})


TWO_NODES = SLURM_MISSING is None and _slurm_nodes_usable() >= 2
needs_two_nodes = pytest.mark.skipif(not TWO_NODES, reason="needs a SLURM of 2 nodes: `bash cluster/slurm_setup.sh` as root")


def partition(k: int) -> tuple[list[str], list[str]]:
    """(flags, nodes) for the SLURM test file that owns partition ``debug<k>``.

    CI starts SLURM with ``SLURM_NODES=6 SLURM_PARTITION_NODES=2`` (cluster/slurm_setup.sh):
    partitions debug, debug2 and debug3 of two nodes each, so that the 2-node tests (whose jobs take
    every CPU of their nodes) and the lost-node test (which kills a node) never queue behind or
    disturb the other files' jobs. Where that partition does not exist: no flag, the default
    partition's nodes (the tests then queue behind each other, and still pass).
    """
    name = f"debug{k}"
    res = subprocess.run(["sinfo", "-h", "-p", name, "-N", "-o", "%N"], capture_output=True, text=True, timeout=20)
    nodes = sorted(set(res.stdout.split())) if res.returncode == 0 else []
    if len(nodes) >= 2:
        return ["--partition", name], nodes
    res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %P"], capture_output=True, text=True, timeout=20)
    default = sorted({line.split()[0] for line in res.stdout.splitlines() if line.split()[1].endswith("*")})
    return [], default


def _slurm_env(tmp_path, **fake) -> dict:
    env = store_env(tmp_path, STUDY_SLURM_LOGS=str(tmp_path / "slurm_logs"), STUDY_SLURM_POLL="1",
                    STUDY_RAY_JOIN_TIMEOUT="60")
    env.pop("STUDY_SLURM_CONFIG", None)
    # each epoch of a fake cell takes a second: the mid-study moments last seconds, not a poll's race
    return fake_trial_env(env, **{"epoch_s": 1.0, **fake})


@pytest.fixture
def store(tmp_path):
    return tmp_path, _slurm_env(tmp_path)


# For the mid-study tests: short cells finish while long ones are still training, so the moment
# "one cell finished, another mid-training" lasts several epochs instead of a poll-sized race.
UNEVEN_STUDY = """
name: {name}
fixed: {{method: interclr, labels: online, sampling: semi-hard, margin_type: cosine, margin: -0.5,
        linear_epochs: 2}}
factors:
  length:
    - {{label: short, set: {{epochs: 1}}}}
    - {{label: long, set: {{epochs: 6}}}}
seeds: [0, 1]
presets:
  smoke: {{resources: {{cpus: 1}}, max_failures: 1}}
"""


def _write_study(tmp_path, name, epochs=2, seeds="[0]", template=SMOKE_STUDY):
    return write_smoke_study(tmp_path, name, epochs, seeds, template)


_client = store_client


def _cell_runs(client, name):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], filter_string="tags.role = 'cell'", max_results=1000)


def _check_complete(client, name, n_cells, epochs=None):
    """Every cell once, FINISHED, each epoch's metrics exactly once (epochs=None: each cell's own)."""
    runs = _cell_runs(client, name)
    assert len(runs) == n_cells, [(r.data.tags.get("cell_id"), r.info.status) for r in runs]
    assert len({r.data.tags["cell_id"] for r in runs}) == n_cells
    for r in runs:
        assert r.info.status == "FINISHED", (r.data.tags, r.info.status)
        n_epochs = int(r.data.params["epochs"]) if epochs is None else epochs
        for key, first in (("knn_top1", 0), ("loss", 1)):
            steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(first, n_epochs + 1)), (key, steps)
        assert len(client.get_metric_history(r.info.run_id, "linear_top1")) == 1
    return runs


def _run(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "study", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- options (fast)
def _options(config_file=None, overrides=None, extra=None):
    return {"config_file": config_file, "overrides": overrides or {}, "extra": extra or {}}


def test_example_config_and_overrides_map_to_sbatch(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    from cluster.slurm_options import check_options, executor_parameters

    values = check_options(_options(str(REPO / "cluster" / "slurm.example.yaml"),
                                    {"nodes": "3", "time": "1:30:00", "partition": "debug"},
                                    {"mail-user": "me@example.org", "exclusive": "false"}))
    assert values["nodes"] == 3 and values["time"] == 90 and values["gpus_per_node"] == 8
    script = _make_sbatch_string(command="python job.py", folder=tmp_path, **executor_parameters(values, "s"))
    for line in ("#SBATCH --nodes=3", "#SBATCH --partition=debug", "#SBATCH --time=90", "#SBATCH --mem=480G",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64", "#SBATCH --account=my-project",
                 "#SBATCH --qos=normal", "#SBATCH --constraint=volta32gb", "#SBATCH --mail-type=END,FAIL",
                 "#SBATCH --mail-user=me@example.org", "#SBATCH --signal=USR2@120", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --job-name=study-s", "module load cuda/12.4"):
        assert line in script.splitlines(), line
    assert "--exclusive" not in script  # switched off on the command line


@pytest.mark.parametrize("value, minutes", [(45, 45), ("45", 45), ("5:30", 6), ("2:00:00", 120), ("1-0", 1440),
                                            ("1-02:30", 1590), ("0-00:00:30", 1)])
def test_time_limits(value, minutes):
    from cluster.slurm_options import parse_time_minutes

    assert parse_time_minutes(value) == minutes


@pytest.mark.parametrize("body, overrides, extra, words", [
    (None, {}, {}, ["no such cluster config file"]),
    ("nodess: 2\n", {}, {}, ["nodess", "did you mean 'nodes'"]),
    ("nodes: two\n", {}, {}, ["'nodes'", "whole number"]),
    ("setup: module load cuda\n", {}, {}, ["'setup'", "list of shell lines"]),
    ("time: 1:99:00\n", {}, {}, ["'time'", "[D-]HH:MM[:SS]"]),
    ("nodes: [\n", {}, {}, ["broken YAML"]),
    ("", {"gpus_per_node": "-1"}, {}, ["--gpus-per-node", "whole number"]),
    ("", {"mem": "lots"}, {}, ["--mem", "16G"]),
    ("", {}, {"time": "10"}, ["--slurm-opt", "'time'", "--time"]),
    ("extra: {output: x.log}\n", {}, {}, ["'extra'", "set by submitit"]),
])
def test_bad_options_are_one_user_error(tmp_path, body, overrides, extra, words):
    from cluster.slurm_options import check_options

    path = tmp_path / "cluster.yaml"
    if body is not None:
        path.write_text(body)
    with pytest.raises(UserError) as err:
        check_options(_options(str(path), overrides, extra))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize("key, text", [("account", "0123"), ("partition", "123"), ("qos", "1.5"),
                                       ("constraint", "7")])
def test_a_number_where_a_name_belongs_says_to_quote_it(tmp_path, key, text):
    """YAML 1.2 reads `account: 0123` as the number 123: the name as written is lost, so a number
    for a name is one error that says to quote it; quoted, the text is kept exactly."""
    from cluster.slurm_options import check_options

    path = tmp_path / "cluster.yaml"
    path.write_text(f"{key}: {text}\n")
    with pytest.raises(UserError) as err:
        check_options(_options(str(path)))
    msg = str(err.value)
    assert str(path) in msg and f"key '{key}'" in msg and "in quotes" in msg and "\n" not in msg, msg
    path.write_text(f'{key}: "{text}"\n')
    assert check_options(_options(str(path)))[key] == text


def test_flag_values_are_strings_converted_by_the_schema(tmp_path):
    """The command line gives strings: whole numbers, times and memory are converted, names keep
    their exact text (--account 0123 stays 0123); the flag, not a key, is named in errors."""
    from submitit.slurm.slurm import _make_sbatch_string

    from cluster.slurm_options import check_options, executor_parameters

    values = check_options(_options(overrides={"account": "0123", "partition": "123", "nodes": "2", "time": "45",
                                               "mem": "16g", "cpus_per_task": "4"}))
    assert (values["account"], values["partition"], values["nodes"], values["time"], values["mem"],
            values["cpus_per_task"]) == ("0123", "123", 2, 45, "16G", 4)
    script = _make_sbatch_string(command="python job.py", folder=tmp_path, **executor_parameters(values, "s"))
    assert "#SBATCH --account=0123" in script.splitlines() and "#SBATCH --partition=123" in script.splitlines()
    with pytest.raises(UserError, match=r"^--nodes: expected a whole number >= 1 \(got '0'\)$"):
        check_options(_options(overrides={"nodes": "0"}))
    with pytest.raises(UserError, match=r"^--partition: expected a name without spaces"):
        check_options(_options(overrides={"partition": "a b"}))


def test_options_schema_is_strict_and_keeps_its_help():
    """One pydantic model: every key has its help text (the example config file shows each key),
    and a value of the wrong type is refused even from Python (no silent conversion)."""
    from pydantic import ValidationError

    from cluster.slurm_options import OPTION_KEYS, SlurmOptions
    from study.core.files import read_yaml

    assert all(SlurmOptions.model_fields[k].description for k in OPTION_KEYS)
    assert set(read_yaml(REPO / "cluster" / "slurm.example.yaml", "cluster config file")) == set(OPTION_KEYS)
    for bad in ({"nodes": True}, {"nodes": "2"}, {"time": 0}, {"mem": 1.5}, {"partition": 5}, {"nodess": 2}):
        with pytest.raises(ValidationError):
            SlurmOptions.model_validate(bad)


def test_cli_rejects_bad_options_before_writing_anything(store):
    """Exit 2, one line, no store and no log folder; and nothing of SLURM imported while checking."""
    tmp_path, env = store
    study = _write_study(tmp_path, "bad")
    (tmp_path / "c.yaml").write_text("nodes: 1\ncpu_per_task: 2\n")
    res = _run(["run", str(study), "--preset", "smoke", "--cluster", "slurm", "--slurm-config",
                str(tmp_path / "c.yaml")], env)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cpu_per_task" in lines[0] and "did you mean 'cpus_per_task'" in lines[0], lines
    res = _run(["run", str(study), "--preset", "smoke", "--cluster", "slurm", "--time", "soon"], env)
    assert res.returncode == 2 and "--time" in res.stderr
    (tmp_path / "c.yaml").write_text("account: 0123\n")
    res = _run(["run", str(study), "--preset", "smoke", "--cluster", "slurm", "--slurm-config",
                str(tmp_path / "c.yaml")], env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "key 'account'" in lines[0] and "in quotes" in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "slurm_logs").exists()
    assert not (tmp_path / "runs").exists()
    probe = ("import sys\nfrom study.studyfile import load_study\nfrom cluster.slurm_options import check_options\n"
             f"load_study({str(study)!r}, 'smoke')\ncheck_options({{'config_file': None}})\n"
             "bad = [m for m in ('submitit', 'ray', 'mlflow') if m in sys.modules]\n"
             "assert not bad, bad\n")
    res = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


def test_dry_run_shows_the_job_and_submits_nothing(store):
    tmp_path, env = store
    study = _write_study(tmp_path, "dry")
    res = _run(["run", str(study), "--preset", "smoke", "--cluster", "slurm", "--dry-run", "--nodes", "2",
                "--slurm-opt", "mail-type=END"], env)
    assert res.returncode == 0, res.stderr
    assert "SLURM job" in res.stdout and "nodes: 2" in res.stdout and "'mail-type': 'END'" in res.stdout
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "slurm_logs").exists()


def test_a_cell_bigger_than_a_node_is_refused(tmp_path):
    from cluster.slurm_options import check_options, resolve_for_study
    from study.studyfile import load_study

    study = load_study(_write_study(tmp_path, "big"), "smoke")
    assert resolve_for_study(check_options(_options()), study)["cpus_per_task"] == 2
    with pytest.raises(UserError, match="asks 1 GPU"):
        big = study.__class__(study.spec, study.path, study.preset, study.cells,
                              study.resources.model_copy(update={"gpus": 1.0}), study.max_failures)
        resolve_for_study(check_options(_options()), big)


def test_job_follows_submitits_checkpoint_protocol():
    import cloudpickle
    from submitit.helpers import DelayedSubmission

    from cluster.slurm_job import StudyJob

    job = StudyJob("/x/s.yaml", "smoke", {"epochs": 1}, retry=RetryPolicy(3, True), env={"A": "1"}, options={"nodes": 1})
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission) and delayed.function is job and job.checkpoints == 1
    again = cloudpickle.loads(cloudpickle.dumps(delayed))
    assert again.function.study_path == "/x/s.yaml" and again.function.checkpoints == 1
    assert again.function.retry == RetryPolicy(3, True)  # the submitting command's policy, whole


def test_driver_thread_hands_back_its_value_and_errors(monkeypatch):
    from cluster import slurm_job

    monkeypatch.setattr(slurm_job, "_STOPPED_AT", [])
    assert slurm_job._drive_in_thread(lambda: 7) == 7
    with pytest.raises(KeyError, match="boom"):
        slurm_job._drive_in_thread(lambda: {}["boom"])


def test_sigterm_while_driving_marks_the_stop_and_keeps_signals_live(monkeypatch, capsys):
    """SIGTERM arrives while the driver thread is busy: the main thread's handler runs at once
    (STOPPING set, so Tune callbacks do not fail the cells), and without a requeue signal within
    the grace period the job ends with a resumable error instead of hanging on a dead Ray."""
    import threading

    from cluster import slurm_job, tune_run

    monkeypatch.setattr(slurm_job, "_STOPPED_AT", [])
    monkeypatch.setenv("STUDY_SIGTERM_GRACE_S", "1")
    monkeypatch.setattr(tune_run, "STOPPING", threading.Event())
    old = signal.signal(signal.SIGTERM, slurm_job._on_sigterm)
    release = threading.Event()

    def busy():  # a Tune loop stuck in a call that does not return (Ray's GCS is gone)
        os.kill(os.getpid(), signal.SIGTERM)
        release.wait(30)
        return 0

    start = time.time()
    try:
        with pytest.raises(RuntimeError, match="SIGTERM and no requeue signal within 1s.*resumable"):
            slurm_job._drive_in_thread(busy)
        # the stuck driver thread is not waited for: the job ends after the grace period
        assert time.time() - start < 15
    finally:
        release.set()
        signal.signal(signal.SIGTERM, old)
    assert tune_run.stopping()
    assert "SIGTERM: SLURM is stopping this job" in capsys.readouterr().out


def test_a_lost_node_is_named(monkeypatch):
    from cluster import slurm_job

    class FakeRay:
        nodes_now = [{"NodeID": "a", "NodeName": "node0", "Alive": True},
                     {"NodeID": "b", "NodeName": "node1", "Alive": True}]

        @classmethod
        def nodes(cls):
            return cls.nodes_now

    monkeypatch.setitem(sys.modules, "ray", FakeRay)
    monkeypatch.setattr(slurm_job, "_STOPPED_AT", [])
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    watch = slurm_job._NodeWatch()
    watch.check()  # both alive: nothing
    FakeRay.nodes_now = [{"NodeID": "a", "NodeName": "node0", "Alive": True},
                         {"NodeID": "b", "NodeName": "node1", "Alive": False}]
    import threading

    never = threading.Event()
    with pytest.raises(RuntimeError, match=r"lost node node1 mid-study.*squeue -j 42.*scancel 42"):
        slurm_job._drive_in_thread(lambda: never.wait(30), watch, period=0.1)
    never.set()


# ---------------------------------------------------------------- the job, without SLURM (slow)
@pytest.mark.slow
@pytest.mark.skipif(TWO_NODES, reason="a SLURM of 2 nodes is here: tests/test_slurm_nodes.py runs this two-task "
                                      "path through SLURM itself (a Ray cluster less for make test)")
def test_job_code_path_through_submitit_local_executor(store, monkeypatch):
    """The job as SLURM would run it: task 0 starts the Ray head and drives Tune, task 1 joins as a
    second Ray node (two SLURM tasks on one machine), and the cells land in the store."""
    import submitit

    from cluster.slurm_job import StudyJob
    from cluster.slurm_options import check_options, resolve_for_study
    from cluster.slurm_submit import job_environment
    from study.studyfile import load_study

    tmp_path, env = store
    for key in ("MLFLOW_TRACKING_URI", "STUDY_RUN_ROOT", "STUDY_RAY_RESULTS", "STUDY_ARTIFACT_ROOT",
                "STUDY_RAY_JOIN_TIMEOUT", "STUDY_TRIAL", "STUDY_FAKE_TRIAL"):
        monkeypatch.setenv(key, env[key])
    path = _write_study(tmp_path, "local-job", epochs=1)
    study = load_study(path, "smoke")
    values = resolve_for_study(check_options(_options(overrides={"cpus_per_task": "1"})), study)
    values["tasks_per_node"] = 2
    executor = submitit.LocalExecutor(folder=tmp_path / "local_logs" / "%j")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)
    job = executor.submit(StudyJob(str(path), "smoke", {}, retry=RetryPolicy(), env=job_environment(),
                                   options=values))
    assert job.results() == [0, None], job.stdout()
    out = job.stdout() or ""
    assert "2 Ray node(s) expected" in out and "2 node(s), 2 CPUs" in out, out[-3000:]
    assert "joining Ray at" in (job.task(1).stdout() or "")
    assert oct((Path(job.paths.folder) / "ray_auth_token").stat().st_mode & 0o777) == "0o600"
    _check_complete(_client(tmp_path), "local-job", 2, 1)


# ---------------------------------------------------------------- a real SLURM (slow)
def _submit(path, env, *extra):
    res = _run(["run", str(path), "--preset", "smoke", "--cluster", "slurm", "--cpus-per-task", "2",
                "--time", "15", *extra], env)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"submitted SLURM job (\d+)", res.stdout)
    assert m, res.stdout
    return m.group(1), res


def _state(job_id):
    from cluster.slurm_submit import job_state

    return job_state(job_id)


def _wait_until(predicate, timeout, what, explain=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"; {explain()}" if explain else ""))


def _where(client, name, job_id):
    """What a timed-out wait saw: the job's state and each cell's status and last logged epoch."""
    cells = [(r.data.tags.get("cell_id"), r.info.status, len(client.get_metric_history(r.info.run_id, "knn_top1")) - 1)
             for r in _cell_runs(client, name)]
    return f"job {job_id} state {_state(job_id)!r}, cells (id, status, epoch): {cells}"


def _mid_study(client, name, min_finished):
    """True once min_finished cells are done and another has logged an epoch."""
    runs = _cell_runs(client, name)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    running = [r for r in runs if r.info.status == "RUNNING" and "loss" in r.data.metrics]
    return len(finished) >= min_finished and running


def _trained_state(tmp_path, name, cell_ids):
    """What training writes in a cell's run directory: unchanged means not trained again."""
    out = {}
    for cid in cell_ids:
        run_dir = tmp_path / "runs" / name / cid
        out[cid] = [(p.read_text(), p.stat().st_mtime_ns) for p in (run_dir / "metrics.jsonl", run_dir / "final.json")]
    return out


@pytest.fixture
def jobs():
    """Job ids to cancel when a test ends, however it ends."""
    ids: list[str] = []
    yield ids
    for jid in ids:
        subprocess.run(["scancel", jid], capture_output=True, timeout=30)
    for jid in ids:  # the Ray temp dir of a cancelled job (killed before it could clean up)
        _wait_until(lambda: _state(jid) not in ("RUNNING", "COMPLETING", "PENDING"), 60, f"job {jid} to end")
        for path in Path("/tmp").glob(f"ray{jid}.*"):
            shutil.rmtree(path, ignore_errors=True)


def _submit_until_mid_study(store, jobs, name, *extra):
    """Submit the uneven study and wait until one cell finished and another is mid-training."""
    tmp_path, env = store
    path = _write_study(tmp_path, name, template=UNEVEN_STUDY)
    job_id, _ = _submit(path, env, *extra)
    jobs.append(job_id)
    client = _client(tmp_path)
    _wait_until(lambda: (tmp_path / "mlflow.db").exists() and _mid_study(client, name, 1), 240,
                "a finished cell and a running one", lambda: _where(client, name, job_id))
    return client, job_id, tmp_path / "slurm_logs" / name / job_id


def _release_and_finish(job_id, folder) -> str:
    """Start the requeued (pending) job now, wait for its success; its log."""
    result = folder / f"{job_id}_0_result.pkl"
    result.unlink(missing_ok=True)  # an earlier attempt's (one that failed before SLURM requeued it)
    # SLURM holds a requeued job back for about two minutes (its BeginTime); release it now
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
    _wait_until(result.exists, 240, "the requeued job to finish")
    # the job's end (SLURM's epilog, the node's report) can lag its result by a minute on a loaded machine
    _wait_until(lambda: _state(job_id) in ("COMPLETED", ""), 180, "the job to end",
                lambda: f"job {job_id} state {_state(job_id)!r}")
    from submitit.core.utils import pickle_load

    assert pickle_load(result) == ("success", 0)
    return (folder / f"{job_id}_0_log.out").read_text()


@needs_slurm
@pytest.mark.slow
def test_preemption_sigterm_then_usr2_requeues(store, jobs):
    """Preemption as submitit's ``_interrupt(timeout=False)`` sends it: SIGTERM to every process of
    the job step (Ray's GCS, raylet and trial workers die with it), then USR2. The driver, whose
    Tune loop runs in a thread, handles both at once: the cells killed with Ray are not marked
    failed, the job requeues itself and the next attempt restores, every cell once.

    USR2 is also the signal SLURM sends ``signal_delay_s`` before the time limit (submitit's
    ``_interrupt(timeout=True)``): its path (the job checkpoints itself, resubmits the same job
    object, requeues, and the next attempt restores the Tune experiment) is the second half of this."""
    log = _signals_requeue(store, jobs, "slurm-preempt", ["TERM", "USR2"])
    assert "SIGTERM: SLURM is stopping this job" in log, log[-3000:]


def _signals_requeue(store, jobs, name, signals):
    """Mid-study, send ``signals`` to the job's steps; it must requeue itself and finish. Its log."""
    client, job_id, folder = _submit_until_mid_study(store, jobs, name)
    for sig in signals:
        subprocess.run(["scancel", "--signal", sig, job_id], check=True, timeout=30)
    _wait_until(lambda: _state(job_id) == "PENDING", 60, "the job to requeue itself",
                lambda: _where(client, name, job_id) + "; log tail: "
                + (folder / f"{job_id}_0_log.out").read_text()[-1500:])
    log = _release_and_finish(job_id, folder)
    assert "requeueing (checkpoint 1)" in log, log[-3000:]
    assert "attempt 1" in log and "restoring it" in log, log[-3000:]
    for run in _check_complete(client, name, 4):
        assert not run.data.tags.get("error"), run.data.tags  # no cell was failed by the stop
    return log


@needs_slurm
@pytest.mark.slow
def test_cancel_then_run_again_resumes(store, jobs):
    tmp_path, env = store
    name = "slurm-cancel"
    path = _write_study(tmp_path, name, epochs=3, seeds="[0, 1]")
    job_id, _ = _submit(path, env)
    jobs.append(job_id)
    client = _client(tmp_path)
    _wait_until(lambda: (tmp_path / "mlflow.db").exists() and _mid_study(client, name, 0), 240,
                "a cell with a logged epoch")
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    _wait_until(lambda: _state(job_id) in ("CANCELLED", ""), 60, "the job to be cancelled")
    assert any(r.info.status != "FINISHED" for r in _cell_runs(client, name))
    res = _run(["run", str(path), "--preset", "smoke", "--cluster", "slurm", "--wait", "--cpus-per-task", "2",
                "--time", "15"], env)
    jobs.extend(re.findall(r"submitted SLURM job (\d+)", res.stdout))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished 4/4" in res.stdout
    _check_complete(client, name, 4, 3)
