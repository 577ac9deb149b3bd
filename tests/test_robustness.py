"""Bad input, crashes and incremental rebuilds: nothing lost, only stale work redone."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, base_config, planned_jobs, run_snakemake, seed_exports
from PIL import Image

from effzoo import common, preprocess, shard_io
from effzoo.common import ZooError
from effzoo.demo import photo_path
from effzoo.steps import make_shards

LITE0 = "tf_efficientnet_lite0"


def lite_spec():
    return preprocess.spec_for("tf_efficientnet_lite0.in1k")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP"])
def test_other_formats_under_jpeg_name_decode_like_timm(tmp_path, fmt):
    p = tmp_path / "disguised.JPEG"
    Image.open(photo_path("coffee")).convert("RGB").save(p, format=fmt)
    ours = preprocess.transform_uint8(preprocess.load_image(p), lite_spec())
    from test_preprocess import timm_uint8
    assert np.array_equal(ours, timm_uint8(Image.open(p).convert("RGB"), lite_spec()))


def test_exif_rotation_is_not_applied_like_timm(tmp_path):
    img = Image.open(photo_path("chelsea")).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    p = tmp_path / "rotated.JPEG"
    img.save(p, format="JPEG", exif=exif.tobytes())
    loaded = preprocess.load_image(p)
    assert loaded.size == img.size  # timm does not apply EXIF orientation; neither do we


def test_shard_skip_policy_lists_bad_files(tmp_path):
    Image.open(photo_path("coffee")).convert("RGB").save(tmp_path / "good one.JPEG", format="JPEG")
    (tmp_path / "bad é.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    rows = [("good one.JPEG", 967), ("bad é.JPEG", 1)]
    with pytest.raises(ZooError, match="bad é.JPEG: cannot decode"):
        make_shards.make_shard(tmp_path, rows, lite_spec(), tmp_path / "s.npz", 1, "error")
    assert not (tmp_path / "s.npz").exists()
    counts = make_shards.make_shard(tmp_path, rows, lite_spec(), tmp_path / "s.npz", 1, "skip")
    assert counts == {"images": 1, "skipped": 1}
    with np.load(tmp_path / "s.npz") as z:
        assert z["files"].tolist() == ["good one.JPEG"] and "bad é.JPEG" in z["skipped"][0]


@pytest.mark.parametrize("workers", [1, 2])
def test_png_shard_holds_the_same_pixels_and_skips_as_a_raw_one(tmp_path, workers):
    Image.open(photo_path("coffee")).convert("RGB").save(tmp_path / "a.JPEG", format="JPEG")
    Image.open(photo_path("chelsea")).convert("RGB").save(tmp_path / "b.JPEG", format="JPEG")
    (tmp_path / "bad.JPEG").write_bytes(b"\xff\xd8\xff garbage")
    rows = [("a.JPEG", 967), ("bad.JPEG", 1), ("b.JPEG", 285)]
    counts = {s: make_shards.make_shard(tmp_path, rows, lite_spec(), tmp_path / f"{s}.npz", workers, "skip", s)
              for s in ("raw", "png")}
    assert counts["raw"] == counts["png"] == {"images": 2, "skipped": 1}
    raw, png = str(tmp_path / "raw.npz"), str(tmp_path / "png.npz")
    assert shard_io.shard_storage(png) == "png"
    assert np.array_equal(shard_io.read_rows(png, [0, 1]), shard_io.read_rows(raw, [0, 1]))
    assert [a.tolist() for a in shard_io.read_small(png, "labels", "files", "skipped")] == \
        [a.tolist() for a in shard_io.read_small(raw, "labels", "files", "skipped")]


def test_sigkill_while_writing_a_shard_leaves_no_complete_file(tmp_path):
    """A killed shard job leaves at most a hidden temporary file; the target never looks complete."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import time; from effzoo import common\n"
            f"with common.atomic_path({str(tmp_path / 'shard.npz')!r}) as t:\n"
            f"    t.write_bytes(b'x' * 1000); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "shard.npz").exists()
    left = list(tmp_path.glob(".tmp-shard.npz.*"))
    assert len(left) == 1 and left[0].stat().st_size == 1000   # the killed write's temporary file
    (tmp_path / ".tmp-shard.npz.x").mkdir()   # and a folder, as an interrupted deploy leaves
    (tmp_path / ".tmp-other.npz.y").write_bytes(b"another target's")
    with common.atomic_path(tmp_path / "shard.npz") as t:   # the next write of the target removes both
        t.write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other.npz.y", "shard.npz"]


