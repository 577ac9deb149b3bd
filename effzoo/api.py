"""Run a deployed model from Python: load a deploy folder once, classify images in bounded-memory batches.

    import effzoo
    model = effzoo.load("deploy/tf_efficientnet_lite0")
    for top in model.classify(["photo.jpg"], topk=5):
        print(top[0])            # ('espresso', 0.83...): the top class name and its probability

`load` reads model.json, checks every model file against its recorded sha256 and this CPU against what the
build requires, and opens the build on its runtime (ONNX Runtime, or OpenVINO for `model.xml` builds: the
`openvino` extra) in the mode its speed was measured in: latency mode, with the threads and batch size of its race
(model.json `speed`). It warns in one line when the installed runtime's version differs from the one its figures
were measured with, and when its accuracy is not certified against the deploy budget (model.json `accuracy`).
Images may be file paths, PIL images or uint8 arrays (H x W x 3 RGB, or H x W grey);
each is preprocessed exactly as the model was evaluated (timm's eval transform: resize, centre crop) and run `batch`
at a time, so memory does not grow with the number of images.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from effzoo import preprocess
from effzoo.common import LOG, ZooError
from effzoo.runtime import checked_build, open_build, precision_of


def _as_uint8(image, spec: dict) -> np.ndarray:
    """One image (path, PIL image or uint8 array) as the model's uint8 HWC input."""
    if isinstance(image, (str, os.PathLike)):
        img = preprocess.load_image(image)
    elif isinstance(image, Image.Image):
        img = image.convert("RGB")
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise ZooError(f"image array of dtype {image.dtype} and shape {image.shape}: expected uint8 H x W x 3 "
                           f"(RGB) or H x W")
        img = Image.fromarray(image.squeeze(2) if image.ndim == 3 and image.shape[2] == 1 else image).convert("RGB")
    else:
        raise ZooError(f"image of type {type(image).__name__}: expected a file path, a PIL image or a uint8 array")
    return preprocess.transform_uint8(img, spec)


def notices(info: dict, session: dict) -> list[str]:
    """What a user of a deploy folder must know: a runtime version other than the measured one, and an accuracy
    that is not certified."""
    out = []
    measured = info["runtime_package"]
    if session["version"] != measured["version"]:
        out.append(f"runs on {session['runtime']} {session['version']}; its speed and accuracy were measured on "
                   f"{measured['package']} {measured['version']}")
    if info["accuracy"].get("note"):
        out.append(info["accuracy"]["note"])
    return out


class Classifier:
    """A deploy folder opened on its runtime; `classify` gives the top-k (class name, probability) per image."""

    def __init__(self, deploy_dir: str | os.PathLike, threads: int | None = None):
        self.path = Path(deploy_dir)
        manifest = self.path / "model.json"
        if not manifest.is_file():
            raise ZooError(f"{manifest}: not found; a deploy folder holds model.json (snakemake deploy/<variant>)")
        self.info, self.cpu_check = checked_build(str(manifest))
        self.classes: list[str] = self.info["classes"]
        self.spec: dict = self.info["preprocess"]
        # by default the mode its speed was measured in: latency mode, these threads, this batch
        self.threads = int(threads or self.info["speed"]["threads"])
        self.batch = int(self.info["speed"]["batch"])
        self._run, self.session = open_build(str(self.path / self.info["model"]), threads=self.threads,
                                             precision=precision_of(self.info))
        for line in notices(self.info, self.session):
            LOG.warning("%s: %s", self.path, line)

    def probabilities(self, images: Iterable, batch: int | None = None) -> Iterator[np.ndarray]:
        """Softmax probabilities (one row of len(classes) per image), `batch` images at a time (default: the batch
        its speed was measured at)."""
        batch = self.batch if batch is None else batch
        if batch < 1:
            raise ZooError(f"batch {batch}: expected at least 1")
        chunk: list[np.ndarray] = []
        for image in images:
            chunk.append(_as_uint8(image, self.spec))
            if len(chunk) == batch:
                yield from self._run(np.stack(chunk))[1]
                chunk = []
        if chunk:
            yield from self._run(np.stack(chunk))[1]

    def classify(self, images: Iterable, topk: int | None = None,
                 batch: int | None = None) -> list[list[tuple[str, float]]]:
        """Top-k (class name, probability) for every image, in order (topk: default 5, or every class of a
        model with fewer)."""
        topk = min(5, len(self.classes)) if topk is None else topk
        if not 1 <= topk <= len(self.classes):
            raise ZooError(f"topk {topk}: expected 1 to {len(self.classes)} (the model's classes)")
        out = []
        for row in self.probabilities(images, batch):
            top = np.argsort(-row, kind="stable")[:topk]
            out.append([(self.classes[c], float(row[c])) for c in top])
        return out


def load(deploy_dir: str | os.PathLike, threads: int | None = None) -> Classifier:
    """Open a deploy folder (deploy/<variant>/) for classification, by default in the mode its speed was measured in
    (latency mode, its threads and batch)."""
    return Classifier(deploy_dir, threads)
