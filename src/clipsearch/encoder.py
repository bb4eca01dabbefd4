"""open_clip model loading and batched encoding to L2-normalised float32 numpy.

Weights come from, in order of preference: a local checkpoint file, the bundled
`toyworld` model, the Hugging Face (or `~/.cache/clip`) cache, and only then the network.
Without a network the load fails in seconds with a message that says how to supply
weights; it never hangs in retries.

Longer than most modules on purpose: open_clip loading and weight resolution, the ONNX image
backends (fp32, int8) and `LazyEncoder` share the model signature and the export cache keys;
the text tower's export is in `text_onnx`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence, runtime_checkable
from urllib.parse import urlparse

import numpy as np

from clipsearch.errors import ModelError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipsearch.images import PixelSpec

log = logging.getLogger(__name__)

BUNDLED_MODEL = "toyworld"
BUNDLED_TAG = "bundled"
BUNDLED_WEIGHTS = "toyworld.safetensors"
DEFAULT_MODEL = BUNDLED_MODEL
RANDOM_TAGS = frozenset({"none", "random"})
_RANDOM_INIT_SEED = 0
IMAGE_BACKENDS = ("auto", "torch", "onnxruntime", "onnx-int8")
INT8_BACKEND = "onnx-int8"
IMAGE_BACKEND_ENV = "CLIPSEARCH_IMAGE_BACKEND"
ONNX_CACHE_ENV = "CLIPSEARCH_ONNX_CACHE"
# "auto" moves a CPU encoder to onnxruntime (when installed) for a job of at least this
# many images: the one-off export (4-6 s for ViT-B-32, then cached) is repaid within a few
# hundred images at 2x torch's speed, and a single query image never pays it.
AUTO_ONNX_MIN_IMAGES = 256
_ONNX_OPSET = 17
_ONNX_MIN_COSINE = 0.999
# The int8 image tower (dynamically quantised) is accepted when its vectors stay this close
# to torch's fp32 ones on the probe batch; measured 0.9997+ on the bundled model and
# ViT-B-32 (docs/performance.md).
INT8_MIN_COSINE = 0.99
# "auto" moves a new library's bulk encoding to int8 only when int8 measured at least this
# much faster than fp32 onnxruntime on this machine (timed once per model, then cached).
AUTO_INT8_MIN_SPEEDUP = 1.2
# ...and only for a first job of this many photos: quantising (and timing) ViT-B-32 once
# costs about a minute, which 1.5x repays only over a few thousand photos.
AUTO_INT8_MIN_IMAGES = 2000


def precision_of(image_backend: str) -> str:
    """The vector precision class an image backend produces: "int8" or "fp32" (torch and fp32 onnxruntime agree to 0.999)."""
    return "int8" if image_backend == INT8_BACKEND else "fp32"


@runtime_checkable
class Encoder(Protocol):
    """What the indexer and searcher need from a model; tests pass fakes that satisfy it.

    An encoder may also say the side of its input images (`image_size`, an int): files are
    then decoded no larger than needed (`input_size`).
    """

    name: str
    pretrained: str | None
    dim: int

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = ...) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = ...) -> np.ndarray: ...


@runtime_checkable
class PixelEncoder(Encoder, Protocol):
    """An Encoder for bulk work: model pixels made in the decode workers, CPU threads, preparation for a big job.

    The indexer and the Ray workers check for it with `isinstance`. `pixel_spec` None means
    the model's preprocessing has no pixel form here: images then go to `encode_images`.
    """

    image_size: int | None
    pixel_spec: "PixelSpec | None"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode an (N, H, W, 3) uint8 batch made by `images.to_pixels(..., self.pixel_spec)`."""
        ...

    def image_threads(self, threads: int) -> contextlib.AbstractContextManager[None]:
        """A block in which images are encoded with `threads` CPU threads."""
        ...

    def prepare_bulk_encoding(self, count: int) -> None:
        """Called before `count` images are encoded (e.g. to move to a faster backend for a big job)."""
        ...


