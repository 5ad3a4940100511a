"""leaf-fer: real-time video facial expression analysis with the LEAF model.

The Python API (:mod:`leaf_fer.api`): ``analyze_video``, ``analyze_image``, ``Analyzer`` and the result types
``Analysis``, ``FrameAnalysis``, ``FaceResult``. They load on first use, so ``import leaf_fer`` imports no model,
detector or OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Analysis, Analyzer, FaceResult, FrameAnalysis, analyze_image, analyze_video

__version__ = "0.1.0"
_API = ("Analysis", "Analyzer", "FaceResult", "FrameAnalysis", "analyze_image", "analyze_video")
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
