"""open_clip model loading and batched encoding to L2-normalised float32 numpy.

Weights come from, in order of preference: a local checkpoint file, the bundled
`toyworld` model, the Hugging Face (or `~/.cache/clip`) cache, and only then the network.
Without a network the load fails in seconds with a message that says how to supply
weights; it never hangs in retries.
"""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from clipsearch.errors import ModelError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

BUNDLED_MODEL = "toyworld"
BUNDLED_TAG = "bundled"
BUNDLED_WEIGHTS = "toyworld.safetensors"
DEFAULT_MODEL = BUNDLED_MODEL
RANDOM_TAGS = frozenset({"none", "random"})
_RANDOM_INIT_SEED = 0


@runtime_checkable
class Encoder(Protocol):
    """What the indexer and searcher need from a model; tests pass fakes that satisfy it."""

    name: str
    pretrained: str | None
    dim: int

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = ...) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


def _config_dir() -> Path:
    return Path(str(resources.files("clipsearch") / "model_configs"))


def bundled_weights_path() -> Path:
    """Where the bundled toyworld checkpoint lives inside the installed package."""
    return Path(str(resources.files("clipsearch") / "models" / BUNDLED_WEIGHTS))


_registered = False


def register_model_configs(extra: str | os.PathLike | None = None) -> None:
    """Make clipsearch's model configs (and optionally a user's JSON file or folder) known to open_clip."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(_config_dir())
        _registered = True
    if extra is not None:
        open_clip.add_model_config(Path(extra))


def available_models() -> list[str]:
    """Every model name open_clip can build, clipsearch's own included."""
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def _is_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("CLIPSEARCH_OFFLINE", ""))
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags)


def _network_reachable(url: str, timeout: float = 3.0) -> bool:
    # One TCP connect with a short timeout, so a machine without network fails in seconds
    # instead of sitting in the hub client's retries.
    host = urlparse(url).hostname or url
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".npz"))


def _weights_help(model: str, tag: str, where: str) -> str:
    return (
        f"no weights for {model}/{tag} in {where} and no network: "
        f"pass --pretrained /path/to/open_clip_pytorch_model.bin (a local checkpoint), copy the file into "
        f"that cache, or use --model {BUNDLED_MODEL} (bundled, works offline)"
    )


