"""fp32 build: folded normalization equals timm's float tensor; softmax output; manifest."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from conftest import resolved_config
from test_preprocess import timm_float

import onnx
from effzoo import graph_edits, preprocess
from effzoo.common import ZooError, file_record, sha256_file
from effzoo.demo import photo_path
from effzoo.steps import build_float
from onnx import TensorProto, helper

FP32 = resolved_config()["quant_modes"]["fp32"]


def man_sha(tmp_path):
    return sha256_file(tmp_path / "vacc" / "model.onnx")


def tiny_classifier(size: int) -> onnx.ModelProto:
    """input [N,3,S,S] -> global average pool -> logits [N,3]; also exposes the input as an output."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["logits"], axis=1)]
    g = helper.make_graph(nodes, "tiny", [x], [logits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 10
    return m


def test_folded_normalization_matches_timm_within_1e6(tmp_path):
    spec = preprocess.spec_for("efficientnet_b0.ra_in1k")
    size = spec["input_size"][1]
    folded = graph_edits.fold_preprocessing(tiny_classifier(size), spec)
    folded.graph.output.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, None))
    raw, opt = tmp_path / "raw.onnx", tmp_path / "opt.onnx"
    onnx.save(folded, raw)
    build_float.ort_optimize(str(raw), str(opt), "basic")
    sess = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"])
    imgs = [preprocess.load_image(photo_path(n)) for n in ("coffee", "camera", "chelsea")]
    batch = np.stack([preprocess.transform_uint8(im, spec) for im in imgs])
    logits, probs, normalized = sess.run(["logits", "probs", "input"], {graph_edits.PRE_INPUT: batch})
    ref = np.stack([timm_float(im, spec) for im in imgs])
    assert normalized.shape == ref.shape
    assert np.abs(normalized - ref).max() <= 1e-6
    assert np.allclose(probs.sum(1), 1.0, atol=1e-6)
    assert np.allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True), atol=1e-6)


def test_build_fp32_writes_manifest(tmp_path):
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    src = tmp_path / "m.onnx"
    onnx.save(tiny_classifier(224), src)
    info = tmp_path / "m.json"
    info.write_text(json.dumps({"weights": {"source": "random", "random": True}, "tag": "t",
                                "onnx": file_record(src)}))
    spec_json = tmp_path / "s.json"
    spec_json.write_text(json.dumps(spec))
    build_float.main(["--onnx", str(src), "--export-info", str(info), "--spec-json", str(spec_json),
                      "--quant", "fp32", "--options", json.dumps(FP32),
                      "--outdir", str(tmp_path / "vacc")])
    man = json.loads((tmp_path / "vacc" / "build.json").read_text())
    assert man["input"] == {"name": "image_uint8_nhwc", "dtype": "uint8", "layout": "NHWC"}
    assert man["source_model"]["sha256"] == sha256_file(src) and man["runtime"]["onnxruntime"] == ort.__version__
    assert man["options"] == {"kind": "fp32", "graph_optimization": "basic", "runtime": "onnxruntime",
                              "cpu_target": "auto", "on_cpu_mismatch": "warn"}
    assert man["cpu"]["requires"] == "any" and man["files"]["model.onnx"]["sha256"] == man_sha(tmp_path)
    assert man["provenance"]["code_modules"] == [
        "effzoo.build_manifest", "effzoo.build_options", "effzoo.common", "effzoo.cpu_target", "effzoo.fingerprint",
        "effzoo.graph_edits", "effzoo.openvino_ir", "effzoo.ort_session", "effzoo.steps.build_float",
        "scripts.build_float"]
    assert man["weights"]["random"] is True and man["preprocess"] == spec
    assert not list((tmp_path / "vacc").glob(".tmp-*"))


def test_float_build_needs_every_option(tmp_path):
    opts = {k: v for k, v in FP32.items() if k != "graph_optimization"}
    with pytest.raises(ZooError, match=r"quant mode 'fp32': options \['graph_optimization'\] missing"):
        build_float.main(["--onnx", "x.onnx", "--export-info", "x.json", "--spec-json", "s.json", "--quant", "fp32",
                          "--options", json.dumps(opts), "--outdir", str(tmp_path)])


