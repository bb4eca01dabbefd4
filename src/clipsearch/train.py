"""Contrastive training and fine-tuning of open_clip models on a captions csv.

Small images (the toy world's 64×64) are decoded once into a uint8 tensor that lives on
the training device and is normalised there, so an epoch costs no decoding and no host
to device copies; larger data streams through a DataLoader instead. Checkpoints are
written atomically after every epoch, and a resumed run ends with the same weights as an
uninterrupted one (on CPU; CUDA kernels are not bit-deterministic).

Longer than most modules on purpose: the training loop, the device image cache, atomic
checkpoints and exact resume share one run's state; split when a second training recipe
arrives.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from clipsearch.errors import ImageLoadError, ModelError, TrainingError
from clipsearch.train_defaults import (
    FINETUNE_BATCH_SIZE, FINETUNE_EPOCHS, FINETUNE_FREEZE, FINETUNE_LR, FREEZE_PARTS, SCRATCH_BATCH_SIZE,
    SCRATCH_EPOCHS, SCRATCH_LR,
)
from clipsearch.evaluate import (
    DatasetError, EvalData, EvalResult, build_eval_data, read_captions_csv, score_embeddings,
)

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_FILE = "checkpoint.pt"
FINAL_WEIGHTS_FILE = "final.safetensors"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
_CHECKPOINT_VERSION = 1
_DECODE_BATCH = 256
_EVAL_BATCH = 1024

# A resumed run must be the run that was interrupted: these fields decide its weights.
_RUN_DEFINING = ("csv", "model", "pretrained", "epochs", "batch_size", "lr", "wd", "warmup", "beta1", "beta2",
                 "eps", "grad_clip", "seed", "augment", "freeze")
# What a checkpoint written before a field existed meant by its absence.
_LEGACY_DEFAULTS: dict[str, Any] = {"freeze": "none"}
_FINETUNE_LR_BEFORE_SWEEP = 1e-5  # what lr=None meant for fine-tuning in checkpoints before the sweep


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; see docs/training.md for the defaults' reasons.

    `pretrained`: None or "none" trains from scratch; a tag, a checkpoint path or "bundled"
    fine-tunes. `epochs`, `batch_size`, `lr` and `freeze` None pick the from-scratch or the fine-tuning
    default (SCRATCH_* / FINETUNE_* below; the measurements behind them are in
    docs/training.md). `freeze` "image" keeps the image tower's weights fixed, "text" the text
    tower's (token embedding, positional embedding, transformer, final norm, projection);
    the temperature always trains. `warmup` below 1 is a fraction of all steps, from 1 up a
    number of steps. `precision` "auto" is bf16 autocast on CUDA and fp32 elsewhere.
    """

    csv: str
    out: str
    model: str = "toyworld"
    pretrained: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    wd: float = 0.1
    warmup: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float | None = None
    seed: int = 0
    val: str | None = None
    eval_every: int = 1
    device: str | None = None
    workers: int | None = None
    resume: bool = False
    precision: str = "auto"
    cache_max_gb: float = 8.0
    augment: bool = False
    freeze: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.freeze is None or self.freeze in FREEZE_PARTS,
             f"unknown part to freeze {self.freeze!r}; expected one of {FREEZE_PARTS}"),
            (self.batch_size is None or self.batch_size >= 2,
             f"batch size must be at least 2 (contrastive loss), got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.wd >= 0, f"weight decay must be >= 0, got {self.wd}"),
            (self.warmup >= 0, f"warmup must be >= 0, got {self.warmup}"),
            (self.eval_every >= 1, f"eval-every must be at least 1, got {self.eval_every}"),
            (self.precision in PRECISIONS, f"unknown precision {self.precision!r}; expected one of {PRECISIONS}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad clip must be positive, got {self.grad_clip}"),
            (self.workers is None or self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.cache_max_gb >= 0, f"cache-max-gb must be >= 0, got {self.cache_max_gb}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)

    @property
    def from_scratch(self) -> bool:
        from clipsearch.encoder import pretrained_name

        return pretrained_name(self.pretrained) is None

    def _default(self, value: Any, scratch: Any, finetune: Any) -> Any:
        # An option left unset (None) takes the from-scratch or the fine-tuning default.
        return value if value is not None else (scratch if self.from_scratch else finetune)

    @property
    def learning_rate(self) -> float:
        return self._default(self.lr, SCRATCH_LR, FINETUNE_LR)

    @property
    def batch(self) -> int:
        return self._default(self.batch_size, SCRATCH_BATCH_SIZE, FINETUNE_BATCH_SIZE)

    @property
    def num_epochs(self) -> int:
        return self._default(self.epochs, SCRATCH_EPOCHS, FINETUNE_EPOCHS)

    @property
    def frozen_part(self) -> str:
        return self._default(self.freeze, "none", FINETUNE_FREEZE)


@dataclass(frozen=True)
class TrainResult:
    """Where a run's outputs are and how it ended."""

    out_dir: str
    weights: str
    metrics: str
    config: str
    checkpoint: str
    model: str
    epochs: int
    steps: int
    final_loss: float
    eval: dict[str, float] | None
    seconds: float
    images_per_second: float
    resumed_from_epoch: int


# ---------------------------------------------------------------------------------------
# Model, data and device helpers
# ---------------------------------------------------------------------------------------

def _drop_random_weights_warning(record: logging.LogRecord) -> bool:
    # open_clip warns on the root logger when training from scratch, which is the point here.
    return not str(record.msg).startswith("No pretrained weights loaded")


def _build_model(config: TrainConfig, device: str) -> tuple[str, Any, Any, Any, Any]:
    """(model name, model, train transform, eval transform, tokenizer), seeded."""
    import open_clip

    from clipsearch.encoder import register_model_configs, resolve_weights

    register_model_configs()
    name = config.model
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise ModelError(f"model config file {name} does not exist")
        register_model_configs(name)
        name = Path(name).stem
    known = open_clip.list_models()
    if name not in known:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(known)} "
                         "(or pass a JSON config file, see docs/training.md)")
    weights = resolve_weights(name, None if config.from_scratch else config.pretrained)
    torch.manual_seed(config.seed)
    root = logging.getLogger()
    root.addFilter(_drop_random_weights_warning)
    try:
        model, train_tf, eval_tf = open_clip.create_model_and_transforms(
            name, pretrained=weights.path, device=device, force_quick_gelu=weights.quick_gelu,
            image_mean=weights.preprocess_cfg.get("mean"), image_std=weights.preprocess_cfg.get("std"),
            image_interpolation=weights.preprocess_cfg.get("interpolation"),
            image_resize_mode=weights.preprocess_cfg.get("resize_mode"), output_dict=True)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ModelError(f"could not build model {name} with weights {weights.path or 'random'}: {exc}") from exc
    finally:
        root.removeFilter(_drop_random_weights_warning)
    return name, model, train_tf, eval_tf, open_clip.get_tokenizer(name)


