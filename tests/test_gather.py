"""gather_predictions as a plain function: parts concatenated in order, checked against their manifests."""
from __future__ import annotations

import json

import numpy as np
import pytest

from effzoo.common import ZooError, file_record
from effzoo.steps import gather_predictions


def make_part(folder, rows: list[str], logits: np.ndarray, **over) -> str:
    folder.mkdir(parents=True)
    (folder / "predictions.csv").write_bytes(b"file,label,top1,prob1\r\n" + b"".join(r.encode() for r in rows))
    np.save(folder / "logits.npy", logits)
    manifest = {"images": len(rows), "skipped": [], "inference_s": 0.5, "runtime": "onnxruntime 1.x",
                "cpu_check": {"ok": True}, "model": "vacc/m/model.onnx", "batch": 32, "threads": 2,
                "predictions": file_record(folder / "predictions.csv"), "logits": file_record(folder / "logits.npy"),
                "peak_rss_mb": 100.0, **over}
    (folder / "predict.json").write_text(json.dumps(manifest))
    return str(folder / "predict.json")


def test_parts_are_concatenated_in_order(tmp_path):
    a = make_part(tmp_path / "a", ["x.jpg,1,1,0.9\r\n", "y.jpg,2,2,0.8\r\n"],
                  np.arange(6, dtype=np.float32).reshape(2, 3))
    b = make_part(tmp_path / "b", ["z.jpg,3,0,0.7\r\n"], np.full((1, 3), 7, np.float32), peak_rss_mb=300.0,
                  cpu_check={"ok": False, "warning": "w"})
    res = gather_predictions.gather([a, b], str(tmp_path / "p.csv"), str(tmp_path / "l.npy"))
    assert (tmp_path / "p.csv").read_bytes() == (b"file,label,top1,prob1\r\nx.jpg,1,1,0.9\r\ny.jpg,2,2,0.8\r\n"
                                                 b"z.jpg,3,0,0.7\r\n")
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), np.array([[0, 1, 2], [3, 4, 5], [7, 7, 7]], np.float32))
    assert res["images"] == 3 and res["inference_s"] == 1.0 and res["peak_rss_mb"] == 300.0
    assert res["cpu_check"] == {"ok": False, "warning": "w"}   # the worst part's check is the build's


def test_parts_on_different_kernel_isas_say_so(tmp_path):
    note = "vacc/m/build.json: its accuracy record was measured on amx kernels and it runs here on avx512_vnni kernels"
    a = make_part(tmp_path / "a", ["x.jpg,1,1,0.9\r\n"], np.zeros((1, 3), np.float32),
                  cpu_check={"ok": True, "running_isa": "amx"})
    b = make_part(tmp_path / "b", ["y.jpg,1,1,0.9\r\n"], np.zeros((1, 3), np.float32),
                  cpu_check={"ok": True, "running_isa": "avx512_vnni", "isa_note": note})
    res = gather_predictions.gather([a, b], str(tmp_path / "p.csv"), str(tmp_path / "l.npy"))
    # the part off its build's ISA speaks for the build, and the figures name both ISAs they were measured on
    assert res["cpu_check"] == {"ok": True, "running_isa": "amx+avx512_vnni", "isa_note": note}
    assert [p["cpu_check"]["running_isa"] for p in res["parts"]] == ["amx", "avx512_vnni"]


def test_parts_from_different_settings_are_refused(tmp_path):
    a = make_part(tmp_path / "a", ["x.jpg,1,1,0.9\r\n"], np.zeros((1, 3), np.float32))
    b = make_part(tmp_path / "b", ["y.jpg,1,1,0.9\r\n"], np.zeros((1, 3), np.float32), batch=16)
    with pytest.raises(ZooError, match=r"differ in batch"):
        gather_predictions.gather([a, b], str(tmp_path / "p.csv"), str(tmp_path / "l.npy"))
    assert not (tmp_path / "p.csv").exists()


def test_a_damaged_part_is_named(tmp_path):
    a = make_part(tmp_path / "a", ["x.jpg,1,1,0.9\r\n"], np.zeros((1, 3), np.float32))
    (tmp_path / "a" / "predictions.csv").write_bytes(b"file,label,top1,prob1\r\nx.jpg,1,2,0.9\r\n")
    with pytest.raises(ZooError, match=r"a/predictions.csv: its sha256"):
        gather_predictions.gather([a], str(tmp_path / "p.csv"), str(tmp_path / "l.npy"))


def test_parts_that_did_not_run_gather_as_not_run_and_a_mix_is_named(tmp_path):
    why = "vacc/m/build.json: requires amx_bf16 or avx512_bf16 (w), and this CPU has neither"
    skipped = {"runtime": None, "inference_s": 0.0, "cpu_check": {"ok": False, "skipped": why}, "not_run": why}
    a = make_part(tmp_path / "a", [], np.zeros((0, 0), np.float32), **skipped)
    b = make_part(tmp_path / "b", [], np.zeros((0, 0), np.float32), **skipped)
    res = gather_predictions.gather([a, b], str(tmp_path / "p.csv"), str(tmp_path / "l.npy"))
    assert res["not_run"] == why and res["images"] == 0
    assert (tmp_path / "p.csv").read_bytes() == b"file,label,top1,prob1\r\n"
    c = make_part(tmp_path / "c", ["z.jpg,3,0,0.7\r\n"], np.full((1, 3), 7, np.float32), runtime=None)
    with pytest.raises(ZooError, match=rf"{a}: these parts did not run \(vacc/m/build.json: requires amx_bf16 .*\) "
                                       r"and the others did: the nodes differ"):
        gather_predictions.gather([a, c], str(tmp_path / "q.csv"), str(tmp_path / "q.npy"))
