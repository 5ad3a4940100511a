"""One long video in segments processed in parallel, stitched into the outputs a single pass would write.

Planning (:func:`plan`): the video is cut into about equal segments. Segment ``k`` emits frames ``[emit_from,
stop)`` but starts reading ``warmup`` frames earlier, at ``read_from`` (a keyframe when one is near, so the seek
lands without decoding a GOP): those frames warm the tracker and the smoother up and overlap the end of segment
``k - 1``. The frames are located by their presentation timestamps, read from the container's packets without
decoding (:func:`~.sources.scan_video`); a video whose packets do not number its frames is processed in one piece.

Analysis (:func:`analyse`, one worker per segment): detect, track, classify and smooth; the per-face records
(frame, segment-local track id, box, score, keypoints, raw and smoothed probabilities) and per-frame stage timings
go to .npy files in the segment's staging folder, with a hash of every overlap frame; with video, the segment is
drawn and encoded as well, with its own track ids. Stitching (:class:`Stitcher`, in the parent): every seam is
checked (each segment ends on the timestamp of its last frame, and both sides of the overlap decoded the same
pixels); a segment's tracks are matched to the previous segment's by their boxes in the overlap frames and continue
under its ids, new tracks take the next ids in order of appearance. The parent then writes the CSV, the timeline and
the face crops; a segment whose ids the stitching changed is drawn again on a worker (:func:`render`, a second
decode), and the parts are joined without re-encoding (:mod:`.mp4`).

What may differ from a single pass over the same video:

- smoothed probabilities in a segment's first frames: its smoother starts ``warmup`` frames before the seam, not at
  the start of the video, so it misses at most ``alpha ** warmup`` of the history (``warmup`` is chosen to make that
  a tenth of the CSV's last decimal, :func:`warmup_frames`), which can still flip that decimal now and then; a face
  seen in only part of the overlap carries more of it;
- track ids: a track is continued across a seam when both segments saw it in the overlap; one that the single pass
  associates differently there (two faces crossing at the seam) is renumbered, and ids are renumbered in order of
  first appearance, so such a change shifts the later ids;
- the video's bytes (each segment starts a new group of pictures) and the HUD's frame rate and latency, which
  show the run's own speed; the JSON's timings.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import annotate
from .pipeline import Overlay, Pipeline, PipelineConfig
from .sources import VideoFileSource, VideoIndex, is_truncated, prefetch
from .tracker import box_iou
from .types import Detection, FacePrediction, Frame, FrameResult, StageTimings
from .writers import (
    BackgroundWriter,
    CsvWriter,
    VideoWriter,
    WriterError,
    atomic_write_bytes,
    atomic_write_json,
    readable_frames,
)

if TYPE_CHECKING:
    from .parallel import Job, Unit

MIN_SEGMENT_FRAMES = 300
"""Automatic segments are at least this long (10 s at 30 fps), so the overlap costs under a tenth."""
SEAM_IOU = 0.5
SMOOTHING_RESIDUE = 1e-5
"""What is left at a seam of the smoother's memory of the frames before the overlap: a tenth of the CSV's 1e-4."""
READ_AHEAD = annotate.READ_AHEAD
STAGES = annotate._Collector.STAGES


@dataclass(frozen=True)
class Segment:
    """Frames ``[emit_from, stop)`` of a video (``stop`` None: to the end), read from ``read_from``."""

    read_from: int
    emit_from: int
    stop: int | None


def warmup_frames(config: PipelineConfig) -> int:
    """Overlap frames per seam: enough for the smoother's memory of the missing history to fall to
    :data:`SMOOTHING_RESIDUE` (``alpha ** n``; 33 frames at the default 0.7), and more than ``max_lost``, so every
    track that could still continue across the seam is seen in the overlap."""
    alpha = config.smoothing_alpha
    decay = math.ceil(math.log(SMOOTHING_RESIDUE) / math.log(alpha)) if alpha > 0 else 0
    return max(config.max_lost + 1, decay)


def pieces(frames: int, slots: int, total_frames: int, segment_frames: int | None) -> int:
    """How many segments a video of ``frames`` gets: ``segment_frames`` long each (0: never split), or, by default,
    the run's ``total_frames`` spread over the ``slots`` that process them, but at least :data:`MIN_SEGMENT_FRAMES`."""
    length = segment_frames if segment_frames is not None else max(MIN_SEGMENT_FRAMES, math.ceil(total_frames / max(slots, 1)))
    return max(1, math.ceil(frames / length)) if length > 0 else 1


