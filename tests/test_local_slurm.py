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
