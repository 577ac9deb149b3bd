"""Integrity of built artifacts: a damaged shard, model, calibration file, export or prediction file is caught
by the step that reads it, with an error naming the file and how to rebuild it."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import resolved_config
from test_build import tiny_classifier
from test_int8_layers import INT8, conv_model, images, observed_ranges

import onnx
from effzoo import preprocess, shard_io
from effzoo.common import ZooError, file_record
from effzoo.steps import benchmark, build_float, build_int8, metrics, predict

FP32 = resolved_config()["quant_modes"]["fp32"]

REBUILD = "delete it and run snakemake again"


def damage(path, offset: int | None = None, n: int = 1000) -> None:
    """Zero n bytes in the middle of a file (or at offset), keeping its size, as a disk or a stray write would."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    data[start:start + n] = bytes(min(n, len(data) - start))
    assert bytes(data) != path.read_bytes()
    path.write_bytes(bytes(data))


@pytest.fixture
def fp32_build(tmp_path):
    """An exported tiny model, its export manifest and spec, and its fp32 build."""
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    src, info, spec_json = tmp_path / "m.onnx", tmp_path / "m.json", tmp_path / "s.json"
    onnx.save(tiny_classifier(224), src)
    info.write_text(json.dumps({"weights": {"source": "random", "random": True}, "tag": "tf_efficientnet_lite0.in1k",
                                "onnx": file_record(src)}))
    spec_json.write_text(json.dumps(spec))
    out = tmp_path / "vacc"
    build_float.main(["--onnx", str(src), "--export-info", str(info), "--spec-json", str(spec_json), "--quant",
                      "fp32", "--options", json.dumps(FP32), "--outdir", str(out)])
    return {"src": src, "info": info, "spec_json": spec_json, "model": out / "model.onnx", "build": out / "build.json"}


def test_a_damaged_shard_image_row_is_caught_where_it_is_read(tmp_path):
    p = tmp_path / "shard-00000.npz"
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    shard_io.write_shard(p, imgs, [1, 2, 3, 4], ["a", "b", "c", "d"], [])
    offset, _, _ = shard_io.npz_member(str(p), "images")
    damage(p, offset + 2 * 32 * 32 * 3 + 100, 50)   # inside row 2 only
    assert np.array_equal(shard_io.read_rows(str(p), [0, 1, 3]), imgs[[0, 1, 3]])   # intact rows still read
    with pytest.raises(ZooError, match=rf"{p}: image row 2 does not match the sha256 .* {REBUILD}"):
        shard_io.read_rows(str(p), [1, 2])


def test_a_damaged_label_array_is_caught_by_its_crc(tmp_path):
    p = tmp_path / "shard-00000.npz"
    shard_io.write_shard(p, np.zeros((3, 8, 8, 3), np.uint8), [5, 6, 7], ["a", "b", "c"], [])
    with zipfile.ZipFile(p) as zf:
        info = zf.getinfo("labels.npy")
    damage(p, info.header_offset + 30 + len("labels.npy") + 130, 8)   # the label values, past the npy header
    with pytest.raises(ZooError, match=rf"{p}: damaged shard .*CRC.* {REBUILD}"):
        shard_io.read_small(str(p), "labels")


def test_a_damaged_model_file_stops_predict_and_benchmark(tmp_path, fp32_build):
    shard = tmp_path / "shard-00000.npz"
    shard_io.write_shard(shard, np.zeros((2, 224, 224, 3), np.uint8), [0, 1], ["a", "b"], [])
    args = ["--model", str(fp32_build["model"]), "--build-json", str(fp32_build["build"])]
    predict.main(args + ["--shards", str(shard), "--out", str(tmp_path / "p.csv"), "--logits", str(tmp_path / "l.npy"),
                         "--manifest", str(tmp_path / "p.json"), "--batch", "2", "--threads", "1",
                         "--layout-tuning", "off"])
    assert json.loads((tmp_path / "p.json").read_text())["images"] == 2
    damage(fp32_build["model"])
    with pytest.raises(ZooError, match=rf"{fp32_build['model']}: its sha256 .* recorded in {fp32_build['build']} "
                                       rf"when it was written: the file was changed or damaged\. Rebuild it: {REBUILD}"):
        predict.main(args + ["--shards", str(shard), "--out", str(tmp_path / "p2.csv"), "--logits",
                             str(tmp_path / "l2.npy"), "--manifest", str(tmp_path / "p2.json"), "--batch", "2",
                             "--threads", "1", "--layout-tuning", "off"])
    assert not (tmp_path / "p2.csv").exists()
    with pytest.raises(ZooError, match=rf"{fp32_build['model']}: its sha256"):
        benchmark.main(args + ["--out", str(tmp_path / "perf.json"), "--batch-sizes", "1", "--iterations", "1",
                               "--warmup", "0", "--rounds", "1", "--threads", "1", "--instances", "1",
                               "--no-baseline", "--layout-tuning", "off"])


def test_a_damaged_export_stops_the_build(tmp_path, fp32_build):
    damage(fp32_build["src"], n=8)
    with pytest.raises(ZooError, match=rf"{fp32_build['src']}: its sha256 .* recorded in {fp32_build['info']}"):
        build_float.main(["--onnx", str(fp32_build["src"]), "--export-info", str(fp32_build["info"]), "--spec-json",
                          str(fp32_build["spec_json"]), "--quant", "fp32", "--options",
                          json.dumps(FP32), "--outdir", str(tmp_path / "again")])


