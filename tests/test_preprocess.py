"""Preprocessing: spec table equals timm, and the uint8 transform is bit-identical to timm's eval transform."""
from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import SAMPLE, base_config, needs_sample
from PIL import Image

from effzoo import preprocess
from effzoo.common import ZooError
from effzoo.demo import DEMO_LABELS, photo_path


def timm_uint8(img: Image.Image, spec: dict) -> np.ndarray:
    """timm's own eval transform, minus the final ToTensor/Normalize, as uint8 HWC."""
    from timm.data import create_transform

    t = create_transform(input_size=spec["input_size"], interpolation=spec["interpolation"],
                         crop_pct=spec["crop_pct"], crop_mode=spec["crop_mode"], mean=spec["mean"],
                         std=spec["std"], is_training=False)
    geometric = t.transforms[:-2]  # drop ToTensor (MaybeToTensor) and Normalize
    assert [type(x).__name__ for x in t.transforms[-2:]] == ["MaybeToTensor", "Normalize"], t
    for step in geometric:
        img = step(img)
    return np.asarray(img, dtype=np.uint8)


def timm_float(img: Image.Image, spec: dict) -> np.ndarray:
    from timm.data import create_transform

    t = create_transform(input_size=spec["input_size"], interpolation=spec["interpolation"],
                         crop_pct=spec["crop_pct"], crop_mode=spec["crop_mode"], mean=spec["mean"],
                         std=spec["std"], is_training=False)
    return t(img).numpy()


def test_pinned_specs_match_timm():
    """The committed spec table holds every tag config.yaml pins and equals what the installed timm resolves."""
    table = preprocess.pinned_specs()
    assert set(table) == {v["tag"] for v in base_config()["variants"].values()}
    for tag, spec in table.items():
        assert preprocess.resolve_timm_spec(tag) == spec, tag


def test_vendor_input_sizes():
    sizes = {t.split(".")[0]: s["input_size"][1] for t, s in preprocess.pinned_specs().items()}
    assert sizes["efficientnet_b0"] == 224 and sizes["efficientnet_b3"] == 320
    assert sizes["tf_efficientnet_b7"] == 600 and sizes["tf_efficientnet_b8"] == 672


def test_override_and_bad_override():
    spec = preprocess.spec_for("efficientnet_b0.ra_in1k", {"crop_pct": 1.0, "interpolation": "bilinear"})
    assert spec["resize_size"] == 224 and spec["interpolation"] == "bilinear"
    with pytest.raises(ZooError, match="unknown key 'crop'"):
        preprocess.spec_for("efficientnet_b0.ra_in1k", {"crop": 1.0})


@pytest.mark.parametrize("tag", ["tf_efficientnet_lite0.in1k", "efficientnet_b2.ra_in1k",
                                 "tf_efficientnet_b5.ra_in1k"])
@pytest.mark.parametrize("name", list(DEMO_LABELS))
def test_transform_bit_identical_on_bundled_photos(tag, name):
    spec = preprocess.spec_for(tag)
    img = preprocess.load_image(photo_path(name))
    ours = preprocess.transform_uint8(img, spec)
    assert ours.shape == (spec["input_size"][1],) * 2 + (3,)
    assert np.array_equal(ours, timm_uint8(img, spec))


