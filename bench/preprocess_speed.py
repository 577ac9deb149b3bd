"""Preprocessing speed per core: timm's transform vs the exact path vs the fast path, and the fast path's
top-1 agreement with the exact path through a built model.

Single process, one thread, images in interleaved chunks of 50 (each pipeline sees the same files, in
rotating order). Then every image goes through the fp32 build twice (exact and fast tensors) and the top-1
predictions are compared.

usage: python bench/preprocess_speed.py [--root ../shared/imagenet-sample-500] \
           [--model vacc/tf_efficientnet_lite0-fp32/model.onnx] [--tag tf_efficientnet_lite0.in1k]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main():
    from timm.data import create_transform

    from effzoo import preprocess
    from effzoo.ort_session import open_session

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO.parent / "shared" / "imagenet-sample-500"))
    ap.add_argument("--model", default=str(REPO / "vacc" / "tf_efficientnet_lite0-fp32" / "model.onnx"))
    ap.add_argument("--tag", default="tf_efficientnet_lite0.in1k")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    from PIL import Image

    spec = preprocess.spec_for(a.tag)
    files = sorted((Path(a.root) / "val").iterdir())
    t = create_transform(input_size=spec["input_size"], interpolation=spec["interpolation"],
                         crop_pct=spec["crop_pct"], mean=spec["mean"], std=spec["std"], is_training=False)
    pipelines = {
        "timm create_transform (PIL, float CHW)": lambda f: t(Image.open(f).convert("RGB")),
        "exact uint8 (default)": lambda f: preprocess.transform_uint8(preprocess.load_image(f), spec),
        "fast uint8 (torchvision decode + resize)": lambda f: preprocess.fast_transform_uint8(f, spec)[0],
    }
    names = list(pipelines)
    spent = {n: 0.0 for n in names}
    for c, i in enumerate(range(0, len(files), 50)):
        chunk = files[i:i + 50]
        for n in names[c % 3:] + names[:c % 3]:
            t0 = time.perf_counter()
            for f in chunk:
                pipelines[n](f)
            spent[n] += time.perf_counter() - t0
    base = len(files) / spent[names[0]]
    print(f"{len(files)} images, 1 thread:")
    for n in names:
        ips = len(files) / spent[n]
        print(f"  {n:42s} {ips:7.1f} images/s  {ips / base:.2f}x timm")

    sess = open_session(a.model, threads=0)
    name = sess.get_inputs()[0].name
    agree, maxdiff, n = 0, 0, 0
    for i in range(0, len(files), 32):
        chunk = files[i:i + 32]
        exact = np.stack([pipelines[names[1]](f) for f in chunk])
        fast = np.stack([pipelines[names[2]](f) for f in chunk])
        maxdiff = max(maxdiff, int(np.abs(exact.astype(int) - fast).max()))
        pe = sess.run(["probs"], {name: exact})[0].argmax(1)
        pf = sess.run(["probs"], {name: fast})[0].argmax(1)
        agree += int((pe == pf).sum())
        n += len(chunk)
    print(f"fast vs exact through {Path(a.model).parent.name}: top-1 agreement {agree}/{n}, "
          f"max pixel difference {maxdiff}")


if __name__ == "__main__":
    main()
