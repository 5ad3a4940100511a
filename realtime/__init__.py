"""Real-time facial expression pipeline: sources → detector → tracker → alignment → predictor → smoothing → overlay.

Modules: ``sources`` (open_source, SourceError, LiveSource), ``detector`` (MediaPipe FaceDetector), ``tracker``,
``align``, ``smoothing``, ``annotators``, ``pipeline`` (Pipeline, PipelineConfig), ``writers`` (VideoWriter,
CsvWriter), ``annotate`` and ``bench`` (the CLI commands' libraries). Nothing heavy is imported here, so the CLI
starts fast; import the submodule you need.
"""