def _int8_inputs(tmp_path):
    """A calibrated tiny conv model: prepped model, statistics, calibration.json, shards + datalist, export."""
    from test_int8_layers import conv_model, images, observed_ranges

    from effzoo import ranges, shard_io
    from effzoo.steps import calibrate

    rng = np.random.default_rng(0)
    model = conv_model(rng.normal(0, 0.1, (4, 3, 3, 3)), rng.normal(0, 0.1, 4), rng.normal(0, 0.5, (3, 4, 1, 1)))
    model.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="post_softmax"))
    model.graph.output.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]))
    x = images(8)
    prepped, stats = tmp_path / "prepped.onnx", tmp_path / "stats.npz"
    onnx.save(model, prepped)
    st = {}
    for name, (lo, hi) in observed_ranges(model, x).items():
        st[name] = ranges.TensorStats(256)
        st[name].update(lo, hi, np.linspace(lo, hi, 1000))
    stats.write_bytes(calibrate.npz_bytes(ranges.stats_to_arrays(st)))
    npz = tmp_path / "npz"
    shard_io.write_shard(npz / "shard-00000.npz", x, list(range(8)), [f"{i}.JPEG" for i in range(8)], [])
    (npz / "datalist.tsv").write_text("shard\trow\tfile\tlabel\n" + "".join(
        f"shard-00000.npz\t{i}\t{i}.JPEG\t{i}\n" for i in range(8)))
    cal = tmp_path / "calibration.json"
    probs = ort.InferenceSession(str(prepped)).run(["probs"], {graph_edits.PRE_INPUT: x[4:]})[0]
    ranked = np.sort(probs, axis=1)
    cal.write_text(json.dumps({"prepped": file_record(prepped), "stats": file_record(stats), "images": 4,
                               "files": [f"{i}.JPEG" for i in range(4)], "calibration_s": 1.0, "peak_rss_mb": 1.0,
                               "validation": {"images": 4, "files": [f"{i}.JPEG" for i in range(4, 8)],
                                              "fp32_top1": probs.argmax(axis=1).tolist(),
                                              "fp32_margin": (ranked[:, -1] - ranked[:, -2]).tolist()}}))
    src = tmp_path / "export.onnx"
    onnx.save(tiny_classifier(8), src)
    info = tmp_path / "export.json"
    info.write_text(json.dumps({"weights": {"source": "random", "random": True}, "tag": "t", "onnx": file_record(src)}))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**preprocess.spec_for("tf_efficientnet_lite0.in1k"), "input_size": [3, 8, 8]}))
    return ["--onnx", str(src), "--export-info", str(info), "--spec-json", str(spec)], \
        ["--prepped", str(prepped), "--stats", str(stats), "--calibration", str(cal), "--calib-datalist",
         str(npz / "datalist.tsv")]


@pytest.mark.parametrize("target", ["vnni", "avx512"])
def test_builds_from_the_same_inputs_are_byte_identical(tmp_path, target):
    """fp32, fp16 and int8 for ONNX Runtime and OpenVINO (both int8 CPU policies: plain 8-bit for a vnni target,
    7-bit + measured exact layers for avx512) built twice."""
    from effzoo.build_manifest import without_measurements
    from effzoo.steps import build_int8

    common, int8_args = _int8_inputs(tmp_path)
    modes = resolved_config()["quant_modes"]
    for quant in ("fp32", "fp16", "int8_percentile", "ov_fp32", "ov_int8_percentile"):
        opts = {**modes[quant], "cpu_target": target}
        if "int8" in quant:
            opts["split_min_agreement"] = 1.0
        builder, extra = (build_int8, int8_args) if "int8" in quant else (build_float, [])
        results = []
        for i in range(2):
            out = tmp_path / f"{quant}-{i}"
            builder.main(common + ["--quant", quant, "--options", json.dumps(opts), "--outdir", str(out)] + extra)
            manifest = without_measurements(json.loads((out / "build.json").read_text()))
            manifest["model"].pop("path")
            results.append(([(out / f).read_bytes() for f in sorted(manifest["files"])], manifest))
        assert results[0][0] == results[1][0], quant
        assert results[0][1] == results[1][1], quant
        if "int8" in quant:
            assert results[0][1]["details"]["reduce_range"] == ("saturating" if target == "avx512" else "none")
            assert results[0][1]["details"]["accuracy_budget"]["split_images"] == 4


def test_the_validation_split_comes_smallest_fp32_margin_first(tmp_path):
    """The images int8 flips first come first, so a trial that cannot meet the budget stops early."""
    from effzoo import shard_io
    from effzoo.steps import build_int8

    _, int8_args = _int8_inputs(tmp_path)
    cal = json.loads((tmp_path / "calibration.json").read_text())
    cal["validation"]["fp32_margin"] = [0.5, 0.1, 0.9, 0.3]   # files 4, 5, 6, 7
    images, reference = build_int8.validation_split(cal, str(tmp_path / "npz" / "datalist.tsv"))
    shard = shard_io.read_rows(str(tmp_path / "npz" / "shard-00000.npz"), list(range(8)))
    assert np.array_equal(images, shard[[5, 7, 4, 6]])
    top1 = cal["validation"]["fp32_top1"]
    assert reference.tolist() == [top1[1], top1[3], top1[0], top1[2]]
    assert build_int8.validation_split({"validation": {"files": []}}, "unused.tsv") is None


def test_ranking_images_are_spread_over_the_calibration_files():
    from effzoo.steps import build_int8

    files = [f"{i}.JPEG" for i in range(10)]
    assert build_int8.spread(files, 4) == ["0.JPEG", "2.JPEG", "5.JPEG", "7.JPEG"]
    assert build_int8.spread(files, 20) == files


def test_an_export_that_differs_from_pytorch_is_removed_and_named(tmp_path, monkeypatch):
    """The exported graph is checked against PyTorch on photos: an export of other weights (a stand-in for an
    exporter bug) fails the tolerance, and nothing that looks like an export is left."""
    import copy

    import torch

    from effzoo.steps import export_onnx

    real_export = export_onnx.export

    def export_other_weights(model, size, out_path):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real_export(other, size, out_path)
    monkeypatch.setattr(export_onnx, "export", export_other_weights)
    spec = {**preprocess.spec_for("tf_efficientnet_lite0.in1k"), "input_size": [3, 64, 64], "resize_size": 73}
    out = tmp_path / "x.onnx"
    argv = ["--tag", "tf_efficientnet_lite0.in1k", "--weights", "random", "--spec", json.dumps(spec), "--spec-out",
            str(tmp_path / "x.preprocess.json"), "--out", str(out), "--info", str(tmp_path / "x.json")]
    with pytest.raises(ZooError, match=rf"{out}: ONNX logits differ from PyTorch by .* > tolerance 0.001\); "
                                       r"export removed"):
        export_onnx.main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
