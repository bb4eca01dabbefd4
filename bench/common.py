"""Shared helpers for the benchmarks: a CLIP-like synthetic embedding generator and timers.

Why synthetic: the benchmarks need 100k to 1M embeddings of a real CLIP model, and encoding
a million photos on two CPU cores takes days. What matters for an ANN index is the *shape*
of the point cloud, so the generator imitates the shape of CLIP ViT-B/32 embeddings:

* **A narrow cone.** Every CLIP image embedding shares a large common component: two
  unrelated photos have cosine ≈ 0.45-0.5, not 0. We add a shared mean direction `mu`.
* **A decaying spectrum.** CLIP embeddings are not isotropic: a few hundred directions hold
  most of the variance (PCA to 256 of 512 dims keeps ~90%). Cluster centres are drawn
  with per-axis scale `i ** -0.5` in a random orthonormal basis.
* **Clusters of very different sizes.** A photo library is a mixture of topics (a dog,
  a beach, documents...); cluster sizes are log-normal, so a few topics are large.
* **Anisotropic clusters.** Each cluster spreads mostly along its own few directions
  (pose, light, framing) plus a small isotropic part.
* **Text queries are not image vectors.** CLIP text embeddings live in a different cone
  (the "modality gap"): a text query is a point of the mixture near a cluster centre,
  shifted by one offset common to all queries, then renormalised. Its best cosine to an
  image is ~0.3-0.4 as for real text queries, and it is never a stored vector.

Everything is seeded; the same (n, dim, seed) gives the same vectors. Vectors are made
cluster by cluster, so 1M x 512 needs little more than the 2 GB the result itself takes.
"""
from __future__ import annotations

import gc
import os
import resource
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)).astype(np.float32))
    return q.astype(np.float32)


@dataclass
class ClipLikeMixture:
    """A seeded CLIP-like mixture of `clusters` anisotropic Gaussians on the unit sphere."""

    dim: int = 512
    clusters: int = 1000
    seed: int = 0
    mean_weight: float = 1.25   # size of the shared cone direction relative to a centre's spread
    spread: float = 0.9         # in-cluster spread along the cluster's own directions
    iso: float = 0.35           # in-cluster isotropic spread
    rank: int = 16              # directions each cluster mostly varies along
    gap: float = 2.2            # length of the text-vs-image modality offset
    query_spread: float = 0.6   # text queries are vaguer than photos: more spread around a centre

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        d = self.dim
        self.mu = _unit(rng.standard_normal(d).astype(np.float32))
        basis = _orthonormal(rng, d, d)
        scales = (np.arange(1, d + 1, dtype=np.float32) ** -0.5)
        scales /= np.sqrt((scales ** 2).sum())
        z = rng.standard_normal((self.clusters, d)).astype(np.float32) * scales
        centres = z @ basis.T
        centres = self.mean_weight * self.mu + centres
        self.centres = _unit(centres.astype(np.float32))
        sizes = rng.lognormal(0.0, 1.0, self.clusters)
        self.weights = (sizes / sizes.sum()).astype(np.float64)
        # Each cluster's own spread directions, lying mostly in the high-variance subspace.
        top = basis[:, : max(self.rank * 8, 64)]
        self.axes = np.stack([top @ _orthonormal(rng, top.shape[1], self.rank) for _ in range(self.clusters)])
        self.axis_scale = np.sort(rng.uniform(0.2, 1.0, (self.clusters, self.rank)).astype(np.float32), axis=1)[:, ::-1]
        gap = rng.standard_normal(d).astype(np.float32)
        gap -= (gap @ self.mu) * self.mu
        self.gap_vector = (self.gap * _unit(gap)).astype(np.float32)

    def _points(self, rng: np.random.Generator, labels: np.ndarray, spread: float) -> np.ndarray:
        d = self.dim
        # One pass per cluster (not per cluster and block): a thousand small matrix products,
        # not ten thousand, which matters on a busy machine where each one waits for threads.
        out = np.empty((len(labels), d), np.float32)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        bounds = np.searchsorted(sorted_labels, np.arange(self.clusters + 1))
        for c in range(self.clusters):
            lo, hi = bounds[c], bounds[c + 1]
            if lo == hi:
                continue
            m = hi - lo
            g = rng.standard_normal((m, self.rank), dtype=np.float32) * self.axis_scale[c]
            pts = self.centres[c] + spread * (g @ self.axes[c].T) / np.sqrt(self.rank)
            pts += rng.standard_normal((m, d), dtype=np.float32) * np.float32(self.iso / np.sqrt(d))
            out[order[lo:hi]] = _unit(pts)
        return out

    def images(self, n: int, *, seed_offset: int = 1) -> np.ndarray:
        """`n` image-like unit vectors, float32 (n, dim), in random cluster order."""
        rng = np.random.default_rng([self.seed, seed_offset])
        return self._points(rng, rng.choice(self.clusters, n, p=self.weights), self.spread)

    def text_queries(self, n: int, *, seed_offset: int = 2) -> np.ndarray:
        """`n` text-like queries: a blend of one or two topics, shifted by the modality gap, renormalised."""
        rng = np.random.default_rng([self.seed, seed_offset])
        first = self._points(rng, rng.choice(self.clusters, n, p=self.weights), self.query_spread)
        second = self._points(rng, rng.choice(self.clusters, n, p=self.weights), self.query_spread)
        # Half the queries name one topic ("a dog"), half blend two ("a dog on a beach").
        w = np.where(rng.random(n) < 0.5, 1.0, rng.uniform(0.5, 0.8, n)).astype(np.float32)[:, None]
        return _unit(_unit(w * first + (1 - w) * second) + self.gap_vector)


def describe_cloud(x: np.ndarray, queries: np.ndarray, rng_seed: int = 0) -> dict[str, float]:
    """A few numbers that show the cloud looks like CLIP's (for the docs)."""
    rng = np.random.default_rng(rng_seed)
    a = x[rng.choice(len(x), 2000, replace=False)]
    pair = (a[:1000] * a[1000:]).sum(1)
    best = (queries[:200] @ x[: min(len(x), 100_000)].T).max(1)
    cov = np.cov(a.T)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    return {
        "image_image_cos_mean": float(pair.mean()),
        "query_best_image_cos_mean": float(best.mean()),
        "pca256_variance_kept": float(ev[:256].sum() / ev.sum()) if len(ev) >= 256 else 1.0,
    }


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo ("unknown CPU" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cpu_and_load() -> str:
    """The CPU, its core count and the load average now: what a figure taken on a shared machine needs beside it."""
    load = os.getloadavg()
    return f"{cpu_model()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f}"


def machine() -> str:
    import platform

    import faiss

    cpu = cpu_model()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}, "
            f"faiss {faiss.__version__}, numpy {np.__version__}")


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def free() -> None:
    gc.collect()