def _encode(img: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "I;16", "LA"])
def test_modes_convert_like_timm(tmp_path, mode):
    """Grayscale, palette, CMYK, RGBA, 16-bit images become RGB exactly as timm's loader does."""
    src = Image.open(photo_path("chelsea")).convert("RGB")
    img = src.convert(mode) if mode != "I;16" else src.convert("L").convert("I;16")
    fmt = {"CMYK": "JPEG", "L": "JPEG"}.get(mode, "PNG")
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(_encode(img, fmt).getvalue())
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    ours = preprocess.transform_uint8(preprocess.load_image(path), spec)
    ref = timm_uint8(Image.open(path).convert("RGB"), spec)
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("size", [(100, 60), (224, 224), (10, 300)])
def test_small_images_match_timm(size):
    """Images smaller than the crop (and extreme aspect ratios) are resized/cropped like timm."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8))
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    assert np.array_equal(preprocess.transform_uint8(img, spec), timm_uint8(img, spec))


def test_crop_pads_when_crop_larger_than_image():
    arr = np.full((5, 7, 3), 9, np.uint8)
    out = preprocess._center_crop(arr, 9)
    assert out.shape == (9, 9, 3) and out.sum() == 9 * 5 * 7 * 3


def test_normalize_matches_timm_float():
    spec = preprocess.spec_for("efficientnet_b0.ra_in1k")
    img = preprocess.load_image(photo_path("coffee"))
    ours = preprocess.normalize(preprocess.transform_uint8(img, spec)[None], spec)[0]
    assert np.abs(ours - timm_float(img, spec)).max() <= 1e-6


@needs_sample
def test_bit_identical_on_every_sample_image():
    """Bar: on every image of the real ImageNet sample the uint8 tensors differ in zero pixels (lite0 spec)."""
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    files = sorted((SAMPLE / "val").iterdir())
    assert len(files) == 500
    differing = 0
    for f in files:
        img = preprocess.load_image(f)
        differing += int((preprocess.transform_uint8(img, spec) != timm_uint8(img, spec)).any(-1).sum())
    assert differing == 0


def test_bad_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ZooError, match="broken.JPEG"):
        preprocess.load_image(bad)
    good = _encode(Image.open(photo_path("coffee")).convert("RGB"), "JPEG").getvalue()
    trunc = tmp_path / "truncated.JPEG"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(ZooError, match="truncated.JPEG"):
        preprocess.load_image(trunc)


def test_decompression_bomb_guard(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 1000)
    p = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(p)
    with pytest.raises(ZooError, match="too large"):
        preprocess.load_image(p)


def _jpeg(tmp_path, name: str, img: Image.Image, **kw):
    path = tmp_path / name
    path.write_bytes(_encode(img, "JPEG", **kw).getvalue())
    return path


@pytest.mark.parametrize("name", list(DEMO_LABELS))
def test_fast_path_is_close_to_exact(tmp_path, name):
    """torchvision decode + resize: same shape, pixels within 3 levels of the exact (timm) path."""
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    path = _jpeg(tmp_path, "x.JPEG", Image.open(photo_path(name)).convert("RGB"), quality=90)
    fast, took = preprocess.fast_transform_uint8(path, spec)
    exact = preprocess.transform_uint8(preprocess.load_image(path), spec)
    assert took and fast.shape == exact.shape and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - exact).max() <= 3


def test_fast_path_falls_back_to_exact_for_other_formats(tmp_path):
    """PNG, CMYK JPEG and grayscale keep timm's exact conversion (fallback or identical handling)."""
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    src = Image.open(photo_path("chelsea")).convert("RGB")
    png = tmp_path / "x.JPEG"
    png.write_bytes(_encode(src, "PNG").getvalue())
    cmyk = _jpeg(tmp_path, "c.JPEG", src.convert("CMYK"))
    for path in (png, cmyk):
        fast, took = preprocess.fast_transform_uint8(path, spec)
        assert not took
        assert np.array_equal(fast, timm_uint8(Image.open(path).convert("RGB"), spec))
    gray = _jpeg(tmp_path, "g.JPEG", src.convert("L"))
    fast, took = preprocess.fast_transform_uint8(gray, spec)
    assert took and np.abs(fast.astype(int) - timm_uint8(Image.open(gray).convert("RGB"), spec)).max() <= 3


@pytest.mark.parametrize("interpolation", ["lanczos", "box", "hamming"])
def test_fast_path_takes_the_exact_path_for_interpolations_torch_lacks(tmp_path, interpolation):
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k", {"interpolation": interpolation})
    path = _jpeg(tmp_path, "x.JPEG", Image.open(photo_path("coffee")).convert("RGB"))
    img, took = preprocess.fast_transform_uint8(path, spec)
    assert not took and np.array_equal(img, preprocess.transform_uint8(preprocess.load_image(path), spec))


def test_fast_path_bad_images_name_the_file(tmp_path):
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    good = _encode(Image.open(photo_path("coffee")).convert("RGB"), "JPEG").getvalue()
    for name, data in (("truncated.JPEG", good[: len(good) // 2]), ("junk.JPEG", b"\xff\xd8\xff" + b"x" * 100)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ZooError, match=name):
            preprocess.fast_transform_uint8(tmp_path / name, spec)
