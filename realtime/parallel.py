"""Where ``annotate``'s work runs: in this process, in one worker process per core, or as Ray tasks on a cluster.

A run is cut into work units (:class:`Unit`): a whole input, or one segment of a long video to analyse or to render
(:mod:`.segments`). The parent process holds the output folder's lock, names the outputs and makes one staging folder
per input; every attempt at a unit writes into a new folder of its own inside it and returns what it made; the parent
publishes an input in one step once all its units are done and checked, so nothing is ever published half-written.
Workers load the model once (one inference thread each) and report their frames to one aggregated progress bar. A
unit's failure fails its input only (a bad input is one line in the outcomes). The executor holds at most one unit
per slot, so a worker process that dies takes down only the units in flight: the pool is replaced and each of them is
run again alone at the end, where a death is its own; a unit that dies alone :data:`MAX_ATTEMPTS` times fails
(on Ray, Ray retries: ``max_retries``). On Ray every node must see the inputs and the output folder under the same
paths, and progress advances as units finish.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import multiprocessing
import multiprocessing.connection
import os
import select
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from leaf_fer.common import IMAGE_EXTENSIONS, LeafFerError
from leaf_fer.train.weights import default_weights_path, read_metadata

from . import annotate, segments
from .annotate import AnnotateOutcome, OutputPaths
from .pipeline import Pipeline, PipelineConfig
from .sources import SourceError, VideoFileSource, VideoIndex, scan_video

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
"""How worker processes start: from a fork server that has imported this package (POSIX), else spawned (Windows)."""

MAX_ATTEMPTS = 3
RAY_MAX_RETRIES = 2
"""Ray reruns a task whose worker died this many times (3 attempts in all, as :data:`MAX_ATTEMPTS` locally)."""
LOCAL_RAY_ADDRESS = "127.0.0.2"
"""The loopback address a local Ray instance (``--ray`` without an address) binds to."""
PROGRESS_EVERY = 10


@dataclass(frozen=True)
class Job:
    """What every unit of one run shares: the pipeline settings and what to write."""

    config: dict[str, Any]
    settings: dict[str, Any]
    face_size: int

    @property
    def save_faces_every(self) -> int:
        return self.settings["save_faces_every"]

    @property
    def video(self) -> bool:
        return self.settings["video"]


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``whole`` (an input), or ``analyse`` / ``render`` (segment ``number`` of a video)."""

    kind: str
    input: str
    outdir: str
    name: str
    still: bool
    stage: str
    frames: int
    number: int = 0
    segment: segments.Segment | None = None
    read_ms: float | None = None
    emit_ms: float | None = None
    tail_from: int | None = None
    analysis: str = ""
    track_map: tuple[tuple[int, int], ...] = ()
    backend: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.number}:{self.input}"

    @property
    def paths(self) -> OutputPaths:
        return OutputPaths.for_input(Path(self.outdir), self.name, self.still)


class _Worker:
    """What a worker process keeps between units: its pipeline, and where its progress goes."""

    def __init__(self) -> None:
        self.pipeline_key = ""
        self.pipeline: Pipeline | None = None
        self.sink: Callable[[str, int], None] | None = None

    def pipeline_for(self, config: dict[str, Any]) -> Pipeline:
        key = json.dumps(config, sort_keys=True)
        if self.pipeline is None or key != self.pipeline_key:
            if self.pipeline is not None:
                self.pipeline.close()
            self.pipeline = None
            self.pipeline = Pipeline(replace(PipelineConfig(**config), draw=False))
            self.pipeline_key = key
        return self.pipeline

    def reporter(self, key: str) -> Callable[[int], None]:
        """``report(frames)`` for the unit ``key``, passed on every :data:`PROGRESS_EVERY` frames."""
        sink = self.sink
        if sink is None:
            return lambda frames: None
        count = 0

        def report(frames: int) -> None:
            nonlocal count
            count += frames
            if count >= PROGRESS_EVERY:
                sink(key, count)
                count = 0

        return report


_WORKER = _Worker()


