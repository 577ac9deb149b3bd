"""Index an image-classification validation set: which files, which labels, which class names.

Two layouts are detected automatically:
  * ILSVRC2012 val: ``val/*.JPEG`` + ``val_label.txt`` ("<file> <class>" lines) + ``label.txt`` (class names);
  * class folders: ``val/<synset>/*.JPEG`` (labels from the ImageNet synset order when every folder
    is an ImageNet synset, else from the sorted folder names).
The index is a TSV of ``<relative path>\t<label>`` rows in a stable (sorted) order.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from effzoo.common import LOG, ZooError, atomic_path

IMAGE_EXTS = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def detect_layout(root: str | os.PathLike) -> str:
    """Return 'ilsvrc' or 'folders' for a dataset root, or raise naming what is missing."""
    root = Path(root)
    val = root / "val"
    if not val.is_dir():
        raise ZooError(f"{val}: no such directory; a dataset root needs val/ (ILSVRC layout with val_label.txt, "
                       f"or val/<class>/ folders)")
    if (root / "val_label.txt").exists():
        return "ilsvrc"
    if any(p.is_dir() for p in val.iterdir()):
        return "folders"
    raise ZooError(f"{root / 'val_label.txt'}: missing; val/ holds no class folders either, so there are no labels "
                   f"(add val_label.txt with '<file> <class>' lines)")


def read_class_names(path: Path, num_classes: int) -> list[str]:
    """Read label.txt (one class name a line) and check the class count."""
    if not path.exists():
        raise ZooError(f"{path}: missing (label.txt must list the {num_classes} class names, one a line)")
    names = [ln.rstrip("\n\r") for ln in path.read_text(encoding="utf-8").splitlines()]
    while names and not names[-1].strip():
        names.pop()
    if len(names) != num_classes:
        raise ZooError(f"{path}: has {len(names)} class names, expected {num_classes} (num_classes)")
    return names


_LINE = re.compile(r"^(?P<file>.+?)\s+(?P<label>-?\d+)\s*$")


def index_ilsvrc(root: Path, num_classes: int) -> list[tuple[str, int]]:
    """Rows from val_label.txt, checked against the files in val/."""
    label_file = root / "val_label.txt"
    files_on_disk = {p.name for p in (root / "val").iterdir() if p.is_file() and not p.name.startswith(".")}
    rows: dict[str, int] = {}
    for lineno, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if not m:
            raise ZooError(f"{label_file}:{lineno}: malformed line {line!r}; expected '<file> <class index>'")
        name, label = m.group("file"), int(m.group("label"))
        name = name[4:] if name.startswith("val/") else name
        if not 0 <= label < num_classes:
            raise ZooError(f"{label_file}:{lineno}: class {label} for {name!r} is out of range 0..{num_classes - 1}")
        if name in rows:
            raise ZooError(f"{label_file}:{lineno}: duplicate entry for {name!r}")
        if name not in files_on_disk:
            raise ZooError(f"{label_file}:{lineno}: {name!r} has a label but {root / 'val' / name} does not exist")
        rows[name] = label
    unlabelled = sorted(n for n in files_on_disk - rows.keys() if Path(n).suffix.lower() in IMAGE_EXTS)
    if unlabelled:
        raise ZooError(f"{root / 'val'}: {len(unlabelled)} image(s) have no label in {label_file}, "
                       f"first: {unlabelled[:3]}")
    others = sorted(files_on_disk - rows.keys())
    if others:
        LOG.warning("%s: ignoring %d non-image file(s) without labels: %s", root / "val", len(others), others[:5])
    if not rows:
        raise ZooError(f"{label_file}: no labelled images")
    return sorted((f"val/{n}", lab) for n, lab in rows.items())


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in standard (sorted) class order, as shipped by timm."""
    from importlib import resources
    text = resources.files("timm.data._info").joinpath("imagenet_synsets.txt").read_text()
    return [s.strip() for s in text.splitlines() if s.strip()]


def index_folders(root: Path, num_classes: int) -> tuple[list[tuple[str, int]], list[str] | None]:
    """Rows from val/<class>/ folders; returns (rows, class_names or None when label.txt should be used)."""
    folders = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    try:
        synsets = imagenet_synsets() if num_classes == 1000 else []
    except Exception:  # timm missing: fall back to folder order, said in the log
        synsets = []
    if synsets and all(f in synsets for f in folders):
        to_label = {s: i for i, s in enumerate(synsets)}
        names = None
    else:
        if len(folders) > num_classes:
            raise ZooError(f"{root / 'val'}: {len(folders)} class folders but num_classes is {num_classes}")
        to_label = {f: i for i, f in enumerate(folders)}
        names = folders + [f"class_{i}" for i in range(len(folders), num_classes)]
        LOG.info("class folders are not all ImageNet synsets: labels follow sorted folder order")
    rows = []
    for f in folders:
        for p in sorted((root / "val" / f).iterdir()):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
                rows.append((f"val/{f}/{p.name}", to_label[f]))
    if not rows:
        raise ZooError(f"{root / 'val'}: class folders hold no images")
    return rows, names


def build_index(root: str | os.PathLike, num_classes: int = 1000) -> tuple[list[tuple[str, int]], list[str]]:
    """Return (rows, class_names) for a dataset root of either layout."""
    root = Path(root)
    layout = detect_layout(root)
    if layout == "ilsvrc":
        rows = index_ilsvrc(root, num_classes)
        names = read_class_names(root / "label.txt", num_classes)
    else:
        rows, names = index_folders(root, num_classes)
        if names is None:
            names = (read_class_names(root / "label.txt", num_classes) if (root / "label.txt").exists()
                     else imagenet_synsets())
    LOG.info("%s: %s layout, %d images, %d classes present", root, layout, len(rows), len({r[1] for r in rows}))
    return rows, names


def write_index(rows: list[tuple[str, int]], path: str | os.PathLike) -> None:
    """Write the index TSV atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{f}\t{lab}\n" for f, lab in rows), encoding="utf-8")


def read_index(path: str | os.PathLike) -> list[tuple[str, int]]:
    """Read an index TSV written by write_index."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        f, lab = line.rsplit("\t", 1)
        rows.append((f, int(lab)))
    return rows
