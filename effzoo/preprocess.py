"""Preprocessing spec and the exact timm eval transform up to (not including) ToTensor/Normalize.

The spec (the vendor calls it vdsp_params) is resolved from timm's pretrained config of a pinned tag at
timm's *test* input size and crop (as timm's validate.py evaluates) and may be overridden per variant.
`load_image` + `transform_uint8` reproduce ``timm.data.create_transform(..., is_training=False)`` bit for
bit on the uint8 image (tests check this against timm on real photos): PIL decode, ``convert('RGB')``
(timm's loader), shorter-side resize to floor(size / crop_pct) with the spec's interpolation, centre crop.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from effzoo.common import ZooError

SPEC_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
INTERPOLATIONS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}
# interpolations torch's tensor resize has; the others (lanczos, box, hamming) take the exact PIL path
FAST_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
PINNED_SPECS_FILE = Path(__file__).with_name("timm_pretrained_specs.json")
# Decompression-bomb guard: refuse images with more pixels than this (PIL warns at 89 Mpx by default).
MAX_IMAGE_PIXELS = 178_956_970


def resolve_timm_spec(tag: str) -> dict:
    """Ask timm for the eval preprocessing of a pretrained tag at its test size and crop (imports timm)."""
    import timm.data

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None:
        raise ZooError(f"timm has no pretrained config for {tag!r}")
    data = timm.data.resolve_data_config(pretrained_cfg=cfg.to_dict(), use_test_size=True)
    return normalize_spec({k: data[k] for k in SPEC_KEYS})


def pinned_specs() -> dict:
    """Specs of the pinned tags, generated from timm (tools/timm_pretrained_specs.py)."""
    return json.loads(PINNED_SPECS_FILE.read_text())["specs"]


def spec_for(tag: str, override: dict | None = None) -> dict:
    """The variant's spec: timm's config of `tag` (pinned table, else timm itself) with `override` applied."""
    table = pinned_specs()
    spec = dict(table[tag]) if tag in table else resolve_timm_spec(tag)
    for k, v in (override or {}).items():
        if k not in SPEC_KEYS:
            raise ZooError(f"preprocess override: unknown key {k!r}; valid keys: {', '.join(SPEC_KEYS)}")
        spec[k] = v
    return normalize_spec(spec)


def normalize_spec(spec: dict) -> dict:
    """Canonical types (lists, floats) and sanity checks; adds the derived resize size."""
    s = dict(spec)
    size = s["input_size"]
    if isinstance(size, int):
        size = [3, size, size]
    size = [int(x) for x in size]
    if len(size) != 3 or size[0] != 3 or size[1] != size[2]:
        raise ZooError(f"preprocess input_size {size!r}: expected [3, S, S] (square RGB input)")
    s["input_size"] = size
    if s["interpolation"] not in INTERPOLATIONS:
        raise ZooError(f"preprocess interpolation {s['interpolation']!r}: expected one of {sorted(INTERPOLATIONS)}")
    s["crop_pct"] = float(s["crop_pct"])
    if not 0.0 < s["crop_pct"] <= 1.0:
        raise ZooError(f"preprocess crop_pct {s['crop_pct']}: expected 0 < crop_pct <= 1")
    s["crop_mode"] = s.get("crop_mode") or "center"
    if s["crop_mode"] != "center":
        raise ZooError(f"preprocess crop_mode {s['crop_mode']!r}: only 'center' (timm's eval default) is supported")
    s["mean"] = [float(x) for x in s["mean"]]
    s["std"] = [float(x) for x in s["std"]]
    s["resize_size"] = math.floor(size[1] / s["crop_pct"])
    return {k: s[k] for k in sorted(s)}


def geometry_id(spec: dict, fast: bool = False) -> str:
    """Name of the uint8 geometry (what the npz shards hold): specs that differ only in mean/std share it."""
    return f"{spec['input_size'][1]}-r{spec['resize_size']}-{spec['interpolation']}" + ("-fast" if fast else "")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image and convert it to RGB exactly as timm's loader does (``Image.open(f).convert('RGB')``).

    Raises ZooError naming the file for unreadable, truncated or oversized images.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:
                img = Image.open(f)
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(
                        f"{img.size[0]}x{img.size[1]} pixels exceed the limit of {MAX_IMAGE_PIXELS}")
                img.load()
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ZooError(f"{path}: image too large to decode safely ({e})") from None
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ZooError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def _resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
    """torchvision Resize(size:int) on a PIL image: shorter side to `size`, longer side truncated."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resample)


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision CenterCrop on an HWC array, zero-padding when the image is smaller than the crop."""
    h, w = arr.shape[:2]
    if size > w or size > h:
        pl, pt = (size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0
        pr, pb = (size - w + 1) // 2 if size > w else 0, (size - h + 1) // 2 if size > h else 0
        arr = np.pad(arr, ((pt, pb), (pl, pr), (0, 0)))
        h, w = arr.shape[:2]
        if size == w and size == h:
            return arr
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return arr[top:top + size, left:left + size]


def transform_uint8(img: Image.Image, spec: dict) -> np.ndarray:
    """timm's eval transform before ToTensor: resize + centre crop; returns uint8 HWC RGB."""
    img = _resize_shorter(img, spec["resize_size"], INTERPOLATIONS[spec["interpolation"]])
    return np.ascontiguousarray(_center_crop(np.asarray(img, dtype=np.uint8), spec["input_size"][1]))


def fast_transform_uint8(path: str | Path, spec: dict) -> tuple[np.ndarray, bool]:
    """The fast path: libjpeg-turbo decode (torchvision.io) + torch's antialiased resize, ~2x+ timm per core.

    Not bit-identical (max pixel difference 7 on the sample; bench/preprocess_speed.py measures speed and top-1
    agreement). Only baseline RGB/grayscale JPEGs with an interpolation torch has (FAST_INTERPOLATIONS) take it;
    anything else (PNG, CMYK, lanczos/box/hamming, a decode error) goes through the exact path, which also raises
    the usual errors naming the file. Returns (image, took_fast).
    """
    if spec["interpolation"] not in FAST_INTERPOLATIONS:
        return transform_uint8(load_image(path), spec), False
    import io

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)  # one image per core; the shard job runs one worker process per core
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as head:  # header only: format, mode, size
            fmt, mode, (w, h) = head.format, head.mode, head.size
    except (OSError, SyntaxError, ValueError):
        return transform_uint8(load_image(path), spec), False
    if fmt != "JPEG" or mode not in ("RGB", "L") or w * h > MAX_IMAGE_PIXELS:
        return transform_uint8(load_image(path), spec), False
    try:
        with warnings.catch_warnings():  # torchvision 0.29 (pinned) deprecates its decoders for torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            x = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return transform_uint8(load_image(path), spec), False
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(spec["resize_size"] * long / short)
    new_hw = (new_long, spec["resize_size"]) if w <= h else (spec["resize_size"], new_long)
    if new_hw != (h, w):
        interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}[spec["interpolation"]]
        x = F.resize(x, list(new_hw), interpolation=interp, antialias=True)
    return np.ascontiguousarray(_center_crop(x.permute(1, 2, 0).numpy(), spec["input_size"][1])), True


def normalize(batch_uint8_nhwc: np.ndarray, spec: dict) -> np.ndarray:
    """ToTensor + Normalize on a uint8 NHWC batch -> float32 NCHW (the reference the folded model matches)."""
    x = batch_uint8_nhwc.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    mean = np.asarray(spec["mean"], np.float32)[None, :, None, None]
    std = np.asarray(spec["std"], np.float32)[None, :, None, None]
    return (x - mean) / std
