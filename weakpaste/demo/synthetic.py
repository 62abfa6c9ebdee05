"""Embedded demo data set: textured shapes on textured backgrounds, generated in milliseconds.

Each scene holds a few objects of the classes in :data:`CLASSES`. Every class has its own shape,
its own texture and its own hue, so that a classifier can tell the classes apart from image-level
labels alone, and every object is saturated while every background is greyish, so that
superpixel proposals and Grad-CAM can find the objects. Neither side is flat, though: backgrounds
carry smooth low-frequency colour noise plus a mild texture, objects carry a two-tone class
texture with per-instance colour jitter, and the whole image gets uneven illumination and sensor
noise.

The hidden ground truth is one visible mask per instance: objects are painted in order, later
ones occlude earlier ones, and a placement is rejected when it would leave an earlier object
with less than :func:`min_visible_area` pixels or less than half of its own area.

All randomness comes from the ``np.random.Generator`` passed in; :func:`iter_scenes` gives each
scene its own child generator so that scene ``i`` does not depend on the scenes before it.

Example:
    >>> import numpy as np
    >>> scene = make_scene(np.random.default_rng(0))
    >>> scene.image.shape, scene.image.dtype
    ((192, 256, 3), dtype('uint8'))
    >>> scene.masks.shape[1:], len(scene.classes) == scene.masks.shape[0]
    ((192, 256), True)
"""

from __future__ import annotations

import colorsys
import inspect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CLASSES",
    "MIN_IMAGE_SIDE",
    "MIN_VISIBLE_FRACTION",
    "Scene",
    "iter_scenes",
    "make_background",
    "make_object_centric",
    "make_scene",
    "min_visible_area",
]

CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring", "cross")
"""The object classes, each with a distinct shape, texture and hue."""

MIN_IMAGE_SIDE = 32
"""Smallest accepted image height or width, in pixels."""

MIN_VISIBLE_FRACTION = 0.5
"""An occluded instance keeps at least this fraction of its own (unoccluded) area."""

# Object diameter (of the circle enclosing the shape) as a fraction of the shorter image side.
_SIZE_RANGE = (0.08, 0.35)
# Below this the textures and shapes stop being recognisable, whatever the image size.
_MIN_DIAMETER_PX = 8.0
_PLACE_ATTEMPTS = 30
# Sub-pixel precision for cv2 drawing: coordinates are multiplied by 2**_SHIFT.
_SHIFT = 4
_SCALE = float(1 << _SHIFT)

# Object-centric images: fraction of the image the object covers, and how far (as a fraction of
# the image side) the object's centroid may move off-centre to let a lopsided shape fit.
_CENTRIC_FILL = (0.4, 0.7)
_CENTRIC_MAX_SHIFT = 0.08


@dataclass(frozen=True)
class _Style:
    hue: float  # degrees
    texture: str


# Hues are at least ~40 degrees apart so per-instance jitter never makes two classes meet.
_STYLES: dict[str, _Style] = {
    "disc": _Style(0.0, "dots"),
    "square": _Style(225.0, "checker"),
    "triangle": _Style(120.0, "stripes"),
    "star": _Style(52.0, "radial"),
    "ring": _Style(300.0, "spokes"),
    "cross": _Style(182.0, "grid"),
}
_HUE_JITTER = 8.0


