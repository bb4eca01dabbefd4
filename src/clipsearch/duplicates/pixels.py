"""Pixel evidence for duplicates: a DCT hash, a small grey signature, alignment and motion.

Everything here works on one image or one pair, with numpy and Pillow only (no torch,
no scipy). `compare` decides whether two pictures are the *same picture* (one is a
resized, re-encoded, cropped, rotated, retouched or captioned copy of the other), the
*same moment* (the same view with something moved) or neither, from their signatures:

1. **Rotation.** The 63-bit DCT sign hash of a rotated image is a bit permutation of the
   hash, so the four rotations are compared without touching pixels; rotations far from
   the best one, or whose aspect ratio cannot match, are skipped.
2. **Alignment.** One picture is taken as a window (down to `MIN_CROP` of each side) of
   the other: a coarse search over scales and offsets on 32 px copies by normalised
   cross-correlation, then Gauss-Newton on the window and an exposure gain/offset on the
   128 px signatures, fitted on the best-matching `TRIM` of the pixels, from the best
   coarse windows and the whole frame; the window under which most structure agrees wins.
3. **Residual blocks.** The aligned pair is cut into 8 px blocks; blocks without
   structure are no evidence. A block is *unchanged* when its difference is within the
   noise plus what half a pixel of misalignment leaves at edges both pictures have,
   *moved* when a local shift of `MIN_MOTION_PX`..`MAX_MOTION_PX` explains it both ways
   round and a neighbour moved the same way (an overlay is in one picture only: shifting
   never explains it both ways), and *changed* otherwise.

Copy: at most `COPY_MAX_MOVED` moved blocks, NCC >= `COPY_MIN_NCC` once aligned, at most
`COPY_MAX_CHANGED` of the structure changed. Moment: NCC >= `MOMENT_MIN_NCC` and either
`MOMENT_MIN_MOVED` moved blocks with at most `MOMENT_MAX_CHANGED` changed, or
`MOMENT_FEW_MOVED` with at most `MOMENT_FEW_CHANGED`, or `MOMENT_FEW_MOVED` with at most
`MOMENT_MAX_CHANGED` changed where at least `MOMENT_SAME_DRAWING` of the structure is
unchanged. docs/duplicates.md has the rule and its measured quality.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO

import numpy as np
from PIL import Image

from clipsearch.images import load_image

SIDE = 128           # the signature: grey, SIDE x SIDE, the whole picture stretched to a square
COARSE = 32          # coarse alignment works on copies this big
HASH_SIDE = 32       # the DCT hash is taken from a grey copy this big
MIN_CROP = 0.8       # a copy keeps at least this much of each side of the picture
BLOCK = 8            # residual blocks, in signature pixels
MAX_MOTION_PX = 8    # local shifts tried per block (signature pixels: 6 % of the side)
MIN_MOTION_PX = 2    # smaller local shifts are alignment error, not motion
MIN_COARSE_NCC = 0.6 # below this on the coarse copies, the two are not one view
MIN_ALIGN_NCC = 0.5  # below this after alignment, the two are not one view
EDGE_TOLERANCE = 0.5 # pixels of misalignment or blur a block's difference may come from
NOISE_FLOOR = 3.0    # grey levels: block differences below this are noise
MOTION_FIT = 1.5     # a moved block, shifted back, is within this many times its tolerance
# The rule (docs/duplicates.md): blocks of 8 px of 256 on the 128 px signatures.
COPY_MAX_MOVED = 6       # a copy has (almost) nothing that moved ...
COPY_MIN_NCC = 0.85      # ... matches closely once aligned ...
COPY_MAX_CHANGED = 0.65  # ... and an overlay covers at most this much of its structure
MOMENT_MIN_MOVED = 14    # a moment has objects that moved ...
MOMENT_MIN_NCC = 0.6     # ... in one view ...
MOMENT_MAX_CHANGED = 0.65  # ... where most of the structure is unchanged or moved;
MOMENT_FEW_MOVED = 7     # or fewer moved blocks in a view where almost
MOMENT_FEW_CHANGED = 0.25  # nothing else changed,
MOMENT_SAME_DRAWING = 0.32  # or where this much of the structure is unchanged to the noise: the same
                            # drawing, which a picture drawn again never is (set on seed 1, see docs)
TRIM = 0.6           # alignment fits the best-matching 60 % of pixels: movers and overlays are outliers
MOTION_FIT = 1.5     # a moved block, shifted back, is within this many times its tolerance

ROTATION_MAX_HASH = 12  # a rotation other than none is tried when the hash turned so is this close
ROTATIONS = (0, 90, 180, 270)  # counter-clockwise degrees applied to the second picture


@dataclass(frozen=True)
class Signature:
    """What pixel evidence needs of one picture: its hash, a grey copy and its sizes."""

    phash: int                  # 63-bit DCT sign hash of the picture as displayed
    grey: np.ndarray            # float32 (SIDE, SIDE)
    width: int                  # displayed size (after EXIF rotation), before any reduction
    height: int
    sharpness: float            # variance of the Laplacian of a fixed-size grey copy

    @property
    def aspect(self) -> float:
        return self.width / self.height


@dataclass(frozen=True)
class PairEvidence:
    """How two signatures relate; `level` is "copy", "moment" or None."""

    level: str | None
    hash_distance: int          # smallest over the rotations tried
    rotation: int               # degrees counter-clockwise that turn the second into the first
    crop: float                 # area of the smaller view relative to the larger one's
    ncc: float                  # normalised cross-correlation after alignment
    unchanged: float            # fraction of blocks within the noise
    moved: int                  # blocks that a local shift explains
    changed: float              # fraction of blocks nothing explains (overlays, other content)
    reason: str


# -- the DCT sign hash -------------------------------------------------------------------
@lru_cache(maxsize=None)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m.astype(np.float64)


HASH_BITS = [(u, v) for u in range(8) for v in range(8) if (u, v) != (0, 0)]


def dct_hash(grey: np.ndarray) -> int:
    """63-bit hash of a grey image: the signs of its 8x8 lowest-frequency DCT terms (DC left out).

    Robust to resizing, re-encoding and exposure changes like any DCT hash; signs rather
    than comparisons with the median make rotations and flips bit permutations
    (`rotate_hash`).
    """
    img = Image.fromarray(np.asarray(grey, np.float32), "F").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX)
    g = np.asarray(img, np.float64)
    m = _dct_matrix(HASH_SIDE)
    coeffs = (m @ g @ m.T)[:8, :8]
    value = 0
    for i, (u, v) in enumerate(HASH_BITS):
        if coeffs[u, v] > 0:
            value |= 1 << i
    return value


def _bits(h: int) -> np.ndarray:
    out = np.zeros((8, 8), bool)
    for i, (u, v) in enumerate(HASH_BITS):
        out[u, v] = bool((h >> i) & 1)
    return out


def _from_bits(bits: np.ndarray) -> int:
    value = 0
    for i, (u, v) in enumerate(HASH_BITS):
        if bits[u, v]:
            value |= 1 << i
    return value


_ODD = (np.arange(8) % 2 == 1)


def rotate_hash(h: int, degrees: int) -> int:
    """The hash of the picture rotated counter-clockwise by `degrees` (a multiple of 90).

    Mirroring an axis flips the sign of that axis's odd DCT terms; a transpose swaps the
    axes; np.rot90 is a mirror of the columns and a transpose.
    """
    bits = _bits(h)
    for _ in range((degrees // 90) % 4):
        bits = bits ^ _ODD[None, :]   # mirror left-right: odd horizontal frequencies change sign
        bits = bits.T
    return _from_bits(bits)


def hamming(a: int, b: int) -> int:
    return int((a ^ b).bit_count())


# -- signatures --------------------------------------------------------------------------
def signature_of_image(image: Image.Image, size: tuple[int, int] | None = None) -> Signature:
    """The signature of a decoded RGB image; `size` is its displayed size when it was reduced."""
    width, height = size or image.info.get("original_size") or image.size
    grey_img = image.convert("L")
    grey = np.asarray(grey_img.resize((SIDE, SIDE), Image.Resampling.BOX), np.float32)
    return Signature(dct_hash(grey), grey, int(width), int(height), sharpness(grey_img))


def load_signature(source: str | os.PathLike | bytes | BinaryIO) -> Signature:
    """Decode a file (EXIF rotation applied, JPEGs at reduced scale) and return its signature."""
    image = load_image(source if not isinstance(source, bytes) else io.BytesIO(source), target_size=2 * SIDE)
    return signature_of_image(image)


def sharpness(grey: Image.Image, side: int = 256) -> float:
    """Variance of the Laplacian on a `side` px grey copy: higher is sharper (comparable across sizes)."""
    g = np.asarray(grey.convert("L").resize((side, side), Image.Resampling.BOX), np.float32)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


# -- alignment ---------------------------------------------------------------------------
# Resampling is written as small gathers, not matrix products: BLAS's threads make a
# 128 x 128 product take 90 ms instead of 0.2 ms on a loaded 2-core machine.
@lru_cache(maxsize=4096)
def _area_taps(n_out: int, n_in: int, start: float, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) taps, each (n_out, K), that resample the span [start, stop) of n_in pixels onto n_out."""
    edges = start + (stop - start) * np.arange(n_out + 1) / n_out
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    # Spans narrower than a pixel (upscaling) are sampled linearly around their centre.
    narrow = (hi - lo)[:, 0] < 1
    if narrow.any():
        c = np.clip(((lo + hi) / 2 - 0.5)[narrow, 0], 0, n_in - 1)
        f = np.floor(c).astype(int)
        w = c - f
        rows = np.zeros((int(narrow.sum()), n_in))
        rows[np.arange(len(f)), f] = 1 - w
        rows[np.arange(len(f)), np.minimum(f + 1, n_in - 1)] += w
        overlap[narrow] = rows
    overlap /= np.maximum(overlap.sum(axis=1, keepdims=True), 1e-9)
    k = max(1, int((overlap > 0).sum(axis=1).max()))
    idx = np.argsort(-overlap, axis=1, kind="stable")[:, :k]
    weight = np.take_along_axis(overlap, idx, axis=1)
    return idx, weight.astype(np.float32)


