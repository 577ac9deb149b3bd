"""The user API and the `effzoo` command on a deploy folder made by the deploy step from a tiny fp32 build."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from conftest import resolved_config
from PIL import Image
from test_build import tiny_classifier

import effzoo
from effzoo import api, preprocess
from effzoo.build_options import BuildOptions
from effzoo.cli import describe
from effzoo.common import ZooError, file_record
from effzoo.cpu_target import REPORTED_FLAGS, cpu_flags, cpu_kind, cpu_name
from effzoo.evidence import accuracy_evidence
from effzoo.steps import build_float, deploy, race

CLASSES = ["red thing", "green thing", "blue thing"]
EFFZOO = str(Path(sys.executable).parent / "effzoo")


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """deploy/tiny: the deploy step's folder for an fp32 build of a model whose classes are the mean R, G, B."""
    import onnx

    tmp = tmp_path_factory.mktemp("api")
    spec = preprocess.spec_for("tf_efficientnet_lite0.in1k")
    src = tmp / "m.onnx"
    onnx.save(tiny_classifier(224), src)
    (tmp / "m.json").write_text(json.dumps({"weights": {"source": "random", "random": True}, "tag": "t",
                                            "onnx": file_record(src)}))
    (tmp / "s.json").write_text(json.dumps(spec))
    fp32 = resolved_config()["quant_modes"]["fp32"]
    build_float.main(["--onnx", str(src), "--export-info", str(tmp / "m.json"), "--spec-json", str(tmp / "s.json"),
                      "--quant", "fp32", "--options", json.dumps(fp32), "--outdir", str(tmp / "vacc")])
    build = json.loads((tmp / "vacc/build.json").read_text())
    jsons = {"fp32": str(tmp / "vacc/build.json")}
    # the race step, as a plain function: one candidate, timed as effzoo.load runs it
    doc = race.race(tiny_metrics(spec), {"fp32": build}, jsons, race_settings("batch"))
    deploy.deploy("tiny", doc, tiny_metrics(spec), {"fp32": build}, jsons, CLASSES, tmp / "deploy/tiny")
    return tmp / "deploy/tiny"


def tiny_metrics(spec: dict) -> dict:
    """The metrics of the tiny fp32 build: 3 of 6 images right, the reference of itself."""
    evidence = accuracy_evidence(3, 6, 6, 0, 0, 6, {"min_agreement": 0.98, "max_top1_loss": 0.005}, reference=True)
    return {"variant": "tiny", "preprocess": spec,
            "dataset": {"name": "demo", "datalist": "npz/demo/224-r256-bicubic/datalist.tsv"},
            "results": {"fp32": {"top1": 0.5, "top5": 1.0, "images": 6, "evidence": evidence,
                                 "speed": {"mode": "latency", "batch": 16, "threads": 2, "images_per_s": 1000.0,
                                           "vs_torch_eager": 3.2, "vs_torch_eager_range": [3.1, 3.3]},
                                 "cpu_check": {"ok": True, "running_isa": "avx2"}}}}


def race_settings(objective: str) -> dict:
    return {"objective": objective, "batch": 4, "threads": 1, "iterations": 2, "warmup": 1, "rounds": 2, "looks": 2,
            "tolerance": 0.05, "require": "not_refuted"}


def test_a_single_stream_race_runs_batch_1_and_ranks_on_each_rounds_p90_latency(deployed):
    tmp = deployed.parent.parent
    build = json.loads((tmp / "vacc/build.json").read_text())
    doc = race.race(tiny_metrics(build["preprocess"]), {"fp32": build}, {"fp32": str(tmp / "vacc/build.json")},
                    race_settings("single_stream"))
    assert doc["batch"] == 1 and doc["ranked_on"] == "1 / p90 latency of each round's calls"
    assert doc["objective"] == "single_stream" and len(doc["builds"]["fp32"]["latency_p90_rounds"]) == 2
    timed = {"a": {"throughput_rounds": [10.0, 20.0], "latency_p90_rounds": [2.0, 4.0]}}
    assert race.figures(timed, "single_stream") == {"a": [500.0, 250.0]}
    assert race.figures(timed, "batch") == {"a": [10.0, 20.0]}


