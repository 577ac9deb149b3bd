"""What made an artifact: a fingerprint of a step's code and the versions of the packages that shape it.

`code_version(module)` hashes the normalized syntax tree (comments, docstrings and formatting do not count) of a
step script and of every project module it imports, transitively. The workflow passes it through `params:`, so
Snakemake reruns exactly the jobs whose code changed, and the step records it in its manifest.
`package_versions(names)` reads installed versions (importlib.metadata, no import of the packages).
Standard library only: it runs at parse time on every snakemake call. Parsing ~25 modules costs ~0.4 s, so
each module's normalized hash and imports are cached by the sha256 of its source bytes
(scripts/__pycache__/effzoo-fingerprints.json, content-addressed: never stale; a cache that cannot be read or
written is ignored).

CLI: python -m fingerprint build_int8   (prints the module's fingerprint and the modules it covers)
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import tempfile
from functools import lru_cache
from importlib import metadata
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
CACHE_NAME = "effzoo-fingerprints.json"
# The installed packages that shape each step's outputs: upgrading one reruns the steps that list it.
STEP_PACKAGES = {
    "demo_photos": ("scikit-image", "pillow"),
    "dataset_index": (),
    "make_shards": ("pillow", "torchvision", "numpy"),
    "make_datalist": (),
    "export_onnx": ("torch", "timm", "onnx", "onnxscript"),
    "calibrate": ("onnxruntime", "onnx"),
    "build_float": ("onnxruntime", "onnx", "openvino"),
    "build_int8": ("onnxruntime", "onnx", "openvino"),
    "predict": ("onnxruntime", "openvino"),
    "benchmark": ("onnxruntime", "openvino", "torch", "timm"),
    "metrics": (),
    "summary": ("matplotlib",),
    "deploy": (),
}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _analyse(source: bytes, path: Path) -> tuple[str, list[str]]:
    """(sha256 of the normalized syntax tree, top-level names of every module imported anywhere in it)."""
    tree = ast.parse(source, filename=str(path))
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports.add(node.module.split(".")[0])
    dump = ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest(), sorted(imports)


@lru_cache(maxsize=None)
def _cache() -> dict:
    try:
        return json.loads((SCRIPTS / "__pycache__" / CACHE_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _save_cache() -> None:
    """Write the cache atomically, best effort (a read-only install just parses every time)."""
    folder = SCRIPTS / "__pycache__"
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
    """(hash of the normalized syntax tree, project modules imported anywhere in it) of scripts/<module>.py."""
    path = SCRIPTS / f"{module}.py"
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such step module") from None
    key = hashlib.sha256(source).hexdigest()
    cache = _cache()
    if key not in cache:
        cache[key] = _analyse(source, path)
        _save_cache()
    tree_hash, imports = cache[key]
    return tree_hash, frozenset(m for m in imports if m != module and (SCRIPTS / f"{m}.py").exists())


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


@lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """sha256 (16 hex digits) of the normalized code of `module` and of the project modules it imports."""
    h = hashlib.sha256()
    for m in closure(module):
        h.update(f"{m}\n{_parsed(m)[0]}\n".encode())
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
    return {"code_version": code_version(step), "code_modules": closure(step), "packages": step_versions(step)}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name, code_version(name), " ".join(closure(name)))