def _geometry(eval_tf: Any) -> Callable[[Any], Any]:
    """The eval transform without tensor conversion and normalisation: PIL in, resized PIL out."""
    from torchvision.transforms import Compose

    kept = [t for t in getattr(eval_tf, "transforms", [eval_tf])
            if type(t).__name__ not in ("Normalize", "ToTensor", "MaybeToTensor")]
    return Compose(kept)


class _ImageFiles:
    """Map-style dataset of image files; returns (index, image tensor, error text or "")."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Any], Any], uint8: bool, target: int | None) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.uint8 = uint8
        self.target = target

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        from clipsearch.images import load_image

        try:
            out = self.transform(load_image(self.paths[i], target_size=self.target))
        except ImageLoadError as exc:
            # Returned, not raised: DataLoader workers would wrap the error in a traceback dump.
            return i, torch.zeros(0, dtype=torch.uint8 if self.uint8 else torch.float32), str(exc)
        if self.uint8:
            out = torch.from_numpy(np.array(out.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return i, out, ""


def _collate(items: list[tuple[int, torch.Tensor, str]]) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    return torch.tensor([i for i, _, _ in items]), [t for _, t, _ in items], [e for _, _, e in items]


def _loader(dataset: _ImageFiles, workers: int, *, batch_size: int | None = None,
            batch_sampler: Sequence[Sequence[int]] | None = None) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {"num_workers": workers, "collate_fn": _collate}
    if workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


def _stack_checked(images: list[torch.Tensor], errors: list[str]) -> torch.Tensor:
    bad = [e for e in errors if e]
    if bad:
        raise DatasetError(f"cannot train on an unreadable image: {bad[0]}"
                           + (f" (and {len(bad) - 1} more in the same batch)" if len(bad) > 1 else "")
                           + "; fix or remove its csv rows")
    return torch.stack(images)


def _decode_cache(paths: Sequence[str], eval_tf: Any, size: tuple[int, int], workers: int, device: str,
                  progress: bool, desc: str) -> torch.Tensor:
    """Every image decoded once, resized with the model's own geometry, as (N, 3, H, W) uint8 on `device`."""
    from tqdm import tqdm

    cache = torch.empty((len(paths), 3, *size), dtype=torch.uint8, device=device)
    dataset = _ImageFiles(paths, _geometry(eval_tf), uint8=True, target=min(size))
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for idx, images, errors in _loader(dataset, workers, batch_size=_DECODE_BATCH):
            batch = _stack_checked(images, errors)
            if batch.shape[1:] != cache.shape[1:]:
                raise TrainingError(f"the model's preprocessing gave {tuple(batch.shape[1:])} images, "
                                    f"expected {tuple(cache.shape[1:])}")
            cache[idx.to(device)] = batch.to(device, non_blocking=True)
            bar.update(len(idx))
    return cache


