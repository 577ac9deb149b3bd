"""Cluster execution through snakemake-executor-plugin-slurm against a real Slurm (tests/slurm/local_slurm.sh)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO, base_config, run_snakemake, seed_exports


def slurm_idle() -> bool:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True).stdout.split()
    return any(s in ("idle", "mix", "alloc") for s in out)


pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not slurm_idle(), reason="no running Slurm here: start one with `bash tests/slurm/local_slurm.sh start`")]


def small_config() -> dict:
    cfg = base_config()
    cfg["run_quant"] = ["fp32"]
    cfg["benchmark"] = {"enabled": False}
    return cfg


def slurm_cmd(work) -> list[str]:
    (work / "cfg.yaml").write_text(yaml.safe_dump(small_config()))
    return ["timeout", "-s", "INT", "-k", "10", "900", sys.executable, "-m", "snakemake", "-s",
            str(REPO / "Snakefile"), "-d", str(work), "--configfile", str(work / "cfg.yaml"),
            "--workflow-profile", str(REPO / "profiles" / "slurm")]


def submitted(text: str) -> dict[str, str]:
    """Slurm job id -> the rule or group it ran, from Snakemake's submission lines."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*?slurm_logs/([^/\s]+)", text))


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else "UNKNOWN"


def test_slurm_kill_is_reported_then_rerun_completes_with_local_metrics(tmp_path, shared_exports):
    work = tmp_path / "slurm"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # 1) Slurm kills the export job while it runs: the failure names the rule and Slurm's state
    proc = subprocess.Popen(slurm_cmd(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, killed = [], None
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"submitted with SLURM jobid (\d+) \(log: .*rule_export_onnx", line)
        if m and killed is None:
            killed = m.group(1)
            time.sleep(3)
            subprocess.run(["scancel", killed], check=True)
    proc.wait()
    text = "".join(lines)
    assert killed and proc.returncode != 0, text[-3000:]
    assert re.search(r"Error in rule export_onnx", text) and "CANCELLED" in text, text[-3000:]
    assert not (work / "onnx/tf_efficientnet_lite0.onnx").exists()
    # 2) the rerun completes, every job under Slurm
    done = subprocess.run(slurm_cmd(work), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    first = submitted(text)
    rerun = submitted(done.stdout + done.stderr)
    # the rerun redoes what the kill stopped; the grouped shard job may have finished before the kill (it runs
    # beside the export), so each compute stage must have run under Slurm in one of the two runs
    assert {"rule_export_onnx", "rule_build_float", "rule_predict"} <= set(rerun.values()), rerun
    assert any(name.startswith("group_") or name == "rule_make_shards" for name in {**first, **rerun}.values()), \
        (first, rerun)
    states = {i: job_state(i) for i in [*first, *rerun] if i != killed}
    assert all(s == "COMPLETED" for s in states.values()), states
    assert job_state(killed) == "CANCELLED"
    # 3) the metrics equal those of a local run (on the session's own local export of the same model)
    local = tmp_path / "local"
    seed_exports(shared_exports, local, ["tf_efficientnet_lite0"])
    run_snakemake(local, config=small_config())
    a = json.loads((work / "metrics/tf_efficientnet_lite0.json").read_text())
    b = json.loads((local / "metrics/tf_efficientnet_lite0.json").read_text())
    assert a["results"]["fp32"]["top1"] == b["results"]["fp32"]["top1"]
    assert a["results"]["fp32"]["top5"] == b["results"]["fp32"]["top5"]
    assert (work / "output/tf_efficientnet_lite0-fp32/predictions.csv").read_text() == \
        (local / "output/tf_efficientnet_lite0-fp32/predictions.csv").read_text()
