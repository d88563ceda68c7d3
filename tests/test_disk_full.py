"""A full disk reaches the user as one line (issue 27, class 2; ray#32481): the store and the study's
folders on a small tmpfs, filled after the first cell: the study exits 1 with one message naming the
full disk and what to do, no traceback; freed, the same command finishes every cell exactly once."""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import fake_trial_env, store_client, store_env
from study.core.errors import infrastructure_error
from study.core.paths import REPO_ROOT

STUDY = """
name: full
fixed: {method: interclr, labels: online, margin_type: cosine, margin: -0.5, epochs: 3}
factors:
  sampling: [semi-hard, hard, random]
seeds: [0]
presets:
  smoke: {resources: {cpus: 1}, max_failures: 0}
"""


def test_the_machines_failures_are_named():
    e = infrastructure_error(RuntimeError("x").with_traceback(None))
    assert e is None
    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/ckpt.pt")
    wrapped = RuntimeError("trial failed")
    wrapped.__cause__ = full
    msg = str(infrastructure_error(wrapped))
    assert msg.startswith("the disk is full (/data/run/ckpt.pt): free space") and infrastructure_error(wrapped).exit_code == 1
    db = sqlite3.OperationalError("database or disk is full")
    assert "the disk holding the MLflow store is full" in str(infrastructure_error(db))
    assert "read-only" in str(infrastructure_error(OSError(errno.EROFS, "Read-only file system", "/x")))
    from study.core.errors import infrastructure_from_text

    # a trial's error text: the first file its line names (a rename names two), or none
    assert str(infrastructure_from_text("OSError: [Errno 30] Read-only file system: '/a' -> '/b'")).startswith(
        "the file system is read-only (/a): ")
    assert str(infrastructure_from_text("PermissionError: [Errno 13] Permission denied")).startswith(
        "permission denied: fix")
    assert infrastructure_from_text("ValueError: invalid literal for int()") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
@pytest.mark.timeout(900)
def test_a_disk_filled_mid_study_is_one_line_and_the_rerun_finishes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    try:
        env = fake_trial_env(store_env(disk, STUDY_NUM_CPUS="1"), epoch_s=0.5)
        path = tmp_path / "full.yaml"
        path.write_text(STUDY)
        study = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"],
                                 cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 300
            while time.time() < deadline and study.poll() is None:  # fill the disk once a cell has finished
                runs = list((disk / "runs" / "full").glob("*/final.json")) if (disk / "runs").exists() else []
                if runs:
                    break
                time.sleep(0.2)
            try:  # the study's own files may have filled the disk already: then even the open fails
                with open(disk / "filler", "wb") as fh:
                    while True:
                        fh.write(b"\0" * (1 << 20))
                        fh.flush()
            except OSError:
                pass
            out, err = study.communicate(timeout=600)
        finally:
            study.kill()
        assert study.returncode == 1, out + err
        assert "Traceback" not in err, err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "full" in errors[0] and "free space" in errors[0], err[-3000:]
        (disk / "filler").unlink(missing_ok=True)
        res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], cwd=REPO_ROOT,
                             env=fake_trial_env(store_env(disk, STUDY_NUM_CPUS="1"), epoch_s=0.05),
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        client = store_client(disk)
        runs = client.search_runs([client.get_experiment_by_name("full").experiment_id], "tags.role = 'cell'")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        assert sorted(r.data.tags["level"] for r in finished) == ["hard", "random", "semi-hard"]
        assert not [r for r in runs if r.info.status == "RUNNING"]
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root (CI runs as root)")
@pytest.mark.timeout(900)
def test_a_run_folder_made_read_only_mid_study_is_one_line_and_the_rerun_finishes(tmp_path):
    """The cells' run folder turned read-only after the first cell (a remount, an expired mount): the
    cells it fails are KILLED (resumable) and so is the parent, one line says so once (not once per cell
    and retry), exit 1; writable again, the same command finishes every cell exactly once."""
    from study.core.errors import infrastructure_from_text

    assert "read-only (/x/m.tmp)" in str(infrastructure_from_text("OSError: [Errno 30] Read-only file system: "
                                                                    "'/x/m.tmp'"))
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    env = fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="1"), epoch_s=0.3)
    path = tmp_path / "ro.yaml"
    path.write_text(STUDY.replace("name: full", "name: ro"))
    study = subprocess.Popen([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mounted = False
    try:
        deadline = time.time() + 300
        while time.time() < deadline and study.poll() is None and not list(runs_dir.glob("ro/*/final.json")):
            time.sleep(0.2)
        subprocess.run(["mount", "--bind", str(runs_dir), str(runs_dir)], check=True)
        mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(runs_dir)], check=True)
        out, err = study.communicate(timeout=600)
    finally:
        study.kill()
        if mounted:
            subprocess.run(["umount", "-l", str(runs_dir)], check=False)
    text = out + err
    assert study.returncode == 1, text
    assert "Traceback" not in text and "Trials did not complete" not in text and "errored after" not in text, text
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "read-only" in errors[0] and str(runs_dir) in errors[0], text
    assert text.count("a cell failed") <= 1, text
    client = store_client(tmp_path)
    exp = client.get_experiment_by_name("ro").experiment_id
    (parent,) = client.search_runs([exp], "tags.role = 'parent'")
    cells = client.search_runs([exp], "tags.role = 'cell'")
    assert parent.info.status == "KILLED", parent.info.status
    assert sorted(r.info.status for r in cells) == ["FINISHED", "KILLED", "KILLED"], [r.info.status for r in cells]
    res = subprocess.run([sys.executable, "-m", "study", "run", str(path), "--preset", "smoke"], cwd=REPO_ROOT,
                         env=fake_trial_env(store_env(tmp_path, STUDY_NUM_CPUS="1"), epoch_s=0.05),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    cells = client.search_runs([exp], "tags.role = 'cell'")
    assert sorted(r.data.tags["level"] for r in cells) == ["hard", "random", "semi-hard"]
    assert all(r.info.status == "FINISHED" for r in cells)


def test_rays_syncer_traceback_is_one_line_naming_the_cause():
    """Ray's syncer logs a whole traceback when it cannot copy a trial's files into Tune's storage (a full
    disk while the study runs): the driver's filter leaves one line naming the storage and the cause."""
    import io
    import logging

    from cluster.tune_run import OneLineSyncErrors

    log = logging.getLogger("test.syncer")
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    log.addHandler(handler)
    log.addFilter(OneLineSyncErrors())
    try:
        log.warning("Last sync command failed with the following error:\nTraceback (most recent call last):\n"
                    "  File \"syncer.py\", line 411, in wait\nOSError: [Errno 28] Error writing bytes to file. "
                    "Detail: [errno 28] No space left on device\n")
        log.warning("Last sync still in progress, skipping sync up")  # no traceback: left as it is
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "Traceback" not in out.getvalue(), lines
    assert lines[0].startswith("Ray Tune could not copy") and "STUDY_RAY_RESULTS" in lines[0], lines
    assert lines[0].endswith("the disk is full") and lines[1] == "Last sync still in progress, skipping sync up"