def pretrained_name(value: str | None) -> str | None:
    """The one reading of a pretrained value (--pretrained, a library's record, a training config):
    None for random weights (None, "none" or "random", in any case), else the value as given."""
    return None if value is None or value.strip().lower() in RANDOM_TAGS else value


def input_size(encoder: Encoder) -> int | None:
    """The side of the encoder's input images if it says (`image_size`), else None (decode at full size)."""
    size = getattr(encoder, "image_size", None)  # optional for plain encoders: see Encoder
    return int(size) if size else None


def pixel_encoder(encoder: Encoder) -> "PixelEncoder | None":
    """`encoder` as a PixelEncoder when it is one, else None."""
    return encoder if isinstance(encoder, PixelEncoder) else None


def onnx_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ONNX exports are cached: `cache_dir`, else $CLIPSEARCH_ONNX_CACHE, else ~/.cache/clipsearch/onnx."""
    return Path(cache_dir or os.environ.get(ONNX_CACHE_ENV) or Path.home() / ".cache" / "clipsearch" / "onnx")


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
    if pretrained_name(pretrained) is None:
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


_UNCHECKED: Any = object()


class ClipEncoder:
    """An open_clip model with its preprocessing and tokenizer, encoding to normalised float32 numpy."""

    def __init__(self, model: "torch.nn.Module", preprocess: Callable[["Image.Image"], "torch.Tensor"],
                 tokenizer: Callable[[Sequence[str]], "torch.Tensor"], *, name: str,
                 pretrained: str | None, device: str) -> None:
        self.model = model.eval()
        self._trim_pool: Any = _UNCHECKED  # see _text_pool
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.device = device
        self.dim = int(model.text_projection.shape[1] if getattr(model, "text_projection", None) is not None
                       and hasattr(model.text_projection, "shape") else self._probe_dim())
        size = getattr(getattr(model, "visual", None), "image_size", None)
        self.image_size: int | None = int(size[0] if isinstance(size, (tuple, list)) else size) if size else None
        # Worker processes decode straight to model-sized pixels when the preprocessing is
        # a plain resize/crop/normalise we can describe without torch; None otherwise.
        self.pixel_spec, self._normalize = _describe_preprocess(preprocess)
        self.image_backend = "torch"          # what encodes images now
        self.image_backend_choice = "torch"   # what was asked: auto, torch, onnxruntime or onnx-int8
        # The precision the library being synced holds ("fp32", "int8" or None for none yet):
        # "auto" keeps to it, so a library's vectors never mix silently (see Library.index).
        self.library_precision: str | None = None
        self.int8_cosine: float | None = None  # int8 vs torch fp32 on the probe batch, once measured
        self._onnx_session: Any = None
        self._auto_tried = False

    def _probe_dim(self) -> int:
        return int(self.encode_texts(["probe"]).shape[1])

    def _to_numpy(self, features: "torch.Tensor") -> np.ndarray:
        import torch

        features = torch.nn.functional.normalize(features.float(), dim=-1)
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)

    def encode_image_tensors(self, batch: "torch.Tensor") -> np.ndarray:
        """Encode an already preprocessed (N, 3, H, W) batch."""
        import torch

        if self._onnx_session is not None:
            pixels = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
            return self._to_numpy(torch.from_numpy(self._onnx_session.run(None, {"pixels": pixels})[0]))
        with torch.inference_mode():
            return self._to_numpy(self.model.encode_image(batch.to(self.device)))

    @contextlib.contextmanager
    def image_threads(self, threads: int) -> Iterator[None]:
        """Encode images with `threads` CPU threads inside the block (torch's setting is process-wide).

        For the indexer's `encode_threads`. An onnxruntime session keeps the thread count
        it was made with (`use_onnxruntime(threads=...)`).
        """
        import torch

        before = torch.get_num_threads()
        if self.device == "cpu" and threads > 0:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def prepare_bulk_encoding(self, count: int) -> None:
        """Called by the indexer before it encodes `count` images.

        With the "auto" image backend, on the CPU, for `AUTO_ONNX_MIN_IMAGES` images or
        more, and when onnxruntime and onnx are installed, images are encoded with
        onnxruntime from now on (2x torch on 2 cores, same vectors: see use_onnxruntime).
        A library that holds int8 vectors stays on int8 whatever the count; a new one
        (`library_precision` None) with AUTO_INT8_MIN_IMAGES photos or more goes to int8
        when `int8_measured_faster` says so on this machine; one that holds fp32 vectors
        stays fp32.
        If the export or the check fails, a warning says why and torch carries on.
        """
        if (self.image_backend_choice != "auto" or self._onnx_session is not None or self._auto_tried
                or self.device != "cpu"):
            return
        if count < AUTO_ONNX_MIN_IMAGES and self.library_precision != "int8":
            return
        if not (_installed("onnxruntime") and _installed("onnx")):
            return
        self._auto_tried = True
        try:
            int8 = self.library_precision == "int8" or (self.library_precision is None and count >= AUTO_INT8_MIN_IMAGES
                                                        and self.int8_measured_faster())
            self.use_onnxruntime(int8=int8)
        except ModelError as exc:
            log.warning("%s; encoding images with torch (--image-backend torch says so at once)", exc)

    def int8_measured_faster(self, cache_dir: str | os.PathLike | None = None) -> bool:
        """Whether the int8 image tower beats fp32 onnxruntime here by AUTO_INT8_MIN_SPEEDUP and is accurate.

        Timed once per model and CPU on a probe batch (both sessions, interleaved, best of
        three), and the answer kept next to the exports. False without a VNNI or AMX CPU.
        """
        import json

        flags = _cpu_flags()
        if not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return False
        folder = onnx_cache_dir(cache_dir)
        note = folder / f"{_safe(self.name)}-{self._visual_digest()}-int8-choice.json"
        cpu = _cpu_model()
        try:
            saved = json.loads(note.read_text(encoding="utf-8"))
            if saved.get("cpu") == cpu:
                return bool(saved["faster"])
        except (OSError, ValueError, KeyError):
            pass
        speedup, cosine = self._time_int8(cache_dir)
        faster = speedup >= AUTO_INT8_MIN_SPEEDUP and cosine >= INT8_MIN_COSINE
        log.info("int8 image tower of %s: %.2fx fp32 onnxruntime, cosine %.5f: %s", self.name, speedup, cosine,
                 "used by auto" if faster else "not used by auto")
        try:
            note.write_text(json.dumps({"cpu": cpu, "speedup": round(speedup, 3), "cosine": round(cosine, 6),
                                        "faster": faster}), encoding="utf-8")
        except OSError:
            pass
        return faster

    def _time_int8(self, cache_dir: str | os.PathLike | None) -> tuple[float, float]:
        import time

        import onnxruntime

        fp32 = self._export_path(cache_dir)
        if not fp32.is_file():
            self._export_visual(fp32)
        int8 = self._int8_path(fp32)
        sessions = [onnxruntime.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, int8)]
        pixels = np.random.default_rng(0).random((16, 3, self.image_size, self.image_size), np.float32)
        best = [float("inf"), float("inf")]
        outs = []
        for _ in range(3):
            for i, session in enumerate(sessions):
                started = time.perf_counter()
                out = session.run(None, {"pixels": pixels})[0]
                best[i] = min(best[i], time.perf_counter() - started)
                if len(outs) < 2:
                    outs.append(out / np.linalg.norm(out, axis=1, keepdims=True))
        return best[0] / best[1], float((outs[0] * outs[1]).sum(axis=1).min())

    def use_onnxruntime(self, cache_dir: str | os.PathLike | None = None, *, threads: int | None = None,
                        int8: bool = False) -> Path:
        """Encode images with ONNX Runtime from now on; returns the exported model's path.

        `int8`: the image tower dynamically quantised to int8 weights and activations
        (onnxruntime.quantization, made once from the fp32 export and cached beside it),
        accepted when its vectors stay within cosine INT8_MIN_COSINE of torch's; 1.5x fp32
        on a CPU with VNNI (docs/performance.md). `self.int8_cosine` keeps that cosine.

        The image tower is exported once per set of weights and cached in `cache_dir`
        (default $CLIPSEARCH_ONNX_CACHE, else ~/.cache/clipsearch/onnx), then checked
        against torch on a probe batch.
        Raises ModelError when onnxruntime or onnx is missing, the export fails, or the
        vectors differ from torch's (cosine under 0.999); the encoder then stays on torch.
        This encoder's texts stay on torch; `LazyEncoder` (what a Library uses) encodes
        them with the exported text tower (`clipsearch.text_onnx`).
        """
        import torch

        try:
            import onnxruntime
        except ImportError as exc:
            raise ModelError("the onnxruntime image backend needs onnxruntime and onnx: "
                             "pip install 'clipsearch[onnx]'") from exc
        if self.device != "cpu" or self.image_size is None:
            raise ModelError(f"the onnxruntime image backend runs {self.name} on the CPU only (device is {self.device})")
        path = self._export_path(cache_dir)
        if not path.is_file():
            self._export_visual(path)
        if int8:
            path = self._int8_path(path)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads  # else onnxruntime's default: one per physical core
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a bad or truncated file
            raise ModelError(f"onnxruntime could not load {path}: {exc}; delete the file to export it again") from exc

        probe = torch.rand(4, 3, self.image_size, self.image_size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = self._to_numpy(self.model.encode_image(probe))
        got = self._to_numpy(torch.from_numpy(session.run(None, {"pixels": probe.numpy()})[0]))
        cosine = float((expected * got).sum(axis=1).min())
        if cosine < (INT8_MIN_COSINE if int8 else _ONNX_MIN_COSINE):
            raise ModelError(f"onnxruntime's {'int8 ' if int8 else ''}{self.name} image vectors differ from torch's "
                             f"(cosine {cosine:.5f}); staying on torch")
        self._onnx_session = session
        self.image_backend = INT8_BACKEND if int8 else "onnxruntime"
        if int8:
            self.int8_cosine = cosine
        log.info("encoding images of %s with onnxruntime (%s, cosine to torch %.6f)", self.name, path, cosine)
        return path

    def _export_path(self, cache_dir: str | os.PathLike | None = None) -> Path:
        return onnx_cache_dir(cache_dir) / f"{_safe(self.name)}-{self._visual_digest()}-opset{_ONNX_OPSET}.onnx"

    def _int8_path(self, fp32: Path) -> Path:
        """The int8 (dynamic quantisation) version of the fp32 export `fp32`, made on first use."""
        path = fp32.with_name(fp32.stem + "-int8dyn.onnx")
        if not path.is_file():
            quantize_int8(fp32, path)
            log.info("quantised the image tower of %s to int8: %s", self.name, path)
        return path

    def _visual_digest(self) -> str:
        """A short hash of the image tower's weights, naming its exported file."""
        import hashlib

        import torch

        digest = hashlib.blake2b(digest_size=8)
        for key, tensor in sorted(self.model.visual.state_dict().items()):
            digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    def _export_visual(self, path: Path) -> None:
        import warnings

        import torch

        from clipsearch.atomic import atomic_path

        dummy = torch.zeros(2, 3, self.image_size, self.image_size)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:  # replaces `path` once the export succeeded
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
                        torch.onnx.export(self.model.visual.eval(), (dummy,), str(tmp), input_names=["pixels"],
                                          output_names=["features"], opset_version=_ONNX_OPSET, dynamo=False,
                                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}})
                except Exception as exc:
                    raise ModelError(f"could not export the image tower of {self.name} to ONNX: {exc}") from exc
        except OSError as exc:
            raise ModelError(f"cannot write the ONNX export to {path.parent} ({exc.strerror or exc}); "
                             f"set ${ONNX_CACHE_ENV} to a writable folder") from exc
        log.info("exported the image tower of %s to %s", self.name, path)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode a (N, H, W, 3) uint8 batch made by `images.to_pixels(..., self.pixel_spec)`.

        Gives the vectors `encode_images` gives for the same images: the same ToTensor and
        Normalize arithmetic, batched.
        """
        import torch

        if self.pixel_spec is None or self._normalize is None:
            raise ModelError(f"model {self.name} has a preprocessing clipsearch cannot describe as pixels; "
                             "use encode_images")
        mean, std = self._normalize
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
        batch = batch.float().div_(255)
        batch.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        batch.div_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        return self.encode_image_tensors(batch)

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 64) -> np.ndarray:
        """Encode RGB PIL images; returns (N, dim) float32 with unit rows."""
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + batch_size]])
            out.append(self.encode_image_tensors(batch))
        return np.concatenate(out)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Encode strings; returns (N, dim) float32 with unit rows.

        Texts are batched in order of length, and each batch runs only up to its longest
        text's end token (see `_text_pool`): open_clip's vectors, 3x sooner for a short
        query to ViT-B-32.
        """
        import torch

        if not len(texts):
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        trim = self._text_pool() is not None
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts))
            order = np.argsort(-_text_ends(tokens).numpy(), kind="stable") if trim else np.arange(len(texts))
            parts = []
            for start in range(0, len(texts), batch_size):
                rows = torch.from_numpy(order[start:start + batch_size])
                batch = tokens[rows].to(self.device)
                parts.append(self._to_numpy(self._encode_trimmed(batch) if trim else self.model.encode_text(batch)))
        out = np.empty((len(texts), parts[0].shape[1]), np.float32)
        out[order] = np.concatenate(parts)
        return out

    def _text_pool(self) -> str | None:
        """'argmax' when the text tower can stop at the end-of-text token, else None.

        open_clip's CLIP class runs a causal transformer over all `context_length` (77)
        positions and reads the vector at the end-of-text token (the highest token id);
        the padding after it cannot change that vector, so it need not be computed. This is
        checked once against `encode_text` on probe texts; any other tower (Hugging Face
        text models, CoCa, other pooling) keeps open_clip's `encode_text`.
        """
        if self._trim_pool is not _UNCHECKED:
            return self._trim_pool
        self._trim_pool = None
        try:
            import open_clip
            import torch

            model = self.model
            if (type(model) is not open_clip.model.CLIP or getattr(model, "text_pool_type", None) != "argmax"
                    or getattr(model, "attn_mask", None) is None):
                return None
            with torch.inference_mode():
                tokens = self.tokenizer(["a photo of a dog", "x", "a red car on a road at night, seen from afar"])
                tokens = tokens.to(self.device)
                full = model.encode_text(tokens).float()
                trimmed = self._encode_trimmed(tokens).float()
            if torch.allclose(full, trimmed, rtol=1e-3, atol=1e-4 * float(full.abs().max())):
                self._trim_pool = "argmax"
            else:
                log.info("the text tower of %s does not stop early exactly; encoding all positions", self.name)
        except Exception as exc:  # an unusual tower: open_clip's own encode_text it is
            log.info("the text tower of %s cannot stop early (%s); encoding all positions", self.name, exc)
        return self._trim_pool

    def _encode_trimmed(self, tokens: "torch.Tensor") -> "torch.Tensor":
        """open_clip's `CLIP.encode_text`, over the positions up to the batch's last end token."""
        import torch
        from open_clip.transformer import text_global_pool

        model = self.model
        length = int(_text_ends(tokens).max()) + 1
        tokens = tokens[:, :length]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        batch_first = getattr(model.transformer, "batch_first", True)  # open_clip before 2.26: sequence first
        x = x if batch_first else x.permute(1, 0, 2)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = x if batch_first else x.permute(1, 0, 2)
        x = text_global_pool(model.ln_final(x), tokens, "argmax")
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Write `src` (an fp32 ONNX model) to `dst` with int8 weights and dynamically quantised activations.

    Dynamic quantisation, not static: as fast here (1.53x vs 1.50x fp32 on the bundled
    model), closer to fp32 (cosine 0.9998 vs 0.9990 at worst), and it needs no calibration
    photos. See docs/performance.md and bench/bench_indexing.py --int8.
    """
    import tempfile

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise ModelError("the onnx-int8 image backend needs onnxruntime and onnx: pip install 'clipsearch[onnx]'") \
            from exc
    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # an optimisation step only: quantise the export as it is
            log.info("quantisation pre-processing of %s failed (%s); quantising it as exported", src, exc)
            prepared = Path(src)
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
        except Exception as exc:  # onnxruntime's quantiser raises many types
            raise ModelError(f"could not quantise {src} to int8: {exc}") from exc
        os.replace(out, dst)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _text_ends(tokens: "torch.Tensor") -> "torch.Tensor":
    """Each tokenised text's end-of-text position (CLIP's end token has the highest id)."""
    return tokens.argmax(dim=-1)


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    import importlib.util
    import sys

    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _describe_preprocess(preprocess: object) -> tuple[Any, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """(PixelSpec, (mean, std)) for open_clip's eval transform (Resize, CenterCrop, RGB, ToTensor, Normalize).

    (None, None) for anything else (a 'longest' resize with padding, augmentations, a custom
    callable): the indexer then hands decoded images to `encode_images` instead.
    """
    try:
        from PIL import Image
        from torchvision import transforms as T
    except ImportError:
        return None, None
    from clipsearch.images import PixelSpec

    steps = list(getattr(preprocess, "transforms", None) or [])
    if not steps or not isinstance(steps[0], T.Resize) or steps[0].max_size is not None:
        return None, None
    resize = steps.pop(0)
    resample = {T.InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
                T.InterpolationMode.BILINEAR: Image.Resampling.BILINEAR}.get(resize.interpolation)
    size = resize.size
    if resample is None or not isinstance(size, (int, list, tuple)):
        return None, None
    if isinstance(size, (list, tuple)):
        size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
    crop = None
    if steps and isinstance(steps[0], T.CenterCrop):
        crop = tuple(int(v) for v in steps.pop(0).size)
        crop = (crop[0], crop[0]) if len(crop) == 1 else crop
    # Our decoder already hands over RGB, so open_clip's RGB conversion is a no-op.
    while steps and (getattr(steps[0], "mode", None) == "RGB" or getattr(steps[0], "__name__", "") == "_convert_to_rgb"):
        steps.pop(0)
    if len(steps) != 2 or not isinstance(steps[0], T.ToTensor) or not isinstance(steps[1], T.Normalize):
        return None, None
    mean, std = (tuple(float(v) for v in steps[1].mean), tuple(float(v) for v in steps[1].std))
    return PixelSpec(size, crop, resample), (mean, std)


def _drop_open_clip_random_warning(record: logging.LogRecord) -> bool:
    # open_clip logs this on the root logger; we already warned in our own words.
    return not str(record.msg).startswith("No pretrained weights loaded")


def load_encoder(model: str = DEFAULT_MODEL, pretrained: str | None = BUNDLED_TAG, *, device: str | None = None,
                 cache_dir: str | None = None, allow_download: bool | None = None,
                 image_backend: str | None = None) -> ClipEncoder:
    """Build an open_clip model by name (or JSON config path) with the weights `pretrained` names.

    `image_backend` (default: $CLIPSEARCH_IMAGE_BACKEND, else "auto"): "torch"; "onnxruntime"
    for the image tower from the start (a warning says so when it is missing or fails its
    check, and torch encodes); "onnx-int8", the same quantised to int8; "auto", torch until
    an indexing job of many images on the CPU, which moves to onnxruntime when it is
    installed, in int8 where that measured faster here (`prepare_bulk_encoding`).
    Raises ModelError for an unknown name or tag and
    WeightsUnavailableError when the weights are neither local nor downloadable.
    """
    backend = (image_backend or os.environ.get(IMAGE_BACKEND_ENV, "") or "auto").strip().lower()
    if backend not in IMAGE_BACKENDS:
        raise ModelError(f"unknown image backend {backend!r}; choose one of {', '.join(IMAGE_BACKENDS)}")
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
    encoder = ClipEncoder(clip, preprocess, tokenizer, name=name, pretrained=pretrained, device=dev)
    encoder.image_backend_choice = backend
    if backend in ("onnxruntime", INT8_BACKEND):
        try:
            encoder.use_onnxruntime(int8=backend == INT8_BACKEND)
        except ModelError as exc:
            if backend == INT8_BACKEND:
                raise  # a library must not get fp32 vectors when int8 was asked for
            log.warning("%s; encoding images with torch", exc)
    return encoder


FAST_PATH_ENV = "CLIPSEARCH_FAST_PATH"


def fast_path_enabled(fast_path: bool | None = None) -> bool:
    """`fast_path` if given, else False only when $CLIPSEARCH_FAST_PATH is 0/false/no/off."""
    if fast_path is not None:
        return fast_path
    return os.environ.get(FAST_PATH_ENV, "").strip().lower() not in ("0", "false", "no", "off")


class LazyEncoder:
    """A library's model, loaded only as far as the work at hand needs.

    Texts go through the torch-free path (`clipsearch.text_onnx`: the exported text tower
    and `clipsearch.tokenizer`), so a query imports neither torch nor open_clip. The
    open_clip model loads on first need: encoding images or pixels, a model whose text
    tower has no export yet (which it then exports, once, and says so), or one that cannot
    have one (recorded, so later queries go to torch at once). A sync with nothing to
    encode never loads it. With `fast_path=False` texts go through torch too.
    """

    def __init__(self, name: str, pretrained: str | None, dim: int, *, device: str | None = None,
                 image_backend: str | None = None, fast_path: bool | None = None,
                 cache_dir: str | os.PathLike | None = None, full: "Encoder | None" = None,
                 load: "Callable[[], Encoder] | None" = None) -> None:
        """`full`: the model if already loaded; `load`: how to load it (default `load_encoder`)."""
        import threading

        self.name = name
        self.pretrained = pretrained
        self.dim = dim
        self.device = device
        self.image_backend_choice = image_backend
        self.fast_path = fast_path_enabled(fast_path) and device in (None, "cpu")
        self.cache_dir = cache_dir
        self._full = full
        self._load = load
        self._library_precision: str | None = None
        self._text: Any = _UNCHECKED
        self._lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        """Whether the open_clip (torch) model has been loaded in this process."""
        return self._full is not None

    @property
    def full(self) -> "Encoder":
        """The open_clip model, loaded on first use."""
        with self._lock:
            if self._full is None:
                self._full = self._load() if self._load is not None else load_encoder(
                    self.name, self.pretrained, device=self.device, image_backend=self.image_backend_choice)
                if self._full.dim != self.dim:
                    raise ModelError(f"model {self.name} gives {self._full.dim}-d vectors, expected {self.dim}")
                if isinstance(self._full, ClipEncoder):
                    self._full.library_precision = self._library_precision
            return self._full

    @property
    def library_precision(self) -> str | None:
        """The precision of the vectors the library holds; `auto` keeps to it (see ClipEncoder)."""
        return self._library_precision

    @library_precision.setter
    def library_precision(self, value: str | None) -> None:
        self._library_precision = value
        if isinstance(self._full, ClipEncoder):
            self._full.library_precision = value

    @property
    def int8_cosine(self) -> float | None:
        """int8 vs fp32 cosine measured when the int8 image tower was loaded, else None."""
        return getattr(self._full, "int8_cosine", None)

    @property
    def text_backend(self) -> str:
        """"onnxruntime" when texts are encoded without torch, else "torch" (checked on first call)."""
        return "onnxruntime" if self._text_encoder() is not None else "torch"

    def _text_encoder(self) -> Any:
        with self._lock:
            if self._text is not _UNCHECKED:
                return self._text
            self._text = None
            if not self.fast_path or not _installed("onnxruntime"):
                return None
            from clipsearch import text_onnx

            record = text_onnx.find_export(self.name, self.pretrained, self.cache_dir)
            if record is not None and record.dim != self.dim:
                log.warning("the text tower export of %s gives %d-d vectors, the library holds %d-d ones; "
                            "encoding texts with torch", self.name, record.dim, self.dim)
                return None
            if record is None:
                full = self.full
                if not isinstance(full, ClipEncoder) or not _installed("onnx"):
                    return None
                try:
                    record = text_onnx.export_text_tower(full, self.pretrained, self.cache_dir)
                except ModelError as exc:
                    log.warning("%s; encoding texts with torch", exc)
                    return None
                if record.usable:
                    log.warning("exported the text tower of %s for torch-free queries in %.1f s (once; "
                                "cosine to torch %.6f)", self.name, record.export_seconds, record.min_cosine)
                else:
                    log.warning("%s: no torch-free queries (%s); texts are encoded with torch", self.name,
                                record.reason)
            if record.usable:
                try:
                    self._text = text_onnx.OnnxTextEncoder(record, self.cache_dir)
                except ModelError as exc:
                    log.warning("%s; encoding texts with torch", exc)
            return self._text

    @property
    def text_tower(self) -> Any:
        """The torch-free text encoder (`text_onnx.OnnxTextEncoder`), or None when texts go through torch."""
        return self._text_encoder()

    def warm_up(self) -> None:
        """Load what text queries need, ready for many of them (the torch-free tower's prepacked session, else torch)."""
        text = self._text_encoder()
        if text is None:
            self.full  # noqa: B018  (loads the model)
        else:
            text.prepack()

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """(N, dim) float32 unit rows; torch-free when the model's text tower is exported."""
        text = self._text_encoder()
        if text is None:
            return self.full.encode_texts(texts, batch_size=batch_size)
        return text.encode_texts(texts, batch_size=batch_size)

    def encode_images(self, images: Sequence["Image.Image"], batch_size: int = 64) -> np.ndarray:
        return self.full.encode_images(images, batch_size=batch_size)

    # The PixelEncoder protocol, for the indexer when it has photos to encode: each loads the
    # model and hands over the model's own capability (none where the model lacks it).
    @property
    def image_size(self) -> int | None:
        return input_size(self.full)

    @property
    def pixel_spec(self) -> "PixelSpec | None":
        full = pixel_encoder(self.full)
        return full.pixel_spec if full is not None else None

    @property
    def image_backend(self) -> str:
        return getattr(self.full, "image_backend", "torch")

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        full = pixel_encoder(self.full)
        if full is None:
            raise ModelError(f"model {self.name} does not encode pixels; use encode_images")
        return full.encode_pixels(pixels)

    def prepare_bulk_encoding(self, count: int) -> None:
        full = pixel_encoder(self.full)
        if full is not None:
            full.prepare_bulk_encoding(count)

    @contextlib.contextmanager
    def image_threads(self, threads: int) -> Iterator[None]:
        full = pixel_encoder(self.full)
        with full.image_threads(threads) if full is not None else contextlib.nullcontext():
            yield
