"""The built-in phantom dataset: procedural brain-like slices and the hosts that ship with them.

Every image is drawn on a continuous coordinate grid spanning ``[-1, 1]`` in both
directions, so a phantom looks the same at 32 or 512 pixels; only the sampling
changes. Image ``i`` of class ``c`` is a pure function of ``(seed, c, i, size)``:
each image has its own random generator, seeded from those numbers, so asking for
more images never changes the ones already drawn.

The two classes differ by morphology, not by brightness. ``"normal"`` slices show
an elliptical head with a bright skull rim, smooth low-frequency tissue texture and
two dark ventricles; ``"lesion"`` slices add one or two large bright irregular masses
(radius 0.15-0.3 grid units, like the tumours of brain MRI datasets), each in a halo
of darker oedema. Head shape, pose and all intensities vary per image, so mean
brightness overlaps between the classes and a classifier has to find the mass.

The masses are large on purpose: surrogates keep only the plaintext's Fourier
amplitude (IHM puts it under a host's phase), and small blobs barely change it, so
a classifier trained on surrogates of small-blob phantoms stays at chance.

The hosts (:func:`phantom_hosts`) are Shepp-Logan head phantoms with randomised
ellipses: the same "modality" (a grey head slice) from a visibly different source.
"""

import numpy as np

from fesf_fed.data.imageset import ImageSet
from fesf_fed.pixels import unit_to_uint8

PHANTOM_CLASSES: tuple[str, ...] = ("normal", "lesion")

# Width, in grid units (the grid spans 2 units), of the smooth edge of every shape.
# Soft edges keep small renderings from aliasing into jagged outlines.
_EDGE = 0.01
# Standard deviation of the per-pixel acquisition noise, in [0, 1] intensity units.
_NOISE = 0.02
# Number of random cosines summed into the tissue texture.
_TEXTURE_WAVES = 6
# Lesion slices hold one mass or, half of the time, two.
_MAX_LESIONS = 2
# A mass's radius in grid units and its brightness above the tissue, drawn uniformly.
# Masses this large (a fifth to a third of the head's width, like the tumours of brain
# MRI datasets) change the low-frequency Fourier amplitude enough that the class
# survives IHM, which keeps only the plaintext's amplitude, into the surrogates.
_LESION_SIZE = (0.15, 0.3)
_LESION_CONTRAST = (0.4, 0.6)
# The dark oedema around a mass: how far it reaches past the mass's outline, as a share
# of the mass's radius, and how much darker than the tissue it is.
_OEDEMA_REACH = (0.3, 0.6)
_OEDEMA_DEPTH = (0.1, 0.2)
# Harmonics of a blob's outline: they make it lumpy rather than round.
_LUMP_HARMONICS = (2, 3, 4)
# Pixels rendered at once; bounds memory at large sizes without a per-image loop.
_CHUNK_PIXELS = 2**21
# Separate random streams, so a host never shares its generator with a slice.
_SLICE_STREAM = 0
_HOST_STREAM = 1