@dataclass(frozen=True, eq=False)
class Scene:
    """One synthetic image with its hidden ground truth.

    Attributes:
        image: uint8 (H, W, 3) RGB image.
        masks: bool (N, H, W) visible mask of each instance, pairwise disjoint, none empty.
        classes: class name of each instance, length N, in painting order (back to front).
    """

    image: np.ndarray
    masks: np.ndarray
    classes: tuple[str, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """Image-level labels: the distinct class names present, sorted."""
        return tuple(sorted(set(self.classes)))


@dataclass(frozen=True)
class _Shape:
    """A shape in unit coordinates: it fits in the unit circle and its centroid is the origin."""

    cls: str
    angle: float  # radians; orients both the outline and the texture
    points: np.ndarray | None  # float64 (K, 2) polygon (x, y), or None for round shapes
    hole: float  # hole radius / outer radius for the ring, 0 otherwise

    def unit_area(self) -> float:
        if self.points is None:
            return math.pi * (1.0 - self.hole**2)
        x, y = self.points[:, 0], self.points[:, 1]
        return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))

    def unit_extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper corner of the unit bounding box, float64 (2,) each, (x, y)."""
        if self.points is None:
            return np.array([-1.0, -1.0]), np.array([1.0, 1.0])
        return self.points.min(axis=0), self.points.max(axis=0)


def min_visible_area(height: int, width: int) -> int:
    """Smallest visible area, in pixels, of any instance in a ``height`` x ``width`` scene."""
    return max(16, round(0.001 * height * width))


def make_scene(
    rng: np.random.Generator,
    *,
    height: int = 192,
    width: int = 256,
    min_objects: int = 1,
    max_objects: int = 4,
    classes: tuple[str, ...] = CLASSES,
) -> Scene:
    """Generate one scene of textured objects on a textured background.

    The number of objects is drawn uniformly from ``[min_objects, max_objects]`` and each class
    uniformly from ``classes`` (repeats allowed). Object diameters are 8%-35% of the shorter
    image side (at least 8 px). Objects lie fully inside the image and may overlap; each one
    is re-placed (a bounded number of times) until no instance would be left with less than
    :func:`min_visible_area` pixels or less than :data:`MIN_VISIBLE_FRACTION` of its own area.

    Args:
        rng: the only source of randomness.
        height: image height H, at least 32.
        width: image width W, at least 32.
        min_objects: smallest number of instances, at least 1.
        max_objects: largest number of instances, at least ``min_objects``.
        classes: class names to draw from, a non-empty subset of :data:`CLASSES`.

    Returns:
        A :class:`Scene` with uint8 (H, W, 3) image and bool (N, H, W) visible masks.

    Raises:
        ValueError: on invalid arguments, or when ``min_objects`` objects cannot be fitted.
    """
    classes = _check_scene_args(height, width, min_objects, max_objects, classes)
    canvas = _background(rng, height, width)
    n_wanted = int(rng.integers(min_objects, max_objects + 1))
    min_area = min_visible_area(height, width)
    short = min(height, width)

    visible: list[np.ndarray] = []
    need: list[int] = []  # pixels each placed instance must keep visible
    names: list[str] = []
    for _ in range(n_wanted):
        cls = classes[int(rng.integers(len(classes)))]
        for _attempt in range(_PLACE_ATTEMPTS):
            shape = _sample_shape(rng, cls)
            diameter = max(_MIN_DIAMETER_PX, rng.uniform(*_SIZE_RANGE) * short)
            radius = diameter / 2.0
            cx = rng.uniform(radius, width - 1 - radius)
            cy = rng.uniform(radius, height - 1 - radius)
            full = _rasterize(shape, cx, cy, radius, height, width)
            area = int(np.count_nonzero(full))
            if area < min_area:
                continue
            remaining = [v & ~full for v in visible]
            if all(np.count_nonzero(r) >= k for r, k in zip(remaining, need, strict=True)):
                break
        else:
            if len(names) < min_objects:
                raise ValueError(
                    f"could not fit {min_objects} objects in a {height}x{width} scene; "
                    f"lower min_objects or enlarge the image")
            break
        _paint(rng, canvas, full, shape, cx, cy, radius)
        visible = [*remaining, full]
        need.append(max(min_area, math.ceil(MIN_VISIBLE_FRACTION * area)))
        names.append(cls)

    return Scene(image=_finish(rng, canvas), masks=np.stack(visible), classes=tuple(names))


def make_object_centric(rng: np.random.Generator, cls: str, *, size: int = 128) -> Scene:
    """Generate a square image with one large object of class ``cls`` in the middle.

    The object covers about 40%-70% of the image (a little less for the spiky star and
    triangle, which must still fit inside); its centroid is within 8% of the image side of the
    image centre per axis. This is the input a FreeSeg-style object-centric miner expects.

    Args:
        rng: the only source of randomness.
        cls: one of :data:`CLASSES`.
        size: image side S, at least 32.

    Returns:
        A :class:`Scene` with uint8 (S, S, 3) image, bool (1, S, S) mask and ``classes == (cls,)``.

    Raises:
        ValueError: if ``cls`` is unknown or ``size`` is below 32.
    """
    _check_class(cls)
    if size < MIN_IMAGE_SIDE:
        raise ValueError(f"size must be >= {MIN_IMAGE_SIDE}, got {size}")
    canvas = _background(rng, size, size)
    shape = _sample_shape(rng, cls)
    fill = rng.uniform(*_CENTRIC_FILL)
    radius = math.sqrt(fill * size * size / shape.unit_area())

    # Centre the centroid, then shift it just enough for the outline to fit inside the image:
    # centring the bounding box instead would push a triangle's centroid far off-centre.
    margin = max(2.0, 0.02 * size)
    mid = (size - 1) / 2.0
    lo_edge, hi_edge = margin, size - 1 - margin
    max_shift = _CENTRIC_MAX_SHIFT * size
    lo, hi = shape.unit_extent()
    radius = min(radius, float(np.min(np.minimum((mid - margin + max_shift) / np.maximum(hi, -lo),
                                                 (hi_edge - lo_edge) / (hi - lo)))))
    centre = np.full(2, mid)
    centre += np.maximum(lo_edge - (centre + radius * lo), 0.0)
    centre -= np.maximum(centre + radius * hi - hi_edge, 0.0)
    cx, cy = float(centre[0]), float(centre[1])

    mask = _rasterize(shape, cx, cy, radius, size, size)
    _paint(rng, canvas, mask, shape, cx, cy, radius)
    return Scene(image=_finish(rng, canvas), masks=mask[None], classes=(cls,))


def iter_scenes(seed: int, num_images: int, **kwargs) -> Iterator[Scene]:
    """Generate ``num_images`` scenes reproducibly, each from its own child generator.

    Scene ``i`` uses ``np.random.SeedSequence(seed).spawn(num_images)[i]``, so it is the same
    whichever scenes are generated before it and whatever ``num_images`` is (as long as it is
    greater than ``i``). Arguments are checked before the first scene is generated.

    Args:
        seed: non-negative integer seed of the whole set.
        num_images: number of scenes, at least 0.
        **kwargs: keyword arguments of :func:`make_scene`.

    Returns:
        A lazy iterator over the :class:`Scene` objects, in order.

    Raises:
        ValueError: on invalid arguments (at call time, not at the first ``next``).
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    _check_scene_args(**{**_SCENE_DEFAULTS, **kwargs})
    children = np.random.SeedSequence(seed).spawn(num_images)
    return (make_scene(np.random.default_rng(child), **kwargs) for child in children)


