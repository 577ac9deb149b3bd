"""The generators of the data files the package ships (tools/): each one's output as the package reads it."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from conftest import REPO, needs_sample
from test_int8_layers import INT8, conv_model, observed_ranges

import onnx
from effzoo import cost, promotion_costs
from effzoo.build_options import BuildOptions
from effzoo.qdq_graph import Layer, weight_layers
from effzoo.steps import build_int8

sys.path.insert(0, str(REPO / "tools"))
import promotion_cost  # noqa: E402
import timm_pretrained_specs  # noqa: E402
import zoo_cost  # noqa: E402


def test_the_specs_tool_regenerates_the_shipped_table_byte_for_byte(tmp_path):
    shipped = REPO / "effzoo" / "timm_pretrained_specs.json"
    out = tmp_path / "specs.json"
    timm_pretrained_specs.main(["--out", str(out), *sorted(json.loads(shipped.read_text())["specs"])])
    assert out.read_bytes() == shipped.read_bytes()
    with pytest.raises(Exception, match="no tags"):
        timm_pretrained_specs.specs_table([])


def test_the_specs_tool_keeps_the_tags_its_table_holds(tmp_path):
    out = tmp_path / "specs.json"
    timm_pretrained_specs.main(["--out", str(out), "efficientnet_b0.ra_in1k"])
    assert set(json.loads(out.read_text())["specs"]) == {"efficientnet_b0.ra_in1k"}
    timm_pretrained_specs.main(["--out", str(out)])   # no tags: regenerate the tags the table holds
    assert set(json.loads(out.read_text())["specs"]) == {"efficientnet_b0.ra_in1k"}


def test_the_promotion_cost_entry_is_computed_from_the_timed_graphs():
    dense, depthwise = Layer("d", "wd", 0, 10, True), Layer("dw", "ww", 0, 5, False)
    ips = {"onnxruntime: fp32": 100.0, f"onnxruntime: {promotion_cost.PLAIN}": 180.0,
           "onnxruntime: + float weights, dense": 150.0, f"onnxruntime: {promotion_cost.SEVEN_BIT}": 170.0,
           "openvino: fp32": 80.0, f"openvino: {promotion_cost.PLAIN}": 240.0,
           "openvino: + float weights, depthwise": 200.0}
    rows = [(f"onnxruntime: {promotion_cost.PLAIN}", "onnxruntime", None, [], None),
            ("onnxruntime: + float weights, dense", "onnxruntime", f"onnxruntime: {promotion_cost.PLAIN}", [dense],
             "float_dense"),
            (f"onnxruntime: {promotion_cost.SEVEN_BIT}", "onnxruntime", None, [], None),
            (f"openvino: {promotion_cost.PLAIN}", "openvino", None, [], None),
            ("openvino: + float weights, depthwise", "openvino", f"openvino: {promotion_cost.PLAIN}", [depthwise],
             "float_depthwise")]
    entry = promotion_cost.cost_entry(ips, rows, total=100)
    # 180/150 - 1 = 20% more time for 10% of the MACs: 2.0 per unit share; 240/200 - 1 = 20% for 5%: 4.0
    assert entry["slowdown_per_mac_share"] == {"onnxruntime": {"float_dense": 2.0},
                                               "openvino": {"float_depthwise": 4.0}}
    assert entry["int8_speed_over_fp32"] == {"onnxruntime": {"none": 1.8, "saturating": 1.7},
                                             "openvino": {"none": 3.0}}
    doc = {"meaning": "m", "by_kernel_isa": {"amx": {"x": 1}, "avx2": {"x": 2}}}
    updated = promotion_cost.with_entry(doc, "avx512_vnni", entry)
    assert list(updated["by_kernel_isa"]) == ["avx2", "avx512_vnni", "amx"] and updated["meaning"] == "m"
    assert updated["by_kernel_isa"]["avx512_vnni"] == entry and doc["by_kernel_isa"] == {"amx": {"x": 1},
                                                                                         "avx2": {"x": 2}}


def test_every_shipped_promotion_cost_entry_prices_every_build():
    """Each measured ISA has the slowdowns and the int8 speeds an int8 search of either runtime and policy reads."""
    for isa in promotion_costs.measured():
        costs = promotion_costs.for_isa(isa)
        assert costs["priced_with"] == isa
        for runtime, policy in (("onnxruntime", "none"), ("onnxruntime", "saturating"), ("openvino", "none"),
                                ("openvino", "saturating")):
            assert promotion_costs.int8_speed(costs, runtime, policy) > 1.0
        assert {"float_depthwise", "float_dense", "exact_uint8_dense"} <= set(
            costs["slowdown_per_mac_share"]["onnxruntime"])
        assert costs["measured"] and costs["cpu_flags"]


def test_float_activations_drop_the_quantize_pairs_around_the_layers(tmp_path):
    rng = np.random.default_rng(0)
    model = conv_model(rng.normal(0, 0.3, (4, 3, 3, 3)), np.zeros(4), rng.normal(0, 0.5, (3, 4, 1, 1)))
    x = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    out = tmp_path / "q.onnx"
    build_int8.quantize_model(model, observed_ranges(model, x), out, BuildOptions.parse(INT8, "int8_max"),
                              ["pre_nchw", "pre_cast"], {}, False)
    qdq = onnx.load(str(out))
    conv_b = next(la for la in weight_layers(model) if la.name == "conv_b")
    edited = promotion_cost.float_activations(qdq, [conv_b])
    node = next(n for n in edited.graph.node if n.name == "conv_b")
    producers = {o: n.op_type for n in edited.graph.node for o in n.output}
    before = {o: n.op_type for n in qdq.graph.node for o in n.output}
    source = next(n for n in qdq.graph.node if n.name == "conv_b")
    assert before[source.input[0]] == "DequantizeLinear"
    assert producers[node.input[0]] == "Conv"   # conv_a's float output (its Relu fused), not a DequantizeLinear
    assert [n.op_type for n in edited.graph.node if node.output[0] in n.input] == ["GlobalAveragePool"]
    assert sum(n.op_type == "QuantizeLinear" for n in edited.graph.node) < sum(
        n.op_type == "QuantizeLinear" for n in qdq.graph.node)


def test_the_bootstrap_cost_file_loads_as_a_cost_model(tmp_path):
    path = tmp_path / "boot.json"
    zoo_cost.bootstrap_cost_file(path)
    model = cost.load(str(path))
    assert model.doc["architectures"]["bootstrap"]["input_size"] == 224


@needs_sample
def test_the_disk_tool_records_png_storage_in_the_cost_file(tmp_path, capsys):
    out = tmp_path / "zoo_cost.json"
    shutil.copy(REPO / "effzoo" / "zoo_cost.json", out)
    zoo_cost.main(["disk", "--images", "3", "--update", "--cost", str(out)])
    doc = json.loads(out.read_text())
    png = doc["png_storage"]
    assert png["images"] == 3 and png["command"].startswith("python tools/zoo_cost.py disk")
    assert set(png["sizes"]) == {"224", "456", "600"} and all(s["size_ratio"] > 1 for s in png["sizes"].values())
    assert "| 224 | shard, png |" in capsys.readouterr().out
    assert cost.load(str(out)).stored_bytes_per_image(224, "png") < cost.load(str(out)).bytes_per_image(224)
