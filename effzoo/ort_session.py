"""The one place an ONNX Runtime session is opened (open_session). The sessions predict, benchmark and the race
run builds in, with the opt-in layout pass, are effzoo.ort_layout.make_session's.
"""
from __future__ import annotations

from effzoo.common import ZooError

LEVELS = ("all", "extended", "basic", "none")   # graph optimization levels, ONNX Runtime's ORT_ENABLE_* / DISABLE_ALL


def open_session(model, threads: int = 1, level: str = "all", providers: list[str] | None = None,
                 bounded_memory: bool = False, optimized_path: str | None = None,
                 disabled_optimizers: list[str] | None = None, log_quiet: bool = True,
                 profile_prefix: str | None = None):
    """The one place an ONNX Runtime session is opened: `model` a path, serialized bytes or a ModelProto;
    `threads` intra-op threads and one inter-op thread; `level` of graph optimization (LEVELS); `bounded_memory`:
    PRIORITY_BASED execution order without memory patterns, so that each statistics branch of an augmented
    model runs as soon as its tensor exists (the default order kept b7's activations alive: 8.7 GB instead of
    2 GB at 600x600); `optimized_path`: where ONNX Runtime writes the graph it optimized; `profile_prefix`: ONNX
    Runtime's per-node timing of every run, written to a file named from the prefix."""
    import onnxruntime as ort

    if level not in LEVELS:
        raise ZooError(f"ONNX Runtime optimization level {level!r}: expected one of {', '.join(LEVELS)}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    if log_quiet:
        so.log_severity_level = 3
    if bounded_memory:
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        so.enable_mem_pattern = False
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    source = model if isinstance(model, bytes) else (
        model.SerializeToString() if hasattr(model, "SerializeToString") else str(model))
    return ort.InferenceSession(source, so, providers=providers or ["CPUExecutionProvider"],
                                disabled_optimizers=disabled_optimizers or [])
