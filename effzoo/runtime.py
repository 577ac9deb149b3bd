"""Run a build on the runtime it was made for: ONNX Runtime (model.onnx) or OpenVINO (model.xml + model.bin).

`open_build` gives a latency-mode runner (one request at a time, `threads` intra-op threads), as predict and
the vendor's benchmark at -i 1 run it. `open_throughput` gives the throughput mode (the vendor's -i instances):
OpenVINO's THROUGHPUT hint with `instances` streams (its own choice when instances is 1) and as many infer
requests in flight as it reports optimal; ONNX Runtime runs `instances` sessions side by side, the threads
split between them. Every runner takes a uint8 NHWC batch and returns (logits, probs).
OpenVINO builds run at f32 inference precision (its default on AMX/bf16 CPUs would be bf16): an fp32 build
computes in fp32, an int8 build computes its quantized ops in int8 and the rest in fp32.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from effzoo.common import ZooError, read_json, verify_files
from effzoo.cpu_target import check
from effzoo.ort_session import make_session


def checked_build(manifest: str) -> tuple[dict, dict]:
    """(manifest, CPU check) of a build.json or deploy model.json, after checking its model files against their
    recorded sha256 and this CPU against what the build requires (stops, or warns, on a mismatch)."""
    doc = read_json(manifest, "deploy" if Path(manifest).name == "model.json" else "build")
    verify_files(doc["files"], Path(manifest).parent, manifest)
    return doc, check(doc, str(manifest))


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


def _ov_compile(model_path: str, config: dict):
    ov = _openvino()

    core = ov.Core()
    return core.compile_model(core.read_model(model_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32", **config})


def _ov_outputs(compiled, result) -> tuple[np.ndarray, np.ndarray]:
    return result[compiled.output("logits")], result[compiled.output("probs")]


def open_build(model_path: str, threads: int, layout_tuning: bool = False):
    """(runner, info): the build in latency mode on its runtime."""
    if runtime_of(model_path) == "openvino":
        ov = _openvino()
        compiled = _ov_compile(model_path, {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                            "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        info = {"runtime": "openvino", "version": ov.__version__, "mode": "latency", "streams": 1, "requests": 1,
                "threads": threads, "inference_precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}
        return (lambda x: _ov_outputs(compiled, request.infer({0: x}))), info
    import onnxruntime as ort

    sess, session_info = make_session(model_path, threads, layout_tuning)
    name = sess.get_inputs()[0].name
    info = {"runtime": "onnxruntime", "version": ort.__version__, "mode": "latency", "sessions": 1,
            "threads": threads, **session_info}
    return (lambda x: tuple(sess.run(["logits", "probs"], {name: x}))), info


def open_throughput(model_path: str, threads: int, instances: int, layout_tuning: bool = False):
    """(runner, info): the build in throughput mode; a call runs info['requests'] batches concurrently."""
    if runtime_of(model_path) == "openvino":
        ov = _openvino()
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": threads}
        if instances > 1:
            config["NUM_STREAMS"] = instances
        compiled = _ov_compile(model_path, config)
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        queue = ov.AsyncInferQueue(compiled, requests)

        def run(x):
            for _ in range(requests):
                queue.start_async({0: x})
            queue.wait_all()
        return run, {"runtime": "openvino", "version": ov.__version__, "mode": "throughput",
                     "streams": int(compiled.get_property("NUM_STREAMS")), "requests": requests, "threads": threads}
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