# ------------------------------------------------------------------------------------------------
# workflow level: a small complete run shared by the dry-run checks


def small_config(**changes) -> dict:
    cfg = base_config()
    cfg["variants"]["efficientnet_b0"]["weights"] = "random"
    cfg["run_variants"] = [LITE0, "efficientnet_b0"]
    cfg["run_quant"] = ["fp32", "int8_max"]
    cfg["benchmark"] = {"enabled": False}
    cfg["calibration"] = {"images": 6, "validation_images": 0}   # no budget search: these tests are about reruns
    for path, value in changes.items():
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return cfg


@pytest.fixture(scope="module")
def completed(tmp_path_factory, shared_exports):
    work = tmp_path_factory.mktemp("complete")
    seed_exports(shared_exports, work, [LITE0, "efficientnet_b0"])
    run_snakemake(work, config=small_config())
    return work



@pytest.mark.slow
def test_complete_run_has_nothing_to_do(completed):
    assert planned_jobs(completed, small_config()) == {}


@pytest.mark.slow
def test_preprocess_override_reruns_only_that_variant(completed):
    cfg = small_config(**{"variants.efficientnet_b0.preprocess": {"crop_pct": 0.9}})
    out = run_snakemake(completed, "-n", config=cfg).stdout
    assert "wildcards: variant=efficientnet_b0" in out
    assert f"variant={LITE0}" not in out


@pytest.mark.slow
def test_calibration_option_reruns_only_int8(completed):
    jobs = planned_jobs(completed, small_config(**{"calibration.seed": 1}))
    assert jobs == {"calibrate": 2, "build_int8": 2, "predict": 2, "metrics": 2, "summary": 1, "all": 1, "total": 10}


@pytest.mark.slow
def test_shard_size_reprocesses_data_but_exports_nothing(completed):
    jobs = planned_jobs(completed, small_config(**{"preprocessing.shard_size": 4}))
    assert "export_onnx" not in jobs and jobs["make_shards"] == 2 and jobs["make_datalist"] == 1
    # the fp32 builds stay; only the int8 builds, whose calibration reads the shards, follow the data
    assert jobs["build_int8"] == 2 and jobs["calibrate"] == 2 and "build_float" not in jobs


