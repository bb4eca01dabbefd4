"""Fine-tuning sweep: learning rate × frozen tower × epochs on a shifted toy-world domain.

For each setting, fine-tunes the bundled toyworld model on the new domain's train pairs
(validating on a separate new-domain split after every epoch: the per-epoch curve), then
measures the final weights on the new domain's held-out photos (the lift) and on the
original held-out split (forgetting), next to the bundled model measured in the same run.

    python bench/bench_finetune.py --shift ext --lrs 1e-5,3e-5,1e-4,3e-4 --freeze none
    python bench/bench_finetune.py --shift ext --lrs 1e-4 --freeze image,text
    python bench/bench_finetune.py --shift quality --lrs 1e-5,1e-4 --freeze none,image

Data (generated once into --data, fixed seeds; the same sets as docs/training.md):
  ext:      train 1,500 ext-world train-split pairs at 64 px (seed 21); validation 500
            ext seen-split photos (seed 24); held-out test 1,000 ext seen-split photos (seed 22)
  quality:  train 1,000 base-world train-split pairs at 256 px JPEG q90 (seed 11);
            validation 500 test-split photos at 256 px (seed 8); held-out test 1,000
            test-split photos at 256 px (seed 7)
  original: 2,000 test-split photos at 64 px (seed 1), the bundled model's own held-out split

Settings are chosen on the validation split; the table reports the held-out test split,
which no choice looked at. Results are appended to OUT/results.jsonl as each run ends, and
a rerun skips settings already there, so an interrupted sweep continues where it stopped.
Accuracy figures do not depend on machine load; the minutes do (reported with the load).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from common import cpu_model

DATASETS: dict[str, dict[str, Any]] = {
    "ext-train": dict(n=1500, split="train", size=64, seed=21, world="ext"),
    "ext-val": dict(n=500, split="seen", size=64, seed=24, world="ext"),
    "ext-seen": dict(n=1000, split="seen", size=64, seed=22, world="ext"),
    "q256-train": dict(n=1000, split="train", size=256, seed=11),
    "q256-val": dict(n=500, split="test", size=256, seed=8),
    "q256-test": dict(n=1000, split="test", size=256, seed=7),
    "d64-test": dict(n=2000, split="test", size=64, seed=1),
}
SHIFTS = {"ext": ("ext-train", "ext-val", "ext-seen"), "quality": ("q256-train", "q256-val", "q256-test")}
KEYS = ("t2i_R@1", "t2i_R@10", "i2t_R@1", "i2t_R@10", "analogy_top5")


def _csv(data: Path, name: str) -> str:
    from clipsearch import toyworld

    folder = data / name
    csv = folder / "captions.csv"
    if not csv.is_file():
        toyworld.generate(folder, workers=1, progress=False, **DATASETS[name])
    return str(csv)


def _eval(weights: str, csv: str, analogy_queries: int) -> dict[str, float]:
    from clipsearch.encoder import load_encoder
    from clipsearch.evaluate import evaluate

    encoder = load_encoder("toyworld", weights, device="cpu")
    return {k: round(v, 4) for k, v in evaluate(encoder, csv, max_analogy_queries=analogy_queries).metrics().items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift", choices=sorted(SHIFTS))
    ap.add_argument("--report", nargs="+", metavar="RESULTS", default=None,
                    help="only print the table of these results.jsonl files (one shift), then exit")
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4", help="comma-separated learning rates")
    ap.add_argument("--freeze", default="none", help="comma-separated: none, image, text")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0, help="training seed (initial batch order); 0 in the docs' table")
    ap.add_argument("--data", default="runs/data", help="where the data sets are (generated if missing)")
    ap.add_argument("--out", default=None, help="run folders and results.jsonl (default runs/sweep/SHIFT)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    ap.add_argument("--analogy-queries", type=int, default=500)
    args = ap.parse_args()
    if args.report:
        merged: dict[str, dict[str, Any]] = {}
        for path in args.report:
            for line in Path(path).read_text().splitlines():
                r = json.loads(line)
                merged.setdefault(r["setting"], r)
        print_table(merged)
        return
    if not args.shift:
        ap.error("--shift is required (or --report)")

    import torch

    from clipsearch.train import TrainConfig, train

    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out or f"runs/sweep/{args.shift}")
    out.mkdir(parents=True, exist_ok=True)
    train_name, val_name, test_name = SHIFTS[args.shift]
    train_csv, val_csv, test_csv = (_csv(data, n) for n in (train_name, val_name, test_name))
    original_csv = _csv(data, "d64-test")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch threads {args.threads}; load at start {os.getloadavg()}")

    results_path = out / "results.jsonl"
    done = {}
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            r = json.loads(line)
            done[r["setting"]] = r
    if "bundled" not in done:
        t0 = time.perf_counter()
        r = {"setting": "bundled", "test": _eval("bundled", test_csv, args.analogy_queries),
             "original": _eval("bundled", original_csv, args.analogy_queries),
             "eval_s": round(time.perf_counter() - t0, 1)}
        with results_path.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        done["bundled"] = r
    for freeze in args.freeze.split(","):
        for lr_text in args.lrs.split(","):
            lr = float(lr_text)
            setting = f"lr{lr:g}_e{args.epochs}_b{args.batch_size}_freeze-{freeze}" + (
                f"_seed{args.seed}" if args.seed else "")
            if setting in done:
                continue
            run_dir = out / setting
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            result = train(TrainConfig(csv=train_csv, out=str(run_dir), pretrained="bundled", epochs=args.epochs,
                                       batch_size=args.batch_size, lr=lr, freeze=freeze, val=val_csv, seed=args.seed,
                                       workers=0, progress=False, resume=True))
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            curve = [json.loads(line) for line in Path(result.metrics).read_text().splitlines()]
            r = {"setting": setting, "lr": lr, "freeze": freeze, "epochs": args.epochs, "batch_size": args.batch_size,
                 "seed": args.seed,
                 "train_pairs": sum(1 for _ in open(train_csv)) - 1,
                 "val_curve": [{k: m.get(k) for k in ("epoch", "loss", *KEYS)} for m in curve],
                 "test": _eval(result.weights, test_csv, args.analogy_queries),
                 "original": _eval(result.weights, original_csv, args.analogy_queries),
                 "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t1, 1),
                 "load": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
            with results_path.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            done[setting] = r
            print(json.dumps(r), flush=True)
    print_table(done)


def print_table(done: dict[str, dict[str, Any]]) -> None:
    base = done["bundled"]
    print(f"\nbundled: test {base['test']}\n         original {base['original']}")
    print("| setting | val t2i R@1 per epoch | test t2i R@1 | R@10 | i2t R@1 | original t2i R@1 | i2t R@1 "
          "| train min (load) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in sorted(done.items(), key=lambda kv: (kv[1].get("freeze", ""), kv[1].get("lr", 0))):
        if name == "bundled":
            continue
        curve = " → ".join(f"{m['t2i_R@1']:.3f}" for m in r["val_curve"] if m.get("t2i_R@1") is not None)
        t, o = r["test"], r["original"]
        print(f"| {name} | {curve} | {t['t2i_R@1']:.3f} | {t['t2i_R@10']:.3f} | {t['i2t_R@1']:.3f} "
              f"| {o['t2i_R@1']:.3f} ({o['t2i_R@1'] - base['original']['t2i_R@1']:+.3f}) "
              f"| {o['i2t_R@1']:.3f} ({o['i2t_R@1'] - base['original']['i2t_R@1']:+.3f}) "
              f"| {r['train_s'] / 60:.1f} ({r['load'][0]}–{r['load'][1]}) |")


if __name__ == "__main__":
    main()
