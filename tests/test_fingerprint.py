"""Code fingerprints (what makes a step's outputs stale), package versions, and one-way imports."""
from __future__ import annotations

import shutil

import pytest

import fingerprint
from conftest import SCRIPTS


@pytest.fixture
def scripts_copy(tmp_path, monkeypatch):
    """A copy of scripts/ that fingerprint reads instead of the real one."""
    dst = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, dst, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "SCRIPTS", dst)
    for f in (fingerprint._parsed, fingerprint.code_version):
        f.cache_clear()
    yield dst
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


def test_comments_docstrings_and_formatting_do_not_count(scripts_copy):
    before = {s: fresh(s) for s in ("calibrate", "build_int8", "build_float", "predict")}
    edit(scripts_copy / "calibrate.py", "def percentile_range(", "# a new comment\n\n\ndef percentile_range(")
    edit(scripts_copy / "calibrate.py", '"""[q_(1-p/100), q_(p/100)]', '"""Reworded. [q_(1-p/100), q_(p/100)]')
    edit(scripts_copy / "zoo_common.py", '"""Shared helpers', '"""Shared helpers (reworded)')
    edit(scripts_copy / "calibrate.py", "    total = counts.sum()\n", "    total = (\n        counts.sum()\n    )\n")
    assert {s: fresh(s) for s in before} == before


def test_a_logic_change_reaches_exactly_the_steps_that_import_it(scripts_copy):
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    edit(scripts_copy / "calibrate.py", "    return min(lo, 0.0), max(hi, 0.0)\n",
         "    return min(lo, 0.0), max(hi, 0.0) + 0.0\n")
    changed = {s for s in before if fresh(s) != before[s]}
    assert changed == {"calibrate", "build_int8"}


def test_a_shared_module_reaches_every_step_that_imports_it(scripts_copy):
    before = {s: fresh(s) for s in fingerprint.STEP_PACKAGES}
    edit(scripts_copy / "shard_io.py", 'REBUILD = "delete it', 'REBUILD = "remove it')
    changed = {s for s in before if fresh(s) != before[s]}
    assert changed == {"calibrate", "build_int8", "predict", "make_shards", "make_datalist"}


def test_step_scripts_import_one_way():
    """No import cycle among scripts/: every module's closure excludes the modules that import it."""
    modules = [p.stem for p in SCRIPTS.glob("*.py")]
    for m in modules:
        for dep in fingerprint.project_imports(m):
            assert m not in fingerprint.closure(dep), f"import cycle: {m} -> {dep} -> ... -> {m}"
    assert "build_int8" not in fingerprint.closure("build_float")
    assert "calibrate" not in fingerprint.closure("build_float")


def test_package_versions_name_a_missing_package():
    assert fingerprint.package_versions(["numpy", "no-such-package-xyz"]).split() == [
        f"numpy=={__import__('numpy').__version__}", "no-such-package-xyz==missing"]