def _mean_std(model: Any, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), device=device).view(1, 3, 1, 1)
    return mean * 255.0, std * 255.0


def _image_size(model: Any) -> tuple[int, int]:
    size = getattr(model.visual, "image_size", 224)
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


class _Images:
    """Normalised image batches by index, from the device cache or streamed from disk."""

    def __init__(self, paths: Sequence[str], cache: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor,
                 stream_tf: Any, workers: int, device: str, target: int | None) -> None:
        self.paths, self.cache, self.mean, self.std = list(paths), cache, mean, std
        self.stream_tf, self.workers, self.device = stream_tf, workers, device
        self.target = target  # JPEG draft decoding down to this short side, as the cache does

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Normalised float images on the device for each batch of image indices, in order."""
        if self.cache is not None:
            for idx in index_batches:
                yield (self.cache[idx.to(self.device, non_blocking=True)].float() - self.mean) / self.std
            return
        dataset = _ImageFiles(self.paths, self.stream_tf, uint8=False, target=self.target)
        sampler = [b.tolist() for b in index_batches]
        for idx, images, errors in _loader(dataset, self.workers, batch_sampler=sampler):
            yield _stack_checked(images, errors).to(self.device, non_blocking=True)


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    # One generator per (seed, epoch): a resumed run draws the same batches without
    # replaying earlier epochs.
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    steps = max(1, n // batch_size)
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def _pick_workers(workers: int | None) -> int:
    if workers is not None:
        return workers
    return min(16, os.cpu_count() or 1)


def _resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _param_groups(model: Any, wd: float) -> list[dict[str, Any]]:
    # open_clip's rule: no weight decay on gains, biases and the temperature.
    def exclude(name: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd}]


def _is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def _is_text_param(name: str) -> bool:
    # Everything that is neither the image tower nor the temperature/bias: open_clip's CLIP
    # keeps the text tower at the top level (token_embedding, transformer, ln_final, ...),
    # CustomTextCLIP under `text.`.
    return not _is_image_param(name) and name not in ("logit_scale", "logit_bias")


def freeze_part(model: Any, part: str) -> tuple[int, int]:
    """Fix the weights of one tower ("image" or "text"; "none" fixes nothing).

    Sets `requires_grad` False on that tower's parameters, so the optimiser never sees them.
    Returns (frozen, trainable) parameter counts (numbers of weights, not tensors).
    """
    if part not in FREEZE_PARTS:
        raise TrainingError(f"unknown part to freeze {part!r}; expected one of {FREEZE_PARTS}")
    chosen = {"none": lambda name: False, "image": _is_image_param, "text": _is_text_param}[part]
    frozen = trainable = 0
    for name, p in model.named_parameters():
        if chosen(name):
            p.requires_grad_(False)
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    if part != "none" and frozen == 0:
        raise TrainingError(f"--freeze {part}: the model has no {part}-tower parameters to freeze")
    return frozen, trainable


def _cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


# ---------------------------------------------------------------------------------------
# Files: atomic writes, checkpoints, metrics
# ---------------------------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    from clipsearch.atomic import atomic_path

    with atomic_path(path) as tmp:  # a unique temp name, fsynced, renamed: a crash keeps the old file
        write(tmp)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8"))


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, **parts: Any) -> None:
    _atomic_write(path, lambda p: torch.save({"version": _CHECKPOINT_VERSION, **parts}, p))


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise TrainingError(f"cannot read checkpoint {path}: {exc}; delete it to start over") from exc


def save_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """The model's open_clip state dict as fp16 safetensors, written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float16 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    _atomic_write(Path(path), lambda p: save_file(state, str(p), metadata={"format": "pt"}))


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint (written before an interruption)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("epoch", 0) <= last_epoch]
    _atomic_write(path, lambda p: p.write_text("".join(line + "\n" for line in kept), encoding="utf-8"))


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------

