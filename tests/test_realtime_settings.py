"""The settings record: the command-line flags and the validation come from PipelineConfig's field metadata."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from leaf_fer.engines.names import BACKENDS, BENCH_BACKENDS, bench_backend
from leaf_fer.realtime.commands import add_pipeline_options, pipeline_config, register
from leaf_fer.realtime.settings import PipelineConfig, option_fields

FLAGS = ("--weights", "--backend", "--precision", "--detector-range", "--no-fallback-detector", "--min-confidence",
         "--smoothing", "--max-faces")


OTHER_VALUES = {"weights": "w.safetensors", "backend": "torch", "precision": "int8", "detector_range": "full",
                "fallback_detector": False, "min_detection_confidence": 0.4, "smoothing_alpha": 0.25, "max_faces": 3}
"""A valid value other than the default for every field with a flag."""


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser()
    add_pipeline_options(built)
    return built


def test_every_flag_comes_from_a_field_and_lands_in_the_config() -> None:
    with_flags = [(item, option) for item, option in option_fields() if option.flag]
    assert tuple(option.flag for _, option in with_flags) == FLAGS, "the flags of earlier releases, in order"
    assert pipeline_config(parser().parse_args([])) == PipelineConfig(), "flag defaults = field defaults"
    for item, option in with_flags:
        value = OTHER_VALUES[item.name]
        argv = [option.flag] if isinstance(value, bool) else [option.flag, str(value)]
        config = pipeline_config(parser().parse_args(argv))
        assert getattr(config, item.name) == value, f"{option.flag} did not set {item.name}"
        assert config == PipelineConfig(**{item.name: value})
    assert pipeline_config(parser().parse_args([]), draw=False).draw is False, "overrides reach the record"


def test_choices_and_help_come_from_the_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    subparsers = argparse.ArgumentParser(prog="leaf-fer").add_subparsers()
    register(subparsers)
    annotate = subparsers.choices["annotate"]
    with pytest.raises(SystemExit):
        annotate.parse_args(["--backend", "cuda"])
    assert "invalid choice: 'cuda'" in capsys.readouterr().err
    help_text = " ".join(annotate.format_help().split())
    for flag in FLAGS:
        assert flag in help_text
    assert "{" + ",".join(BACKENDS) + "}" in help_text and "(default: 0.65)" in help_text
    assert {bench_backend(name)[0] for name in BENCH_BACKENDS} == set(BACKENDS) - {"auto"}


def test_validation_reads_the_ranges_and_choices_of_the_metadata() -> None:
    PipelineConfig().validate()
    for item, option in option_fields():
        bad: list[object] = []
        if option.choices:
            bad.append("nonsense")
        if option.minimum is not None:
            bad.append(option.minimum - 1)
        if option.maximum is not None:
            bad.append(option.maximum + 1)
            if option.open_maximum:
                bad.append(option.maximum)
        for value in bad:
            with pytest.raises(ValueError, match=item.name.replace("_", " ")):
                PipelineConfig(**{item.name: value}).validate()
    assert any(option.open_maximum for _, option in option_fields())
    with pytest.raises(ValueError, match=r"smoothing alpha must be in \[0, 1\); got 1.0"):
        PipelineConfig(smoothing_alpha=1.0).validate()


def test_the_record_loads_nothing_heavy() -> None:
    code = ("import sys, leaf_fer.realtime.commands; "
            "print(sorted({'torch', 'cv2', 'onnxruntime', 'PyQt6', 'mediapipe'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