def solid(rgb, size=(300, 200)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def test_paths_pil_images_and_arrays_classify_alike(deployed, tmp_path):
    path = tmp_path / "blue.png"
    solid((10, 20, 250)).save(path)
    model = effzoo.load(deployed)
    by_path, by_pil, by_array = model.classify([path, solid((10, 20, 250)), np.asarray(solid((10, 20, 250)))],
                                               topk=3)
    assert by_path == by_pil == by_array
    assert [name for name, _ in by_path] == ["blue thing", "green thing", "red thing"]
    probs = [p for _, p in by_path]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    grey = model.classify([np.full((64, 80), 200, np.uint8)], topk=1)[0]   # H x W grey: three equal channels
    assert len(grey) == 1 and grey[0][1] == pytest.approx(1 / 3, abs=1e-4)


def test_images_run_in_batches_of_bounded_size(deployed, monkeypatch):
    model = api.load(deployed)
    seen = []
    run = model._run

    def recording(x):
        seen.append(len(x))
        return run(x)
    monkeypatch.setattr(model, "_run", recording)
    out = model.classify((solid((200, 0, 0)) for _ in range(5)), topk=2, batch=2)
    assert seen == [2, 2, 1] and len(out) == 5 and all(top[0][0] == "red thing" for top in out)
    seen.clear()   # by default, the batch and threads its speed was measured with (model.json: 4 and 1)
    model.classify([solid((200, 0, 0))] * 5, topk=1)
    assert seen == [4, 1] and model.threads == 1


def test_bad_arguments_are_named(deployed):
    model = effzoo.load(deployed)
    with pytest.raises(ZooError, match=r"topk 4: expected 1 to 3"):
        model.classify([solid((1, 2, 3))], topk=4)
    with pytest.raises(ZooError, match=r"image array of dtype float32 and shape \(4, 4, 3\): expected uint8"):
        model.classify([np.zeros((4, 4, 3), np.float32)])
    with pytest.raises(ZooError, match=r"image of type int: expected a file path, a PIL image or a uint8 array"):
        model.classify([3])
    with pytest.raises(ZooError, match=r"batch 0: expected at least 1"):
        model.classify([solid((1, 2, 3))], batch=0)
    with pytest.raises(ZooError, match=r"nowhere/model.json: not found; a deploy folder holds model.json"):
        effzoo.load("nowhere")


def test_a_deploy_folder_holds_the_build_and_what_was_measured(deployed):
    doc = json.loads((deployed / "model.json").read_text())
    assert sorted(p.name for p in deployed.iterdir()) == ["model.json", "model.onnx"]
    # an ordinary folder's permissions (the umask's), not the private mode of the temporary folder it was built in
    assert deployed.stat().st_mode & 0o777 == deployed.parent.stat().st_mode & 0o777 == 0o777 & ~deploy.current_umask()
    assert doc["files"]["model.onnx"]["sha256"] == file_record(deployed / "model.onnx")["sha256"]
    assert doc["quant"] == "fp32" and doc["runtime"] == "onnxruntime" and doc["classes"] == CLASSES
    # the speed is the race's, on this CPU, in the mode effzoo.load runs it: latency mode, batch 4, 1 thread
    speed = doc["speed"]
    assert speed["measured_on"]["kind"] == cpu_kind() and speed["measured_on"]["flags"] == sorted(
        cpu_flags() & REPORTED_FLAGS)
    assert (speed["objective"], speed["batch"], speed["threads"], speed["rounds"]) == ("batch", 4, 1, 2)
    assert speed["images_per_s"] > 0 and speed["speed_over_leader"] == [1.0, 1.0, 1.0] and speed["excludes_preprocessing"]
    assert doc["runtime_package"] == {"package": "onnxruntime", "version": onnxruntime.__version__}
    assert doc["preprocessing"]["fast"] is False and doc["preprocessing"]["images_per_s_one_thread"] > 0
    assert doc["accuracy"]["evidence"]["state"] == "certified" and doc["accuracy"]["note"] is None
    # the accuracy was measured by predict, on predict's kernel ISA (not necessarily the build's)
    assert doc["cpu"]["checked_isa"] == "avx2" and doc["cpu"]["isa_sensitive"] is False
    lines = describe(doc)
    assert lines[2].startswith("cpu          made for ") and lines[2].endswith("; accuracy measured on avx2 kernels")
    assert lines[1] == f"build        fp32: fp32 on onnxruntime (onnxruntime {onnxruntime.__version__}), model file " \
                       f"model.onnx"
    assert lines[4] == ("accuracy     certified against the budget: top-1 50.0 [11.8, 88.2] %, top-5 100.0 [54.1, "
                        "100.0] %, agreement with fp32 100.0 [100.0, 100.0] %, top-1 loss 0.00 [0.00, 0.00] pt (95%, "
                        "6 images of demo)")
    assert lines[5].startswith(f"speed        {speed['images_per_s']:.1f} images/s, p90 latency ") and lines[5].endswith(
        "(batch objective: latency mode, batch 4, 1 threads, as effzoo runs it); speed_over_ort_fp32 1.00 [1.00, 1.00]")
    assert lines[6].startswith(f"measured on  {cpu_name()} (flags: ") and lines[6].endswith("a race of 2 rounds")
    # what the race found of this CPU kind (int8 that does not pay) is one line each
    assert "this cpu     ONNX Runtime int8 does not pay" in describe({**doc, "cpu_notes": [
        "ONNX Runtime int8 does not pay"]})
    assert not any(ln.startswith("this cpu") for ln in lines)


def test_the_api_warns_in_one_line_of_another_runtime_version_and_uncertified_accuracy():
    info = {"runtime_package": {"package": "onnxruntime", "version": "1.0"},
            "accuracy": {"note": "accuracy not certified: 6 images scored, about 875 needed"}}
    assert api.notices(info, {"runtime": "onnxruntime", "version": "1.0"}) == [
        "accuracy not certified: 6 images scored, about 875 needed"]
    info["accuracy"]["note"] = None
    assert api.notices(info, {"runtime": "onnxruntime", "version": "2.0"}) == [
        "runs on onnxruntime 2.0; its speed and accuracy were measured on onnxruntime 1.0"]


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([EFFZOO, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_command_classifies_from_any_directory(deployed, tmp_path):
    solid((0, 255, 0)).save(tmp_path / "green.jpg")
    out = cli("classify", deployed, tmp_path / "green.jpg", "--topk", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == str(tmp_path / "green.jpg") and lines[1].endswith("  green thing") and len(lines) == 3
    assert "effzoo classify" in cli("--help").stdout and "info" in cli("--help").stdout


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_missing_or_damaged_model_file_is_one_line_naming_it(deployed, tmp_path, damage):
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(deployed, folder)
    solid((0, 0, 0)).save(tmp_path / "x.png")
    if damage == "missing":
        (folder / "model.onnx").unlink()
        expected = f"{folder / 'model.onnx'}: file not found"
    else:
        with open(folder / "model.onnx", "ab") as fh:
            fh.write(b"\0")
        expected = f"{folder / 'model.onnx'}: its sha256"
    for args in (("classify", folder, tmp_path / "x.png"), ("info", folder)):
        out = cli(*args)
        if args[0] == "info":   # info reads model.json only
            assert out.returncode == 0
            continue
        assert out.returncode == 2 and out.stderr.startswith(f"error: {expected}") and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1


def test_a_damaged_model_json_is_named(deployed, tmp_path):
    import shutil

    folder = tmp_path / "tiny"
    shutil.copytree(deployed, folder)
    (folder / "model.json").write_text("{not json")
    for command in ("classify", "info"):
        out = cli(command, folder, *(["x.png"] if command == "classify" else []))
        assert out.returncode == 2 and f"{folder / 'model.json'}: not valid JSON" in out.stderr
        assert "Traceback" not in out.stderr


def test_build_options_are_parsed_once_with_the_cpu_target_resolved():
    modes = resolved_config()["quant_modes"]
    opts = BuildOptions.parse(json.dumps({**modes["int8_percentile"], "cpu_target": "avx512"}), "int8_percentile")
    assert opts.target == "avx512" and opts.method == "percentile" and opts.percentile == 99.999
    assert opts.exclude_layers == () and opts.as_given()["cpu_target"] == "avx512"
    with pytest.raises(ZooError, match=r"quant mode 'q': options \['percentile'\] missing"):
        BuildOptions.parse({k: v for k, v in modes["int8_percentile"].items() if k != "percentile"}, "q")
    with pytest.raises(ZooError, match=r"quant mode 'q': method 'entropy': expected one of max, percentile, "
                                       r"kl_divergence, mse"):
        BuildOptions.parse({**modes["int8_max"], "method": "entropy"}, "q")
    with pytest.raises(ZooError, match=r"quant mode 'q': options \['levels', 'candidates'\] missing"):
        BuildOptions.parse({**modes["int8_max"], "method": "mse"}, "q")
    with pytest.raises(ZooError, match=r"quant mode 'q': OpenVINO builds are fp32 or int8"):
        BuildOptions.parse({**modes["fp16"], "runtime": "openvino"}, "q")
    with pytest.raises(ZooError, match=r"quant mode 'q': unknown options \['min_agreement'\]"):
        BuildOptions.parse({**modes["int8_max"], "min_agreement": 0.9}, "q")


def test_output_piped_into_a_reader_that_stops_early_is_no_error(deployed, tmp_path):
    solid((0, 255, 0)).save(tmp_path / "green.jpg")
    images = " ".join([str(tmp_path / "green.jpg")] * 200)
    out = subprocess.run(["bash", "-o", "pipefail", "-c", f"{EFFZOO} classify {deployed} {images} | head -1"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == f"{tmp_path / 'green.jpg'}\n" and "Traceback" not in out.stderr


def test_an_openvino_build_without_openvino_says_how_to_install_it(monkeypatch):
    from effzoo import runtime

    monkeypatch.setitem(sys.modules, "openvino", None)   # `import openvino` raises ImportError
    with pytest.raises(ZooError, match=r"this build runs on OpenVINO, which is not installed: pip install openvino"):
        runtime.open_build("deploy/x/model.xml", threads=1)
