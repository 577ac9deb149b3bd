"""A quant mode's build options, parsed once into one typed object.

The workflow passes every option of the mode as JSON, defaults filled in from schemas/config.schema.yaml (their
one home); `BuildOptions.parse` checks that every option the mode's kind and method read is there and resolves
the CPU target once (`auto` = the kind of the building machine). build.json records `as_given()`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from effzoo.common import ZooError
from effzoo.cpu_target import resolve

COMMON = ("kind", "runtime", "cpu_target", "on_cpu_mismatch")
BY_KIND = {
    "fp32": ("graph_optimization",),
    "fp16": (),
    "bf16": ("graph_optimization",),
    "int8": ("quantized_ops", "method", "per_channel", "reduce_range", "split_min_agreement", "split_signal",
             "max_promoted_macs", "min_speed_over_fp32", "bias_correction", "sensitivity_images", "weight_rounding",
             "rounding_images", "activation_type", "weight_type", "exclude_layers", "keep_bounded_ranges"),
}
# The options each int8 range method reads (effzoo.ranges).
BY_METHOD = {"max": (), "percentile": ("percentile",), "kl_divergence": ("levels", "candidates"),
             "mse": ("levels", "candidates")}


@dataclass(frozen=True)
class BuildOptions:
    """Every option of one quant mode, typed; `target` is the resolved CPU kind the build is made for."""

    quant: str
    kind: str
    runtime: str
    cpu_target: str
    on_cpu_mismatch: str
    target: str
    graph_optimization: str | None = None
    quantized_ops: str | None = None
    method: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | str | None = None
    split_min_agreement: float | None = None
    split_signal: str | None = None
    max_promoted_macs: float | None = None
    min_speed_over_fp32: float | None = None
    bias_correction: bool | None = None
    sensitivity_images: int | None = None
    weight_rounding: str | None = None
    rounding_images: int | None = None
    activation_type: str | None = None
    weight_type: str | None = None
    exclude_layers: tuple[str, ...] = ()
    keep_bounded_ranges: bool | None = None
    percentile: float | None = None
    levels: int | None = None
    candidates: int | None = None
    given: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, options: str | dict, quant: str) -> "BuildOptions":
        """From the JSON text (or dict) of a mode's options; a clear error naming the mode and what is missing."""
        if isinstance(options, str):
            try:
                options = json.loads(options)
            except json.JSONDecodeError as e:
                raise ZooError(f"quant mode {quant!r}: --options is not JSON ({e})") from None
        kind = options.get("kind")
        if kind not in BY_KIND:
            raise ZooError(f"quant mode {quant!r}: kind {kind!r}: expected one of {', '.join(BY_KIND)}")
        required = COMMON + BY_KIND[kind]
        if kind == "int8":
            method = options.get("method")
            if method not in BY_METHOD:
                raise ZooError(f"quant mode {quant!r}: method {method!r}: expected one of {', '.join(BY_METHOD)}")
            required += BY_METHOD[method]
        missing = [k for k in required if k not in options]
        if missing:
            raise ZooError(f"quant mode {quant!r}: options {missing} missing; the workflow fills them from "
                           f"schemas/config.schema.yaml")
        known = {f.name for f in fields(cls)} - {"quant", "target", "given"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ZooError(f"quant mode {quant!r}: unknown options {unknown}")
        if options["runtime"] == "openvino" and kind == "fp16":
            raise ZooError(f"quant mode {quant!r}: OpenVINO builds are fp32 or int8 (an OpenVINO CPU computes an "
                           f"fp16 IR in fp32); use runtime: onnxruntime for fp16")
        if kind == "bf16" and (options["runtime"] != "openvino" or options["on_cpu_mismatch"] == "warn"):
            raise ZooError(f"quant mode {quant!r}: a bf16 build is OpenVINO's fp32 IR run at bf16 inference "
                           f"precision (runtime: openvino; ONNX Runtime's CPU provider has no bf16 compute), and it "
                           f"never runs emulated (on_cpu_mismatch: skip or error, not warn); got runtime "
                           f"{options['runtime']!r}, on_cpu_mismatch {options['on_cpu_mismatch']!r}")
        values = {k: options[k] for k in required}
        for k in ("graph_optimization", "percentile", "levels", "candidates"):
            if k in options:
                values[k] = options[k]
        if "exclude_layers" in values:
            values["exclude_layers"] = tuple(values["exclude_layers"])
        return cls(quant=quant, target=resolve(options["cpu_target"]), given=dict(options), **values)

    def as_given(self) -> dict:
        """The options as the workflow passed them (what build.json records)."""
        return dict(self.given)
