"""bf16 builds: OpenVINO's fp32 IR run at bf16 inference precision, only on a CPU that computes bf16 natively;
on others predict and benchmark record why and run nothing, and every other use stops. Forced CPU kinds test
both sides on any machine."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import resolved_config
from test_build import _int8_inputs

from effzoo import cpu_target, runtime
from effzoo.common import ZooError, read_json
from effzoo.steps import benchmark, build_float, predict

AVX2 = {"avx", "avx2", "fma"}
NO_BF16 = {"avx2": AVX2, "vnni": AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}}   # forced CPUs without bf16


def test_bf16_is_read_from_the_flags_beside_the_kind():
    assert cpu_target.bf16_isa(AVX2 | {"avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile", "amx_bf16",
                                       "avx512_bf16"}) == "amx_bf16"
    assert cpu_target.bf16_isa(NO_BF16["vnni"] | {"avx512_bf16"}) == "avx512_bf16"
    assert cpu_target.bf16_isa(NO_BF16["vnni"]) is None and cpu_target.bf16_isa(AVX2) is None
    cpu = {"requires": "any", "requires_flags": ["amx_bf16", "avx512_bf16"]}
    assert cpu_target.lacking_flags(cpu, NO_BF16["vnni"]) == ["amx_bf16", "avx512_bf16"]
    assert cpu_target.lacking_flags(cpu, AVX2 | {"avx512_bf16"}) == []
    assert cpu_target.lacking_flags({"requires": "vnni"}, AVX2) == []   # the kind is covers()'s to judge


def bf16_build(tmp_path, **options) -> tuple[dict, list[str]]:
    """The tiny model's ov_bf16 build; returns (build.json, predict's arguments)."""
    common, _ = _int8_inputs(tmp_path)
    opts = {**resolved_config()["quant_modes"]["ov_bf16"], **options}
    out = tmp_path / "ov_bf16"
    build_float.main(common + ["--quant", "ov_bf16", "--options", json.dumps(opts), "--outdir", str(out)])
    args = ["--model", str(out / "model.xml"), "--build-json", str(out / "build.json"), "--shards",
            str(tmp_path / "npz" / "shard-00000.npz"), "--out", str(tmp_path / "p.csv"), "--logits",
            str(tmp_path / "l.npy"), "--manifest", str(tmp_path / "p.json"), "--batch", "4", "--threads", "1",
            "--layout-tuning", "off"]
    return json.loads((out / "build.json").read_text()), args


def test_a_bf16_build_records_its_precision_and_what_it_requires(tmp_path):
    built, _ = bf16_build(tmp_path)
    assert built["kind"] == "bf16" and built["details"]["inference_precision"] == "bf16"
    assert set(built["files"]) == {"model.xml", "model.bin"} and built["options"]["runtime"] == "openvino"
    cpu = built["cpu"]
    assert cpu["requires"] == "any" and cpu["requires_flags"] == ["amx_bf16", "avx512_bf16"]
    assert cpu["on_mismatch"] == "skip" and cpu["isa_sensitive"] is True
    assert cpu["checked_isa"] == cpu_target.bf16_isa()   # None where the building CPU cannot run it


@pytest.mark.parametrize("forced", list(NO_BF16))
def test_without_bf16_predict_and_benchmark_run_nothing_and_say_why(tmp_path, monkeypatch, forced):
    built, args = bf16_build(tmp_path)
    monkeypatch.setattr(cpu_target, "cpu_flags", lambda: NO_BF16[forced])
    predict.main(args)
    doc = json.loads((tmp_path / "p.json").read_text())
    build_json = args[args.index("--build-json") + 1]
    assert doc["not_run"] == (f"{build_json}: requires amx_bf16 or avx512_bf16 (bf16 build: OpenVINO computes it "
                              f"natively only with avx512_bf16 or amx_bf16), and this CPU has neither: it would run "
                              f"emulated or at another precision, so it does not run here")
    assert doc["images"] == 0 and doc["runtime"] is None
    assert doc["cpu_check"]["ok"] is False and doc["cpu_check"]["running"] == forced
    assert (tmp_path / "p.csv").read_text().splitlines() == [",".join(["file", "label"] + [f"top{k}" for k in range(1, 6)]
                                                                 + [f"prob{k}" for k in range(1, 6)])]   # no row
    assert np.load(tmp_path / "l.npy").shape == (0, 0)
    perf = tmp_path / "perf.json"
    benchmark.main(["--model", args[1], "--build-json", build_json, "--out", str(perf), "--batch-sizes", "1",
                    "--iterations", "1", "--warmup", "0", "--rounds", "1", "--threads", "1", "--instances", "1",
                    "--layout-tuning", "off"])
    timed = read_json(perf, "perf")   # the record metrics reads: complete as a record of a build not run
    assert timed["not_run"] == doc["not_run"] and "results" not in timed and "best_throughput_ips" not in timed
    # every other use stops: the runtime itself, and a check that cannot skip (effzoo.load's)
    with pytest.raises(ZooError, match="a bf16 build needs amx_bf16 or avx512_bf16, which this CPU lacks"):
        runtime.open_build(args[1], 1, precision="bf16")
    with pytest.raises(ZooError, match="requires amx_bf16 or avx512_bf16 .* does not run here"):
        runtime.checked_build(build_json)


def test_on_cpu_mismatch_error_stops_predict_and_warn_is_refused(tmp_path, monkeypatch):
    _, args = bf16_build(tmp_path, on_cpu_mismatch="error")
    monkeypatch.setattr(cpu_target, "cpu_flags", lambda: NO_BF16["avx2"])
    with pytest.raises(ZooError, match="requires amx_bf16 or avx512_bf16"):
        predict.main(args)
    assert not (tmp_path / "p.csv").exists()
    (tmp_path / "w").mkdir()
    with pytest.raises(ZooError, match="never runs emulated .* got runtime 'openvino', on_cpu_mismatch 'warn'"):
        bf16_build(tmp_path / "w", on_cpu_mismatch="warn")


def test_where_the_cpu_computes_bf16_it_runs_at_bf16_and_nowhere_else_at_all(tmp_path, monkeypatch):
    """On this machine's real flags: a bf16 CPU runs the build at bf16 (read back from OpenVINO); a CPU without
    AVX-512 that claims bf16 (forced) gets f32 from OpenVINO, which the runtime refuses rather than report."""
    built, args = bf16_build(tmp_path)
    if cpu_target.bf16_isa():
        predict.main(args)
        doc = json.loads((tmp_path / "p.json").read_text())
        assert "not_run" not in doc and doc["runtime"]["inference_precision"] == "bf16"
        assert doc["cpu_check"]["ok"] is True and doc["cpu_check"]["running_isa"] == cpu_target.bf16_isa()
    elif "avx512f" not in cpu_target.cpu_flags():
        monkeypatch.setattr(cpu_target, "cpu_flags", lambda: AVX2 | {"avx512_bf16"})
        with pytest.raises(ZooError, match="asked OpenVINO for bf16 inference precision and it compiled at f32"):
            runtime.open_build(args[1], 1, precision="bf16")
    else:   # AVX-512 without bf16: OpenVINO would emulate it; only the flags stop it
        with pytest.raises(ZooError, match="which this CPU lacks"):
            runtime.open_build(args[1], 1, precision="bf16")
