"""fp32 build: folded normalization equals timm's float tensor; softmax output; manifest."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

import build_vacc
import preprocess
from demo_photos import photo_path
from test_preprocess import timm_float


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
    folded = build_vacc.fold_preprocessing(tiny_classifier(size), spec)
    folded.graph.output.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, None))
    raw, opt = tmp_path / "raw.onnx", tmp_path / "opt.onnx"
    onnx.save(folded, raw)
    build_vacc.ort_optimize(str(raw), str(opt), "basic")
    sess = ort.InferenceSession(str(opt), providers=["CPUExecutionProvider"])
    imgs = [preprocess.load_image(photo_path(n)) for n in ("coffee", "camera", "chelsea")]
    batch = np.stack([preprocess.transform_uint8(im, spec) for im in imgs])
    logits, probs, normalized = sess.run(["logits", "probs", "input"], {build_vacc.PRE_INPUT: batch})
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
    info.write_text(json.dumps({"weights": {"source": "random", "random": True}, "tag": "t"}))
    spec_json = tmp_path / "s.json"
    spec_json.write_text(json.dumps(spec))
    build_vacc.main(["--onnx", str(src), "--export-info", str(info), "--spec-json", str(spec_json),
                     "--quant", "fp32", "--options", '{"kind": "fp32"}', "--outdir", str(tmp_path / "vacc")])
    man = json.loads((tmp_path / "vacc" / "build.json").read_text())
    assert man["input"] == {"name": "image_uint8_nhwc", "dtype": "uint8", "layout": "NHWC"}
    assert man["source_model"]["sha256"] and man["runtime"]["onnxruntime"] == ort.__version__
    assert man["weights"]["random"] is True and man["preprocess"] == spec
    assert not list((tmp_path / "vacc").glob(".tmp-*"))