def _train_step(model: Any, loss_fn: Any, images: torch.Tensor, tokens: torch.Tensor, optimizer: Any,
                scheduler: Any, scaler: Any, precision: str, device: str, grad_clip: float | None) -> torch.Tensor:
    """One optimiser step; returns the loss as a device tensor (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with _autocast(precision, device):
        out = model(images, tokens)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.detach()


@dataclass
class _ValSet:
    data: EvalData
    images: _Images
    tokens: torch.Tensor
    csv: str


def _encode_all(model: Any, val: _ValSet, tokenizer: Any, precision: str, device: str) -> EvalResult:
    model.eval()
    try:
        with torch.inference_mode(), _autocast(precision, device):
            n = len(val.images)
            batches = [torch.arange(s, min(s + _EVAL_BATCH, n)) for s in range(0, n, _EVAL_BATCH)]
            image_vecs = [model.encode_image(x, normalize=True).float().cpu() for x in val.images.batches(batches)]
            text_vecs = [model.encode_text(val.tokens[s:s + _EVAL_BATCH], normalize=True).float().cpu()
                         for s in range(0, len(val.tokens), _EVAL_BATCH)]

            def encode_texts(texts: list[str]) -> np.ndarray:
                tokens = tokenizer(texts).to(device)
                return model.encode_text(tokens, normalize=True).float().cpu().numpy()

            return score_embeddings(val.data, torch.cat(image_vecs).numpy(), torch.cat(text_vecs).numpy(),
                                    encode_texts=encode_texts, csv_path=val.csv)
    finally:
        model.train()


def _check_resumable(saved: dict[str, Any], config: TrainConfig, out: Path) -> None:
    now = asdict(config)
    before = {k: saved.get(k, _LEGACY_DEFAULTS.get(k)) for k in _RUN_DEFINING}
    if before["lr"] is None:  # written before the learning rate was recorded resolved: the defaults then
        before["lr"] = SCRATCH_LR if config.from_scratch else _FINETUNE_LR_BEFORE_SWEEP
    changed = [f"{k}: {before[k]!r} -> {now[k]!r}" for k in _RUN_DEFINING if before[k] != now[k]]
    if changed:
        raise TrainingError(f"cannot resume the run in {out} with different settings ({'; '.join(changed)}); "
                            "use the original settings or a new --out folder")


def _normalised_config(config: TrainConfig) -> TrainConfig:
    # Absolute paths, so a resumed run compares equal whatever the working directory; the
    # from-scratch / fine-tuning defaults resolved, so the checkpoint records what ran.
    updates: dict[str, Any] = {"csv": os.path.abspath(config.csv), "out": os.path.abspath(config.out),
                               "epochs": config.num_epochs, "freeze": config.frozen_part, "batch_size": config.batch,
                               "lr": config.learning_rate}
    if config.val:
        updates["val"] = os.path.abspath(config.val)
    if config.model.endswith(".json"):
        updates["model"] = os.path.abspath(config.model)
    if config.pretrained and os.path.isfile(config.pretrained):
        updates["pretrained"] = os.path.abspath(config.pretrained)
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values.update(updates)
    return TrainConfig(**values)


def train(config: TrainConfig) -> TrainResult:
    """Train (or fine-tune) a CLIP model on `config.csv`; outputs go to `config.out`.

    Writes final.safetensors (fp16, open_clip keys: load it with
    `load_encoder(model, "OUT/final.safetensors")`), metrics.jsonl, train_config.json and
    checkpoint.pt (the latest epoch, for `resume`).
    """
    from tqdm import tqdm

    import open_clip

    started = time.perf_counter()
    config = _normalised_config(config)
    out = Path(config.out)
    ckpt_path, metrics_path = out / CHECKPOINT_FILE, out / METRICS_FILE
    final_path, config_path = out / FINAL_WEIGHTS_FILE, out / CONFIG_FILE
    if ckpt_path.exists() and not config.resume:
        raise TrainingError(f"{out} already holds a training run ({CHECKPOINT_FILE}); pass --resume to continue "
                            "it, or choose another --out folder")
    rows = read_captions_csv(config.csv)
    val_rows = read_captions_csv(config.val) if config.val else None
    out.mkdir(parents=True, exist_ok=True)

    from clipsearch.encoder import pick_device

    device = pick_device(config.device)
    precision = _resolve_precision(config.precision, device)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")  # TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    name, model, train_tf, eval_tf, tokenizer = _build_model(config, device)
    if config.model.endswith(".json"):
        # Next to the weights, so `load_encoder("OUT/<name>.json", "OUT/final.safetensors")` works anywhere.
        shutil.copyfile(config.model, out / f"{name}.json")
    frozen, trainable = freeze_part(model, config.frozen_part)
    if frozen:
        log.info("froze the %s tower: %d weights fixed, %d trained", config.frozen_part, frozen, trainable)
    model.train()
    workers = _pick_workers(config.workers)
    size = _image_size(model)
    mean, std = _mean_std(model, device)

    # Decode once into a device cache when it fits; stream otherwise (or when augmenting).
    # An image with several captions is decoded once; batches are drawn over caption rows.
    image_index: dict[str, int] = {}
    row_image = torch.tensor([image_index.setdefault(r.path, len(image_index)) for r in rows])
    paths = list(image_index)
    val_data = build_eval_data(val_rows) if val_rows else None
    n_cached = len(paths) + (len(val_data.image_paths) if val_data else 0)
    cache_gb = n_cached * 3 * size[0] * size[1] / 1e9
    use_cache = not config.augment and cache_gb <= config.cache_max_gb
    progress = config.progress
    if use_cache:
        log.info("caching %d images at %dx%d (%.2f GB) on %s", n_cached, *size, cache_gb, device)
        cache = _decode_cache(paths, eval_tf, size, workers, device, progress, "decoding train images")
    else:
        log.info("streaming images from disk (cache would need %.2f GB, limit %.2f GB%s)", cache_gb,
                 config.cache_max_gb, "; augmenting" if config.augment else "")
        cache = None
    images = _Images(paths, cache, mean, std, train_tf if config.augment else eval_tf, workers, device,
                     target=None if config.augment else min(size))
    tokens = tokenizer([r.title for r in rows]).to(device)
    val = None
    if val_data is not None:
        val_cache = (_decode_cache(val_data.image_paths, eval_tf, size, workers, device, progress,
                                   "decoding val images") if use_cache else None)
        val = _ValSet(val_data, _Images(val_data.image_paths, val_cache, mean, std, eval_tf, workers, device,
                                        target=min(size)),
                      tokenizer(val_data.texts).to(device), str(config.val))

    batch_size = min(config.batch, len(rows))
    if batch_size < config.batch:
        log.warning("only %d training pairs: batch size lowered from %d", len(rows), config.batch)
    steps_per_epoch = max(1, len(rows) // batch_size)
    epochs = config.num_epochs
    total_steps = steps_per_epoch * epochs
    warmup_steps = int(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    lr = config.learning_rate

    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.AdamW(_param_groups(model, config.wd), lr=lr, betas=(config.beta1, config.beta2),
                                  eps=config.eps, **fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(warmup_steps, total_steps))
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=precision == "fp16")
    loss_fn = open_clip.ClipLoss()

    start_epoch, step = 0, 0
    if config.resume and ckpt_path.exists():
        state = _load_checkpoint(ckpt_path)
        _check_resumable(state["config"], config, out)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        _trim_metrics(metrics_path, start_epoch)
        log.info("resuming %s from epoch %d (step %d)", out, start_epoch, step)
    elif config.resume:
        log.info("no checkpoint in %s: starting from scratch", out)
    if start_epoch == 0 and metrics_path.exists():
        metrics_path.unlink()

    _write_json(config_path, {
        **asdict(config), "model_name": name, "device": device, "precision_used": precision,
        "learning_rate": lr, "train_pairs": len(rows), "train_images": len(paths), "batch_size_used": batch_size,
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps, "warmup_steps": warmup_steps,
        "frozen_weights": frozen, "trained_weights": trainable,
        "image_size": list(size), "image_cache": use_cache, "workers_used": workers,
        "torch": torch.__version__, "open_clip": open_clip.__version__,
    })

    last_loss, last_eval = float("nan"), None
    trained_images, train_seconds = 0, 0.0
    with tqdm(total=total_steps, initial=step, desc="training", unit="step", disable=not progress) as bar:
        for epoch in range(start_epoch, epochs):
            epoch_start = time.perf_counter()
            loss_sum = torch.zeros((), device=device)
            batches = _epoch_batches(len(rows), batch_size, config.seed, epoch)
            image_batches = images.batches([row_image[b] for b in batches])
            for i, (idx, x) in enumerate(zip(batches, image_batches)):
                loss = _train_step(model, loss_fn, x, tokens[idx.to(device)], optimizer, scheduler, scaler,
                                   precision, device, config.grad_clip)
                loss_sum += loss
                step += 1
                bar.update(1)
                if step % 25 == 0 or i == len(batches) - 1:
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
            seconds = time.perf_counter() - epoch_start
            trained_images += len(batches) * batch_size
            train_seconds += seconds
            last_loss = float(loss_sum.item()) / len(batches)
            record: dict[str, Any] = {
                "epoch": epoch + 1, "step": step, "loss": round(last_loss, 5),
                "lr": scheduler.get_last_lr()[-1], "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
                "seconds": round(seconds, 2), "images_per_s": round(len(batches) * batch_size / seconds, 1),
            }
            if val is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == epochs):
                result = _encode_all(model, val, tokenizer, precision, device)
                last_eval = result.metrics()
                record.update({k: round(v, 4) for k, v in last_eval.items()})
                bar.write(f"epoch {epoch + 1}: loss {last_loss:.4f}, " + ", ".join(
                    f"{k} {v:.3f}" for k, v in last_eval.items()))
            _append_metrics(metrics_path, record)
            _save_checkpoint(ckpt_path, epoch=epoch + 1, step=step, model=model.state_dict(),
                             optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             scaler=scaler.state_dict(), rng=_rng_state(), config=asdict(config), model_name=name)
    if start_epoch == epochs and metrics_path.is_file():  # resumed a finished run
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
        if lines:
            last = json.loads(lines[-1])
            last_loss = float(last.get("loss", last_loss))
            last_eval = {k: v for k, v in last.items() if k.startswith(("t2i_", "i2t_", "analogy_"))} or None
    save_weights(model, final_path)
    log.info("wrote %s", final_path)
    return TrainResult(
        out_dir=str(out), weights=str(final_path), metrics=str(metrics_path), config=str(config_path),
        checkpoint=str(ckpt_path), model=name, epochs=epochs, steps=step, final_loss=last_loss,
        eval=last_eval, seconds=round(time.perf_counter() - started, 2),
        images_per_second=round(trained_images / train_seconds, 1) if train_seconds else 0.0,
        resumed_from_epoch=start_epoch)
