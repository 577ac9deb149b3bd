"""A build is made for a declared CPU, records what it requires, and predict stops (or warns) on a CPU that
lacks it; forced targets test both directions on any CPU kind."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, resolved_config
from test_build import _int8_inputs

from effzoo import cpu_target, shard_io
from effzoo.common import ZooError
from effzoo.steps import build_int8, predict


def test_cpu_kinds_from_flags():
    assert cpu_target.cpu_kind({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"}) == "vnni"
    assert cpu_target.cpu_kind({"avx2", "avx_vnni"}) == "vnni"
    assert cpu_target.cpu_kind({"avx2", "avx512f", "avx512bw"}) == "avx512"
    assert cpu_target.cpu_kind({"avx2", "fma"}) == "avx2"
    assert cpu_target.covers("vnni", "avx512") and cpu_target.covers("avx512", "avx2")
    assert not cpu_target.covers("avx512", "vnni") and not cpu_target.covers("other", "avx2")
    # without /proc/cpuinfo flags (another OS or architecture): float and non-saturating builds still run
    assert cpu_target.cpu_kind(set()) == "unknown"
    assert cpu_target.covers("unknown", "any") and not cpu_target.covers("unknown", "vnni")


def test_kernel_isas_from_flags():
    base = {"avx2", "avx512f", "avx512bw"}
    assert cpu_target.kernel_isa(base | {"avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}) == "amx"
    assert cpu_target.kernel_isa(base | {"avx512_vnni", "avx512_bf16"}) == "avx512_vnni"
    assert cpu_target.kernel_isa({"avx2", "avx_vnni"}) == "avx_vnni"
    assert cpu_target.kernel_isa(base) == "avx512" and cpu_target.kernel_isa({"avx2"}) == "avx2"
    assert cpu_target.kernel_isa(set()) == "unknown" and cpu_target.kernel_isa({"sse4_2"}) == "other"


def test_an_isa_sensitive_build_on_another_isa_says_so(monkeypatch, caplog):
    cpu = {"target": "vnni", "requires": "vnni", "why": "w", "on_mismatch": "error", "checked_isa": "amx",
           "isa_sensitive": True}
    monkeypatch.setattr(cpu_target, "kernel_isa", lambda flags=None: "avx512_vnni")
    record = cpu_target.check({"cpu": cpu}, "vacc/m/build.json", running="vnni")
    assert record["ok"] is True and record["running_isa"] == "avx512_vnni"
    assert record["isa_note"].startswith("vacc/m/build.json: its accuracy record was measured on amx kernels and "
                                         "it runs here on avx512_vnni kernels")
    assert "measured on amx kernels" in caplog.text
    # the same ISA, or a build whose outputs do not follow the ISA (ONNX Runtime, float): no note
    assert "isa_note" not in cpu_target.check({"cpu": {**cpu, "checked_isa": "avx512_vnni"}}, "b", running="vnni")
    assert "isa_note" not in cpu_target.check({"cpu": {**cpu, "isa_sensitive": False}}, "b", running="vnni")


def build(tmp_path, target: str, **options) -> tuple[dict, list[str]]:
    """An int8 build of a tiny model made for `target`; returns (build.json, predict's arguments)."""
    common, int8_args = _int8_inputs(tmp_path)
    opts = {**resolved_config()["quant_modes"]["int8_max"], "cpu_target": target, "split_min_agreement": 1.0,
            **options}
    out = tmp_path / f"int8-{target}"
    build_int8.main(common + ["--quant", "int8_max", "--options", json.dumps(opts), "--outdir", str(out)] + int8_args)
    shard = tmp_path / "npz" / "shard-00000.npz"
    args = ["--model", str(out / "model.onnx"), "--build-json", str(out / "build.json"), "--shards", str(shard),
            "--out", str(tmp_path / "p.csv"), "--logits", str(tmp_path / "l.npy"), "--manifest",
            str(tmp_path / "p.json"), "--batch", "4", "--threads", "1", "--layout-tuning", "off"]
    return json.loads((out / "build.json").read_text()), args


def test_a_vnni_build_stops_on_a_cpu_without_vnni(tmp_path, monkeypatch):
    built, args = build(tmp_path, "vnni")
    assert built["cpu"]["target"] == "vnni" and built["cpu"]["requires"] == "vnni"
    assert built["details"]["reduce_range"] == "none" and built["cpu"]["on_mismatch"] == "error"
    # ONNX Runtime int8 outputs are the same on AMX and AVX-512 VNNI kernels: not ISA-sensitive
    assert built["cpu"]["checked_isa"] == cpu_target.kernel_isa() and built["cpu"]["isa_sensitive"] is False
    monkeypatch.setattr(cpu_target, "cpu_kind", lambda flags=None: "avx512")
    with pytest.raises(ZooError, match=r"built for a vnni CPU and requires vnni .* but this CPU is avx512.*"
                                       r"cpu_target: avx2, which runs exactly on any CPU, or auto.*"
                                       r"on_cpu_mismatch: warn"):
        predict.main(args)
    assert not (tmp_path / "p.csv").exists()
    monkeypatch.setattr(cpu_target, "cpu_kind", lambda flags=None: "unknown")
    with pytest.raises(ZooError, match=r"but this CPU's kind could not be read \(no flags in /proc/cpuinfo\)"):
        predict.main(args)


def test_on_cpu_mismatch_warn_runs_and_says_so(tmp_path, monkeypatch):
    built, args = build(tmp_path, "vnni", on_cpu_mismatch="warn")
    monkeypatch.setattr(cpu_target, "cpu_kind", lambda flags=None: "avx2")
    predict.main(args)
    check = json.loads((tmp_path / "p.json").read_text())["cpu_check"]
    assert check["ok"] is False and check["running"] == "avx2" and "requires vnni" in check["warning"]


def test_a_build_for_a_cpu_without_vnni_runs_exactly_everywhere(tmp_path, monkeypatch):
    built, args = build(tmp_path, "avx512")
    assert built["cpu"]["target"] == "avx512" and built["cpu"]["requires"] == "any"
    assert built["details"]["reduce_range"] == "saturating"
    budget = built["details"]["accuracy_budget"]
    assert budget["status"] == "not_checked" and budget["split_images"] == 4   # 4 split images say nothing
    for running in ("vnni", "avx512", "avx2", "unknown"):   # unknown: no /proc/cpuinfo flags
        monkeypatch.setattr(cpu_target, "cpu_kind", lambda flags=None, r=running: r)
        predict.main(args)
        assert json.loads((tmp_path / "p.json").read_text())["cpu_check"] == {
            "running": running, "running_isa": cpu_target.kernel_isa(), "target": "avx512", "requires": "any",
            "ok": True}
    labels = shard_io.read_small(str(tmp_path / "npz" / "shard-00000.npz"), "labels")[0]
    assert np.load(tmp_path / "l.npy").shape == (len(labels), 3)


def test_auto_is_the_building_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_target, "cpu_kind", lambda flags=None: "avx512")
    built, _ = build(tmp_path, "auto")
    assert built["cpu"]["target"] == "avx512" and built["cpu"]["target_option"] == "auto"
    assert built["cpu"]["build_host"] == "avx512" and built["details"]["reduce_range"] == "saturating"


@pytest.mark.skipif(shutil.which("cc") is None, reason="bench/isa_numerics.py compiles its shim with cc")
def test_the_isa_bench_refuses_amx_where_the_cpu_has_it(tmp_path):
    built, args = build(tmp_path, "vnni")
    model, shard = args[args.index("--model") + 1], args[args.index("--shards") + 1]
    out = subprocess.run([sys.executable, str(REPO / "bench/isa_numerics.py"), model, "--shards", shard,
                          "--images", "8", "--threads", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith(model)).split()
    labels = shard_io.read_small(shard, "labels")[0]
    # ONNX Runtime: the same outputs with and without AMX; on an AMX CPU the shim was asked, and refused
    assert row[1:5] == ["0.00000", "0", "of", str(min(8, len(labels)))]
    if cpu_target.kernel_isa() == "amx":
        assert row[7] == "yes"