# Taken from the signature so that the eager check in iter_scenes cannot drift from make_scene.
_SCENE_DEFAULTS = {name: p.default for name, p in inspect.signature(make_scene).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY}


# --------------------------------------------------------------------------------------------
# Argument checks


def _check_class(cls: str) -> None:
    if cls not in _STYLES:
        raise ValueError(f"unknown synthetic class {cls!r}; choose one of: {', '.join(CLASSES)}")


def _check_scene_args(height: int, width: int, min_objects: int, max_objects: int,
                      classes: tuple[str, ...]) -> tuple[str, ...]:
    if height < MIN_IMAGE_SIDE:
        raise ValueError(f"height must be >= {MIN_IMAGE_SIDE}, got {height}")
    if width < MIN_IMAGE_SIDE:
        raise ValueError(f"width must be >= {MIN_IMAGE_SIDE}, got {width}")
    if min_objects < 1:
        raise ValueError(f"min_objects must be >= 1, got {min_objects}")
    if min_objects > max_objects:
        raise ValueError(
            f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
    classes = (classes,) if isinstance(classes, str) else tuple(classes)
    if not classes:
        raise ValueError("classes must not be empty")
    for cls in classes:
        _check_class(cls)
    return classes


# --------------------------------------------------------------------------------------------
# Geometry


def _sample_shape(rng: np.random.Generator, cls: str) -> _Shape:
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    if cls == "disc":
        return _Shape(cls, angle, None, 0.0)
    if cls == "ring":
        return _Shape(cls, angle, None, float(rng.uniform(0.45, 0.58)))
    if cls == "square":
        phis = angle + math.pi / 4 + np.arange(4) * (math.pi / 2)
        radii = np.ones(4)
    elif cls == "triangle":
        phis = angle + np.arange(3) * (2 * math.pi / 3)
        radii = np.ones(3)
    elif cls == "star":
        phis = angle + np.arange(10) * (math.pi / 5)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.45, 0.55))
    elif cls == "cross":
        a = rng.uniform(0.28, 0.36)  # half-width of an arm
        tip = math.sqrt(1.0 - a * a)  # keeps the arm corners on the unit circle
        quarter = np.array([[a, tip], [a, a], [tip, a]])
        pts = np.concatenate([quarter @ _rot(-k * math.pi / 2).T for k in range(4)])
        return _Shape(cls, angle, pts @ _rot(angle).T, 0.0)
    else:  # pragma: no cover - guarded by _check_class
        raise AssertionError(cls)
    pts = np.stack([radii * np.cos(phis), radii * np.sin(phis)], axis=1)
    return _Shape(cls, angle, pts, 0.0)


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _rasterize(shape: _Shape, cx: float, cy: float, radius: float, height: int,
               width: int) -> np.ndarray:
    """Aliased (LINE_8) mask of ``shape`` scaled by ``radius`` at (cx, cy), bool (H, W)."""
    canvas = np.zeros((height, width), np.uint8)
    centre = (round(cx * _SCALE), round(cy * _SCALE))
    if shape.points is None:
        cv2.circle(canvas, centre, round(radius * _SCALE), 1, thickness=-1,
                   lineType=cv2.LINE_8, shift=_SHIFT)
        if shape.hole > 0:
            cv2.circle(canvas, centre, round(radius * shape.hole * _SCALE), 0, thickness=-1,
                       lineType=cv2.LINE_8, shift=_SHIFT)
    else:
        pts = np.round((shape.points * radius + (cx, cy)) * _SCALE).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return canvas.view(bool)


