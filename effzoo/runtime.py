"""Run a build on the runtime it was made for: ONNX Runtime (model.onnx) or OpenVINO (model.xml + model.bin).

`open_build` gives a latency-mode runner (one request at a time, `threads` intra-op threads), as predict and
the vendor's benchmark at -i 1 run it. `open_throughput` gives the throughput mode (the vendor's -i instances):
OpenVINO's THROUGHPUT hint with `instances` streams (its own choice when instances is 1) and as many infer
requests in flight as it reports optimal; ONNX Runtime runs `instances` sessions side by side, the threads
split between them. Every runner takes a uint8 NHWC batch and returns (logits, probs).
OpenVINO builds run at the inference precision their build.json records (`precision_of`): f32 for fp32 and int8
builds (OpenVINO's own default on AMX/bf16 CPUs would be bf16), so an fp32 build computes in fp32 and an int8 build
its quantized ops in int8 and the rest in fp32; bf16 for a bf16 build, which is compiled only on a CPU with
avx512_bf16 or amx_bf16 and must read back bf16 (never emulated, never silently f32).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from effzoo.common import ZooError, precision_of, read_json, verify_files
from effzoo.cpu_target import BF16_FLAGS, bf16_isa, check
from effzoo.ort_layout import make_session


def checked_build(manifest: str, skippable: bool = False) -> tuple[dict, dict]:
    """(manifest, CPU check) of a build.json or deploy model.json, after checking its model files against their
    recorded sha256 and this CPU against what the build requires (stops, warns, or with `skippable` returns a
    check with 'skipped' for a build whose on_cpu_mismatch is skip)."""
    doc = read_json(manifest, "deploy" if Path(manifest).name == "model.json" else "build")
    verify_files(doc["files"], Path(manifest).parent, manifest)
    return doc, check(doc, str(manifest), skippable=skippable)


def runtime_of(model_path: str) -> str:
    """'openvino' for an IR (.xml), else 'onnxruntime'."""
    return "openvino" if Path(model_path).suffix == ".xml" else "onnxruntime"


def _openvino():
    """The openvino module, or a clear error saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ZooError("this build runs on OpenVINO, which is not installed: pip install openvino "
                       "(or the effzoo[openvino] extra)") from None
    return openvino


def compiled_precision(compiled) -> str:
    """The inference precision OpenVINO compiled a model at: f32, bf16, ..."""
    return compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def _ov_compile(model_path: str, config: dict, precision: str = "f32"):
    """OpenVINO's compiled model at `precision`; a bf16 compile only where the CPU computes bf16, checked after."""
    ov = _openvino()
    if precision == "bf16" and bf16_isa() is None:
        raise ZooError(f"{model_path}: a bf16 build needs {' or '.join(BF16_FLAGS)}, which this CPU lacks: OpenVINO "
                       f"would emulate bf16 or compute at f32 without saying so")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model_path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                        **config})
    got = compiled_precision(compiled)
    if precision == "bf16" and got != "bf16":
        raise ZooError(f"{model_path}: asked OpenVINO for bf16 inference precision and it compiled at {got}")
    return compiled


def _ov_outputs(compiled, result) -> tuple[np.ndarray, np.ndarray]:
    return result[compiled.output("logits")], result[compiled.output("probs")]


def open_build(model_path: str, threads: int, layout_tuning: bool = False, precision: str = "f32"):
    """(runner, info): the build in latency mode on its runtime (OpenVINO at `precision`: precision_of)."""
    if runtime_of(model_path) == "openvino":
        ov = _openvino()
        compiled = _ov_compile(model_path, {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                            "INFERENCE_NUM_THREADS": threads}, precision)
        request = compiled.create_infer_request()
        info = {"runtime": "openvino", "version": ov.__version__, "mode": "latency", "streams": 1, "requests": 1,
                "threads": threads, "inference_precision": compiled_precision(compiled)}
        return (lambda x: _ov_outputs(compiled, request.infer({0: x}))), info
    import onnxruntime as ort

    sess, session_info = make_session(model_path, threads, layout_tuning)
    name = sess.get_inputs()[0].name
    info = {"runtime": "onnxruntime", "version": ort.__version__, "mode": "latency", "sessions": 1,
            "threads": threads, **session_info}
    return (lambda x: tuple(sess.run(["logits", "probs"], {name: x}))), info


def open_throughput(model_path: str, threads: int, instances: int, layout_tuning: bool = False,
                    precision: str = "f32"):
    """(runner, info): the build in throughput mode; a call runs info['requests'] batches concurrently."""
    if runtime_of(model_path) == "openvino":
        ov = _openvino()
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
        if instances > 1:
            config["NUM_STREAMS"] = instances
        compiled = _ov_compile(model_path, config, precision)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, requests)

        def run(x):
            for _ in range(requests):
                queue.start_async({0: x})
            queue.wait_all()
        return run, {"runtime": "openvino", "version": ov.__version__, "mode": "throughput",
                     "streams": int(compiled.get_property("NUM_STREAMS")), "requests": requests, "threads": threads,
                     "inference_precision": compiled_precision(compiled)}
    import onnxruntime as ort

    made = [make_session(model_path, max(1, threads // instances), layout_tuning) for _ in range(instances)]
    sessions = [s for s, _ in made]
    name = sessions[0].get_inputs()[0].name

    def run_parallel(x):
        """Every session runs the batch in its own thread; a session's error is raised here, never timed."""
        errors = []

        def call(session):
            try:
                session.run(["probs"], {name: x})
            except Exception as e:   # noqa: BLE001 - re-raised below in the calling thread
                errors.append(e)
        ts = [threading.Thread(target=call, args=(s,)) for s in sessions]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise ZooError(f"{model_path}: {len(errors)} of {len(sessions)} ONNX Runtime sessions failed in "
                           f"throughput mode: {errors[0]}") from errors[0]
    return run_parallel, {"runtime": "onnxruntime", "version": ort.__version__, "mode": "throughput",
                          "sessions": instances, "requests": instances, "threads": threads, **made[0][1]}