def _cached_tag_file(cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """The local file for a pretrained tag if it is already cached, else None; never touches the network."""
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import hf_hub_download

        repo, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = []
        if filename == "open_clip_pytorch_model.bin":
            candidates.append("open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        candidates.append(filename)
        for name in candidates:
            try:
                return hf_hub_download(repo_id=repo, filename=name, cache_dir=cache_dir, local_files_only=True)
            except Exception:  # not cached: huggingface_hub raises several types here
                continue
    url = cfg.get("url", "")
    if url:
        target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return str(target)
    return None


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights come from: a file, or None for random init; plus preprocessing overrides."""

    path: str | None
    preprocess_cfg: dict[str, Any]
    quick_gelu: bool


def resolve_weights(model: str, pretrained: str | None, *, cache_dir: str | None = None,
                    allow_download: bool | None = None) -> ResolvedWeights:
    """Find the checkpoint for `model`/`pretrained` without loading it.

    `pretrained` may be a tag open_clip knows, a checkpoint path, "bundled" (toyworld), or
    None/"none" for random weights.
    """
    import open_clip

    register_model_configs()
    if pretrained is None or pretrained.lower() in RANDOM_TAGS:
        return ResolvedWeights(None, {}, False)
    if pretrained == BUNDLED_TAG:
        if model != BUNDLED_MODEL:
            raise ModelError(f"pretrained tag {BUNDLED_TAG!r} only exists for --model {BUNDLED_MODEL}, not {model}")
        path = bundled_weights_path()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"the bundled {BUNDLED_MODEL} weights are missing from the installed package ({path}); "
                "reinstall clipsearch, or train them with `clipsearch train` (see README)")
        return ResolvedWeights(str(path), {}, False)
    if os.path.isfile(pretrained):
        return ResolvedWeights(os.path.abspath(pretrained), {}, False)
    if _looks_like_path(pretrained):
        raise WeightsUnavailableError(f"checkpoint file {pretrained} does not exist; check the path given to --pretrained")

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        listing = ", ".join(tags) if tags else "none: pass a checkpoint path"
        raise ModelError(f"unknown pretrained tag {pretrained!r} for model {model}; known tags: {listing}")
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    quick_gelu = bool(cfg.get("quick_gelu", False))
    local = _cached_tag_file(cfg, cache_dir)
    if local:
        return ResolvedWeights(local, preprocess, quick_gelu)

    where = "the Hugging Face cache" if cfg.get("hf_hub") else (cache_dir or "~/.cache/clip")
    if allow_download is None:
        allow_download = not _is_offline()
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.get("hf_hub") else cfg.get("url", "")
    if not allow_download or not _network_reachable(endpoint):
        raise WeightsUnavailableError(_weights_help(model, pretrained, where))
    try:
        log.info("downloading weights for %s/%s", model, pretrained)
        path = open_clip.download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as exc:  # network and hub errors come in many types
        raise WeightsUnavailableError(f"{_weights_help(model, pretrained, where)} (download failed: {exc})") from exc
    return ResolvedWeights(path, preprocess, quick_gelu)


def default_pretrained(model: str) -> str | None:
    """The tag used when a model is named without one: bundled for toyworld, else open_clip's first tag."""
    import open_clip

    if model == BUNDLED_MODEL:
        return BUNDLED_TAG
    tags = open_clip.list_pretrained_tags_by_model(model)
    return tags[0] if tags else None


def pick_device(device: str | None = None) -> str:
    """`device` if given, else CUDA when present, else CPU."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipEncoder:
    """An open_clip model with its preprocessing and tokenizer, encoding to normalised float32 numpy."""

    def __init__(self, model: "torch.nn.Module", preprocess: Callable[["Image.Image"], "torch.Tensor"],
                 tokenizer: Callable[[Sequence[str]], "torch.Tensor"], *, name: str,
                 pretrained: str | None, device: str) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.device = device
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       and hasattr(model.text_projection, "shape") else self._probe_dim())
        size = getattr(getattr(model, "visual", None), "image_size", None)
        self.image_size: int | None = int(size[0] if isinstance(size, (tuple, list)) else size) if size else None

    def _probe_dim(self) -> int:
        return int(self.encode_texts(["probe"]).shape[1])

    def _to_numpy(self, features: "torch.Tensor") -> np.ndarray:
        import torch

        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)

    def encode_image_tensors(self, batch: "torch.Tensor") -> np.ndarray:
        """Encode an already preprocessed (N, 3, H, W) batch."""
        import torch

        with torch.inference_mode():
            return self._to_numpy(self.model.encode_image(batch.to(self.device)))

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 64) -> np.ndarray:
        """Encode RGB PIL images; returns (N, dim) float32 with unit rows."""
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
            out.append(self.encode_image_tensors(batch))
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode strings; returns (N, dim) float32 with unit rows."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start:start + batch_size])).to(self.device)
                out.append(self._to_numpy(self.model.encode_text(tokens)))
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        return np.concatenate(out)


def _drop_open_clip_random_warning(record: logging.LogRecord) -> bool:
    # open_clip logs this on the root logger; we already warned in our own words.
    return not str(record.msg).startswith("No pretrained weights loaded")


def load_encoder(model: str = DEFAULT_MODEL, pretrained: str | None = BUNDLED_TAG, *, device: str | None = None,
                 cache_dir: str | None = None, allow_download: bool | None = None) -> ClipEncoder:
    """Build an open_clip model by name (or JSON config path) with the weights `pretrained` names.

    Raises ModelError for an unknown name or tag and WeightsUnavailableError when the
    weights are neither local nor downloadable.
    """
    import open_clip
    import torch

    register_model_configs()
    name = model
    if model.endswith(".json"):
        if not os.path.isfile(model):
            raise ModelError(f"model config file {model} does not exist")
        register_model_configs(model)
        name = Path(model).stem
    known = open_clip.list_models()
    if not name.startswith(("hf-hub:", "local-dir:")) and name not in known:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(known)}")
    weights = resolve_weights(name, pretrained, cache_dir=cache_dir, allow_download=allow_download)
    dev = pick_device(device)
    if weights.path is None:
        log.warning("model %s has random weights (pretrained=%s): search results will be meaningless", name, pretrained)
    try:
        root_logger = logging.getLogger()
        root_logger.addFilter(_drop_open_clip_random_warning)
        # Seeded, so a random-weight model is the same in every process (index now, query later).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_INIT_SEED)
            clip, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=weights.path, device=dev, cache_dir=cache_dir,
                force_quick_gelu=weights.quick_gelu,
                image_mean=weights.preprocess_cfg.get("mean"),
                image_std=weights.preprocess_cfg.get("std"),
                image_interpolation=weights.preprocess_cfg.get("interpolation"),
                image_resize_mode=weights.preprocess_cfg.get("resize_mode"),
            )
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise ModelError(f"could not build model {name} with weights {weights.path or 'random'}: {exc}") from exc
    finally:
        root_logger.removeFilter(_drop_open_clip_random_warning)
    log.info("loaded %s/%s on %s", name, pretrained, dev)
    return ClipEncoder(clip, preprocess, tokenizer, name=name, pretrained=pretrained, device=dev)
