"""What a new user waits for: `leaf-fer --help`, `import leaf_fer`, the first analysed frame, and (with --install)
the install itself, runtime only against runtime + `[train]`, each in a fresh virtual environment.

Times are medians of --repeats fresh processes, measured side by side in one run. The install times depend on pip's
download cache (reported as found).

    python benchmarks/startup.py --install
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from leaf_fer.common import atomic_write_bytes, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
FIRST_FRAME = """
import leaf_fer
from leaf_fer.realtime.annotate import sample_video
from leaf_fer.realtime.sources import open_source
with open_source(str(sample_video())) as source:
    frame = next(iter(source.frames()))
with leaf_fer.Analyzer() as analyzer:
    assert analyzer.analyze(frame.image).faces
"""


def timed(command: list[str], repeats: int, cwd: Path) -> float:
    """Median wall seconds of ``command`` over ``repeats`` fresh processes run in ``cwd`` (each must succeed)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=cwd)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def install(extra: str, workdir: Path) -> dict[str, float | str]:
    """A fresh venv with ``pip install REPO[extra]``: seconds, size of the venv, and the interpreter."""
    venv = workdir / f"venv{extra or '-runtime'}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    started = time.perf_counter()
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{REPO}{extra}"], check=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "venv_mb": round(folder_mb(venv), 1), "python": python}


def markdown(report: dict) -> str:
    lines = ["# Start-up and install", "", f"`python benchmarks/startup.py{' --install' if report['install'] else ''}`; "
             f"{report['machine']}; medians of {report['repeats']} fresh processes, one run.", "",
             "| what | runtime only (`pip install leaf-fer`) | with `[train]` (torch) |", "|---|---|---|"]
    for key, label in (("help_s", "`leaf-fer --help` (s)"), ("import_s", "`import leaf_fer` (s)"),
                       ("first_frame_s", "first analysed frame from a cold start (s)"),
                       ("install_s", "install into a fresh venv (s)"), ("venv_mb", "venv size (MB)")):
        runtime, train = report["runtime"].get(key), report["train"].get(key)
        if runtime is None and train is None:
            continue
        lines.append(f"| {label} | {'—' if runtime is None else runtime} | {'—' if train is None else train} |")
    lines += ["", f"Target: `leaf-fer --help` ≤ 0.3 s. {report['note']}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--install", action="store_true", help="also time fresh installs (uses the network or pip's cache)")
    parser.add_argument("--output", type=Path, default=Path("reports/startup"))
    args = parser.parse_args()
    report: dict = {"machine": f"{platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
                    "repeats": args.repeats, "install": args.install, "runtime": {}, "train": {}}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if args.install:
            pythons = {}
            for name, extra in (("runtime", ""), ("train", "[train]")):
                done = install(extra, workdir)
                pythons[name] = str(done.pop("python"))
                report[name].update(install_s=done["seconds"], venv_mb=done["venv_mb"])
            report["note"] = ("Each venv is a fresh `python -m venv` with the package installed from this checkout (not "
                              "editable); pip's download cache was used where it held the wheels.")
        else:
            pythons = {"train": sys.executable}
            report["note"] = "Only this interpreter (with `[train]`) was measured; --install adds the runtime-only venv."
        for name, python in pythons.items():
            cli = str(Path(python).with_name("leaf-fer"))
            if not Path(cli).exists():
                cli = shutil.which("leaf-fer") or cli
            report[name]["help_s"] = round(timed([cli, "--help"], args.repeats, workdir), 3)
            report[name]["import_s"] = round(timed([python, "-c", "import leaf_fer"], args.repeats, workdir), 3)
            report[name]["first_frame_s"] = round(timed([python, "-c", FIRST_FRAME], args.repeats, workdir), 2)
            print(name, report[name], flush=True)
    atomic_write_json(args.output / "startup.json", report)
    atomic_write_bytes(args.output / "startup.md", markdown(report).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()