def plan(index: VideoIndex, count: int, warmup: int) -> list[Segment]:
    """``count`` segments of about equal length; each reads from the keyframe nearest to ``warmup`` frames before
    its nominal start (within half a segment, else from exactly there)."""
    frames = len(index.timestamps_ms)
    length = frames / count
    segments: list[Segment] = []
    emit_from = read_from = 0
    for k in range(1, count):
        want = round(k * length) - warmup
        keys = [f for f in index.keyframes if emit_from < f and f + warmup < frames - warmup]
        key = min(keys, key=lambda f: abs(f - want), default=None)
        start = key if key is not None and abs(key - want) <= length / 2 else want
        if start <= emit_from or start + warmup >= frames - warmup:
            continue
        segments.append(Segment(read_from, emit_from, start + warmup))
        read_from, emit_from = start, start + warmup
    segments.append(Segment(read_from, emit_from, None))
    return segments


def face_dtype(classes: int) -> np.dtype:
    return np.dtype([
        ("frame", "<i8"), ("track", "<i8"), ("box", "<f8", 4), ("score", "<f8"), ("keypoints", "<f4", (6, 2)),
        ("probs", "<f4", classes), ("smoothed", "<f4", classes),
    ])


FRAME_DTYPE = np.dtype([("frame", "<i8"), ("ms", "<f8", len(STAGES))])


def _frame_hash(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=8).hexdigest()


def _attempt(unit: Unit, kind: str) -> Path:
    """A fresh folder for this attempt at ``unit`` (a retried task never writes into a dead one's files)."""
    folder = Path(unit.stage) / f"{kind}{unit.number}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


class _Part:
    """The annotated video of one segment → ``part.mp4``: drawn and encoded on a writer thread, as results come."""

    def __init__(self, folder: Path, source: VideoFileSource, overlay: Overlay) -> None:
        self.overlay = overlay
        self.draw_ms: list[float] = []
        self._stack = contextlib.ExitStack()
        self._video = self._stack.enter_context(VideoWriter(folder / "part.mp4", source.fps, (source.width, source.height)))
        self._writer = self._stack.enter_context(BackgroundWriter(self._write, READ_AHEAD))

    def _write(self, result: FrameResult) -> None:
        began = time.perf_counter()
        scene = self.overlay.draw(result.frame.image, result)
        self.draw_ms.append((time.perf_counter() - began) * 1e3)
        self._video.write(scene)

    def put(self, result: FrameResult) -> None:
        self._writer.put(result)

    def __enter__(self) -> "_Part":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)


def analyse(job: Job, unit: Unit, pipeline: Pipeline, report: Callable[[int], None]) -> dict[str, Any]:
    """Worker: analyse one segment into its staging folder → what the parent checks and stitches. With video, the
    segment is also drawn with its own track ids: the part stands whenever stitching keeps those ids."""
    segment = unit.segment
    assert segment is not None
    started = time.time()
    folder = _attempt(unit, "analysis")
    classes = len(pipeline.classes)
    faces: list[np.ndarray] = []
    frames: list[tuple[int, tuple[float, ...]]] = []
    head: list[str] = []
    tail: list[str] = []
    keeper = annotate._FaceKeeper(job.save_faces_every, folder / "faces.npz", pipeline.predictor.input_size)
    pipeline.reset()
    with contextlib.ExitStack() as stack:
        stack.callback(keeper.close)
        source = stack.enter_context(VideoFileSource(unit.input, segment.read_from, unit.read_ms, segment.stop))
        part = stack.enter_context(_Part(folder, source, Overlay(pipeline.config, pipeline.backend_name))) if job.video else None
        for result in pipeline.run(prefetch(source.frames(), READ_AHEAD)):
            index = result.frame.index
            records = np.zeros(len(result.faces), face_dtype(classes))
            for row, face in zip(records, result.faces):
                row["frame"], row["track"], row["box"], row["score"] = index, face.track_id, face.detection.box, face.detection.score
                row["keypoints"], row["probs"], row["smoothed"] = face.detection.keypoints, face.probabilities, face.smoothed
            faces.append(records)
            if unit.tail_from is not None and index >= unit.tail_from:
                tail.append(_frame_hash(result.frame.image))
            if index < segment.emit_from:
                head.append(_frame_hash(result.frame.image))
            else:
                frames.append((index, tuple(getattr(result.timings, name) for name in STAGES)))
                keeper.add(result)
                if part is not None:
                    part.put(result)
            report(1)
    np.save(folder / "faces.npy", np.concatenate(faces) if faces else np.zeros(0, face_dtype(classes)))
    np.save(folder / "frames.npy", np.array(frames, FRAME_DTYPE))
    return {
        "status": "done", "folder": str(folder), "read": source.frames_read, "last_ms": source.last_ms,
        "head": head, "tail": tail, "saved_faces": keeper.count, "backend": pipeline.backend_name,
        "precision": pipeline.precision, "fps": source.fps, "declared": source.frame_count,
        "draw_ms": part.draw_ms if part else [],
        "started": started, "ended": time.time(),
    }


