"""`pip install leaf-fer` without `[train]`: the CLI, annotate, evaluate, the GUI's pipeline and the Python API run on
ONNX Runtime with the ONNX shipped beside the weights, while torch and the exporter packages cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2

from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.sources import open_source

TRAIN_ONLY = ("torch", "safetensors", "onnx", "onnxscript", "yaml")
"""What `[train]` adds: none of it may be needed at run time."""


def run_without_train_extra(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (and its worker processes) where TRAIN_ONLY cannot be imported and the
    compile cache is empty."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nfor _name in {TRAIN_ONLY!r}:\n    sys.modules[_name] = None\n")
    env = {**os.environ, "PYTHONPATH": str(site), "LEAF_FER_CACHE_DIR": str(tmp_path / "cache"),
           "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def test_cli_annotate_evaluate_and_api_run_without_torch(tmp_path: Path) -> None:
    faces = tmp_path / "faces" / "happiness"
    faces.mkdir(parents=True)
    with open_source(str(sample_video())) as source:
        smile = next(f.image for f in source.frames() if f.index == 400)
    cv2.imwrite(str(faces / "smile.jpg"), smile)
    result = run_without_train_extra(tmp_path, f"""
        import json, sys
        from leaf_fer.cli import main
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch importable: the test cannot tell")
        assert main(["annotate", "-o", "out", "--no-progress"]) == 0
        assert main(["annotate", {str(sample_video())!r}, "-o", "out16", "--precision", "int8", "--no-video",
                     "--no-progress"]) == 0
        assert main(["evaluate", "--data", "faces", "--json", "scores.json", "--no-progress"]) == 0
        assert main(["train", "--data", "x.npz"]) == 2
        assert main(["annotate", {str(sample_video())!r}, "-o", "torch_out", "--backend", "torch"]) == 2
        import leaf_fer
        analysis = leaf_fer.analyze_image("faces/happiness/smile.jpg")
        print(json.dumps({{"label": analysis.frames[0].faces[0].label,
                          "loaded": sorted(m for m in {TRAIN_ONLY!r} if sys.modules.get(m) is not None)}}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"label": "happiness", "loaded": []}
    assert "pip install 'leaf-fer[train]'" in result.stderr and "leaf-fer train: error:" in result.stderr
    assert "leaf-fer annotate: error: torch backend unavailable: torch is not installed" in result.stderr
    assert not (tmp_path / "torch_out").exists(), "refused before any input was started"
    rows = (tmp_path / "out" / "sample" / "sample.csv").read_text().splitlines()
    assert len(rows) == 473 and (tmp_path / "out" / "sample" / "sample.annotated.mp4").stat().st_size > 100_000
    assert json.loads((tmp_path / "scores.json").read_text())["per_class_recall"]["happiness"] == 1.0
    assert not (tmp_path / "cache").exists(), "the shipped ONNX ran: nothing was compiled"


def test_the_gui_pipeline_runs_without_torch(tmp_path: Path) -> None:
    result = run_without_train_extra(tmp_path, """
        import sys
        import numpy as np
        from leaf_fer.gui.worker import default_pipeline_factory
        from leaf_fer.realtime.settings import PipelineConfig
        from leaf_fer.realtime.types import Frame
        pipeline = default_pipeline_factory(PipelineConfig())
        result = pipeline.process(Frame(0, 0.0, np.zeros((360, 640, 3), np.uint8), "blank"))
        print(pipeline.predictor.backend_name, len(result.faces), sys.modules.get("torch") is not None)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["onnxruntime", "0", "False"]

