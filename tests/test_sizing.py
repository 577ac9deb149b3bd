"""Cluster job sizes from the measured cost file: the cost model as functions, and the sizes snakemake plans at
ImageNet scale (a 50,000-image dataset, dry runs) for the largest variants, predict parts included."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, run_snakemake

from effzoo import cost, int8_trials
from effzoo.common import ZooError

B7_TAG = "tf_efficientnet_b7.ra_in1k"


def test_shipped_cost_file_covers_every_configured_architecture():
    model = cost.load()
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    archs = {cost.arch_of(v["tag"]) for v in cfg["variants"].values()}
    assert archs <= set(model.archs), archs - set(model.archs)
    for arch in archs:
        entry = model.archs[arch]
        assert 0.3 <= entry["parallel_fraction"] <= 1.0
        assert set(entry["stages"]["predict"]) == set(cost.BUILD_KINDS)
        assert all(r["per_image_s"] > 0 for r in entry["stages"]["predict"].values())
    assert model.doc["cpu"] and model.doc["measured"] and model.doc["command"].startswith("python tools/zoo_cost.py")


def test_split_parts_are_contiguous_within_the_limit_and_as_few_as_possible():
    parts = cost.split_parts(50, shard_seconds=600.0, fixed_seconds=30.0, limit_seconds=3600.0)
    assert parts[0][0] == 0 and parts[-1][1] == 49
    assert all(b[0] == a[1] + 1 for a, b in zip(parts, parts[1:]))
    sizes = [last - first + 1 for first, last in parts]
    assert max(sizes) <= 5 and max(sizes) - min(sizes) <= 1   # 5 shards of 600 s + 30 s fit in 3600 s, 6 do not
    assert len(parts) == 10
    assert cost.split_parts(3, 10.0, 1.0, 3600.0) == [(0, 2)]
    assert cost.split_parts(4, 5000.0, 1.0, 3600.0) == [(0, 0), (1, 1), (2, 2), (3, 3)]   # one shard a part at least


def test_runtime_has_a_floor_a_safety_factor_and_doubles_on_retry():
    sizes = cost.Sizing(safety_factor=2.0, min_runtime_minutes=10, max_job_minutes=720, min_mem_mb=1000)
    assert sizes.runtime_minutes(60.0) == 10            # 2 minutes planned: the floor
    assert sizes.runtime_minutes(3000.0) == 100         # 50 minutes x 2
    assert sizes.runtime_minutes(3000.0, attempt=2) == 200
    assert sizes.mem_mb(800.0) == 1600 and sizes.mem_mb(100.0) == 1000


def test_more_threads_shorten_only_the_parallel_part():
    assert cost.amdahl(1.0, 16, 2) == pytest.approx(2 / 16)
    assert cost.amdahl(0.9, 16, 2) == pytest.approx((0.1 + 0.9 / 16) / (0.1 + 0.9 / 2))
    assert cost.amdahl(0.9, 2, 2) == 1.0


def _model(**over) -> cost.CostModel:
    rec = {"fixed_s": 2.0, "per_image_s": 0.1, "peak_mb": 500.0}
    kinds = {k: dict(rec) for k in cost.BUILD_KINDS}
    kinds["onnxruntime-int8"] = {"fixed_s": 1.0, "per_image_s": 0.02, "peak_mb": 300.0}
    stages = {s: (kinds if s in cost.KIND_STAGES else dict(rec)) for s in cost.STAGES if s != "make_shards"}
    doc = {"format": cost.FORMAT, "reference_threads": 2, "shard_parallel_fraction": 0.95,
           "geometries": {"224": {"fixed_s": 1.0, "per_image_s": 0.01, "peak_mb": 300.0, "bytes_per_image": 150528}},
           "architectures": {"small": {"input_size": 224, "parallel_fraction": 0.9, "stages": stages},
                             "big": {"input_size": 448, "parallel_fraction": 0.9,
                                     "stages": json.loads(json.dumps(stages))}}, **over}
    doc["architectures"]["big"]["stages"]["predict"]["onnxruntime-fp32"]["per_image_s"] = 1.0
    return cost.CostModel(doc, "test-cost.json")


def test_costs_scale_with_pixels_and_int8_never_plans_faster_than_fp32():
    model = _model()
    at_native, _ = model.stage("predict", "small", 224, "onnxruntime-fp32")
    at_double, _ = model.stage("predict", "small", 448, "onnxruntime-fp32")
    assert at_double.per_image_s == pytest.approx(4 * at_native.per_image_s)
    assert at_double.peak_mb == pytest.approx(4 * at_native.peak_mb)
    int8, _ = model.stage("predict", "small", 224, "onnxruntime-int8")
    assert int8.per_image_s == at_native.per_image_s and int8.fixed_s == at_native.fixed_s
    build, _ = model.stage("build_int8", "small", 224, "onnxruntime-int8")   # builds keep their own cost
    assert build.per_image_s == 0.02


def test_an_int8_build_with_a_split_plans_the_memory_of_its_search_sessions():
    model = _model()
    _, no_split = cost.job_seconds(model, "build_int8", "small", 224, "onnxruntime-int8", 2, images=0)
    _, with_split = cost.job_seconds(model, "build_int8", "small", 224, "onnxruntime-int8", 2, images=200)
    assert no_split == 300.0   # the build's own measured peak
    assert with_split == 300.0 + 2 * 500.0   # and the fp32 and trial sessions at the search batch
    assert cost.SEARCH_BATCH == int8_trials.TRIAL_BATCH
    # the shipped costs: tf_efficientnet_b7 at 600 with a 200-image split peaked at 10458 MB (bench/int8_budget.py --b7)
    _, b7 = cost.job_seconds(cost.load(), "build_int8", "tf_efficientnet_b7", 600, "onnxruntime-int8", 2, images=200)
    assert b7 >= 10458


def test_an_unmeasured_architecture_takes_the_costliest_per_pixel():
    model = _model()
    unknown, _ = model.stage("predict", "resnet50", 448, "onnxruntime-fp32")
    assert unknown.per_image_s == 1.0   # "big" costs 1.0 s at 448 (0.25 per 224 pixels), "small" 0.1 at 224


def test_a_bad_cost_file_is_named(tmp_path):
    bad = tmp_path / "cost.json"
    bad.write_text("{")
    with pytest.raises(ZooError, match=re.escape(str(bad))):
        cost.load(bad)
    bad.write_text(json.dumps({"format": cost.FORMAT, "reference_threads": 2}))
    with pytest.raises(ZooError, match="missing or bad field"):
        cost.load(bad)
    with pytest.raises(ZooError, match="cost file not found"):
        cost.load(tmp_path / "none.json")


def test_workload_counts_images_per_job():
    cfg = {"calibration": {"images": 1000, "validation_images": 200},
           "benchmark": {"rounds": 3, "iterations": 5, "warmup": 2, "batch_sizes": [1, 16], "instances": 1},
           "preprocessing": {"shard_size": 1000}, "inference": {"batch": 32}}
    work = cost.Workload.from_config(cfg, 50000, 50000)
    assert work.batch("predict") == 32 and work.batch("benchmark") == 16 and work.batch("calibrate") is None
    assert (work.calibration_images, work.split_images, work.benchmark_images) == (1000, 200, 357)
    assert work.images("predict") == 50000 and work.images("predict", 10, 19) == 10000
    assert work.images("predict", 49, 49) == 1000
    small = cost.Workload.from_config(cfg, 600, 600)   # a small source is shared in proportion
    assert (small.calibration_images, small.split_images) == (500, 100)


# --- planned sizes at ImageNet scale, through snakemake dry runs ---

def _imagenet_50k(root: Path) -> None:
    """A 50,000-line val_label.txt (a dry run reads only the labels)."""
    (root / "val").mkdir(parents=True)
    root.joinpath("val_label.txt").write_text("".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG {i % 1000}\n"
                                                      for i in range(50000)))
    root.joinpath("label.txt").write_text("".join(f"class{i}\n" for i in range(1000)))


def planned_resources(out: str) -> list[dict]:
    """rule, wildcards, threads and resources of every job a dry run prints."""
    jobs, job = [], None
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"(?:localrule|rule) (\w+):", line)
        if m:
            job = {"rule": m.group(1), "threads": 1, "resources": {}}
            jobs.append(job)
        elif job and line.startswith("threads:"):
            job["threads"] = int(line.split(":")[1])
        elif job and line.startswith("resources:"):
            job["resources"] = dict(kv.strip().split("=", 1) for kv in line[len("resources:"):].split(","))
        elif job and line.startswith("output:"):
            job["output"] = line.split(":", 1)[1].strip()
    return jobs


@pytest.fixture(scope="module")
def imagenet_50k(tmp_path_factory):
    work = tmp_path_factory.mktemp("scale")
    _imagenet_50k(work / "imagenet")
    cfg = {"dataset": "imagenet", "datasets": {"imagenet": {"root": str(work / "imagenet")}},
           "run_variants": ["tf_efficientnet_b7"], "run_quant": ["fp32", "int8_percentile", "ov_int8_percentile"],
           "variants": {"tf_efficientnet_b7": {"tag": B7_TAG, "weights": "random"}}}
    return work, cfg


def _dry_run(work, cfg, *args):
    out = run_snakemake(work, "-n", "--printshellcmds", "metrics/tf_efficientnet_b7.json", *args, config=cfg).stdout
    return planned_resources(out)


def test_b7_on_50000_images_plans_predict_parts_that_add_up_to_its_measured_cost(imagenet_50k):
    work, cfg = imagenet_50k
    jobs = _dry_run(work, cfg)
    parts = [j for j in jobs if j["rule"] == "predict_part"]
    by_build = {}
    for j in parts:
        build = j["output"].split("/")[1]
        by_build.setdefault(build, []).append(j)
    assert set(by_build) == {f"tf_efficientnet_b7-{q}" for q in cfg["run_quant"]}
    model = cost.load()
    b7 = model.archs["tf_efficientnet_b7"]
    for build, jobs_of_build in by_build.items():
        thread_minutes = sum(int(j["resources"]["runtime"]) * j["threads"] for j in jobs_of_build)
        assert thread_minutes >= 833, (build, thread_minutes)   # at least 0.5 s an image at 2 threads
        # the measured fp32 cost (int8 plans no faster than it) times the safety factor, to a few percent
        per_image = b7["stages"]["predict"]["onnxruntime-fp32" if "-ov_" not in build else "openvino-fp32"][
            "per_image_s"]
        assert thread_minutes >= 2 * 50000 * per_image * 2 / 60 * 0.98
        assert all(int(j["resources"]["runtime"]) <= 720 for j in jobs_of_build)
        assert len(jobs_of_build) > 1
    assert {j["rule"] for j in jobs} >= {"gather_predictions", "calibrate", "build_int8", "build_int8_openvino"}
    for j in jobs:
        if j["rule"] in ("export_onnx", "calibrate", "build_float", "build_int8", "benchmark", "predict_part"):
            assert int(j["resources"]["mem_mb"]) >= 1000 and int(j["resources"]["runtime"]) >= 10


def test_a_site_profile_sets_threads_and_the_sizes_follow(imagenet_50k, tmp_path):
    work, cfg = imagenet_50k
    two = [j for j in _dry_run(work, cfg) if j["rule"] in ("predict", "predict_part")]
    profile = tmp_path / "site"
    profile.mkdir()
    profile.joinpath("config.yaml").write_text("set-threads:\n  predict: 16\n  predict_part: 16\n")
    # (--cores 32: a local run caps a job's threads at the cores; a cluster node has them)
    sixteen = [j for j in _dry_run(work, cfg, "--workflow-profile", str(profile), "--cores", "32")
               if j["rule"] in ("predict", "predict_part")]
    assert sixteen and all(j["threads"] == 16 for j in sixteen)
    assert len(sixteen) < len(two)   # parts are planned at the profile's threads: fewer, none over the limit
    assert all(int(j["resources"]["runtime"]) <= 720 for j in sixteen)
    b7 = cost.load().archs["tf_efficientnet_b7"]
    expected = cost.amdahl(b7["parallel_fraction"], 16, 2)
    minutes = [sum(int(j["resources"]["runtime"]) for j in jobs) for jobs in (two, sixteen)]
    assert minutes[1] / minutes[0] == pytest.approx(expected, rel=0.1), minutes


def test_png_shards_add_their_measured_encoding_and_decoding_and_take_their_share_of_disk():
    png = {"png_storage": {"sizes": {"224": {"size_ratio": 2.0, "encode_ms": 30.0, "decode_ms": 10.0}}}}
    model = _model(**png)
    raw_s, raw_mb = cost.job_seconds(model, "predict", "small", 224, "onnxruntime-fp32", 2, 100)
    png_s, png_mb = cost.job_seconds(model, "predict", "small", 224, "onnxruntime-fp32", 2, 100, storage="png")
    assert png_s - raw_s == pytest.approx(100 * 0.010) and png_mb == raw_mb
    # decoding runs in the job's main thread: more threads do not shorten it
    png_8 = cost.job_seconds(model, "predict", "small", 224, "onnxruntime-fp32", 8, 100, storage="png")[0]
    raw_8 = cost.job_seconds(model, "predict", "small", 224, "onnxruntime-fp32", 8, 100)[0]
    assert png_8 - raw_8 == pytest.approx(100 * 0.010)
    shard_raw = cost.job_seconds(model, "make_shards", None, 224, None, 2, 100)
    shard_png = cost.job_seconds(model, "make_shards", None, 224, None, 2, 100, storage="png")
    assert shard_png[0] > shard_raw[0] + 100 * 0.030 * cost.amdahl(0.95, 2, 2) * 0.99
    assert shard_png[1] == pytest.approx(shard_raw[1] + 100 * 150528 / 2 / 1e6)   # the PNG rows held too
    assert model.stored_bytes_per_image(224, "png") == pytest.approx(150528 / 2)
    assert model.stored_bytes_per_image(224, "raw") == 150528
    assert cost.shard_storage(456, 456) == "png" and cost.shard_storage(455, 456) == "raw"
    assert cost.shard_storage(672, None) == "raw"
    with pytest.raises(ZooError, match="no PNG storage measured.*png_from_size: null"):
        cost.job_seconds(_model(), "predict", "small", 224, "onnxruntime-fp32", 2, 100, storage="png")


def test_the_shipped_cost_file_has_png_storage_measured_at_the_large_sizes():
    model = cost.load()
    ratio, encode_s, decode_s = model.png_cost(600)
    assert 1.5 < ratio < 3 and 0 < decode_s < 0.1 and 0 < encode_s < 0.2
    assert {456, 600} <= set(model.png)


def test_the_b7_race_asks_for_every_build_open_at_once(imagenet_50k):
    work, cfg = imagenet_50k
    out = run_snakemake(work, "-n", "--printshellcmds", "race/tf_efficientnet_b7.json", config=cfg).stdout
    race = next(j for j in planned_resources(out) if j["rule"] == "race")
    kinds = ["onnxruntime-fp32", "onnxruntime-int8", "openvino-int8"]   # run_quant's builds
    images = 16 * (1 + 5 * 3 * 3)   # warm-up, then 5 rounds a look, 3 looks, 3 calls of batch 16 a round
    seconds, peak = cost.race_seconds(cost.load(), "tf_efficientnet_b7", 600, kinds, race["threads"], images, 16)
    assert int(race["resources"]["mem_mb"]) == math.ceil(2 * peak) > 3 * 2 * 1000
    assert int(race["resources"]["runtime"]) == max(10, math.ceil(2 * seconds / 60))
