"""Every step that reads a manifest, table or list, run on a missing and on a damaged copy of each: one line that
names the file and how to fix it, exit status 2, no traceback."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import resolved_config
from test_build import tiny_classifier

import onnx
from effzoo import preprocess, shard_io
from effzoo.common import file_record, run_main
from effzoo.steps import benchmark, build_float, deploy, metrics, predict, race, summary

FP32 = resolved_config()["quant_modes"]["fp32"]


def args(step: str, root) -> list[str]:
    """The command line of a step over the chain in `root`."""
    return {
        "build_float": ["--onnx", f"{root}/m.onnx", "--export-info", f"{root}/m.json", "--spec-json", f"{root}/s.json",
                        "--quant", "fp32", "--options", json.dumps(FP32), "--outdir", f"{root}/vacc2"],
        "predict": ["--model", f"{root}/vacc/model.onnx", "--build-json", f"{root}/vacc/build.json", "--shards",
                    f"{root}/npz/shard-00000.npz", "--out", f"{root}/out/predictions.csv", "--logits",
                    f"{root}/out/logits.npy", "--manifest", f"{root}/out/predict.json", "--batch", "2",
                    "--threads", "1", "--layout-tuning", "off"],
        "benchmark": ["--model", f"{root}/vacc/model.onnx", "--build-json", f"{root}/vacc/build.json", "--out",
                      f"{root}/perf.json", "--batch-sizes", "2", "--iterations", "1", "--warmup", "0", "--rounds", "1",
                      "--threads", "1", "--instances", "1", "--layout-tuning", "off"],
        "metrics": ["--variant", "tiny", "--export-info", f"{root}/m.json", "--spec-json", f"{root}/s.json",
                    "--datalist", f"{root}/npz/datalist.tsv", "--skipped", f"{root}/npz/skipped.tsv", "--dataset",
                    "demo", "--mode", "fp32", f"{root}/out/predictions.csv", f"{root}/out/predict.json",
                    f"{root}/vacc/build.json", "--perf", "fp32", f"{root}/perf.json", "--min-agreement", "0.98",
                    "--max-top1-loss", "0.005", "--out", f"{root}/metrics.json"],
        "race": ["--variant", "tiny", "--metrics", f"{root}/metrics.json", "--build", "fp32", f"{root}/vacc/build.json",
                 "--objective", "batch", "--batch", "2", "--threads", "1", "--iterations", "1", "--warmup", "0",
                 "--rounds", "2", "--looks", "1", "--tolerance", "0.05", "--require", "not_refuted", "--out",
                 f"{root}/race.json"],
        "deploy": ["--variant", "tiny", "--race", f"{root}/race.json", "--metrics", f"{root}/metrics.json",
                   "--classes", f"{root}/classes.txt", "--build", "fp32", f"{root}/vacc/build.json",
                   "--out", f"{root}/deploy/tiny"],
        "summary": ["--metrics", f"{root}/metrics.json", "--races", f"{root}/race.json", "--md", f"{root}/r/s.md",
                    "--html", f"{root}/r/s.html", "--csv", f"{root}/r/s.csv", "--plot", f"{root}/r/p.png"],
    }[step]


MAINS = {"build_float": build_float.main, "predict": predict.main, "benchmark": benchmark.main,
         "metrics": metrics.main, "race": race.main, "deploy": deploy.main, "summary": summary.main}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny model through every step: export files, fp32 build, shard, predictions, perf, metrics, race, deploy."""
    root = tmp_path_factory.mktemp("chain")
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    onnx.save(tiny_classifier(224), root / "m.onnx")
    (root / "m.json").write_text(json.dumps({
        "weights": {"source": "random", "random": True}, "tag": "tf_efficientnet_lite0.in1k",
        "onnx": file_record(root / "m.onnx"), "params_m": 0.0, "params_torch": 0, "gmacs": 0.0, "gflops": 0.0,
        "gflops_with_elementwise": 0.0, "flops_convention": "2 x MACs", "check": {}}))
    (root / "s.json").write_text(json.dumps(spec))
    images = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    shard_io.write_shard(root / "npz/shard-00000.npz", images, [0, 1, 2, 0], ["a", "b", "c", "d"], [])
    (root / "npz/datalist.tsv").write_text("shard\trow\tfile\tlabel\n" + "".join(
        f"{root}/npz/shard-00000.npz\t{i}\t{f}\t{lab}\n" for i, (f, lab) in enumerate(zip("abcd", [0, 1, 2, 0]))))
    (root / "npz/skipped.tsv").write_text("")
    (root / "classes.txt").write_text("red\ngreen\nblue\n")
    build_float.main(args("build_float", root)[:-1] + [f"{root}/vacc"])
    for step in ("predict", "benchmark", "metrics", "race", "deploy", "summary"):
        assert run_main(MAINS[step], args(step, root)) == 0, step
    return root


# (step, the file it reads) for every manifest, table and list a step reads
READS = [("build_float", "m.json"), ("build_float", "s.json"), ("predict", "vacc/build.json"),
         ("predict", "npz/shard-00000.npz"), ("benchmark", "vacc/build.json"), ("metrics", "out/predict.json"),
         ("metrics", "out/predictions.csv"), ("metrics", "vacc/build.json"), ("metrics", "perf.json"),
         ("metrics", "m.json"), ("metrics", "npz/skipped.tsv"), ("race", "metrics.json"), ("race", "vacc/build.json"),
         ("deploy", "race.json"), ("deploy", "metrics.json"), ("deploy", "vacc/build.json"), ("deploy", "classes.txt"),
         ("summary", "metrics.json"), ("summary", "race.json")]


@pytest.mark.parametrize("damage", ["missing", "damaged"])
@pytest.mark.parametrize("step, name", READS)
def test_each_reader_names_a_missing_or_damaged_file(chain, tmp_path, capsys, step, name, damage):
    root = tmp_path / "chain"
    shutil.copytree(chain, root)
    target = root / name
    if damage == "missing":
        target.unlink()
    elif target.suffix in (".json",):   # valid JSON that lost its fields, as a file from elsewhere would be
        target.write_text(json.dumps({"note": "not this manifest"}))
    elif target.suffix == ".tsv" and target.name == "skipped.tsv":
        target.write_bytes(b"\xff\xfe\x00broken")
    else:   # a truncated table, list or shard
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2] + b"\xff\xfe")
    capsys.readouterr()
    status = run_main(MAINS[step], args(step, root))
    err = capsys.readouterr().err.strip()
    assert status == 2, (step, name, damage, err)
    assert err.startswith(f"error: {target}") and len(err.splitlines()) == 1, err
    assert "Traceback" not in err
