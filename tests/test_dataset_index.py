"""Dataset layouts and label validation: each bad input names the file, line or value."""
from __future__ import annotations

import pytest
from PIL import Image

from effzoo.common import ZooError
from effzoo.dataset import build_index, detect_layout, imagenet_synsets


def make_ilsvrc(root, names=("a.JPEG", "b.JPEG"), labels=(1, 2), num_classes=1000, extra_lines=""):
    (root / "val").mkdir(parents=True)
    for n in names:
        Image.new("RGB", (8, 8)).save(root / "val" / n, format="JPEG")
    (root / "val_label.txt").write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)) + extra_lines)
    (root / "label.txt").write_text("".join(f"class {i}\n" for i in range(num_classes)))
    return root


def test_ilsvrc_layout(tmp_path):
    rows, names = build_index(make_ilsvrc(tmp_path))
    assert rows == [("val/a.JPEG", 1), ("val/b.JPEG", 2)] and len(names) == 1000


def test_folder_layout_uses_imagenet_synset_order(tmp_path):
    syn = imagenet_synsets()
    for s in (syn[5], syn[999]):
        (tmp_path / "val" / s).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / s / "x.JPEG", format="JPEG")
    assert detect_layout(tmp_path) == "folders"
    rows, names = build_index(tmp_path)
    assert [lab for _, lab in rows] == [5, 999] and len(names) == 1000


@pytest.mark.parametrize("extra,match", [
    ("garbage-line\n", r"val_label.txt:3: malformed line"),
    ("a.JPEG 7\n", r"val_label.txt:3: duplicate entry for 'a.JPEG'"),
    ("c.JPEG 1000\n", r"val_label.txt:3: class 1000 for 'c.JPEG' is out of range"),
    ("missing.JPEG 3\n", r"val_label.txt:3: 'missing.JPEG' has a label but .* does not exist"),
])
def test_bad_label_lines(tmp_path, extra, match):
    make_ilsvrc(tmp_path, extra_lines=extra)
    with pytest.raises(ZooError, match=match):
        build_index(tmp_path)


def test_image_without_label(tmp_path):
    make_ilsvrc(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "c.JPEG", format="JPEG")
    with pytest.raises(ZooError, match=r"1 image\(s\) have no label.*c.JPEG"):
        build_index(tmp_path)


def test_missing_val_label_and_wrong_class_count(tmp_path):
    make_ilsvrc(tmp_path / "x")
    (tmp_path / "x" / "val_label.txt").unlink()
    with pytest.raises(ZooError, match="val_label.txt: missing"):
        build_index(tmp_path / "x")
    make_ilsvrc(tmp_path / "y", num_classes=999)
    with pytest.raises(ZooError, match="label.txt: has 999 class names, expected 1000"):
        build_index(tmp_path / "y")
    with pytest.raises(ZooError, match="no such directory"):
        build_index(tmp_path / "nothing")


def test_unlabelled_non_image_file_is_ignored_and_labelled_one_fails_at_decode(tmp_path):
    make_ilsvrc(tmp_path)
    (tmp_path / "val" / "README.txt").write_text("not an image")
    rows, _ = build_index(tmp_path)
    assert [f for f, _ in rows] == ["val/a.JPEG", "val/b.JPEG"]
    (tmp_path / "val" / "notes.JPEG").write_text("not an image either")
    with open(tmp_path / "val_label.txt", "a") as fh:
        fh.write("notes.JPEG 3\n")
    rows, _ = build_index(tmp_path)  # labelled: indexed, and preprocessing names it (see test_robustness)
    from effzoo import preprocess
    with pytest.raises(ZooError, match="notes.JPEG: cannot decode"):
        preprocess.load_image(tmp_path / "val" / "notes.JPEG")
