"""Compare a build's predictions with timm's own PyTorch evaluation (timm transform + timm model).

Runs timm exactly as validate.py would (PIL loader, create_transform at the spec, fp32 eager model) over the
images listed in predictions.csv, and prints top-1/top-5 of both and the top-1 agreement.

usage: python bench/parity_timm.py --predictions output/V-fp32/predictions.csv --root DATASET_ROOT \
           --tag TAG --weights SRC [--spec-json onnx/V.preprocess.json] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timm_eval(root: Path, files: list[str], tag: str, weights: str, spec: dict, batch: int = 32) -> np.ndarray:
    """timm's top-5 class ids for `files` (fp32, eager)."""
    import torch
    from effzoo import weights as weights_mod
    from PIL import Image
    from timm.data import create_transform

    model, _ = weights_mod.create_model(tag, weights)
    t = create_transform(input_size=spec["input_size"], interpolation=spec["interpolation"],
                         crop_pct=spec["crop_pct"], crop_mode=spec["crop_mode"], mean=spec["mean"],
                         std=spec["std"], is_training=False)
    out = []
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            x = torch.stack([t(Image.open(root / f).convert("RGB")) for f in files[i:i + batch]])
            out.append(model(x).topk(5, dim=1).indices.numpy())
    return np.concatenate(out)


def compare(predictions: str, root: str, tag: str, weights: str, spec: dict) -> dict:
    from effzoo.steps.metrics import read_predictions, score

    files, labels, top = read_predictions(predictions)
    ref = timm_eval(Path(root), files, tag, weights, spec)
    agree = int((ref[:, 0] == top[:, 0]).sum())
    return {"images": len(files), "build": score(labels, top), "timm": score(labels, ref),
            "top1_agree": agree, "top1_disagree_files": [f for f, a, b in zip(files, ref[:, 0], top[:, 0]) if a != b]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--spec-json")
    ap.add_argument("--json")
    a = ap.parse_args()
    from effzoo import preprocess

    spec = json.loads(Path(a.spec_json).read_text()) if a.spec_json else preprocess.spec_for(a.tag)
    res = compare(a.predictions, a.root, a.tag, a.weights, spec)
    print(f"images {res['images']}: build top1 {res['build']['top1']:.4f} top5 {res['build']['top5']:.4f} | "
          f"timm top1 {res['timm']['top1']:.4f} top5 {res['timm']['top5']:.4f} | top-1 agreement "
          f"{res['top1_agree']}/{res['images']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
