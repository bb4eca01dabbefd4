"""Cold-start query cost: `clipsearch search` from a fresh shell, torch-free path vs torch path.

    python bench/bench_query_start.py                     # toyworld and ViT-B-32, 15 runs each
    python bench/bench_query_start.py --runs 30 --models toyworld
    python bench/bench_query_start.py --importtime        # where the fast path's start goes

For each model a library of `--photos` toy-world photos is built in a temporary folder
(toyworld: the bundled weights; ViT-B-32: random weights, `--pretrained none`, the same
computation as trained weights, so the same cost), and the first query exports the text
tower (timed and reported on its own). Then, round after round, in the same rounds so
that the machine's load touches each alike, a new process runs:

* `fast`: `clipsearch search QUERY` (the exported text tower, no torch);
* `torch`: the same with `--no-fast-path` (open_clip and torch, as before this path);
* `import torch`: `python -c "import torch"`, the floor the torch path cannot go under;
* `ui fast` / `ui torch` (with `--ui`): a process that opens the library, builds the web
  UI (`build_app`) and answers one text search through its handlers, as `clipsearch
  serve` does: its peak RSS is the server's memory after its first query.

Each process's wall time, CPU time (user + system) and peak RSS (`ru_maxrss` from
`wait4`) are printed as median, 25th-75th percentile and min-max, with ratios of medians.
On a loaded machine wall time mostly measures the queue for the cores; CPU time is what
the process itself needed, close to its wall time on an idle machine (the start-up work is
mostly one thread). The load average is printed with every round. The benchmark process
itself stays small (libraries are built by `clipsearch` child processes) because a child's
`ru_maxrss` starts from its parent's RSS at fork.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "a red car parked on a street at night"
MODELS = {"toyworld": ("toyworld", "bundled"), "ViT-B-32": ("ViT-B-32", "none")}
_UI = """
import resource, sys, time
t = time.perf_counter()
from clipsearch.library import Library
from clipsearch_ui.app import build_app
from clipsearch_ui.handlers import Handlers
lib = Library.open(sys.argv[1], create=False)
handlers = Handlers(lib)
build_app(lib, handlers=handlers)
out = handlers.search_text(sys.argv[2])
assert out[0], "no results"
print("torch loaded:", "torch" in sys.modules, file=sys.stderr)
"""


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def build(root: Path, model: str, pretrained: str, photos: int) -> tuple[Path, float]:
    """A library of `photos` toy-world photos, and the seconds its first (exporting) query took."""
    cli = [sys.executable, "-m", "clipsearch", "-q"]
    images = root / "tw"
    if not images.exists():
        subprocess.run([*cli, "toyworld", "generate", "--n", str(photos), str(images)], check=True)
    lib = root / f"lib-{model}"
    if not lib.exists():
        subprocess.run([*cli, "index", str(images / "images"), "-l", str(lib), "--model", model,
                        "--pretrained", pretrained], check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipsearch", "-q", "search", QUERY, "-l", str(lib)], check=True,
                   stdout=subprocess.DEVNULL)
    return lib, time.perf_counter() - started


def summary(values: list[float], unit: str) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return (f"{statistics.median(values):7.2f} {unit}  (p25-p75 {q[0]:.2f}-{q[2]:.2f}, "
            f"min-max {min(values):.2f}-{max(values):.2f})")


def importtime(lib: Path, env: dict[str, str], top: int = 15) -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "clipsearch", "-q", "search", QUERY, "-l",
                          str(lib)], env=env, capture_output=True, text=True, check=True).stderr
    rows = []
    for line in out.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
            rows.append((int(cumulative), name))
    print(f"  top-level imports of the fast path by cumulative time (python -X importtime), of "
          f"{sum(c for c, n in rows if not n.startswith(' ') and '.' not in n) / 1e3:.0f} ms in top-level packages:")
    for cumulative, name in sorted((r for r in rows if "." not in r[1]), reverse=True)[:top]:
        print(f"    {cumulative / 1e3:7.1f} ms  {name}")


def precompile() -> str:
    """Byte-compile clipsearch as installing it does, so no run pays for compiling its sources.

    An editable checkout compiles each module on first import and keeps the .pyc; where
    $PYTHONDONTWRITEBYTECODE is set (some sandboxes and CI images), every run would compile
    ~40 modules again (0.2-0.4 s), which a user's installed copy never does.
    """
    import importlib.util

    folders = [Path(p) for name in ("clipsearch", "clipsearch_ui")
               if (spec := importlib.util.find_spec(name)) for p in (spec.submodule_search_locations or [])]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *map(str, folders)], check=True,
                   stdout=subprocess.DEVNULL)
    note = " ($PYTHONDONTWRITEBYTECODE is set here)" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return f"byte-compiled {', '.join(map(str, folders))} as an install does{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--ui", action="store_true", help="also measure the web UI's process (needs gradio)")
    parser.add_argument("--ui-runs", type=int, default=1, help="rounds that include the UI processes (default 1)")
    parser.add_argument("--root", default=None, help="keep the libraries and exports in this folder (reused)")
    parser.add_argument("--importtime", action="store_true", help="list the fast path's slowest imports")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clipsearch-bench-start-") as tmp:
        root = Path(args.root or tmp)
        root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CLIPSEARCH_ONNX_CACHE": str(root / "onnx")}
        os.environ["CLIPSEARCH_ONNX_CACHE"] = env["CLIPSEARCH_ONNX_CACHE"]
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown CPU")
        print(f"machine: {cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
        flags = sorted(set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_vnni", "avx512_bf16", "amx_int8"})
        print(f"cpu flags: {', '.join(flags) or 'none of avx512_vnni/avx512_bf16/amx_int8'}")
        print(precompile(), flush=True)
        for name in args.models:
            model, pretrained = MODELS[name]
            lib, first = build(root, model, pretrained, args.photos)
            search = [sys.executable, "-m", "clipsearch", "-q", "search", QUERY, "-l", str(lib)]
            variants = {"fast": search, "torch": [*search, "--no-fast-path"],
                        "import torch": [sys.executable, "-c", "import torch"]}
            envs = {k: env for k in variants}
            if args.ui:
                variants["ui fast"] = [sys.executable, "-c", _UI, str(lib), QUERY]
                variants["ui torch"] = variants["ui fast"]
                envs.update({"ui fast": env, "ui torch": {**env, "CLIPSEARCH_FAST_PATH": "0"}})
            print(f"\n{name} ({pretrained} weights), {args.photos} photos; first query (exports the text tower): "
                  f"{first:.1f} s; load average before: {os.getloadavg()[0]:.1f}", flush=True)
            walls: dict[str, list[float]] = {k: [] for k in variants}
            cpus: dict[str, list[float]] = {k: [] for k in variants}
            rss: dict[str, list[float]] = {k: [] for k in variants}
            for r in range(args.runs):
                for key, argv in variants.items():
                    if key.startswith("ui") and r >= args.ui_runs:
                        continue
                    wall, cpu_s, peak = run_once(argv, envs[key])
                    walls[key].append(wall)
                    cpus[key].append(cpu_s)
                    rss[key].append(peak)
                print(f"  round {r + 1}: " + ", ".join(f"{k} {walls[k][-1]:.2f} s wall {cpus[k][-1]:.2f} s cpu "
                                                     f"{rss[k][-1]:.0f} MB" for k in variants if len(walls[k]) > r)
                      + f"; load {os.getloadavg()[0]:.1f}", flush=True)
            for key in variants:
                print(f"  {key:13s} wall {summary(walls[key], 's')}   cpu {summary(cpus[key], 's')}   "
                      f"peak RSS {summary(rss[key], 'MB')}")
            med = {k: statistics.median(v) for k, v in walls.items()}
            mcpu = {k: statistics.median(v) for k, v in cpus.items()}
            mrss = {k: statistics.median(v) for k, v in rss.items()}
            print(f"  ratios of medians: fast/torch wall {med['fast'] / med['torch']:.2f} cpu "
                  f"{mcpu['fast'] / mcpu['torch']:.2f}; fast/import-torch wall {med['fast'] / med['import torch']:.2f} "
                  f"cpu {mcpu['fast'] / mcpu['import torch']:.2f}; fast/torch RSS {mrss['fast'] / mrss['torch']:.2f}")
            if args.ui:
                print(f"  web UI process after one query: {mrss['ui fast']:.0f} MB fast vs {mrss['ui torch']:.0f} MB "
                      f"torch ({mrss['ui fast'] / mrss['ui torch']:.2f}x)")
            print(f"  load average after: {os.getloadavg()[0]:.1f}")
            if args.importtime:
                importtime(lib, env)


if __name__ == "__main__":
    main()
