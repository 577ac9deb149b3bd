"""Every command the README prints is run by a test: the workflow's own lines as dry runs here, the others by the
test named for them (which this checks exists), so that an example that stops working fails the suite."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE

README = (REPO / "README.md").read_text()
COMMAND_START = (".venv/bin/", "snakemake ", "effzoo ", "python3 ", "bash ", "SLURM_CONF=")

# commands not dry-run here: the test (file::function, or .ci/run) that runs each
RUN_ELSEWHERE = {
    "python3 -m venv .venv && .venv/bin/pip install -r envs/requirements.txt -e .": ".ci/run",
    ".venv/bin/python -m pytest": ".ci/run",
    "snakemake --report reports/report.html": "test_workflow.py::test_demo_end_to_end_and_rerun_does_nothing",
    "effzoo classify deploy/tf_efficientnet_lite0 photo.jpg more.jpg --topk 5":
        "test_workflow.py::test_demo_end_to_end_and_rerun_does_nothing",
    "effzoo info deploy/tf_efficientnet_lite0": "test_workflow.py::test_demo_end_to_end_and_rerun_does_nothing",
    "bash tests/slurm/local_slurm.sh start": ".ci/run",
    "snakemake metrics/efficientnet_b0.json --configfile my-config.yaml":
        "test_workflow.py::test_the_readme_configfile_example_plans_its_target",
    ".venv/bin/python tools/zoo_cost.py project --nodes K --cores C": "test_readme.py::test_the_cost_projection_runs",
}


def readme_commands() -> list[str]:
    """The README's command lines: indented code lines and backticked spans that start like a command, without
    their trailing comment."""
    found = [ln.strip() for ln in README.splitlines() if ln.startswith("    ") and ln.strip().startswith(COMMAND_START)]
    found += [span for span in re.findall(r"`([^`\n]+)`", README.replace("`\n", "` ").replace("(`bash\n", "(`bash "))
              if span.startswith(COMMAND_START) and len(span.split()) > 2 and "<" not in span and "..." not in span]
    return list(dict.fromkeys(c.split("  #")[0].strip() for c in found))


def dry_run_args(command: str) -> list[str] | None:
    """snakemake's arguments for a workflow command line (the venv's or the activated one), or None."""
    words = command.split()
    if words[0] in (".venv/bin/snakemake", "snakemake") and "--report" not in words:
        return words[1:]
    return None


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    assert ".venv/bin/snakemake" in commands and ".venv/bin/python -m pytest" in commands
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        if command in RUN_ELSEWHERE:
            where = RUN_ELSEWHERE[command]
            if where == ".ci/run":
                assert command in ci, command
            else:
                path, name = where.split("::")
                assert f"def {name}(" in (REPO / "tests" / path).read_text(), where
        else:
            assert dry_run_args(command) is not None, f"README command with no test: {command}"


def test_the_readme_install_and_test_commands_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install -r envs/requirements.txt -e ." in ci
    assert ".venv/bin/python -m pytest" in ci and "bash tests/slurm/local_slurm.sh start" in ci


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c in readme_commands()
                                     if dry_run_args(c) is not None and c not in RUN_ELSEWHERE])
def test_readme_workflow_command_plans(tmp_path, command):
    """Each workflow line of the README, as printed, plans its jobs (snakemake -n) in a fresh directory."""
    args = dry_run_args(command)
    if "dataset=imagenet-sample-500" in args and not (SAMPLE / "val_label.txt").exists():
        pytest.skip(f"the README line names the ImageNet sample, not found at {SAMPLE}")
    work = tmp_path / "work"   # a checkout's place: ../shared beside it, as config.yaml's datasets expect
    work.mkdir()
    (tmp_path / "shared").symlink_to(SAMPLE.parent)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
                           "-n", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Job stats:" in proc.stdout, proc.stdout[-2000:]


def test_the_cost_projection_runs():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "zoo_cost.py"), "project", "--nodes", "4",
                           "--cores", "32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "efficientnet_b8" in proc.stdout and "core-hours" in proc.stdout
