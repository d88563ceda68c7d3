"""The Makefile's study targets: every study file of experiments/ runs as make study-NAME (a new file
too), and a name without its file is one clear error."""

from __future__ import annotations

import shutil
import subprocess

from study.core.paths import REPO_ROOT


def _make(*args, cwd=REPO_ROOT):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_every_study_file_is_a_target(tmp_path):
    res = _make("-n", "study-sampling")
    assert res.returncode == 0 and "study run experiments/sampling.yaml" in res.stdout, res.stdout + res.stderr
    # a new study file in a copy of the repository's layout is a target as well
    repo = tmp_path / "repo"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "Makefile", repo / "Makefile")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "experiments" / "temperature.yaml").write_text("name: temp\n")
    res = _make("-n", "study-temperature", cwd=repo)
    assert "study run experiments/temperature.yaml" in res.stdout, res.stdout + res.stderr
    res = _make("study-nothere", cwd=repo)
    assert res.returncode != 0 and "no study file experiments/nothere.yaml (there: temperature)" in res.stderr
