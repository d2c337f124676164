"""The synthetic "shapes" detection dataset: deterministic COCO splits of cluttered images.

Each image has a textured background (smooth colour field, gradient, pixel noise), distractors that
are not objects (thin lines and soft blobs, drawn under the objects), and 0..6 objects from three
classes: ellipse, rectangle and triangle, each rotated, with random size, aspect ratio and colour.

Occlusion and truncation: objects are painted in order, so later ones hide parts of earlier ones,
and an object may run off the image edge. A placement is rejected if it would leave any object
(itself included) with less than MIN_VISIBLE of its area visible, so every annotated object stays
recognisable. The box is the tight extent of the object's *visible* pixels (modal box), computed
from an owner map, so it is exact to the pixel, never a guess from the shape parameters.

Determinism: every image draws from its own numpy Generator seeded by (seed, crc32(split), index),
so a split's bytes depend only on the seed, the split name and the image size, and different splits
use unrelated streams. PNGs are written by Pillow with fixed settings and no metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}]
MAX_OBJECTS = 6
# Weights for 0..MAX_OBJECTS objects per image: a few empty images teach the detector to stay quiet.
COUNT_WEIGHTS = np.array([0.04, 0.16, 0.22, 0.22, 0.18, 0.11, 0.07])
MIN_VISIBLE = 0.6
# Object size (longer extent before rotation) as a fraction of the image side, sampled log-uniformly.
SIZE_RANGE = (0.12, 0.45)
MIN_BOX = 5  # pixels; a placement whose visible extent is thinner is rejected as unrecognisable


def _split_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32, not hash(): str hashing is salted per process and would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(split.encode("utf-8")), index])


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled random grid: low-frequency texture without a filtering library.

    Gathers and lerps rather than matmuls: BLAS threads thrash when the machine is busy, and
    elementwise float32 maths gives the same bytes whatever BLAS is installed.
    """
    pos = np.linspace(0, cells - 1, size, dtype=np.float32)
    lo = np.minimum(pos.astype(np.int64), cells - 2)
    frac = (pos - lo)[:, None, None]
    grid = rng.random((cells, cells, channels), dtype=np.float32)
    rows = grid[lo] * (1 - frac) + grid[lo + 1] * frac  # (size, cells, channels)
    return rows[:, lo] * (1 - frac[:, 0][None]) + rows[:, lo + 1] * frac[:, 0][None]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # float32 throughout (numpy scalars would silently promote to float64 and double the cost).
    base = rng.random(3, dtype=np.float32)
    texture = _smooth_field(rng, size, int(rng.integers(3, 9)), 3) - 0.5
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    img = base + rng.uniform(0.2, 0.6) * texture + rng.uniform(0, 0.4) * gradient[..., None]
    fine = _smooth_field(rng, size, size // 4, 1) - 0.5  # grainy mid-frequency texture
    img += rng.uniform(0.0, 0.25) * fine
    return np.clip(img, 0, 1)


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    img *= 1 - alpha
    img += alpha * colour


def _distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(int(rng.integers(0, 5))):  # thin anti-aliased lines, possibly crossing the image
        (px, py), (qx, qy) = (rng.uniform(-0.1, 1.1, (2, 2)) * size).tolist()
        dx, dy = qx - px, qy - py
        t = np.clip(((xx - px) * dx + (yy - py) * dy) / max(dx * dx + dy * dy, 1e-6), 0, 1)
        dist = np.hypot(xx - px - t * dx, yy - py - t * dy)
        alpha = np.clip(rng.uniform(0.5, 1.6) - dist, 0, 1)[..., None] * rng.uniform(0.5, 1)
        _blend(img, alpha, rng.random(3, dtype=np.float32))
    for _ in range(int(rng.integers(0, 4))):  # soft blobs: round-ish but edgeless, so not ellipses
        cx, cy = rng.uniform(0, size, 2).tolist()
        sigma = rng.uniform(1.5, 0.05 * size + 2)
        r = int(3 * sigma) + 1
        y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r, size), max(int(cx) - r, 0), min(int(cx) + r, size)
        d2 = (xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2
        alpha = np.exp(d2 / (-2 * sigma * sigma))[..., None] * rng.uniform(0.4, 0.9)
        _blend(img[y0:y1, x0:x1], alpha, rng.random(3, dtype=np.float32))


def _shape_mask(rng: np.random.Generator, cls: int, size: int) -> tuple[np.ndarray, int, int]:
    """A filled shape as a boolean patch and its top-left corner (may lie outside the image)."""
    extent = size * np.exp(rng.uniform(*np.log(SIZE_RANGE)))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    half_w, half_h = extent / 2 * min(1.0, aspect), extent / 2 * min(1.0, 1 / aspect)
    theta = rng.uniform(0, np.pi)
    # Centres may sit near the border: truncated objects are part of the task.
    cx, cy = rng.uniform(0.05 * size, 0.95 * size, 2)
    r = int(np.ceil(np.hypot(half_w, half_h))) + 1
    x0, y0 = int(np.floor(cx)) - r, int(np.floor(cy)) - r
    yy, xx = np.mgrid[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1].astype(np.float32) + 0.5
    cos, sin = np.cos(theta), np.sin(theta)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    if cls == 0:
        mask = (u / half_w) ** 2 + (v / half_h) ** 2 <= 1
    elif cls == 1:
        mask = (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    else:
        # Vertices on a stretched circle with jittered angles: varied, never degenerate triangles.
        ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        vu, vv = half_w * np.cos(ang), half_h * np.sin(ang)
        signs = []
        for i in range(3):
            j = (i + 1) % 3
            signs.append((vu[j] - vu[i]) * (v - vv[i]) - (vv[j] - vv[i]) * (u - vu[i]))
        s = np.stack(signs)
        mask = np.all(s >= 0, axis=0) | np.all(s <= 0, axis=0)
    return mask, x0, y0


def _clip(mask: np.ndarray, x0: int, y0: int, size: int) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """The part of a patch inside the image and where it goes, or None if it misses the image."""
    ys = slice(max(y0, 0), min(y0 + mask.shape[0], size))
    xs = slice(max(x0, 0), min(x0 + mask.shape[1], size))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return None
    return mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0], (ys, xs)


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x, y, w, h) of the True pixels of a non-empty mask, relative to the mask."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """One image (uint8 HxWx3) and its objects as (class index, [x, y, w, h], visible pixels)."""
    img = _background(rng, size)
    _distractors(rng, img)
    owner = np.full((size, size), -1, dtype=np.int16)
    areas: list[int] = []  # full (unclipped, unoccluded) area of each placed object
    visible = np.zeros(MAX_OBJECTS, dtype=np.int64)
    classes: list[int] = []
    windows: list[tuple[slice, slice]] = []
    n_objects = int(rng.choice(len(COUNT_WEIGHTS), p=COUNT_WEIGHTS / COUNT_WEIGHTS.sum()))
    for _ in range(n_objects):
        for _attempt in range(8):
            cls = int(rng.integers(0, len(CATEGORIES)))
            patch, x0, y0 = _shape_mask(rng, cls, size)
            clipped = _clip(patch, x0, y0, size)
            area = int(patch.sum())
            if clipped is None or clipped[0].sum() < MIN_VISIBLE * area:
                continue
            mask, win = clipped
            if min(_extent(mask)[2:]) < MIN_BOX:
                continue
            covered = owner[win][mask]
            hidden = np.bincount(covered[covered >= 0], minlength=MAX_OBJECTS)
            if np.any((visible - hidden)[: len(areas)] < MIN_VISIBLE * np.asarray(areas)):
                continue
            # The colour must stand out from what it covers, or the object would be invisible.
            region = img[win]
            under = region[mask].mean(axis=0)
            colour = rng.random(3, dtype=np.float32)
            for _c in range(6):
                if np.abs(colour - under).sum() > 0.6:
                    break
                colour = rng.random(3, dtype=np.float32)
            # A gentle shading ramp, so objects are not perfectly flat patches.
            shade = 1 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, region.shape[1], dtype=np.float32)
            region[mask] = np.clip(colour * shade[:, None], 0, 1)[np.nonzero(mask)[1]]
            owner[win][mask] = len(areas)
            visible -= hidden
            visible[len(areas)] = int(mask.sum())
            areas.append(area)
            classes.append(cls)
            windows.append(win)
            break
    img += rng.uniform(0.01, 0.05) * rng.standard_normal(img.shape, dtype=np.float32)
    objects = []
    for k, (cls, (ys, xs)) in enumerate(zip(classes, windows)):
        # Later objects only hide pixels, so the visible extent lies inside the placement window.
        x, y, w, h = _extent(owner[ys, xs] == k)
        objects.append((cls, [xs.start + x, ys.start + y, w, h], int(visible[k])))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), objects


def _image_name(index: int) -> str:
    return f"{index:06d}.png"


def _write_images(seed: int, size: int, dest: Path, segments: list[tuple[str, int, int]]) -> list[list]:
    """Render and save images [start, stop) of each split segment; return each image's objects."""
    results = []
    for split, start, stop in segments:
        for index in range(start, stop):
            pixels, objects = _render(_split_rng(seed, split, index), size)
            # compress_level=1: noisy images barely compress anyway, and the default is ~2x slower.
            Image.fromarray(pixels, "RGB").save(dest / split / "images" / _image_name(index), format="PNG",
                                                compress_level=1)
            results.append(objects)
    return results