@pytest.mark.slow
def test_adding_images_exports_no_model(completed, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(completed, work, symlinks=True)
    Image.open(photo_path("astronaut")).convert("RGB").save(work / "data/demo/val/EXTRA 1.JPEG", format="JPEG")
    with open(work / "data/demo/val_label.txt", "a") as fh:
        fh.write("EXTRA 1.JPEG 560\n")
    jobs = planned_jobs(work, small_config())
    assert "dataset_index" in jobs and "export_onnx" not in jobs
    assert jobs["build_int8"] == 2 and "build_float" not in jobs  # only the int8 builds, whose calibration reads the data
    # and the real run goes through (a file name with a space): one variant's chain is enough to show it
    out = run_snakemake(work, f"metrics/{LITE0}.json", config=small_config()).stdout
    m = json.loads((work / f"metrics/{LITE0}.json").read_text())
    # the closing table shows the variant this run built, not every variant of run_variants with metrics on disk
    table_rows = {ln.split()[0] for ln in out.splitlines() if ln.split()[:1] in ([LITE0], ["efficientnet_b0"])}
    assert table_rows == {LITE0}, out
    assert m["dataset"]["images_scored"] == 7


def visible_artifacts_load(work) -> None:
    """Whatever looks complete is complete: every visible artifact loads."""
    import onnx

    for p in work.rglob("*"):
        if not p.is_file() or p.name.startswith(".") or ".snakemake" in p.parts:
            continue
        if p.suffix == ".onnx":
            onnx.load(str(p))
        elif p.suffix == ".npz":
            with np.load(p) as z:
                for key in z.files:
                    z[key]
        elif p.suffix == ".json":
            json.loads(p.read_text())


# each stage's job: (log file, the output removed so that its job runs again, to be killed)
KILL_POINTS = {
    "shard writing": ("make_shards/demo/224-r256-bicubic/00000.log", "npz/demo/224-r256-bicubic/shard-00000.npz"),
    "export": (f"export_onnx/{LITE0}.log", f"onnx/{LITE0}.onnx"),
    "int8 build": (f"build_int8/{LITE0}-int8_max.log", f"vacc/{LITE0}-int8_max/model.onnx"),
    "inference": ("predict/efficientnet_b0-fp32.log", "output/efficientnet_b0-fp32/predictions.csv"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_sigkill_mid_job_then_rerun_gives_identical_metrics(completed, tmp_path, stage):
    """On a copy of the finished run, one output of a stage is removed and asked for with the default target;
    Snakemake and its jobs get SIGKILL as soon as the job that remakes it starts. No half-written file looks
    complete; `--unlock` and the same command redo what the kill left off, and the metrics equal the uninterrupted
    run's (a killed shard is remade alone and compared byte for byte)."""
    import yaml

    work = tmp_path / "killed"
    shutil.copytree(completed, work, symlinks=True)
    log, removed = KILL_POINTS[stage]
    log = work / "logs" / log
    started = log.stat().st_mtime_ns if log.exists() else None   # the export was seeded: it has no log yet
    (work / removed).unlink()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work), "--cores", "2",
           "--configfile", str(work / "test-config.yaml"), "--", removed, "all"]   # an intermediate file is remade
    (work / "test-config.yaml").write_text(yaml.safe_dump(small_config()))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    def job_started() -> bool:   # Snakemake removes the job's old log, and the job writes it anew
        return log.exists() and log.stat().st_mtime_ns != started
    while time.time() < deadline and proc.poll() is None and not job_started():
        time.sleep(0.1)
    time.sleep(0.1)  # the job is running: its log was just written by its shell
    assert proc.poll() is None, f"the {stage} job finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the running jobs
    proc.wait()
    visible_artifacts_load(work)
    run_snakemake(work, "--unlock", config=small_config())  # Snakemake's lock outlives a SIGKILL by design
    if stage == "shard writing":   # a shard is data: the remade one is the uninterrupted run's, byte for byte
        run_snakemake(work, removed, config=small_config())   # (what follows from a shard: the other stages)
        assert (work / removed).read_bytes() == (completed / removed).read_bytes()
        assert [p for p in (work / removed).parent.glob(".tmp-*")] == []
        return
    run_snakemake(work, removed, "all", config=small_config())
    assert (work / removed).exists()
    for v in (LITE0, "efficientnet_b0"):
        a = json.loads((work / f"metrics/{v}.json").read_text())["results"]
        b = json.loads((completed / f"metrics/{v}.json").read_text())["results"]
        for q in a:
            assert (a[q]["top1"], a[q]["top5"], a[q]["images"]) == (b[q]["top1"], b[q]["top5"], b[q]["images"])
    for made in work.glob("output/*/predictions.csv"):
        assert made.read_bytes() == (completed / made.relative_to(work)).read_bytes()
    # the rerun's writes cleared what the killed ones left behind
    assert [p for p in work.rglob(".tmp-*") if ".snakemake" not in p.parts] == []


def test_unknown_quant_mode_and_wrong_type(tmp_path):
    cfg = base_config()
    cfg["run_quant"] = ["int4"]
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0 and "unknown quant mode 'int4'" in proc.stdout + proc.stderr
    cfg = base_config()
    cfg["preprocessing"] = {"shard_size": "big"}
    proc = run_snakemake(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0 and "'big' is not of type 'integer'" in proc.stdout + proc.stderr
