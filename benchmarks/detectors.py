"""Face detector choices side by side: no-face rate and milliseconds per image on photos that all show a face.

Choices: MediaPipe short range (the live default), MediaPipe full range, MediaPipe short range on a padded copy,
OpenCV's YuNet, and the pipeline's cascade (MediaPipe short range, then YuNet where it finds nothing). Sets: UTKFace
tight crops (the face fills the frame), TCCE posed studio photos, the contempt web photos (tight AffectNet crops),
FER2013 PublicTest faces (48x48, tiny) and the shipped media photos. The same run also measures where YuNet's eye
and mouth points sit against MediaPipe's on faces both find (``YUNET_EYE_DROP`` / ``YUNET_MOUTH_DROP`` in
realtime/detector.py). Writes reports/detectors/{detectors.json,detectors.md,detectors.png}.

    python benchmarks/detectors.py --shared ../shared --per-set 400
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from leaf_fer.common import atomic_write_bytes, atomic_write_json
from leaf_fer.realtime.detector import YUNET_EYE_DROP, YUNET_MOUTH_DROP, CascadeDetector, FaceDetector, YuNetDetector
from leaf_fer.train.data import load_npz
from leaf_fer.train.metrics import save_figure


def padded(rgb: np.ndarray, fraction: float = 0.25) -> np.ndarray:
    pad = int(round(max(rgb.shape[:2]) * fraction))
    return cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_REPLICATE)


def image_sets(shared: Path, per_set: int, seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)

    def sample(files: list[Path]) -> list[np.ndarray]:
        chosen = [files[i] for i in sorted(rng.permutation(len(files))[:per_set])]
        return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in chosen]

    data = shared / "data"
    fer = load_npz(data / "fer2013_publictest.npz").images
    return {
        "UTKFace (tight crops)": sample(sorted((data / "unlabeled/utkface_crop_part1/images").glob("*.jpg"))),
        "TCCE (posed studio)": sample(sorted((data / "extra/taiwan_tcce_front/train").glob("*/*.jpg"))),
        "contempt web photos": sample(sorted((data / "extra/affectnet_contempt/train").glob("*/*.jpg"))),
        "FER2013 PublicTest (48 px)": [cv2.cvtColor(fer[i], cv2.COLOR_GRAY2RGB) for i in rng.permutation(len(fer))[:per_set]],
        "media photos": [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in sorted((shared / "media").glob("*.jpg"))],
    }


def keypoint_offsets(images: list[np.ndarray]) -> dict[str, float]:
    """Medians, in inter-ocular distances, of how far below YuNet's raw eye midpoint and mouth-corner midpoint
    MediaPipe's eye midpoint and mouth lie (YuNet's correction undone), on padded faces both detectors find."""
    mediapipe, yunet = FaceDetector("short"), YuNetDetector()
    eye, mouth = [], []
    for rgb in images:
        rgb = padded(rgb)
        a, b = mediapipe.detect(rgb), yunet.detect(rgb)
        if not a or not b:
            continue
        ka, kb = a[0].keypoints.astype(np.float64), b[0].keypoints.astype(np.float64)
        iod = float(np.linalg.norm(kb[1] - kb[0]))
        down = np.array([-(kb[1] - kb[0])[1], (kb[1] - kb[0])[0]]) / iod
        raw_eye = (kb[0] + kb[1]) / 2 - YUNET_EYE_DROP * iod * down
        raw_mouth = kb[3] - YUNET_MOUTH_DROP * iod * down
        eye.append(float(((ka[0] + ka[1]) / 2 - raw_eye) @ down) / iod)
        mouth.append(float((ka[3] - raw_mouth) @ down) / iod)
    mediapipe.close()
    return {"faces": len(eye), "eye_drop": float(np.median(eye)), "mouth_drop": float(np.median(mouth))}


def measure(detect: Callable[[np.ndarray], list], images: list[np.ndarray]) -> dict[str, float]:
    missed, elapsed = 0, []
    for rgb in images:
        start = time.perf_counter()
        found = detect(rgb)
        elapsed.append(time.perf_counter() - start)
        missed += not found
    return {"images": len(images), "no_face_rate": missed / len(images), "ms_p50": 1e3 * float(np.median(elapsed))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared"))
    parser.add_argument("--per-set", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("reports/detectors"))
    args = parser.parse_args()
    sets = image_sets(args.shared, args.per_set, args.seed)
    short, full, yunet, cascade = FaceDetector("short"), FaceDetector("full"), YuNetDetector(), CascadeDetector("short")
    for detector in (short, full, yunet, cascade):
        detector.warmup(video=False)
    choices: dict[str, Callable[[np.ndarray], list]] = {
        "MediaPipe short (no fallback)": short.detect,
        "MediaPipe full": full.detect,
        "MediaPipe short, padded 25%": lambda rgb: short.detect(padded(rgb)),
        "YuNet": yunet.detect,
        "cascade: MediaPipe short, then YuNet (default)": cascade.detect,
    }
    results = {name: {set_name: measure(detect, images) for set_name, images in sets.items()}
               for name, detect in choices.items()}
    offsets = keypoint_offsets(sets["TCCE (posed studio)"][:100] + sets["UTKFace (tight crops)"][:100])
    report = {"per_set": args.per_set, "seed": args.seed, "results": results, "yunet_keypoint_offsets": offsets}
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output / "detectors.json", report)
    set_names = list(sets)
    lines = ["# Face detector choices: no-face rate (ms per image, median)", "",
             f"`python benchmarks/detectors.py --per-set {args.per_set}`: every image shows a face; one run, one core.", "",
             "| detector | " + " | ".join(f"{s} ({len(sets[s])})" for s in set_names) + " |",
             "|---|" + "---|" * len(set_names)]
    for name, per_set in results.items():
        cells = [f"{100 * per_set[s]['no_face_rate']:.1f}% ({per_set[s]['ms_p50']:.1f} ms)" for s in set_names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"YuNet against MediaPipe on {offsets['faces']} faces both found: MediaPipe's eye midpoint lies "
              f"{offsets['eye_drop']:.3f} and its mouth {offsets['mouth_drop']:.3f} inter-ocular distances below "
              "YuNet's raw points (the cascade moves YuNet's points there before alignment)."]
    atomic_write_bytes(args.output / "detectors.md", ("\n".join(lines) + "\n").encode())
    plot(results, set_names, args.output / "detectors.png")
    print("\n".join(lines))


def plot(results: dict[str, dict[str, dict[str, float]]], set_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(results)
    for i, (name, per_set) in enumerate(results.items()):
        ax.bar(np.arange(len(set_names)) + i * width, [100 * per_set[s]["no_face_rate"] for s in set_names], width,
               label=name)
    ax.set_xticks(np.arange(len(set_names)) + 0.4 - width / 2, set_names, fontsize=8)
    ax.set_ylabel("no face found (%)")
    ax.set_title("Images with a visible face where the detector found none")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