def _faces(records: np.ndarray, ids: dict[int, int] | None = None) -> dict[int, list[FacePrediction]]:
    """Records → the faces of every frame, in detection order, with track ids mapped through ``ids``."""
    by_frame: dict[int, list[FacePrediction]] = defaultdict(list)
    for row in records:
        track = int(row["track"])
        detection = Detection(tuple(float(v) for v in row["box"]), float(row["score"]), row["keypoints"].copy())
        face = FacePrediction(ids[track] if ids else track, detection, row["probs"].copy(), row["smoothed"].copy())
        by_frame[int(row["frame"])].append(face)
    return by_frame


def render(job: Job, unit: Unit, report: Callable[[int], None]) -> dict[str, Any]:
    """Worker: draw one analysed segment again, with its stitched track ids, and encode it → ``part.mp4``."""
    segment = unit.segment
    assert segment is not None
    started = time.time()
    folder = _attempt(unit, "render")
    analysed = Path(unit.analysis)
    records = np.load(analysed / "faces.npy", allow_pickle=False)
    faces = _faces(records[records["frame"] >= segment.emit_from], dict(unit.track_map))
    timings = {int(row["frame"]): row["ms"] for row in np.load(analysed / "frames.npy", allow_pickle=False)}
    classes = tuple(job.settings["classes"])
    with VideoFileSource(unit.input, segment.emit_from, unit.emit_ms, segment.stop) as source:
        with _Part(folder, source, Overlay(PipelineConfig(**job.config), unit.backend)) as part:
            for frame in prefetch(source.frames(), READ_AHEAD):
                part.put(FrameResult(frame, faces.get(frame.index, []), classes, StageTimings(*timings[frame.index])))
                report(1)
    return {"status": "done", "folder": str(folder), "frames": len(part.draw_ms), "draw_ms": part.draw_ms,
            "started": started, "ended": time.time()}


def check(segments: Sequence[Segment], results: Sequence[dict[str, Any]], index: VideoIndex) -> str | None:
    """Why the analysed segments cannot be stitched (None when every seam holds)."""
    stamps = index.timestamps_ms
    for k, (segment, result) in enumerate(zip(segments, results)):
        last = segment.read_from + result["read"] - 1
        if segment.stop is not None and last != segment.stop - 1:
            return f"segment {k + 1} read {result['read']} frames from frame {segment.read_from}, not {segment.stop - segment.read_from}"
        if not 0 <= last < len(stamps) or abs(stamps[last] - result["last_ms"]) > 1e-3:
            return f"segment {k + 1} ended on the wrong frame (timestamp {result['last_ms']:.3f} ms is not frame {last}'s)"
        if k and result["head"] != results[k - 1]["tail"]:
            return f"frames {segment.read_from}-{segment.emit_from - 1} decode differently after a seek"
    return None


def match_tracks(previous: np.ndarray, current: np.ndarray) -> dict[int, int]:
    """The tracks of ``current`` that continue tracks of ``previous`` (records of the same frames): pairs whose boxes
    overlap (IoU ≥ 0.5) in the most frames, greedily, one to one."""
    earlier: dict[int, list[np.void]] = defaultdict(list)
    for row in previous:
        earlier[int(row["frame"])].append(row)
    votes: Counter[tuple[int, int]] = Counter()
    for row in current:
        for other in earlier[int(row["frame"])]:
            if box_iou(row["box"], other["box"]) >= SEAM_IOU:
                votes[(int(row["track"]), int(other["track"]))] += 1
    continued: dict[int, int] = {}
    for (track, old), _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])):
        if track not in continued and old not in continued.values():
            continued[track] = old
    return continued


