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

SHARED_EXPORTS = ("tf_efficientnet_lite0", "efficientnet_b0")


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


# ------------------------------------------------------------------------------------------------
# what ONNX Runtime's CPU layout pass (NCHWc) blocks, from the block size and a model's channel counts

NCHWC_INPUT_ALIGNMENT = 4   # a 1x1 conv reading >= block channels is blocked only when they are a multiple of 4


def se_gates(model) -> list[tuple[int, int]]:
    """(gated channels, squeeze channels) of every squeeze-excite gate in an ONNX model: a Sigmoid of a 1x1 conv
    [C, S, 1, 1] whose output multiplies another tensor (not its own input, which would be a SiLU)."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    muls = [m for m in model.graph.node if m.op_type == "Mul"]
    gates = []
    for n in model.graph.node:
        if n.op_type != "Sigmoid" or n.input[0] not in producer or producer[n.input[0]].op_type != "Conv":
            continue
        if not any(n.output[0] in m.input and n.input[0] not in m.input for m in muls):
            continue
        w = dims[producer[n.input[0]].input[1]]
        if len(w) == 4 and w[2:] == [1, 1]:
            gates.append((w[0], w[1]))
    return gates


def expected_se_rewrites(gates: list[tuple[int, int]], block: int) -> int:
    """How many SE gates the layout pass rewrites at this NCHWc block size: both factors of the Mul must come out
    of blocked convs, so the gated channels are a multiple of the block, and the expand conv reading the squeeze
    channels is blocked (fewer than a block are read as plain NCHW; more must be a multiple of 4)."""
    if block == 0:
        return 0
    return sum(1 for c, s in gates if c % block == 0 and (s < block or s % NCHWC_INPUT_ALIGNMENT == 0))