# The modified Shepp-Logan phantom (Toft, "The Radon Transform", 1996; the table of
# MATLAB's ``phantom``): intensity, semi-axes a and b, centre x and y, angle in degrees.
_SHEPP_LOGAN = np.array(
    [
        [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
        [-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0],
        [-0.2, 0.11, 0.31, 0.22, 0.0, -18.0],
        [-0.2, 0.16, 0.41, -0.22, 0.0, 18.0],
        [0.1, 0.21, 0.25, 0.0, 0.35, 0.0],
        [0.1, 0.046, 0.046, 0.0, 0.1, 0.0],
        [0.1, 0.046, 0.046, 0.0, -0.1, 0.0],
        [0.1, 0.046, 0.023, -0.08, -0.605, 0.0],
        [0.1, 0.023, 0.023, 0.0, -0.606, 0.0],
        [0.1, 0.023, 0.046, 0.06, -0.605, 0.0],
    ]
)
# The first two ellipses are the skull and the brain; they move together so the rim stays whole.
_SHEPP_LOGAN_OUTLINE = 2


def _check_size(size: int) -> None:
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")


def _check_seed(seed: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(x, y)``, the ``(size, size)`` coordinates of pixel centres in ``[-1, 1]``.

    ``x`` grows to the right along columns and ``y`` downwards along rows.
    """
    # float32 halves memory and time against float64; 8-bit output needs no more precision.
    centres = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    y, x = np.meshgrid(centres, centres, indexing="ij")
    return x, y


def _soft_inside(distance: np.ndarray) -> np.ndarray:
    """Coverage in ``[0, 1]`` from a signed distance to a shape's edge (positive inside)."""
    return 0.5 * (1.0 + np.tanh(distance / _EDGE))


def _rotate(x: np.ndarray, y: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in a frame turned by ``angle`` radians."""
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * x + sin * y, -sin * x + cos * y


def _ellipse_distance(
    x: np.ndarray,
    y: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Approximate signed distance to an ellipse's edge, positive inside.

    It is exact on the edge and good enough near it, which is all a soft edge needs.
    """
    u, v = _rotate(x - cx, y - cy, angle)
    radius = np.hypot(u / a, v / b)
    return (1.0 - radius) * np.minimum(a, b)


def _blend(image: np.ndarray, value: np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Paint ``value`` over ``image`` where ``coverage`` is 1, leave it where 0."""
    return image * (1.0 - coverage) + value * coverage


def _draw_slice_params(rng: np.random.Generator, has_lesion: bool) -> dict[str, float | np.ndarray]:
    """Random shape, pose and intensities of one brain-like slice.

    Normal slices draw lesion parameters too and switch them off, so that both
    classes go through one renderer.
    """
    head_a = rng.uniform(0.62, 0.76)
    head_b = rng.uniform(0.74, 0.88)
    lesion_size = rng.uniform(*_LESION_SIZE, _MAX_LESIONS)
    # A mass's centre lies far enough inside the head's normalised radius that the mass,
    # its lumps and its oedema stay clear of the skull rim: large masses sit nearer the middle.
    reach = np.clip(0.8 - 1.5 * lesion_size / min(head_a, head_b), 0.0, 0.45)
    lesion_radius = reach * np.sqrt(rng.uniform(0.0, 1.0, _MAX_LESIONS))
    lesion_bearing = rng.uniform(0.0, 2.0 * np.pi, _MAX_LESIONS)
    lesion_count = rng.integers(1, _MAX_LESIONS + 1)
    return {
        "cx": rng.uniform(-0.08, 0.08),
        "cy": rng.uniform(-0.06, 0.06),
        "a": head_a,
        "b": head_b,
        "angle": rng.uniform(-0.35, 0.35),
        "skull_width": rng.uniform(0.06, 0.11),
        "skull_level": rng.uniform(0.78, 0.95),
        "tissue_level": rng.uniform(0.28, 0.5),
        "csf_level": rng.uniform(0.04, 0.14),
        "texture_amplitude": rng.uniform(0.06, 0.12),
        "wave_x": rng.uniform(-2.5, 2.5, _TEXTURE_WAVES),
        "wave_y": rng.uniform(-2.5, 2.5, _TEXTURE_WAVES),
        "wave_phase": rng.uniform(0.0, 2.0 * np.pi, _TEXTURE_WAVES),
        "ventricle_x": rng.uniform(0.06, 0.11),
        "ventricle_y": rng.uniform(-0.16, 0.04),
        "ventricle_a": rng.uniform(0.035, 0.07),
        "ventricle_b": rng.uniform(0.11, 0.19),
        "ventricle_tilt": rng.uniform(0.15, 0.45),
        "lesion_on": (has_lesion & (np.arange(_MAX_LESIONS) < lesion_count)).astype(float),
        "lesion_x": lesion_radius * np.cos(lesion_bearing) * head_a,
        "lesion_y": lesion_radius * np.sin(lesion_bearing) * head_b,
        "lesion_size": lesion_size,
        "lesion_contrast": rng.uniform(*_LESION_CONTRAST, _MAX_LESIONS),
        "oedema_reach": rng.uniform(*_OEDEMA_REACH, _MAX_LESIONS),
        "oedema_depth": rng.uniform(*_OEDEMA_DEPTH, _MAX_LESIONS),
        "lesion_lumps": rng.uniform(0.0, 0.15, (_MAX_LESIONS, len(_LUMP_HARMONICS))),
        "lesion_lump_phase": rng.uniform(0.0, 2.0 * np.pi, (_MAX_LESIONS, len(_LUMP_HARMONICS))),
    }


def _stack(params: list[dict[str, float | np.ndarray]]) -> dict[str, np.ndarray]:
    """One array per parameter with the image index first, broadcastable against a grid."""
    stacked = {}
    for name in params[0]:
        values = np.stack([np.asarray(p[name], dtype=np.float32) for p in params])
        stacked[name] = values.reshape((*values.shape, 1, 1))
    return stacked


def _render_slices(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Render a batch of slices, ``(n, size, size)`` float in about ``[0, 1]``."""
    # The head's own frame: everything inside the head moves and turns with it.
    hx, hy = _rotate(x - p["cx"], y - p["cy"], p["angle"])
    head = _ellipse_distance(x, y, p["cx"], p["cy"], p["a"], p["b"], p["angle"])
    brain = head - p["skull_width"]

    waves = np.cos(2.0 * np.pi * (p["wave_x"] * hx[:, None] + p["wave_y"] * hy[:, None]) + p["wave_phase"])
    tissue = p["tissue_level"] + p["texture_amplitude"] * waves.mean(axis=1)

    image = p["skull_level"] * _soft_inside(head)
    image = _blend(image, tissue, _soft_inside(brain))
    # Two ventricles mirrored about the head's midline, tilted like a butterfly's wings.
    for side in (-1.0, 1.0):
        cx, tilt = side * p["ventricle_x"], side * p["ventricle_tilt"]
        ventricle = _ellipse_distance(hx, hy, cx, p["ventricle_y"], p["ventricle_a"], p["ventricle_b"], tilt)
        image = _blend(image, p["csf_level"], _soft_inside(ventricle))

    harmonics = np.array(_LUMP_HARMONICS, dtype=np.float32).reshape(1, -1, 1, 1)
    for k in range(_MAX_LESIONS):
        dx = hx - p["lesion_x"][:, k]
        dy = hy - p["lesion_y"][:, k]
        bearing = np.arctan2(dy, dx)
        lumps = p["lesion_lumps"][:, k] * np.cos(harmonics * bearing[:, None] + p["lesion_lump_phase"][:, k])
        outline = p["lesion_size"][:, k] * (1.0 + lumps.sum(axis=1))
        distance = np.hypot(dx, dy)
        on = p["lesion_on"][:, k]
        # The oedema darkens a halo first; the mass is then painted over its middle.
        oedema = on * _soft_inside(outline * (1.0 + p["oedema_reach"][:, k]) - distance)
        image = image - p["oedema_depth"][:, k] * oedema
        coverage = on * _soft_inside(outline - distance)
        image = _blend(image, tissue + p["lesion_contrast"][:, k], coverage)
    return image


def _chunks(count: int, size: int) -> list[range]:
    step = max(1, _CHUNK_PIXELS // (size * size))
    return [range(start, min(start + step, count)) for start in range(0, count, step)]


def phantom_dataset(per_class: int, size: int, seed: int = 0) -> ImageSet:
    """Generate the built-in two-class phantom dataset.

    Parameters
    ----------
    per_class : int
        Number of images of each class (at least 1).
    size : int
        Height and width in pixels (at least 8).
    seed : int, optional
        Non-negative seed; the same arguments always give the same bytes.

    Returns
    -------
    ImageSet
        ``(2 * per_class, 1, size, size)`` uint8 images, the ``"normal"`` ones first,
        labels 0 (``"normal"``) and 1 (``"lesion"``), ids such as ``"lesion/0007"``.

    Raises
    ------
    ValueError
        If ``per_class < 1``, ``size < 8`` or ``seed < 0``.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    _check_size(size)
    _check_seed(seed)
    keys = [(label, index) for label in range(len(PHANTOM_CLASSES)) for index in range(per_class)]
    x, y = _grid(size)
    images = np.empty((len(keys), 1, size, size), dtype=np.uint8)
    for chunk in _chunks(len(keys), size):
        rngs = [np.random.default_rng([seed, _SLICE_STREAM, *keys[i]]) for i in chunk]
        params = [_draw_slice_params(rng, has_lesion=keys[i][0] == 1) for rng, i in zip(rngs, chunk)]
        slices = _render_slices(_stack(params), x, y)
        slices += np.stack([rng.normal(0.0, _NOISE, (size, size)) for rng in rngs])
        images[chunk.start : chunk.stop, 0] = unit_to_uint8(slices)
    return ImageSet(
        images=images,
        labels=np.array([label for label, _ in keys], dtype=np.int64),
        ids=[f"{PHANTOM_CLASSES[label]}/{index:04d}" for label, index in keys],
        classes=list(PHANTOM_CLASSES),
    )


def _draw_host_params(rng: np.random.Generator) -> np.ndarray:
    """A randomised Shepp-Logan table: rows of intensity, a, b, x, y, angle (radians)."""
    table = _SHEPP_LOGAN.copy()
    table[:, 5] = np.deg2rad(table[:, 5])
    inner = slice(_SHEPP_LOGAN_OUTLINE, None)
    count = len(table) - _SHEPP_LOGAN_OUTLINE
    table[inner, 0] *= rng.uniform(0.5, 1.6, count)
    table[inner, 1:3] *= rng.uniform(0.75, 1.25, (count, 2))
    table[inner, 3:5] += rng.uniform(-0.04, 0.04, (count, 2))
    table[inner, 5] += rng.uniform(-0.3, 0.3, count)
    # A whole-phantom scale, shift and turn, so hosts do not all share one outline.
    scale = rng.uniform(0.85, 1.0)
    turn = rng.uniform(-0.3, 0.3)
    shift = rng.uniform(-0.05, 0.05, 2)
    table[:, 1:3] *= scale
    cos, sin = np.cos(turn), np.sin(turn)
    x, y = table[:, 3].copy() * scale, table[:, 4].copy() * scale
    table[:, 3] = cos * x - sin * y + shift[0]
    table[:, 4] = sin * x + cos * y + shift[1]
    table[:, 5] += turn
    return table


def phantom_hosts(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Generate the host images that ship with the phantom dataset.

    They are Shepp-Logan head phantoms whose inner ellipses are randomly moved,
    resized, turned and re-weighted: non-patient images of the same kind as the
    phantom slices, from a visibly different source.

    Parameters
    ----------
    count : int
        Number of hosts (at least 1).
    size : int
        Height and width in pixels (at least 8).
    seed : int, optional
        Non-negative seed; host ``i`` depends only on ``(seed, i, size)``.

    Returns
    -------
    np.ndarray
        ``(count, 1, size, size)`` uint8.

    Raises
    ------
    ValueError
        If ``count < 1``, ``size < 8`` or ``seed < 0``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    _check_size(size)
    _check_seed(seed)
    x, y = _grid(size)
    # Shepp-Logan tables put y upwards; the grid's y runs down the rows.
    y = -y
    hosts = np.empty((count, 1, size, size), dtype=np.uint8)
    for chunk in _chunks(count, size):
        rngs = [np.random.default_rng([seed, _HOST_STREAM, i]) for i in chunk]
        tables = np.stack([_draw_host_params(rng) for rng in rngs]).astype(np.float32)
        # One (n, 1, 1) column per table field, broadcastable against the grid.
        columns = np.moveaxis(tables, 2, 0)[..., None, None]
        image = np.zeros((len(chunk), size, size), dtype=np.float32)
        for e in range(len(_SHEPP_LOGAN)):
            intensity, a, b, cx, cy, angle = columns[:, :, e]
            image += intensity * _soft_inside(_ellipse_distance(x, y, cx, cy, a, b, angle))
        hosts[chunk.start : chunk.stop, 0] = unit_to_uint8(image)
    return hosts
