"""effzoo: EfficientNet from timm to deployable, quantized CPU models, measured.

The user API: `effzoo.load("deploy/<variant>")` opens a deployed model (effzoo.api.Classifier). The workflow's
library and steps live in the submodules; this root imports none of them.
"""
__version__ = "0.1.0"
__all__ = ["Classifier", "load", "__version__"]


def __getattr__(name):
    if name in ("Classifier", "load"):
        from effzoo import api

        return getattr(api, name)
    raise AttributeError(f"module 'effzoo' has no attribute {name!r}")
