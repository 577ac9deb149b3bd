"""Shared fixtures: import path for the step scripts, the real sample set, a Snakemake runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))
SAMPLE = (REPO.parent / "shared" / "imagenet-sample-500").resolve()
needs_sample = pytest.mark.skipif(not (SAMPLE / "val_label.txt").exists(),
                                  reason=f"real ImageNet sample not found at {SAMPLE}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may download weights or data in tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def run_snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True,
                  timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the workflow's snakemake in `workdir` with an optional config file written there."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2"]
    if config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