class Stitcher:
    """Parent side of a segmented input: stitch the analysed segments into the CSV, timeline and face crops in
    ``paths`` (a staging folder), then, once the parts are rendered, the video and the summary."""

    def __init__(self, job: Job, path: Path, fingerprint: dict[str, int], paths: annotate.OutputPaths,
                 segments: Sequence[Segment], results: Sequence[dict[str, Any]]) -> None:
        self.job, self.path, self.fingerprint, self.paths = job, path, fingerprint, paths
        self.segments, self.results = segments, results
        self.classes = tuple(job.settings["classes"])
        self.collector = annotate._Collector(self.classes)
        self.track_maps: list[dict[int, int]] = []
        """Per segment: its own track ids → the stitched ones."""
        self.frames = 0
        self.saved_faces = 0
        first = results[0]
        self.fps, self.declared, self.backend, self.precision = first["fps"], first["declared"], first["backend"], first["precision"]
        self.started = min(r["started"] for r in results)

    def stitch(self, width: int, height: int) -> None:
        """Number the tracks across the seams and write the CSV, the timeline and the saved faces."""
        keeper = annotate._FaceKeeper(self.job.save_faces_every, self.paths.faces, self.job.face_size)
        blank = np.empty((height, width, 0), np.uint8)
        next_id = 1
        previous = np.zeros(0, face_dtype(len(self.classes)))
        try:
            with CsvWriter(self.paths.csv, self.classes) as csv:
                for k, (segment, result) in enumerate(zip(self.segments, self.results)):
                    folder = Path(result["folder"])
                    records = np.load(folder / "faces.npy", allow_pickle=False)
                    emitted = records[records["frame"] >= segment.emit_from]
                    continued = match_tracks(previous, records[records["frame"] < segment.emit_from]) if k else {}
                    ids: dict[int, int] = {}
                    for track in sorted(set(emitted["track"].tolist())):
                        if track in continued:
                            ids[track] = continued[track]
                        else:
                            ids[track], next_id = next_id, next_id + 1
                    self.track_maps.append(ids)
                    faces = _faces(emitted, ids)
                    for row in np.load(folder / "frames.npy", allow_pickle=False):
                        index = int(row["frame"])
                        frame = Frame(index, index / self.fps, blank)
                        result_k = FrameResult(frame, faces.get(index, []), self.classes, StageTimings(*row["ms"]))
                        self.collector.add(result_k)
                        csv.write(result_k)
                        self.frames += 1
                    keeper.extend(folder / "faces.npz", result["saved_faces"], ids)
                    mapped = emitted.copy()
                    mapped["track"] = [ids[int(t)] for t in emitted["track"]]
                    nxt = self.segments[k + 1].read_from if k + 1 < len(self.segments) else None
                    previous = mapped[mapped["frame"] >= nxt] if nxt is not None else mapped[:0]
            if self.job.save_faces_every > 0:
                keeper.save()
                self.saved_faces = keeper.count
        finally:
            keeper.close()
        if self.job.video:
            atomic_write_bytes(self.paths.timeline, annotate.plot_timeline(self.collector, self.path.name))

    def keeps_ids(self, k: int) -> bool:
        """True when stitching left segment ``k``'s track ids as they were (its part, drawn with them, stands)."""
        return all(local == stitched for local, stitched in self.track_maps[k].items())

    def finish(self, renders: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
        """Join the rendered parts (when there is video) and write the summary → (summary, warnings)."""
        from .mp4 import concat_mp4

        outputs = {"csv": self.paths.csv.name}
        if renders:
            concat_mp4([Path(r["folder"]) / "part.mp4" for r in renders], self.paths.media)
            readable = readable_frames(self.paths.media)
            if readable != self.frames:
                raise WriterError(f"{self.paths.media}: joined video has {readable} of {self.frames} frames")
            draw = [ms for r in renders for ms in r["draw_ms"]]
            self.collector.stage_ms["draw_ms"] = draw
            self.collector.total_ms = [t + d for t, d in zip(self.collector.total_ms, draw)]
            outputs = {"media": self.paths.media.name, **outputs, "timeline": self.paths.timeline.name}
        if self.job.save_faces_every > 0:
            outputs["faces"] = self.paths.faces.name
        truncated = is_truncated(self.frames, self.declared)
        warnings = [f"truncated video: decoded {self.frames} of {self.declared} declared frames"] if truncated else []
        if self.collector.faces == 0:
            warnings.append("no faces found")
        wall_s = time.time() - self.started
        segments = [
            {"first_frame": s.emit_from, "read_from": s.read_from, "frames": (s.stop or self.frames) - s.emit_from,
             "track_ids": {str(a): b for a, b in self.track_maps[k].items()}, "redrawn": bool(renders) and not self.keeps_ids(k)}
            for k, s in enumerate(self.segments)
        ]
        summary = annotate.build_summary(
            self.path, self.fingerprint, self.job.settings, self.job.config, self.backend, self.precision, self.collector,
            still=False, fps=self.fps,
            declared=self.declared, truncated=truncated, saved_faces=self.saved_faces, wall_s=wall_s,
            outputs=outputs, warnings=warnings, segments=segments,
        ).to_dict()
        atomic_write_json(self.paths.summary, summary)
        return summary, warnings