# --------------------------------------------------------------------------------------------
# Appearance (float32 RGB canvases in 0..255 until _finish)


def _hsv(hue_deg: float, sat: float, val: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg / 360.0) % 1.0, sat, val), np.float32) * 255


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: tuple[int, int],
                  channels: int) -> np.ndarray:
    """Zero-mean unit-scale noise that varies over about ``cells`` cells, float32 (H, W, C)."""
    coarse = rng.standard_normal((cells[0], cells[1], channels), dtype=np.float32)
    out = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return out.reshape(height, width, channels)


def make_background(rng: np.random.Generator, *, height: int = 192, width: int = 256
                    ) -> np.ndarray:
    """An object-free scene: the background, illumination and noise of :func:`make_scene`.

    The synthetic counterpart of EM-Paste's generated context backgrounds: pasting onto it
    never hides an unlabelled object in the "background".

    Args:
        rng: the only source of randomness.
        height: image height H, at least 32.
        width: image width W, at least 32.

    Returns:
        uint8 (H, W, 3) RGB image.

    Raises:
        ValueError: on an image side under 32.
    """
    _check_scene_args(height, width, 1, 1, CLASSES)
    return _finish(rng, _background(rng, height, width))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A greyish background with low-frequency colour noise and mild texture, float32 (H, W, 3)."""
    # Low saturation keeps every background apart from the saturated objects.
    base = _hsv(rng.uniform(0, 360), rng.uniform(0.03, 0.25), rng.uniform(0.35, 0.72))
    cells = (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
    canvas = base + rng.uniform(8, 18) * _smooth_noise(rng, height, width, cells, 3)

    kind = int(rng.integers(3))
    if kind == 0:  # grain
        canvas += rng.uniform(5, 10) * _uniform_noise(rng, (height, width, 1))
    elif kind == 1:  # faint wavy fine stripes, like wood or fabric
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        warp = 6.0 * _smooth_noise(rng, height, width, (3, 3), 1)[..., 0]
        phase = (xx * math.cos(theta) + yy * math.sin(theta) + warp) * (
            2 * math.pi / rng.uniform(3, 8))
        canvas += (rng.uniform(4, 8) * np.sin(phase))[..., None]
    else:  # mid-frequency blotches
        cells = (max(2, height // 12), max(2, width // 12))
        canvas += rng.uniform(6, 10) * _smooth_noise(rng, height, width, cells, 1)
    return canvas


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, shape: _Shape,
           cx: float, cy: float, radius: float) -> None:
    """Paint the textured object onto float32 (H, W, 3) ``canvas`` where bool ``mask`` is."""
    style = _STYLES[shape.cls]
    hue = style.hue + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
    sat = rng.uniform(0.6, 0.95)
    val = rng.uniform(0.7, 0.97)
    light = _hsv(hue, sat, val)
    dark = _hsv(hue + rng.uniform(-4, 4), sat * rng.uniform(0.75, 1.0),
                val * rng.uniform(0.35, 0.5))
    period = float(np.clip(2 * radius / 5, 4.0, 16.0)) * rng.uniform(0.85, 1.15)
    shade = rng.uniform(-0.12, 0.12, size=2)  # directional lighting across the object

    height, width = mask.shape
    x0, x1 = max(0, math.floor(cx - radius) - 1), min(width, math.ceil(cx + radius) + 2)
    y0, y1 = max(0, math.floor(cy - radius) - 1), min(height, math.ceil(cy + radius) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - np.float32(cx), yy - np.float32(cy)
    c, s = np.float32(math.cos(shape.angle)), np.float32(math.sin(shape.angle))
    u, v = dx * c + dy * s, dy * c - dx * s  # object-aligned, so the texture turns with it

    t = _texture(style.texture, u, v, radius, period)
    rgb = light + (dark - light) * t[..., None]
    rgb *= (1.0 + (shade[0] * dx + shade[1] * dy) / np.float32(radius))[..., None]
    local = mask[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1][local] = rgb[local]


def _texture(kind: str, u: np.ndarray, v: np.ndarray, radius: float, period: float) -> np.ndarray:
    """Mix weight between the light (0) and dark (1) tone, float32 like ``u``."""
    if kind == "dots":
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return (du * du + dv * dv < (0.32 * period) ** 2).astype(np.float32)
    if kind == "checker":
        cells = np.floor(u / period) + np.floor(v / period)
        return np.mod(cells, 2).astype(np.float32)
    if kind == "stripes":
        return (np.mod(u, period) < 0.5 * period).astype(np.float32)
    if kind == "grid":
        thin = 0.3 * period
        return ((np.mod(u, period) < thin) | (np.mod(v, period) < thin)).astype(np.float32)
    if kind == "spokes":
        sector = np.floor((np.arctan2(v, u) + math.pi) * (10 / (2 * math.pi)))
        return np.mod(sector, 2).astype(np.float32)
    if kind == "radial":  # bright centre fading to dark tips
        return np.clip(np.sqrt(u * u + v * v) / np.float32(radius), 0.0, 1.0) ** 2
    raise AssertionError(kind)  # pragma: no cover


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Apply uneven illumination and sensor noise; float32 (H, W, 3) -> uint8 (H, W, 3)."""
    height, width = canvas.shape[:2]
    light = 1.0 + rng.uniform(0.04, 0.12) * _smooth_noise(rng, height, width, (2, 3), 1)
    out = canvas * light
    out += rng.uniform(2.5, 6.0) * _uniform_noise(rng, (height, width, 3))
    return np.clip(out + 0.5, 0, 255, out=out).astype(np.uint8)


def _uniform_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Pixel noise uniform in [-1, 1], float32 of ``shape``."""
    # Random bytes are ~10x cheaper than Gaussian floats, and uniform grain looks the same.
    return rng.integers(0, 256, shape, dtype=np.uint8).astype(np.float32) * np.float32(
        2 / 255) - np.float32(1)
