"""Real photos shipped with scikit-image: the embedded demo dataset and the ONNX export check.

The ImageNet labels were chosen by hand (class index in the standard sorted-synset order), as the closest
ImageNet-1k class to what each photo shows; README lists them.
"""
from __future__ import annotations

from pathlib import Path

from effzoo.common import atomic_path

# skimage.data photo -> ImageNet class index chosen by hand
DEMO_LABELS = {
    "chelsea": 281,          # tabby, tabby cat: Chelsea the cat
    "coffee": 967,           # espresso: a cup of espresso on a saucer
    "camera": 872,           # tripod: the cameraman's camera stands on a tripod (grayscale photo)
    "rocket": 657,           # missile: a launch vehicle on its pad (no 'rocket' class in ImageNet-1k)
    "motorcycle_left": 665,  # moped: a motorbike (closest ImageNet-1k class)
    "clock_motion": 892,     # wall clock: a motion-blurred wall clock
}
# photos used to check each ONNX export against PyTorch (independent of the evaluated dataset)
CHECK_PHOTOS = ("chelsea", "coffee", "rocket", "camera")


def photo_path(name: str) -> Path:
    """File of a scikit-image bundled photo."""
    import skimage.data

    base = Path(skimage.data.__file__).parent
    for ext in (".png", ".jpg"):
        p = base / f"{name}{ext}"
        if p.exists():
            return p
    raise FileNotFoundError(f"scikit-image ships no photo named {name!r} in {base}")


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in class-index order, as shipped by timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def write_demo_dataset(outdir: str | Path) -> None:
    """Write the demo set in the ILSVRC2012 val layout (JPEG re-encoded at quality 95, original mode kept)."""
    from PIL import Image

    out = Path(outdir)
    (out / "val").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, label) in enumerate(DEMO_LABELS.items(), 1):
        fname = f"DEMO_{i:08d}_{name}.JPEG"
        img = Image.open(photo_path(name))
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        with atomic_path(out / "val" / fname, ".JPEG") as tmp:
            img.save(tmp, format="JPEG", quality=95)
        lines.append(f"{fname} {label}\n")
    with atomic_path(out / "label.txt") as tmp:
        tmp.write_text("".join(n + "\n" for n in imagenet_class_names()), encoding="utf-8")
    with atomic_path(out / "val_label.txt") as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
