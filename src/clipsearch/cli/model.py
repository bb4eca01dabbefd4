"""Model commands: train (from scratch or fine-tune) and eval (retrieval and analogy metrics)."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import Any, Sequence


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from clipsearch.train import TrainConfig, train

    config = TrainConfig(
        csv=args.csv, out=args.out, model=args.model, pretrained=args.pretrained, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, wd=args.wd, warmup=args.warmup, grad_clip=args.grad_clip,
        seed=args.seed, val=args.val, eval_every=args.eval_every, device=args.device, workers=args.workers,
        resume=args.resume, precision=args.precision, cache_max_gb=args.cache_max_gb, augment=args.augment,
        freeze=args.freeze, progress=not args.quiet)
    result = train(config)
    if args.json:
        print(json.dumps(asdict(result), indent=1))
        return 0
    resumed = f", resumed from epoch {result.resumed_from_epoch}" if result.resumed_from_epoch else ""
    print(f"trained {result.model} for {result.epochs} epochs ({result.steps} steps{resumed}) in {result.seconds:.0f} s, "
          f"{result.images_per_second:.0f} images/s; final loss {result.final_loss:.4f}")
    if result.eval:
        print("validation: " + ", ".join(f"{k} {v:.3f}" for k, v in result.eval.items()))
    print(f"weights:   {result.weights}")
    print(f"metrics:   {result.metrics}")
    model_arg = args.model
    if model_arg.endswith(".json"):  # the run folder holds a copy of the config
        model_arg = os.path.join(result.out_dir, os.path.basename(model_arg))
    print(f"use it:    clipsearch eval DATA.csv --model {model_arg} --pretrained {result.weights}")
    return 0


_ROWS: Sequence[tuple[str, str, str]] = (
    ("text→image", "R@1", "t2i_R@1"), ("", "R@5", "t2i_R@5"), ("", "R@10", "t2i_R@10"), ("", "MRR", "t2i_MRR"),
    ("image→text", "R@1", "i2t_R@1"), ("", "R@5", "i2t_R@5"), ("", "R@10", "i2t_R@10"), ("", "MRR", "i2t_MRR"),
    ("analogy", "top-1", "analogy_top1"), ("", "top-5", "analogy_top5"),
)


def _print_table(results: Sequence[tuple[str, Any]]) -> None:
    first = results[0][1]
    print(f"data: {first.csv} ({first.images} images, {first.texts} texts, relevance: {first.relevance})")
    widths = [max(10, len(label)) for label, _ in results]
    print(" " * 18 + "  ".join(label.rjust(w) for (label, _), w in zip(results, widths)))
    metrics = [r.metrics() for _, r in results]
    for group, name, key in _ROWS:
        if all(key not in m for m in metrics):
            continue
        cells = [(f"{m[key]:.3f}" if key in m else "-").rjust(w) for m, w in zip(metrics, widths)]
        print(f"{group:<12}{name:<6}" + "  ".join(cells))
    for label, r in results:
        if r.analogy is not None:
            per = ", ".join(f"{a} {v['top5']:.2f}" for a, v in r.analogy.per_attribute.items())
            print(f"analogy top-5 by attribute ({label}, {r.analogy.queries} of {r.analogy.pairs} pairs): {per}")


def _cmd_eval(args: argparse.Namespace) -> int:
    from clipsearch.encoder import default_pretrained, load_encoder, pretrained_name
    from clipsearch.evaluate import evaluate

    models = [(args.model, args.pretrained)]
    if args.compare:
        models.append((args.compare[0], args.compare[1]))
    results = []
    for model, pretrained in models:
        pretrained = default_pretrained(model) if pretrained is None else pretrained_name(pretrained)
        encoder = load_encoder(model, pretrained, device=args.device, image_backend=args.image_backend)
        result = evaluate(encoder, args.csv, relevance=args.relevance, batch_size=args.batch_size,
                          analogy=not args.no_analogy, analogy_template=args.analogy_template,
                          max_analogy_queries=args.max_analogy_queries, progress=not args.quiet)
        results.append((f"{encoder.name}/{pretrained or 'random'}", result))
    if args.json:
        out = [{"model": label, **r.to_dict()} for label, r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1))
    else:
        _print_table(results)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from clipsearch.evaluate import DEFAULT_ANALOGY_TEMPLATE, DEFAULT_MAX_ANALOGY_QUERIES, RELEVANCE_MODES
    from clipsearch.train_defaults import (
        FINETUNE_BATCH_SIZE, FINETUNE_EPOCHS, FINETUNE_FREEZE, FINETUNE_LR, FREEZE_PARTS, SCRATCH_BATCH_SIZE,
        SCRATCH_EPOCHS, SCRATCH_LR,
    )

    p = sub.add_parser(
        "train", help="train a CLIP model from scratch or fine-tune one on image–caption pairs",
        description="Contrastive training on a captions csv (columns filepath, title; paths relative to the "
                    "csv's folder). From scratch: --model toyworld --pretrained none. Fine-tune: "
                    "--model ViT-B-32 --pretrained /path/open_clip_pytorch_model.bin. See docs/training.md.")
    p.add_argument("csv", metavar="CSV", help="training captions csv")
    p.add_argument("--model", default="toyworld", help="open_clip model name or JSON config file (default toyworld)")
    p.add_argument("--pretrained", default="none",
                   help="'none' (from scratch, default), a pretrained tag, a checkpoint file, or 'bundled'")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (weights, metrics, checkpoint)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"passes over the data (default {SCRATCH_EPOCHS} from scratch, {FINETUNE_EPOCHS} when "
                        "fine-tuning)")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"pairs per step (default {SCRATCH_BATCH_SIZE} from scratch, {FINETUNE_BATCH_SIZE} fine-tuning)")
    p.add_argument("--lr", type=float, default=None,
                   help=f"peak learning rate (default {SCRATCH_LR:g} from scratch, {FINETUNE_LR:g} when fine-tuning)")
    p.add_argument("--wd", type=float, default=0.1, help="AdamW weight decay, not on gains/biases (default 0.1)")
    p.add_argument("--warmup", type=float, default=0.05,
                   help="linear warmup: a fraction of all steps if < 1, else a number of steps (default 0.05)")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM", help="clip the gradient norm")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--val", default=None, metavar="CSV", help="validation csv evaluated during training")
    p.add_argument("--eval-every", type=_positive_int, default=1, metavar="N", help="evaluate every N epochs (default 1)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: CPUs, at most 16)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--cache-max-gb", type=float, default=8.0,
                   help="decode images once into a tensor on the device if it fits in this many GB (default 8)")
    p.add_argument("--augment", action="store_true",
                   help="open_clip's random resized crops (streams from disk; off: keeps left/right intact)")
    p.add_argument("--freeze", choices=FREEZE_PARTS, default=None,
                   help="keep one tower's weights fixed: image, text, or none (default none from scratch, "
                        f"{FINETUNE_FREEZE} when fine-tuning)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval", help="retrieval and analogy metrics of a model on a captions csv",
        description="Text→image and image→text Recall@1/5/10 and MRR (open_clip retrieval benchmark "
                    "definitions), plus analogy accuracy on toy-world data. Relevance: same canonical scene "
                    "when the csv has a canonical column, else exact image–caption pairs.")
    p.add_argument("csv", metavar="DATA.csv", help="captions csv (filepath, title[, canonical])")
    p.add_argument("--model", default="toyworld", help="open_clip model name or JSON config (default toyworld)")
    p.add_argument("--pretrained", default=None,
                   help="tag, checkpoint file, 'bundled' or 'none' (default: bundled for toyworld, else first tag)")
    p.add_argument("--compare", nargs=2, metavar=("MODEL2", "PRETRAINED2"), default=None,
                   help="also evaluate a second model and print both side by side")
    p.add_argument("--device", default=None, help="torch device (default: cuda when present, else cpu)")
    p.add_argument("--image-backend", default="torch", choices=["torch", "onnxruntime", "onnx-int8"],
                   help="what encodes the images (default torch): compare onnx-int8 with torch to see what "
                        "int8 costs in recall")
    p.add_argument("--relevance", choices=RELEVANCE_MODES, default="auto",
                   help="canonical: same scene; exact: image–caption pairs; auto (default): canonical if present")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="encoding batch size (default 256)")
    p.add_argument("--no-analogy", action="store_true", help="skip the analogy test")
    p.add_argument("--analogy-template", default=DEFAULT_ANALOGY_TEMPLATE,
                   help=f"text form of attribute words, '{{}}' is the word (default {DEFAULT_ANALOGY_TEMPLATE!r})")
    p.add_argument("--max-analogy-queries", type=_positive_int, default=DEFAULT_MAX_ANALOGY_QUERIES,
                   help=f"seeded sample of analogy pairs (default {DEFAULT_MAX_ANALOGY_QUERIES})")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_eval)
