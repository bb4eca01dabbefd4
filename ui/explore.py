"""The embedding map: a 2-D projection of image vectors, drawn with Pillow, and its hit test.

The map is a plain image so that a click on it (gr.Image's select event) gives pixel
coordinates, which `MapView.point_at` turns into the nearest photo. PCA (the eigenvectors
of the covariance, numpy) is the projection; UMAP is used instead when the `umap` package is importable.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_POINTS = 5000
OTHER = "other"
# Tableau 10: distinguishable, and readable by most colour-blind people.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]
OTHER_COLOUR = "#bab0ac"
WIDTH, HEIGHT, LEGEND_W, MARGIN = 760, 560, 230, 24
PAD = 36  # between the frame and the outermost points
_SCALE = 2  # drawn at twice the size, then reduced: smooth edges without an antialiasing library


@dataclass(frozen=True)
class Projection:
    """A fitted 2-D projection; `transform` places new vectors (a query) on the same map."""

    method: str
    mean: np.ndarray
    components: np.ndarray  # (2, dim) for PCA
    model: object | None = None  # the fitted UMAP, when used

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if self.model is not None:
            return np.asarray(self.model.transform(vectors), np.float32)  # type: ignore[attr-defined]
        return (vectors - self.mean) @ self.components.T


def umap_available() -> bool:
    return importlib.util.find_spec("umap") is not None


def fit_projection(vectors: np.ndarray, method: str = "auto", seed: int = 0) -> Projection:
    """Fit PCA (or UMAP, for `method` "umap", or "auto" when installed) to `vectors` (n, dim)."""
    vectors = np.asarray(vectors, np.float32)
    mean = vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1], np.float32)
    if method == "umap" or (method == "auto" and umap_available() and len(vectors) > 15):
        import umap  # type: ignore[import-not-found]

        model = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(vectors) - 1))
        model.fit(vectors)
        return Projection("UMAP", mean, np.zeros((2, vectors.shape[1]), np.float32), model)
    centred = vectors - mean
    components = np.zeros((2, vectors.shape[1]), np.float32)
    if len(vectors) > 1:
        # The top eigenvectors of the (dim x dim) covariance: the same axes as an SVD of the
        # (n x dim) data, for a fraction of the work (an SVD of 5,000 x 512 took seconds on a busy machine).
        cov = (centred.T @ centred).astype(np.float64)
        _, vecs = np.linalg.eigh(cov)
        vt = vecs[:, ::-1].T.astype(np.float32)
        k = min(2, len(vt), len(vectors) - 1)
        components[:k] = vt[:k]
        # SVD's signs are arbitrary: fix them so that the map doesn't flip between runs.
        for i in range(k):
            if components[i][np.argmax(np.abs(components[i]))] < 0:
                components[i] = -components[i]
    return Projection("PCA", mean, components)


def sample_ids(ids: np.ndarray, cap: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """At most `cap` of `ids`, a seeded sample in id order (the same map every time)."""
    if len(ids) <= cap:
        return np.asarray(ids)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.asarray(ids), cap, replace=False))


@dataclass
class MapView:
    """What one session's map shows: points in pixel coordinates, their groups, the query's position."""

    ids: np.ndarray
    xy: np.ndarray  # (n, 2) projection coordinates
    groups: list[str]
    total: int  # images in the library (may exceed the points drawn)
    method: str
    colour_by: str
    query: str | None = None
    query_xy: np.ndarray | None = None  # (2,) projection coordinates
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    query_pixel: tuple[float, float] | None = None
    legend: list[tuple[str, str, int]] = field(default_factory=list)  # (group, colour, count)

    def point_at(self, x: float, y: float, radius: float = 24.0) -> int | None:
        """The id of the point nearest to pixel (x, y), if one is within `radius` pixels.

        The radius is in the map's own pixels: on a phone the map is drawn at about a third of
        its size, and 24 px there is still a fingertip (about 8 px on screen, 16 across)."""
        if not len(self.pixels):
            return None
        d2 = ((self.pixels - np.array([x, y], np.float32)) ** 2).sum(axis=1)
        i = int(np.argmin(d2))
        return int(self.ids[i]) if d2[i] <= radius * radius else None

    def table(self) -> list[dict]:
        """One row per point drawn (id, x, y, group), plus the query as a row with id -1."""
        rows = [{"id": int(i), "x": float(p[0]), "y": float(p[1]), "group": g}
                for i, p, g in zip(self.ids, self.xy, self.groups)]
        if self.query_xy is not None:
            rows.append({"id": -1, "x": float(self.query_xy[0]), "y": float(self.query_xy[1]), "group": "query"})
        return rows


def build_view(ids: np.ndarray, vectors: np.ndarray, groups: Sequence[str], *, total: int, colour_by: str,
               query: str | None = None, query_vector: np.ndarray | None = None,
               method: str = "auto", projection: Projection | None = None) -> MapView:
    """Project `vectors` (and the query, with the same projection) and lay them out in pixels.

    `projection`: one already fitted to these vectors (else it is fitted here).
    """
    proj = projection or fit_projection(vectors, method)
    xy = proj.transform(vectors) if len(vectors) else np.zeros((0, 2), np.float32)
    qxy = proj.transform(query_vector)[0] if query_vector is not None else None
    view = MapView(np.asarray(ids), xy, list(groups), total, proj.method, colour_by, query, qxy)
    _layout(view)
    return view


def _layout(view: MapView) -> None:
    pts = view.xy if view.query_xy is None else np.vstack([view.xy, view.query_xy[None, :]])
    if not len(pts):
        return
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    inner_w, inner_h = WIDTH - 2 * (MARGIN + PAD), HEIGHT - 2 * (MARGIN + PAD)

    def to_px(p: np.ndarray) -> np.ndarray:
        u = (p - lo) / span
        return np.stack([MARGIN + PAD + u[..., 0] * inner_w, MARGIN + PAD + (1 - u[..., 1]) * inner_h], axis=-1)

    view.pixels = to_px(view.xy).astype(np.float32)
    if view.query_xy is not None:
        qx, qy = to_px(view.query_xy)
        view.query_pixel = (float(qx), float(qy))
    counts: dict[str, int] = {}
    for g in view.groups:
        counts[g] = counts.get(g, 0) + 1
    top = sorted(counts, key=lambda g: (-counts[g], g))[: len(PALETTE)]
    view.legend = [(g, PALETTE[i], counts[g]) for i, g in enumerate(top)]
    rest = sum(c for g, c in counts.items() if g not in top)
    if rest:
        view.legend.append((OTHER, OTHER_COLOUR, rest))


def render(view: MapView, selected: int | None = None) -> Image.Image:
    """The map as an RGB image: points coloured by group, the query as a star, a legend on the right."""
    s = _SCALE
    image = Image.new("RGB", ((WIDTH + LEGEND_W) * s, HEIGHT * s), "white")
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([MARGIN * s, MARGIN * s, (WIDTH - MARGIN) * s, (HEIGHT - MARGIN) * s],
                           radius=8 * s, outline="#e4e4e7", width=s, fill="#fafafa")
    colour_of = {g: c for g, c, _ in view.legend}
    r = (3.5 if len(view.ids) > 1500 else 5.5) * s
    for (x, y), g in zip(view.pixels, view.groups):
        c = colour_of.get(g, OTHER_COLOUR)
        draw.ellipse([x * s - r, y * s - r, x * s + r, y * s + r], fill=c, outline="white", width=max(1, s // 2))
    if selected is not None:
        hit = np.nonzero(view.ids == selected)[0]
        if len(hit):
            x, y = view.pixels[hit[0]]
            rr = r + 5 * s
            draw.ellipse([x * s - rr, y * s - rr, x * s + rr, y * s + rr], outline="#18181b", width=2 * s)
    font = _font(13 * s)
    small = _font(11 * s)
    if view.query_pixel is not None:
        qx, qy = view.query_pixel
        draw.polygon(_star(qx * s, qy * s, 13 * s, 5.5 * s), fill="#18181b", outline="white")
        label = f"query: {_short(view.query or '', 28)}"
        tx = qx * s + 16 * s if qx < WIDTH * 0.7 else qx * s - 16 * s - draw.textlength(label, font=small)
        draw.text((tx, qy * s - 7 * s), label, fill="#18181b", font=small, stroke_width=3, stroke_fill="white")
    # Legend.
    x0, y = (WIDTH + 6) * s, MARGIN * s
    title = "nearest label" if view.colour_by == "label" else "folder"
    draw.text((x0, y), title, fill="#52525b", font=font)
    y += 24 * s
    for g, c, n in view.legend:
        draw.ellipse([x0, y + 3 * s, x0 + 10 * s, y + 13 * s], fill=c)
        draw.text((x0 + 16 * s, y), f"{_short(g, 22)}  ({n})", fill="#27272a", font=small)
        y += 20 * s
    if view.query_pixel is not None:
        draw.polygon(_star(x0 + 5 * s, y + 8 * s, 7 * s, 3 * s), fill="#18181b")
        draw.text((x0 + 16 * s, y), "your query", fill="#27272a", font=small)
        y += 20 * s
    shown = f"{len(view.ids)} of {view.total} photos" if len(view.ids) < view.total else f"{view.total} photos"
    draw.text((x0, (HEIGHT - MARGIN - 12) * s), f"{view.method} · {shown}", fill="#71717a", font=small)
    return image.resize((WIDTH + LEGEND_W, HEIGHT), Image.Resampling.LANCZOS)


def empty_map(message: str) -> Image.Image:
    image = Image.new("RGB", (WIDTH + LEGEND_W, HEIGHT), "#fafafa")
    draw = ImageDraw.Draw(image)
    font = _font(16)
    w = draw.textlength(message, font=font)
    draw.text(((WIDTH + LEGEND_W - w) / 2, HEIGHT / 2 - 10), message, fill="#71717a", font=font)
    return image


def _star(cx: float, cy: float, outer: float, inner: float) -> list[tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, outer, inner)
    return [(cx + r * np.cos(a), cy - r * np.sin(a)) for r, a in zip(radii, angles)]


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _font(size: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # a Pillow built without FreeType has one bitmap size
        return ImageFont.load_default()