def _apply_rows(x: np.ndarray, taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    idx, weight = taps
    out = x[idx[:, 0]] * weight[:, :1]
    for k in range(1, idx.shape[1]):
        out += x[idx[:, k]] * weight[:, k:k + 1]
    return out


def _warp(src: np.ndarray, box: tuple[float, float, float, float], w: int, h: int) -> np.ndarray:
    """The `box` (x0, y0, x1, y1) of `src`, resampled to w x h."""
    x0, y0, x1, y1 = (round(float(v), 3) for v in box)
    rows = _apply_rows(src, _area_taps(h, src.shape[0], y0, y1))
    return np.ascontiguousarray(_apply_rows(rows.T, _area_taps(w, src.shape[1], x0, x1)).T)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    n = np.linalg.norm(x)
    return x / n if n > 1e-6 else x


def _ncc(x: np.ndarray, y: np.ndarray) -> float:
    return float((_unit(x) * _unit(y)).sum())


def _ncc_windows(src: np.ndarray, tgt_unit: np.ndarray) -> np.ndarray:
    """NCC of a zero-mean unit target against every window of `src` of its size."""
    th, tw = tgt_unit.shape
    win = np.lib.stride_tricks.sliding_window_view(src, (th, tw))
    num = np.einsum("pqij,ij->pq", win, tgt_unit)  # the target has zero mean
    n = th * tw
    c = np.pad(src, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    c2 = np.pad(src * src, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    s1 = c[th:, tw:] - c[:-th, tw:] - c[th:, :-tw] + c[:-th, :-tw]
    s2 = c2[th:, tw:] - c2[:-th, tw:] - c2[th:, :-tw] + c2[:-th, :-tw]
    var = np.maximum(s2 - s1 * s1 / n, 1e-6)
    return num / np.sqrt(var)


_COARSE_SCALES = (1.0, 0.96, 0.92, 0.88, 0.84, 0.8)


def _coarse(src: np.ndarray, tgt: np.ndarray, keep: int = 3) -> list[tuple[float, tuple[float, float, float, float]]]:
    """The best windows of `src` for all of `tgt` on COARSE px copies: [(ncc, box in src pixels)], best first."""
    n = src.shape[0]
    tgt_c = _unit(_warp(tgt, (0, 0, n, n), COARSE, COARSE))
    found: list[tuple[float, tuple[float, float, float, float]]] = []
    for w in _COARSE_SCALES:
        sw = int(round(COARSE / w))
        cols = _apply_rows(src.T, _area_taps(sw, n, 0.0, float(n))).T
        for h in _COARSE_SCALES:
            sh = int(round(COARSE / h))
            scaled = np.ascontiguousarray(_apply_rows(cols, _area_taps(sh, n, 0.0, float(n))))
            ncc = _ncc_windows(scaled, tgt_c)
            j = int(np.argmax(ncc))
            q, p = divmod(j, ncc.shape[1])
            fx, fy = n / sw, n / sh
            found.append((float(ncc.flat[j]), (p * fx, q * fy, (p + COARSE) * fx, (q + COARSE) * fy)))
    found.sort(key=lambda t: -t[0])
    best: list[tuple[float, tuple[float, float, float, float]]] = []
    for cand in found:
        if all(max(abs(x - y) for x, y in zip(cand[1], b[1])) > 3 for b in best):
            best.append(cand)
        if len(best) == keep:
            break
    return best


def _lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares by the normal equations, summed with einsum (no BLAS threads)."""
    A = A.astype(np.float64)
    ata = np.einsum("ij,ik->jk", A, A)
    aty = np.einsum("ij,i->j", A, y.astype(np.float64))
    return np.linalg.solve(ata + 1e-9 * np.eye(len(ata)), aty)


def _blur(x: np.ndarray) -> np.ndarray:
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    p = np.pad(x, 2, mode="edge")
    x = sum(k[i] * p[i:i + x.shape[0], 2:-2] for i in range(5))
    p = np.pad(x, ((0, 0), (2, 2)), mode="edge")
    return sum(k[i] * p[:, i:i + x.shape[1]] for i in range(5))


def _refine(src: np.ndarray, tgt: np.ndarray, box: tuple[float, float, float, float],
            iterations: int = 5) -> tuple[float, tuple[float, float, float, float]]:
    """Gauss-Newton on the box (x0, y0, x1, y1), with an exposure gain and offset; robust to overlays.

    A few steps on blurred copies (a wider basin) and then on the sharp ones.
    """
    n = tgt.shape[0]
    b = np.array(box, np.float64)
    u2 = ((np.arange(n) + 0.5) / n)[::2]
    ones = np.ones((n // 2) ** 2, np.float32)
    for s, t in (((_blur(_blur(src)), _blur(_blur(tgt)))), (src, tgt)):
        for _ in range(iterations):
            wimg = _warp(s, tuple(b), n, n)
            gy, gx = np.gradient(wimg)
            sx = gx * (n / max(b[2] - b[0], 1e-3))   # d image / d source x
            sy = gy * (n / max(b[3] - b[1], 1e-3))
            # Every other pixel each way: a quarter of the work, the same answer to well under a pixel.
            w2, t2, sx, sy = wimg[::2, ::2], t[::2, ::2], sx[::2, ::2], sy[::2, ::2]
            A = np.stack([w2.ravel(), ones], 1)
            go = _lstsq(A, t2.ravel())               # exposure: t ~ g * w + o
            r = t2.ravel() - A @ go
            ar = np.abs(r)
            keep = ar <= np.partition(ar, int(TRIM * r.size))[int(TRIM * r.size)]
            J = go[0] * np.stack([(sx * (1 - u2)[None, :]).ravel(), (sy * (1 - u2)[:, None]).ravel(),
                                  (sx * u2[None, :]).ravel(), (sy * u2[:, None]).ravel()], 1)
            step = np.clip(_lstsq(J[keep], r[keep]), -3, 3)
            b = b + step
            b[[0, 1]] = np.maximum(b[[0, 1]], 0.0)
            b[[2, 3]] = np.minimum(b[[2, 3]], float(src.shape[0]))
            if np.abs(step).max() < 0.05:
                break
    box_t = tuple(float(v) for v in b)
    return _ncc(_warp(src, box_t, n, n), tgt), box_t  # type: ignore[return-value]


# -- residual blocks ---------------------------------------------------------------------
def _blocks(x: np.ndarray) -> np.ndarray:
    n = x.shape[0] // BLOCK
    return x.reshape(n, BLOCK, n, BLOCK).mean(axis=(1, 3))


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the informative blocks that agree within tolerance (no motion search)."""
    return _blockwise(a, b)[0]


def _blockwise(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(unchanged fraction, a, b exposure-matched and smoothed, rms0, tol, informative, unchanged) per block."""
    A = np.stack([a.ravel(), np.ones(a.size, np.float32)], 1)
    coef = _lstsq(A, b.ravel())
    r = np.abs(b.ravel() - A @ coef)
    keep = r <= np.partition(r, int(0.8 * r.size))[int(0.8 * r.size)]
    coef = _lstsq(A[keep], b.ravel()[keep])
    a = (a * coef[0] + coef[1]).astype(np.float32)
    a, b = _blur(a), _blur(b)
    rms0 = np.sqrt(_blocks((b - a) ** 2))
    # What a residual alignment error of about half a pixel, or a different blur, leaves:
    # proportional to the edges both pictures have there (an edge only one has is a change).
    edge = np.minimum(_edge_energy(a), _edge_energy(b))
    # The noise (sensor, compression) from the quietest blocks: most of a copy or a burst.
    noise = float(np.clip(2 * np.quantile(rms0, 0.25), NOISE_FLOOR, 3 * NOISE_FLOOR))
    tol = noise + EDGE_TOLERANCE * edge
    # Flat blocks (sky, a wall) match anything: only blocks with structure are evidence.
    informative = (_texture(a) > 2 * NOISE_FLOOR) | (_texture(b) > 2 * NOISE_FLOOR)
    if not informative.any():
        informative[:] = True
    unchanged = rms0 <= tol
    frac = float((unchanged & informative).sum() / informative.sum())
    return frac, a, b, rms0, tol, informative, unchanged


def _residual(a: np.ndarray, b: np.ndarray) -> tuple[float, int, float]:
    """(unchanged fraction, moved blocks, changed fraction) of `b` against `a`, aligned."""
    frac, a, b, rms0, tol, informative, unchanged = _blockwise(a, b)
    total = int(informative.sum())
    if unchanged[informative].all():
        return 1.0, 0, 0.0
    best_ab, shift = _best_shift(a, b)
    best_ba, _ = _best_shift(b, a)
    return _classify(frac, rms0, tol, informative, unchanged, best_ab, best_ba, shift, total)


def _classify(frac: float, rms0: np.ndarray, tol: np.ndarray, informative: np.ndarray, unchanged: np.ndarray,
              best_ab: np.ndarray, best_ba: np.ndarray, shift: np.ndarray, total: int) -> tuple[float, int, float]:
    # Moved: a shift of at least MIN_MOTION_PX explains the block both ways round (what
    # moved is in both pictures; an overlay is in one only, and shifting it out of a block
    # explains that block one way but never the other), the block has structure, and a
    # neighbouring block moved the same way (an object moves as a whole; a lone block that
    # some shift happens to fit is chance).
    fits = ~unchanged & (best_ab <= MOTION_FIT * tol) & (best_ba <= MOTION_FIT * tol) & informative
    coherent = np.zeros_like(fits)
    n = fits.shape[0]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
        ys, yd = slice(max(0, dy), n + min(0, dy)), slice(max(0, -dy), n + min(0, -dy))
        xs, xd = slice(max(0, dx), n + min(0, dx)), slice(max(0, -dx), n + min(0, -dx))
        agree = fits[ys, xs] & fits[yd, xd] & (np.abs(shift[ys, xs] - shift[yd, xd]).max(axis=-1) <= 1)
        coherent[yd, xd] |= agree
    moved = fits & coherent
    changed = informative & ~unchanged & ~moved
    return frac, int(moved.sum()), float(changed.sum() / total)


def _best_shift(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block of `b`: the smallest RMS difference to `a` shifted by MIN..MAX_MOTION_PX, and that shift.

    Searched at half resolution (shifts of 2 px and more, in 2 px steps), 16x cheaper.
    """
    a2, b2 = _half(a), _half(b)
    m = MAX_MOTION_PX // 2
    pad = np.pad(a2, m, mode="edge")
    side = a2.shape[0]
    n, k = side * 2 // BLOCK, BLOCK // 2
    best = np.full((n, n), np.inf, np.float32)
    shift = np.zeros((n, n, 2), np.int32)
    for dy in range(-m, m + 1):
        for dx in range(-m, m + 1):
            if max(abs(dx), abs(dy)) < max(1, MIN_MOTION_PX // 2):
                continue
            d = b2 - pad[m + dy:m + dy + side, m + dx:m + dx + side]
            ms = (d * d).reshape(n, k, n, k).sum(axis=(1, 3))
            better = ms < best
            best[better] = ms[better]
            shift[better] = (2 * dy, 2 * dx)
    return np.sqrt(best / (k * k)), shift


def _half(x: np.ndarray) -> np.ndarray:
    h = x.shape[0] // 2
    return x.reshape(h, 2, h, 2).mean(axis=(1, 3))


def _texture(x: np.ndarray) -> np.ndarray:
    """Per block: the RMS of the pixels around the block's mean."""
    return np.sqrt(np.maximum(_blocks(x * x) - _blocks(x) ** 2, 0))


def _edge_energy(x: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(x)
    return np.sqrt(_blocks(gx * gx + gy * gy))


def compare(a: Signature, b: Signature, *, max_hash_gap: int = 4) -> PairEvidence:
    """How `b` relates to `a`: the same picture ("copy"), the same moment ("moment") or neither."""
    dists = {deg: hamming(a.phash, rotate_hash(b.phash, deg)) for deg in ROTATIONS}
    floor = min(dists.values())
    tried: list[tuple[float, int, tuple[float, float, float, float], bool]] = []
    for deg in ROTATIONS:
        # A turned copy keeps its hash (turned): other rotations are tried only when theirs is close.
        if dists[deg] > floor + max_hash_gap or (deg and dists[deg] > ROTATION_MAX_HASH):
            continue
        bw, bh = (b.width, b.height) if deg in (0, 180) else (b.height, b.width)
        ratio = (a.width / a.height) / (bw / bh)
        if not MIN_CROP * 0.97 <= ratio <= 1 / (MIN_CROP * 0.97):
            continue
        bg = np.ascontiguousarray(np.rot90(b.grey, deg // 90))
        for a_is_larger in (True, False):  # the smaller view is a crop of the larger one
            src, tgt = (a.grey, bg) if a_is_larger else (bg, a.grey)
            for ncc, box in _coarse(src, tgt):
                tried.append((ncc, deg, box, a_is_larger))
    if not tried:
        return PairEvidence(None, floor, 0, 0.0, 0.0, 0.0, 0, 1.0, "shapes differ beyond a crop")
    tried.sort(key=lambda t: -t[0])
    ncc, deg, box, a_is_larger = tried[0]
    if ncc < MIN_COARSE_NCC:
        return PairEvidence(None, dists[deg], deg, 0.0, ncc, 0.0, 0, 1.0, f"no alignment (ncc {ncc:.2f})")
    bg = np.ascontiguousarray(np.rot90(b.grey, deg // 90))
    src, tgt = (a.grey, bg) if a_is_larger else (bg, a.grey)
    # An overlay (a caption) can pull the coarse answer off the whole frame: refine both.
    # The best coarse windows of the same rotation and direction, and the whole frame.
    starts = [t[2] for t in tried if t[1] == deg and t[3] == a_is_larger and t[0] >= ncc - 0.1][:3]
    if all(max(abs(b[0]), abs(b[1]), abs(SIDE - b[2]), abs(SIDE - b[3])) > 2 for b in starts):
        starts.append((0.0, 0.0, float(SIDE), float(SIDE)))
    refined = [_refine(src, tgt, start) for start in starts]
    # The alignment under which the most structure agrees.
    box = max(refined, key=lambda r: _agreement(_warp(src, r[1], SIDE, SIDE), tgt))[1]
    ncc = _ncc(_warp(src, box, SIDE, SIDE), tgt)
    crop = (box[2] - box[0]) * (box[3] - box[1]) / (SIDE * SIDE)
    if ncc < MIN_ALIGN_NCC or crop < MIN_CROP ** 2 * 0.95:
        return PairEvidence(None, dists[deg], deg, crop, ncc, 0.0, 0, 1.0, f"no alignment (ncc {ncc:.2f})")
    unchanged, moved, changed = _residual(_warp(src, box, SIDE, SIDE), tgt)
    level, reason = rule(ncc, unchanged, moved, changed)
    return PairEvidence(level, dists[deg], deg, crop, ncc, unchanged, moved, changed, reason)


def rule(ncc: float, unchanged: float, moved: int, changed: float) -> tuple[str | None, str]:
    """(level, reason) of an aligned pair from its residual blocks (the table in docs/duplicates.md)."""
    if moved <= COPY_MAX_MOVED and ncc >= COPY_MIN_NCC and changed <= COPY_MAX_CHANGED:
        return "copy", "same picture"
    if ncc >= MOMENT_MIN_NCC and moved >= MOMENT_FEW_MOVED and (
            changed <= MOMENT_FEW_CHANGED
            or changed <= MOMENT_MAX_CHANGED and (moved >= MOMENT_MIN_MOVED or unchanged >= MOMENT_SAME_DRAWING)):
        return "moment", "same view, something moved"
    if moved > COPY_MAX_MOVED:
        return None, "something moved, but too much else differs"
    return None, "different content"