def run_unit(job: Job, unit: Unit) -> dict[str, Any]:
    """Do one unit in this process → a JSON-able result: ``status`` ``done`` with what it made, or ``failed`` with
    one line. Only a dying process escapes it (and is retried)."""
    report = _WORKER.reporter(unit.key)
    try:
        if unit.kind == "render":
            return segments.render(job, unit, report)
        pipeline = _WORKER.pipeline_for(job.config)
        if unit.kind == "analyse":
            return segments.analyse(job, unit, pipeline, report)
        attempt = Path(unit.stage) / f"whole-{uuid.uuid4().hex[:8]}"
        attempt.mkdir(parents=True)
        summary, warnings = annotate.annotate_staged(Path(unit.input), unit.paths, attempt, pipeline, job.settings, report)
        return {"status": "done", "folder": str(attempt), "summary": summary, "warnings": warnings}
    except Exception as exc:  # one broken input must not stop the batch; the message names the file and the error
        return {"status": "failed", "message": annotate.failure(unit.input, exc)}


def _exit_with_run(run_pid: int) -> None:
    """End this worker as soon as the process that runs the job ends, however it ends (a killed ``annotate`` must
    leave no worker behind: the fork server keeps its workers alive, and they would wait forever for work)."""

    def watch() -> None:
        parent = multiprocessing.parent_process()
        if parent is not None and parent.pid == run_pid:  # spawned by the run itself (no fork server): its handle
            multiprocessing.connection.wait([parent.sentinel])
            os._exit(1)
        try:
            lifeline = os.pidfd_open(run_pid)
        except (AttributeError, OSError):  # no pidfd here (not Linux 5.3+), or the run has already ended: poll
            while _alive(run_pid):
                time.sleep(0.5)
        else:
            select.select([lifeline], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="leaf-fer-lifeline", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_worker(progress: multiprocessing.Queue, config: dict[str, Any], run_pid: int) -> None:
    """Process-pool initializer: end with the run; report progress through ``progress``; load the model before the
    first unit."""
    _exit_with_run(run_pid)
    _WORKER.sink = lambda key, frames: progress.put((key, frames))
    with contextlib.suppress(Exception):  # a pipeline that cannot load fails each unit with the reason instead
        _WORKER.pipeline_for(config)


class _Serial:
    """Units run in this process, one after the other, on the caller's pipeline when given."""

    def __init__(self, job: Job, pipeline: Pipeline | None, on_progress: Callable[[str, int], None]) -> None:
        if pipeline is not None:
            _WORKER.pipeline, _WORKER.pipeline_key = pipeline, json.dumps(job.config, sort_keys=True)
        self._owned = pipeline is None
        _WORKER.sink = on_progress
        self.slots = 1

    def submit(self, job: Job, unit: Unit) -> Future:
        future: Future = Future()
        future.set_result(run_unit(job, unit))
        return future

    def recover(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        if self._owned and _WORKER.pipeline is not None:
            _WORKER.pipeline.close()
        _WORKER.pipeline, _WORKER.pipeline_key, _WORKER.sink = None, "", None


class _Processes:
    """A pool of ``workers`` processes, forked from a server that has imported this package once (so a worker
    starts in a fraction of a second and only loads the model; spawned where there is no fork server, as on
    Windows); a pool broken by a dying worker is replaced. The
    workers start, and load their model, at once, while the parent plans the run."""

    def __init__(self, job: Job, workers: int, on_progress: Callable[[str, int], None]) -> None:
        self._context = multiprocessing.get_context(START_METHOD)
        if START_METHOD == "forkserver":
            self._context.set_forkserver_preload([__name__])
        self._progress = self._context.Queue()
        self._drain = threading.Thread(target=self._forward, args=(on_progress,), name="leaf-fer-progress", daemon=True)
        self._drain.start()
        self._config = job.config
        self.slots = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        pool = ProcessPoolExecutor(self.slots, mp_context=self._context, initializer=_start_worker,
                                   initargs=(self._progress, self._config, os.getpid()))
        for _ in range(self.slots):
            pool.submit(int)
        return pool

    def _forward(self, on_progress: Callable[[str, int], None]) -> None:
        while (message := self._progress.get()) is not None:
            on_progress(*message)

    def submit(self, job: Job, unit: Unit) -> Future:
        return self._pool.submit(run_unit, job, unit)

    def recover(self, exc: BaseException) -> bool:
        """Replace the pool after a worker died (once for all the units it took down: a broken pool refuses work)."""
        if not isinstance(exc, BrokenProcessPool):
            return False
        try:
            self._pool.submit(int)
        except (BrokenProcessPool, RuntimeError):
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._progress.put(None)
        self._drain.join()


class _Ray:
    """Units as Ray tasks (one CPU each, rerun when their worker dies) on the cluster at ``address``, or on a local
    Ray instance on :data:`LOCAL_RAY_ADDRESS` when ``address`` is ``"local"``; a connection the caller already made
    with ``ray.init`` is used as it is. A loopback ``address`` is also this process's node address (Ray would
    otherwise take the machine's interface address)."""

    def __init__(self, address: str, workers: int) -> None:
        try:
            import ray
        except ImportError as exc:
            raise LeafFerError("--ray needs Ray: pip install 'leaf-fer[ray]'") from exc
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
        if address == "local":
            options.update(num_cpus=workers, include_dashboard=False, _node_ip_address=LOCAL_RAY_ADDRESS)
        else:
            options["address"] = address
            host = address.split("://")[-1].rsplit(":", 1)[0]
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(host).is_loopback:
                    options["_node_ip_address"] = host
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            ray.init(**options)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES)(run_unit)

    def submit(self, job: Job, unit: Unit) -> Future:
        return self._task.remote(job, unit).future()

    def recover(self, exc: BaseException) -> bool:
        return False

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()


@dataclass
class _Input:
    """One input's progress through the run."""

    order: int
    path: Path
    paths: OutputPaths
    still: bool
    note: str
    fingerprint: dict[str, int]
    frames: int
    width: int = 0
    height: int = 0
    stage: Path | None = None
    index: VideoIndex | None = None
    plan: list[segments.Segment] = field(default_factory=list)
    fallback: str = ""
    analyses: dict[int, dict[str, Any]] = field(default_factory=dict)
    renders: dict[int, dict[str, Any]] = field(default_factory=dict)
    stitcher: segments.Stitcher | None = None
    final: Path | None = None


class Scheduler:
    """Plans the units of one ``annotate`` run, runs them on the chosen executor and publishes each input."""

    def __init__(
        self, outdir: Path, config: PipelineConfig, settings: dict[str, Any], *, overwrite: bool, progress: bool,
        on_outcome: Callable[[AnnotateOutcome], None] | None, pipeline: Pipeline | None, workers: int,
        segment_frames: int | None, ray_address: str | None,
    ) -> None:
        weights = Path(config.weights) if config.weights is not None else default_weights_path()
        self.job = Job(config.to_dict(), settings, read_metadata(weights).model.input_size)
        self.outdir = outdir.resolve()
        self.config, self.overwrite, self.on_outcome = config, overwrite, on_outcome
        self.segment_frames = segment_frames
        self.warmup = segments.warmup_frames(config)
        self._lock = threading.Lock()
        self._reported: dict[str, int] = {}
        self._attempts: dict[str, int] = {}
        self._pending: dict[Future, tuple[_Input, Unit]] = {}
        self._waiting: deque[tuple[_Input, Unit]] = deque()
        self._suspects: deque[tuple[_Input, Unit]] = deque()
        self._solo: Unit | None = None
        self.outcomes: dict[int, AnnotateOutcome] = {}
        if ray_address is not None:
            self.executor: _Serial | _Processes | _Ray = _Ray(ray_address, workers)
        elif workers > 1:
            self.executor = _Processes(self.job, workers, self._progress)
        else:
            self.executor = _Serial(self.job, pipeline, self._progress)
        self.bar = tqdm(total=0, desc="annotate", unit="frame", disable=not progress, dynamic_ncols=True)

    def _progress(self, key: str, frames: int) -> None:
        with self._lock:
            self._reported[key] = self._reported.get(key, 0) + frames
            self.bar.update(frames)

    def run(self, files: Sequence[Path | str], names: dict[Path, tuple[str, str]]) -> list[AnnotateOutcome]:
        try:
            todo = [inp for order, item in enumerate(files) if (inp := self._triage(order, item, names)) is not None]
            total = sum(inp.frames for inp in todo)
            for inp in todo:
                self._plan(inp, total)
                try:
                    inp.stage = annotate._stage(inp.paths)
                except OSError as exc:
                    self._fail(inp, annotate.failure(inp.path, exc))
                    continue
                self._start(inp)
                self._collect(block=False)
            while self._pending:
                self._collect(block=True)
        finally:
            self.executor.close()
            self.bar.close()
        return [self.outcomes[order] for order in range(len(files))]

    def _collect(self, block: bool) -> None:
        """Handle the units that have finished (``block``: wait for one first), each result published as soon as its
        input is whole, so that a run stopped later keeps it; in this process's serial mode every unit has finished
        by the time it was started."""
        done, _ = wait(list(self._pending), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for future in done:
            inp, unit = self._pending.pop(future)
            solo = unit is self._solo
            if solo:
                self._solo = None
            try:
                result = future.result()
            except Exception as exc:  # the worker died: retried, or the input fails with the reason
                result = self._crashed(inp, unit, exc, solo)
            if result is not None:
                self._settle(unit)
                self._handle(inp, unit, result)
        self._fill()

    def _triage(self, order: int, item: Path | str, names: dict[Path, tuple[str, str]]) -> _Input | None:
        """URLs fail, finished inputs are skipped, unreadable videos fail at once; the rest is work."""
        if isinstance(item, str):
            message = "a stream URL; annotate takes video and image files (watch streams in `leaf-fer gui`)"
            self._outcome(order, AnnotateOutcome(item, "failed", f"{item}: {message}"))
            return None
        name, note = names[item]
        still = item.suffix.lower() in IMAGE_EXTENSIONS
        paths = OutputPaths.for_input(self.outdir, name, still)
        try:
            fingerprint = annotate.input_fingerprint(item) if item.is_file() else {}
            if not self.overwrite and fingerprint and annotate.is_complete(paths, fingerprint, self.job.settings):
                self._outcome(order, AnnotateOutcome(item, "skipped", "already annotated", paths, note=note))
                return None
            if still:
                return _Input(order, item, paths, still, note, fingerprint, 1)
            with VideoFileSource(item) as video:
                return _Input(order, item, paths, still, note, fingerprint, video.frame_count or 1, video.width,
                              video.height)
        except (SourceError, OSError) as exc:
            self._outcome(order, AnnotateOutcome(item, "failed", annotate.failure(item, exc), paths))
            return None

    def _plan(self, inp: _Input, total: int) -> None:
        """Segments for a long video, when its packets locate every frame."""
        count = segments.pieces(inp.frames, self.executor.slots, total, self.segment_frames)
        if not inp.still and count > 1:
            inp.index = scan_video(inp.path, inp.frames)
            if inp.index is not None:
                inp.plan = segments.plan(inp.index, count, self.warmup)
        if len(inp.plan) < 2:
            inp.plan = []

    def _unit(self, inp: _Input, kind: str, frames: int, **fields: Any) -> Unit:
        return Unit(kind, str(inp.path.resolve()), str(self.outdir), inp.paths.folder.name, inp.still, str(inp.stage),
                    frames, **fields)

    def _submit(self, inp: _Input, unit: Unit) -> None:
        with self._lock:
            self.bar.total += unit.frames
            self.bar.refresh()
        self._waiting.append((inp, unit))
        self._fill()

    def _fill(self) -> None:
        """Hand waiting units to the executor, one per free slot; a unit whose worker died beside others runs only
        when nothing else is left, alone."""
        while self._solo is None and len(self._pending) < self.executor.slots and self._waiting:
            inp, unit = self._waiting.popleft()
            self._pending[self.executor.submit(self.job, unit)] = (inp, unit)
        if not self._pending and not self._waiting and self._suspects:
            inp, unit = self._suspects.popleft()
            self._solo = unit
            self._pending[self.executor.submit(self.job, unit)] = (inp, unit)

    def _start(self, inp: _Input) -> None:
        if not inp.plan:
            self._submit(inp, self._unit(inp, "whole", inp.frames))
            return
        assert inp.index is not None
        stamps = inp.index.timestamps_ms
        for k, segment in enumerate(inp.plan):
            following = inp.plan[k + 1] if k + 1 < len(inp.plan) else None
            self._submit(inp, self._unit(
                inp, "analyse", (segment.stop or inp.frames) - segment.read_from, number=k, segment=segment,
                read_ms=stamps[segment.read_from], tail_from=following.read_from if following else None))

    def _settle(self, unit: Unit) -> None:
        """Count a finished unit's frames that its worker did not report (all of them on Ray)."""
        with self._lock:
            missing = unit.frames - self._reported.pop(unit.key, 0)
            if missing > 0:
                self.bar.update(missing)

    def _crashed(self, inp: _Input, unit: Unit, exc: BaseException, solo: bool) -> dict[str, Any] | None:
        """A unit whose worker died: run again alone (None) unless it has died alone :data:`MAX_ATTEMPTS` times (a
        failed result). Beside others its death is not counted: the worker may have died of another unit."""
        attempts = self._attempts[unit.key] = self._attempts.get(unit.key, 0) + solo
        if self.executor.recover(exc) and attempts < MAX_ATTEMPTS:
            with self._lock:
                self.bar.update(-self._reported.pop(unit.key, 0))
            self._suspects.append((inp, unit))
            return None
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return {"status": "failed", "message": f"{inp.path}: worker died ({reason[:200]})"}

    def _handle(self, inp: _Input, unit: Unit, result: dict[str, Any]) -> None:
        if unit.kind == "whole":
            if result["status"] == "failed":
                self._fail(inp, result["message"])
            else:
                warnings = result["warnings"] + ([f"not split into segments: {inp.fallback}"] if inp.fallback else [])
                self._publish(inp, Path(result["folder"]), result["summary"], warnings)
            return
        if inp.fallback or inp.order in self.outcomes:
            return
        try:
            if unit.kind == "analyse":
                self._analysed(inp, unit, result)
            else:
                self._rendered(inp, unit, result)
        except Exception as exc:  # stitching or joining failed: the input fails, the run goes on
            self._fail(inp, annotate.failure(inp.path, exc))

    def _analysed(self, inp: _Input, unit: Unit, result: dict[str, Any]) -> None:
        if result["status"] == "failed":
            self._fall_back(inp, result["message"])
            return
        inp.analyses[unit.number] = result
        if len(inp.analyses) < len(inp.plan):
            return
        assert inp.index is not None
        results = [inp.analyses[k] for k in range(len(inp.plan))]
        reason = segments.check(inp.plan, results, inp.index)
        if reason is not None:
            self._fall_back(inp, reason)
            return
        assert inp.stage is not None
        inp.final = inp.stage / f"final-{uuid.uuid4().hex[:8]}"
        inp.final.mkdir()
        inp.stitcher = segments.Stitcher(self.job, inp.path, inp.fingerprint, inp.paths.staged(inp.final), inp.plan,
                                         results)
        inp.stitcher.stitch(inp.width, inp.height)
        if not self.job.video:
            self._finish(inp)
            return
        stamps = inp.index.timestamps_ms
        for k, (segment, analysis) in enumerate(zip(inp.plan, results)):
            if inp.stitcher.keeps_ids(k):
                inp.renders[k] = analysis
                continue
            self._submit(inp, self._unit(
                inp, "render", (segment.stop or inp.stitcher.frames) - segment.emit_from, number=k, segment=segment,
                emit_ms=stamps[segment.emit_from], analysis=analysis["folder"],
                track_map=tuple(inp.stitcher.track_maps[k].items()), backend=analysis["backend"]))
        if len(inp.renders) == len(inp.plan):
            self._finish(inp)

    def _rendered(self, inp: _Input, unit: Unit, result: dict[str, Any]) -> None:
        if result["status"] == "failed":
            self._fail(inp, result["message"])
            return
        inp.renders[unit.number] = result
        if len(inp.renders) == len(inp.plan):
            self._finish(inp)

    def _finish(self, inp: _Input) -> None:
        assert inp.stitcher is not None and inp.final is not None
        summary, warnings = inp.stitcher.finish([inp.renders[k] for k in sorted(inp.renders)])
        self._publish(inp, inp.final, summary, warnings)

    def _fall_back(self, inp: _Input, reason: str) -> None:
        """Annotate the input in one piece after all (its segments could not be stitched)."""
        inp.fallback = reason
        self._submit(inp, self._unit(inp, "whole", inp.frames))

    def _publish(self, inp: _Input, folder: Path, summary: dict[str, Any], warnings: list[str]) -> None:
        try:
            annotate._publish(folder, inp.paths.folder)
        except OSError as exc:
            self._fail(inp, annotate.failure(inp.path, exc))
            return
        self._clear(inp)
        timing = summary["timing"]
        speed = f", {timing['realtime_factor']}x real time" if timing.get("realtime_factor") else ""
        pieces = f", {len(summary['segments'])} segments" if summary.get("segments") else ""
        message = f"{summary['media']['frames']} frames, {summary['frames_with_faces']} with faces{speed}{pieces}"
        self._outcome(inp.order, AnnotateOutcome(inp.path, "done", message, inp.paths, summary, warnings, inp.note))

    def _fail(self, inp: _Input, message: str) -> None:
        self._clear(inp)
        self._outcome(inp.order, AnnotateOutcome(inp.path, "failed", message, inp.paths))

    @staticmethod
    def _clear(inp: _Input) -> None:
        """Delete the input's staging folder (what its units made, and the result it replaced)."""
        if inp.stage is not None:
            shutil.rmtree(inp.stage, ignore_errors=True)

    def _outcome(self, order: int, outcome: AnnotateOutcome) -> None:
        self.outcomes[order] = outcome
        if self.on_outcome is not None:
            with self._lock:
                self.bar.clear()
            self.on_outcome(outcome)


__all__ = ["Job", "Scheduler", "Unit", "run_unit"]
