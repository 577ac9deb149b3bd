"""tests/slurm/local_slurm.sh: stop puts back what start changed (no configured controller left behind)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "tests" / "slurm" / "local_slurm.sh"
CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by effzoo tests/slurm/local_slurm.sh start"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("slurmctld"),
    reason="needs root and Slurm's packages (`bash tests/slurm/local_slurm.sh start` installs them)")]


def local_slurm(cmd: str) -> None:
    proc = subprocess.run(["bash", str(SCRIPT), cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stop_removes_the_conf_start_wrote_and_restores_a_site_conf():
    was_running = CONF.exists() and CONF.read_text().startswith(MARK)
    site_conf = None if (not CONF.exists() or was_running) else CONF.read_bytes()
    try:
        local_slurm("stop")
        assert not (CONF.exists() and CONF.read_text().startswith(MARK))
        # a slurm.conf of the site's own is kept aside by start and put back by stop, byte for byte
        mine = b"# a site's own slurm.conf\nClusterName=site\nSlurmctldHost=elsewhere\n"
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_bytes(mine)
        local_slurm("start")
        assert CONF.read_text().startswith(MARK)
        local_slurm("stop")
        assert CONF.read_bytes() == mine
        # with no site conf, stop leaves none at all
        CONF.unlink()
        local_slurm("start")
        local_slurm("stop")
        assert not CONF.exists()
    finally:
        if site_conf is not None:
            CONF.write_bytes(site_conf)
        elif CONF.exists() and not CONF.read_text().startswith(MARK):
            CONF.unlink()
        if was_running:
            local_slurm("start")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_returns_only_after_the_daemons_have_exited():
    state = Path("/var/spool/effzoo-slurm")
    was_running = CONF.exists() and CONF.read_text().startswith(MARK)
    try:
        local_slurm("start")
        pids = [int((state / f"{d}.pid").read_text()) for d in ("slurmctld", "slurmd", "munged")]
        pids += [int(p) for p in subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True,
                                                text=True).stdout.split()]   # slurmctld's slurmscriptd
        local_slurm("stop")
        assert [p for p in pids if alive(p)] == []
        assert not any((state / f"{d}.pid").exists() for d in ("slurmctld", "slurmd", "munged"))
    finally:
        if was_running:
            local_slurm("start")


def test_a_failed_start_undoes_what_it_did(tmp_path):
    """A controller that will not start: start exits non-zero, stops what it started and removes its slurm.conf."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "slurmctld").write_text("#!/bin/sh\necho 'slurmctld: cannot start' >&2\nexit 1\n")
    (fake / "slurmctld").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "EFFZOO_SLURM_STATE": str(tmp_path / "state"),
           "EFFZOO_SLURM_CONF_DIR": str(tmp_path / "conf")}
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0 and "slurm: start failed; undoing it" in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "conf/slurm.conf").exists()
    assert not list((tmp_path / "state").glob("*.pid"))
