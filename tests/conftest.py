"""Shared fixtures: import path of this checkout's package, the real sample set, a Snakemake runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(REPO))  # this checkout's effzoo, whatever else is installed
SAMPLE = (REPO.parent / "shared" / "imagenet-sample-500").resolve()
needs_sample = pytest.mark.skipif(not (SAMPLE / "val_label.txt").exists(),
                                  reason=f"real ImageNet sample not found at {SAMPLE}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing may download weights or data in tests."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def base_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def resolved_config(cfg: dict | None = None) -> dict:
    """A config (default: config.yaml) validated, with every default from the schema filled in."""
    from snakemake.utils import validate

    cfg = base_config() if cfg is None else cfg
    validate(cfg, str(REPO / "schemas" / "config.schema.yaml"))
    return cfg


def planned_jobs(work: Path, cfg: dict | None = None, targets: tuple = (), **kw) -> dict[str, int]:
    """Job counts per rule of `snakemake -n` ({} when nothing is to be done)."""
    out = run_snakemake(work, *targets, "-n", "--quiet", "rules", config=cfg, **kw).stdout
    jobs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return jobs


def copy_repo(dst: Path) -> Path:
    """A copy of what the workflow runs from (Snakefile, rules, scripts, the effzoo package, schemas, config, envs,
    report, profiles)."""
    import shutil

    dst.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    shutil.copy2(REPO / "config.yaml", dst / "config.yaml")
    for d in ("rules", "scripts", "effzoo", "schemas", "envs", "report", "profiles"):
        shutil.copytree(REPO / d, dst / d, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def run_snakemake(workdir: Path, *args: str, config: dict | None = None, check: bool = True,
                  timeout: int = 1800, repo: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the workflow's snakemake (of `repo`, by default this one) in `workdir` with an optional config file
    written there and extra environment variables."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir), "--cores", "2",
           *args]   # before --configfile, which takes every file name that follows it
    if config is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "test-config.yaml"
        cfg.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


# ------------------------------------------------------------------------------------------------
# exports made once per test session: the workflow's own export jobs, copied with Snakemake's records into the
# workdirs of the fixtures that build on them (a copied export is what the fixture's own job would have made:
# its params and code fingerprint are recorded, so a fixture whose settings differ still re-exports)

SHARED_EXPORTS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "efficientnet_b0")


@pytest.fixture(scope="session")
def shared_exports(tmp_path_factory) -> Path:
    """A workdir holding onnx/<variant>.* of SHARED_EXPORTS (efficientnet_b0 at random weights)."""
    work = tmp_path_factory.mktemp("exports")
    cfg = base_config()
    cfg["variants"]["efficientnet_b0"]["weights"] = "random"
    run_snakemake(work, *(f"onnx/{v}.onnx" for v in SHARED_EXPORTS), config=cfg)
    return work


def seed_exports(shared: Path, work: Path, variants) -> None:
    """Copy the shared exports of `variants` and Snakemake's metadata records of them into `work`."""
    import base64
    import shutil

    (work / "onnx").mkdir(parents=True, exist_ok=True)
    (work / ".snakemake" / "metadata").mkdir(parents=True, exist_ok=True)
    for v in variants:
        for suffix in (".onnx", ".json", ".preprocess.json"):
            rel = f"onnx/{v}{suffix}"
            shutil.copy2(shared / rel, work / rel)
            record = base64.urlsafe_b64encode(rel.encode()).decode()
            shutil.copy2(shared / ".snakemake" / "metadata" / record, work / ".snakemake" / "metadata" / record)