@pytest.mark.parametrize("which", ["prepped", "stats"])
def test_a_damaged_calibration_file_stops_the_int8_build(tmp_path, fp32_build, which):
    rng = np.random.default_rng(0)
    model = conv_model(rng.normal(0, 0.1, (4, 3, 3, 3)), np.zeros(4), rng.normal(0, 0.5, (2, 4, 1, 1)))
    ranges = observed_ranges(model, images())
    files = {"prepped": tmp_path / "prepped.onnx", "stats": tmp_path / "stats.npz"}
    onnx.save(model, files["prepped"])
    names = list(ranges)
    np.savez(files["stats"], names=np.array(names), min=np.array([ranges[n][0] for n in names]),
             max=np.array([ranges[n][1] for n in names]))
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"prepped": file_record(files["prepped"]), "stats": file_record(files["stats"]),
                               "files": [], "calibration_s": 1.0, "peak_rss_mb": 1.0}))
    damage(files[which], n=16)
    with pytest.raises(ZooError, match=rf"{files[which]}: its sha256 .* recorded in {cal} when it was written"):
        build_int8.main(["--onnx", str(fp32_build["src"]), "--export-info", str(fp32_build["info"]), "--spec-json",
                         str(fp32_build["spec_json"]), "--quant", "int8_max", "--options", json.dumps(INT8),
                         "--outdir", str(tmp_path / "int8"), "--prepped", str(files["prepped"]), "--stats",
                         str(files["stats"]), "--calibration", str(cal), "--calib-datalist", str(tmp_path / "d.tsv")])
    assert not (tmp_path / "int8" / "model.onnx").exists()


def test_damaged_predictions_are_not_scored(tmp_path):
    pred = tmp_path / "predictions.csv"
    pred.write_text("file,label,top1,top2,top3,top4,top5,prob1,prob2,prob3,prob4,prob5\na,1,1,2,3,4,5,.5,.2,.1,.1,.1\n")
    manifest = tmp_path / "predict.json"
    manifest.write_text(json.dumps({"predictions": file_record(pred), "cpu_check": {"ok": True}}))
    pred.write_text(pred.read_text().replace("a,1,1,", "a,1,7,"))
    skipped = tmp_path / "skipped.tsv"
    skipped.write_text("")
    with pytest.raises(ZooError, match=rf"{pred}: its sha256 .* recorded in {manifest}"):
        metrics.build_metrics("v", {}, {}, {"fp32": (str(pred), str(manifest), str(tmp_path / "build.json"))},
                              str(tmp_path / "datalist.tsv"), str(skipped), "demo",
                              {"min_agreement": 0.98, "max_top1_loss": 0.005})


def photo_like(n: int, size: int = 48) -> np.ndarray:
    """Smooth images with noise (PNG compresses them, as it does photos)."""
    rng = np.random.default_rng(1)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    base = ramp[None, :, None, None] + ramp[None, None, :, None] * 0.2
    return np.clip(base + rng.normal(0, 3, (n, size, size, 3)), 0, 255).astype(np.uint8)


def test_png_shard_rows_read_back_exactly_and_smaller(tmp_path):
    imgs = photo_like(5)
    raw, png = tmp_path / "raw.npz", tmp_path / "png.npz"
    shard_io.write_shard(raw, imgs, [0, 1, 2, 3, 4], list("abcde"), [])
    shard_io.write_shard(png, imgs, [0, 1, 2, 3, 4], list("abcde"), [], storage="png")
    assert shard_io.shard_storage(str(raw)) == "raw" and shard_io.shard_storage(str(png)) == "png"
    assert png.stat().st_size < 0.8 * raw.stat().st_size
    assert np.array_equal(shard_io.read_rows(str(png), [4, 0, 2]), imgs[[4, 0, 2]])
    back = [(b, lab.tolist(), f.tolist()) for b, lab, f in shard_io.iter_shards([str(png)], 2)]
    assert np.array_equal(np.concatenate([b for b, _, _ in back]), imgs)
    assert [x for _, lab, _ in back for x in lab] == [0, 1, 2, 3, 4]
    # the digests are of the pixels, whatever the storage
    assert (shard_io.read_small(str(png), "image_sha256")[0] == shard_io.read_small(str(raw), "image_sha256")[0]).all()


def test_a_damaged_png_row_is_caught_where_it_is_read(tmp_path):
    p = tmp_path / "shard-00000.npz"
    imgs = photo_like(4)
    shard_io.write_shard(p, imgs, [1, 2, 3, 4], list("abcd"), [], storage="png")
    base, _, _ = shard_io.npz_member(str(p), "png")
    offsets = shard_io.read_small(str(p), "png_offsets")[0]
    damage(p, base + int(offsets[2]) + 40, 20)   # inside row 2's PNG only
    assert np.array_equal(shard_io.read_rows(str(p), [0, 1, 3]), imgs[[0, 1, 3]])
    with pytest.raises(ZooError, match=rf"{p}: image row 2 (is not a readable PNG|does not match the sha256).* {REBUILD}"):
        shard_io.read_rows(str(p), [2])


def test_a_png_row_that_decodes_to_other_pixels_is_caught(tmp_path):
    p = tmp_path / "shard-00000.npz"
    imgs = photo_like(2)
    other = [shard_io.png_bytes(imgs[1]), shard_io.png_bytes(imgs[1])]   # row 0 stored as row 1's picture
    shard_io.write_shard(p, imgs, [0, 1], ["a", "b"], [], storage="png", encoded=other)
    with pytest.raises(ZooError, match=rf"{p}: image row 0 does not match the sha256"):
        shard_io.read_rows(str(p), [0])
    assert np.array_equal(shard_io.read_rows(str(p), [1]), imgs[[1]])


def test_an_unknown_shard_storage_is_named(tmp_path):
    with pytest.raises(ZooError, match="unknown shard storage 'jpeg'"):
        shard_io.write_shard(tmp_path / "s.npz", photo_like(1), [0], ["a"], [], storage="jpeg")
    assert not (tmp_path / "s.npz").exists()