def _run_workers(seed: int, size: int, dest: Path, segments: list[tuple[str, int, int]], workers: int) -> list[list]:
    """`_write_images` split over `workers` child interpreters, results in the original order.

    Plain subprocesses rather than multiprocessing: spawn re-imports the caller's __main__ (which
    breaks unguarded scripts) and fork is unsafe once torch/OpenMP threads exist in the caller.
    """
    flat = [(split, i) for split, start, stop in segments for i in range(start, stop)]
    bounds = np.linspace(0, len(flat), workers + 1).astype(int)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                      os.environ.get("PYTHONPATH")])))
    procs = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        chunk = []  # contiguous runs of one split inside flat[lo:hi]
        for split, i in flat[lo:hi]:
            if chunk and chunk[-1][0] == split and chunk[-1][2] == i:
                chunk[-1][2] = i + 1
            else:
                chunk.append([split, i, i + 1])
        job = json.dumps({"seed": seed, "size": size, "dest": str(dest.resolve()), "segments": chunk})
        procs.append(subprocess.Popen([sys.executable, "-m", "release.models.demo.shapes", job], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    finished = [(proc, *proc.communicate()) for proc in procs]  # wait for all before judging any
    results = []
    for proc, out, err in finished:
        if proc.returncode != 0:
            raise RuntimeError(f"shapes worker failed (exit {proc.returncode}):\n{err.strip()}")
        results.extend(json.loads(out))
    return results


def generate(dest: Path, *, seed: int, splits: dict[str, int], image_size: int = 128,
             workers: int | None = None) -> dict:
    """Write `dest/<split>/annotations.json` and `dest/<split>/images/*.png` for each split.

    `workers` processes render in parallel (default: one per CPU when there are many images); the
    output does not depend on it, since every image has its own random stream.
    """
    dest = Path(dest)
    total = sum(splits.values())
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if total >= 500 else 1
    for split in splits:
        (dest / split / "images").mkdir(parents=True, exist_ok=True)
    segments = [(split, 0, count) for split, count in splits.items()]
    if workers > 1:
        per_image = iter(_run_workers(seed, image_size, dest, segments, min(workers, total)))
    else:
        per_image = iter(_write_images(seed, image_size, dest, segments))
    summary: dict = {"seed": seed, "image_size": image_size, "splits": {}}
    for split, count in splits.items():
        images, annotations = [], []
        for i in range(count):
            images.append({"id": i + 1, "file_name": _image_name(i), "width": image_size, "height": image_size})
            for cls, box, pixels_visible in next(per_image):
                # area = visible pixel count: COCO's area is the segment's, not the box's.
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORIES[cls]["id"],
                                    "bbox": box, "area": pixels_visible, "iscrowd": 0})
        doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (dest / split / "annotations.json").write_text(json.dumps(doc), encoding="utf-8")
        summary["splits"][split] = {"images": count, "objects": len(annotations)}
    return summary


if __name__ == "__main__":  # worker entry point of _run_workers; not a user interface
    _job = json.loads(sys.argv[1])
    _segments = [(str(sp), int(lo), int(hi)) for sp, lo, hi in _job["segments"]]
    json.dump(_write_images(_job["seed"], _job["size"], Path(_job["dest"]), _segments), sys.stdout)
