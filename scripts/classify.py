"""Classify images with a deployed model: python -m classify deploy/<variant> photo.jpg [more.jpg ...]

Reads deploy/<variant>/model.json, checks the model files against their recorded sha256 and this CPU against
what the build requires, preprocesses each image exactly as the model was evaluated (timm's eval transform,
scripts/preprocess.py), runs it on the build's runtime and prints the top-5 class names with probabilities.
An image that cannot be decoded stops with an error naming the file. Needs scripts/ on PYTHONPATH
(`PYTHONPATH=scripts python -m classify ...` from the repository root).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import preprocess
from runtime import checked_build, open_build
from zoo_common import run_main


def classify(deploy_dir: str, images: list[str], topk: int = 5) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for every image, in order."""
    doc, _ = checked_build(str(Path(deploy_dir) / "model.json"))
    run, _ = open_build(str(Path(deploy_dir) / doc["model"]), threads=2)
    batch = np.stack([preprocess.transform_uint8(preprocess.load_image(p), doc["preprocess"]) for p in images])
    probs = run(batch)[1]
    out = []
    for row in probs:
        top = np.argsort(-row, kind="stable")[:topk]
        out.append([(doc["classes"][c], float(row[c])) for c in top])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("deploy_dir", help="deploy/<variant>")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--topk", type=int, default=5)
    a = ap.parse_args(argv)
    for path, top in zip(a.images, classify(a.deploy_dir, a.images, a.topk)):
        print(path)
        for name, p in top:
            print(f"  {p:7.4f}  {name}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
