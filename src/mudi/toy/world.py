"""A procedural toy world: simple shapes on textured backgrounds, with captions and exact masks.

Every scene is a list of objects (shape class, colour, surface texture, centre, size) on a
background. Rendering is pure numpy and fully determined by the :class:`Scene` (background
noise is drawn from the scene's own seed), so the same seed always gives the same pixels.

Objects are drawn with 4x supersampling (anti-aliased edges); an object's mask is the set of
pixels it covers by at least half. Pixels an object does not touch keep the exact background
value, and pixels it covers completely carry the exact object colour/texture value.

The *personal subjects* (see :data:`SUBJECTS`) are two objects of the same class and colour
that differ only in their markings -- the toy version of "two similar dogs".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

#: Shape classes the base model is trained on; a query's class word is one of these.
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: Object colours (name -> RGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "purple": (145, 50, 200),
    "orange": (250, 130, 20),
    "pink": (250, 140, 200),
}
#: Surface textures; the markings are drawn in a dark or light mark colour (see `mark_colour`).
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
#: Backgrounds (name -> caption suffix).
BACKGROUNDS: dict[str, str] = {
    "grass": " on grass",
    "sand": " on sand",
    "water": " on water",
    "wood": " on wood",
    "white": ", simple background",
}
#: Colour/background pairs that are never generated (object would vanish in the background).
FORBIDDEN: frozenset[tuple[str, str]] = frozenset(
    {("blue", "water"), ("yellow", "sand"), ("orange", "wood")}
)
SUPERSAMPLE = 4

#: World versions. Version 1 is the world the base model was pre-trained on (fine markings:
#: ~4.5 stripes / a 3.5-dot grid per object, strong background patterns, pairs drawn
#: independently). Version 2 is the world it was then fine-tuned on and the one everything
#: else uses (subjects, detector, embedder): coarser markings that survive a 16x16 latent grid,
#: calmer backgrounds, and frequent pairs of *similar* objects (same class and colour,
#: different markings), so the base model learns to draw two look-alikes side by side.
WORLD_VERSIONS: tuple[int, ...] = (1, 2)
WORLD_VERSION = 2
#: Per version: stripe periods per object, dot grid periods and dot radius, checker cells,
#: background pattern amplitude factor, grey level of light marks (v2: light grey, so marks on
#: dark objects never read as a white background).
_STYLE: dict[int, dict[str, float]] = {
    1: {"stripes": 4.5, "dots": 3.5, "dot_r": 0.27, "dot_off": 0.25, "checks": 4, "bg_amp": 1.0, "light": 245},
    2: {"stripes": 3.0, "dots": 2.5, "dot_r": 0.3, "dot_off": 0.75, "checks": 3, "bg_amp": 0.5, "light": 205},
}


@dataclass(frozen=True)
class ToyObject:
    """One object: class, colour, texture; centre (cx, cy) and size (bounding side) in pixels."""

    shape: str
    colour: str
    texture: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Nominal bounding box x0, y0, x1, y1 (pixels)."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    """A full scene description; `render_scene` turns it into pixels deterministically."""

    objects: tuple[ToyObject, ...]
    background: str
    bg_seed: int
    resolution: int = 64
    version: int = WORLD_VERSION


@dataclass(frozen=True)
class SubjectSpec:
    """A personal subject: identifier token, class word and its fixed look."""

    key: str
    identifier: str
    shape: str
    colour: str
    texture: str

    @property
    def phrase(self) -> str:
        return f"{self.identifier} {self.shape}"

    @property
    def description(self) -> str:
        """What the subject looks like in base-model words (used for the class prior)."""
        return f"{self.texture} {self.colour} {self.shape}"


#: The demo's two similar subjects: yellow circles, one striped, one dotted. Their identifiers
#: are words the base model met only as meaningless made-up modifiers (see `caption`), like the
#: rare tokens DreamBooth uses ("sks"): trained, hence distinct, embeddings that carry no
#: meaning. (Identifiers the text encoder never saw -- the first demo's "olis" and "hta" -- have
#: near-identical untrained embeddings, and the text encoder's outputs for "a olis circle" and
#: "a hta circle" differed by ~2-10 %: no LoRA on the UNet could tell the two subjects apart.)
SUBJECTS: tuple[SubjectSpec, ...] = (
    SubjectSpec("a", "wip", "circle", "yellow", "striped"),
    SubjectSpec("b", "jam", "circle", "yellow", "dotted"),
)
#: The third and fourth similar subjects (``mudi demo --subjects 3|4``): the remaining markings of
#: the same yellow circle. Their identifiers are, like "wip" and "jam", single-token made-up words
#: of the kind the base model's captions used as meaningless modifiers.
MORE_SUBJECTS: tuple[SubjectSpec, ...] = (
    SubjectSpec("c", "tok", "circle", "yellow", "checkered"),
    SubjectSpec("d", "bez", "circle", "yellow", "plain"),
)
#: How many similar subjects the toy world has at most.
MAX_SUBJECTS = len(SUBJECTS) + len(MORE_SUBJECTS)


def similar_subjects(n: int = 2) -> tuple[SubjectSpec, ...]:
    """The first ``n`` (2..4) similar toy subjects: wip (striped), jam (dotted), tok (checkered), bez (plain)."""
    if not 2 <= n <= MAX_SUBJECTS:
        raise ValueError(f"the toy world has 2 to {MAX_SUBJECTS} similar subjects (asked for {n})")
    return (SUBJECTS + MORE_SUBJECTS)[:n]
#: Words `made_up_word` never returns (kept unseen by the base model's training captions).
RESERVED_WORDS: frozenset[str] = frozenset({"olis", "hta"})


def mark_colour(colour: str, version: int = WORLD_VERSION) -> tuple[int, int, int]:
    """Markings are near-black on light colours and light grey / near-white on dark colours."""
    r, g, b = COLOURS[colour]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    light = int(_STYLE[version]["light"])
    return (25, 25, 25) if lum > 110 else (light, light, light)


# ---------------------------------------------------------------------------------------------
# Rendering


def render_background(name: str, res: int, seed: int, version: int = WORLD_VERSION) -> np.ndarray:
    """A (res, res, 3) float32 background in 0..255, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    amp = _STYLE[version]["bg_amp"]
    y, x = np.mgrid[0:res, 0:res].astype(np.float32)
    s = res / 64.0
    if name == "white":
        img = np.full((res, res, 3), 255.0, np.float32)
    elif name == "grass":
        base = np.array([60, 150, 55], np.float32) + rng.uniform(-15, 15, 3)
        n = rng.normal(0, 12, (res, res, 1)).astype(np.float32)
        blades = np.sin(x * 1.7 / s + rng.uniform(0, 6.28) + 0.6 * np.sin(y / (5 * s)))[..., None]
        img = base + n + 10 * amp * blades * np.array([0.3, 1.0, 0.3], np.float32)
    elif name == "sand":
        base = np.array([220, 195, 145], np.float32) + rng.uniform(-10, 10, 3)
        n = rng.normal(0, 9, (res, res, 1)).astype(np.float32)
        dunes = np.sin((x * 0.3 + y) / (6 * s) + rng.uniform(0, 6.28))[..., None]
        img = base + n + 8 * amp * dunes
    elif name == "water":
        base = np.array([55, 125, 190], np.float32) + rng.uniform(-10, 10, 3)
        ph = rng.uniform(0, 6.28)
        waves = np.sin(y / (2.2 * s) + 1.2 * np.sin(x / (7 * s) + ph))[..., None]
        n = rng.normal(0, 5, (res, res, 1)).astype(np.float32)
        img = base + 22 * amp * waves * np.array([0.6, 0.8, 1.0], np.float32) + n
    elif name == "wood":
        base = np.array([150, 100, 60], np.float32) + rng.uniform(-10, 10, 3)
        ph = rng.uniform(0, 6.28)
        grain = np.sin(x / (1.6 * s) + 2.0 * np.sin(y / (9 * s) + ph))[..., None]
        n = rng.normal(0, 5, (res, res, 1)).astype(np.float32)
        img = base + 18 * amp * grain + n
    else:
        raise ValueError(f"unknown background {name!r}; choose from {sorted(BACKGROUNDS)}")
    return np.clip(img, 0, 255)


def _shape_mask(obj: ToyObject, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean coverage of `obj` at the sample points (xs, ys) in pixel units."""
    u = (xs - obj.cx) / (obj.size / 2)  # -1..1 across the bounding box
    v = (ys - obj.cy) / (obj.size / 2)
    if obj.shape == "circle":
        return u * u + v * v <= 1.0
    if obj.shape == "square":
        return (np.abs(u) <= 0.86) & (np.abs(v) <= 0.86)
    if obj.shape == "triangle":  # apex up, base at the bottom
        return (v <= 0.9) & (v >= -0.95 + 1.85 * np.abs(u) / 0.98)
    if obj.shape == "star":  # five points, apex up
        r = np.sqrt(u * u + v * v)
        a = np.arctan2(u, -v)  # 0 at the top, clockwise
        k = np.mod(a, 2 * np.pi / 5) / (2 * np.pi / 5)  # 0..1 within one point
        tri = np.abs(k - 0.5) * 2  # 1 at a tip direction, 0 between tips
        rad = 0.45 + 0.55 * tri**1.6
        return r <= rad
    raise ValueError(f"unknown shape {obj.shape!r}; choose from {CLASSES}")


def _texture_marks(obj: ToyObject, xs: np.ndarray, ys: np.ndarray, version: int = WORLD_VERSION) -> np.ndarray:
    """Boolean: where the object's surface shows its mark colour (object-relative pattern)."""
    st = _STYLE[version]
    u = (xs - (obj.cx - obj.size / 2)) / obj.size  # 0..1 across the box
    v = (ys - (obj.cy - obj.size / 2)) / obj.size
    if obj.texture == "plain":
        return np.zeros(np.broadcast(xs, ys).shape, bool)
    if obj.texture == "striped":  # horizontal bands
        return np.mod(v * st["stripes"], 1.0) < 0.45
    if obj.texture == "dotted":  # dots on a square grid
        pu = np.mod(u * st["dots"] + st["dot_off"], 1.0) - 0.5
        pv = np.mod(v * st["dots"] + st["dot_off"], 1.0) - 0.5
        return pu * pu + pv * pv <= st["dot_r"] ** 2
    if obj.texture == "checkered":
        n = int(st["checks"])
        return (np.floor(u * n).astype(int) + np.floor(v * n).astype(int)) % 2 == 0
    raise ValueError(f"unknown texture {obj.texture!r}; choose from {TEXTURES}")


def render_scene(scene: Scene) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render `scene`: a (R, R, 3) uint8 image and one boolean (R, R) mask per object.

    Objects are painted in order (later ones on top); a mask is the visible part of its
    object (coverage >= 0.5 after occlusion by later objects).
    """
    res = scene.resolution
    ss = SUPERSAMPLE
    img = render_background(scene.background, res, scene.bg_seed, scene.version).astype(np.float32)
    # sample points at sub-pixel centres
    sub = (np.arange(res * ss, dtype=np.float32) + 0.5) / ss
    ys_full, xs_full = np.meshgrid(sub, sub, indexing="ij")
    coverages: list[np.ndarray] = []
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        px0, py0 = max(0, int(np.floor(x0)) - 1), max(0, int(np.floor(y0)) - 1)
        px1, py1 = min(res, int(np.ceil(x1)) + 1), min(res, int(np.ceil(y1)) + 1)
        if px1 <= px0 or py1 <= py0:
            coverages.append(np.zeros((res, res), np.float32))
            continue
        xs = xs_full[py0 * ss : py1 * ss, px0 * ss : px1 * ss]
        ys = ys_full[py0 * ss : py1 * ss, px0 * ss : px1 * ss]
        inside = _shape_mask(obj, xs, ys)
        marks = _texture_marks(obj, xs, ys, scene.version) & inside
        h, w = (py1 - py0), (px1 - px0)
        cov = inside.reshape(h, ss, w, ss).mean(axis=(1, 3)).astype(np.float32)
        markf = marks.reshape(h, ss, w, ss).mean(axis=(1, 3)).astype(np.float32)
        base = np.array(COLOURS[obj.colour], np.float32)
        mark = np.array(mark_colour(obj.colour, scene.version), np.float32)
        # colour of the covered part: mix of base and mark by their sub-pixel shares
        with np.errstate(invalid="ignore", divide="ignore"):
            mfrac = np.where(cov > 0, markf / np.maximum(cov, 1e-6), 0.0)[..., None]
        col = base * (1 - mfrac) + mark * mfrac
        region = img[py0:py1, px0:px1]
        c = cov[..., None]
        img[py0:py1, px0:px1] = region * (1 - c) + col * c
        full = np.zeros((res, res), np.float32)
        full[py0:py1, px0:px1] = cov
        # occlusion: earlier objects lose what this one covers
        for prev in coverages:
            prev *= 1 - full
        coverages.append(full)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    masks = [c >= 0.5 for c in coverages]
    return image, masks


# ---------------------------------------------------------------------------------------------
# Sampling scenes and captions


def _allowed_colours(background: str, rng: np.random.Generator) -> list[str]:
    return [c for c in COLOURS if (c, background) not in FORBIDDEN]


def _place(
    sizes: Sequence[float], res: int, rng: np.random.Generator, tries: int = 50
) -> list[tuple[float, float]] | None:
    """Non-overlapping centres (2 px gap) for objects of the given sizes, or None."""
    placed: list[tuple[float, float, float]] = []
    for s in sizes:
        for _ in range(tries):
            cx = rng.uniform(s / 2 + 1, res - s / 2 - 1)
            cy = rng.uniform(s / 2 + 1, res - s / 2 - 1)
            if all(
                abs(cx - px) >= (s + ps) / 2 + 2 or abs(cy - py) >= (s + ps) / 2 + 2
                for px, py, ps in placed
            ):
                placed.append((cx, cy, s))
                break
        else:
            return None
    return [(cx, cy) for cx, cy, _ in placed]


def sample_scene(
    rng: np.random.Generator, resolution: int = 64, n_objects: int | None = None, version: int = WORLD_VERSION
) -> Scene:
    """A random scene of 1-3 non-overlapping objects (sizes scale with `resolution`).

    In world version 2, half of the two-object scenes are *similar pairs*: same class and
    colour, two different markings.
    """
    s = resolution / 64.0
    background = str(rng.choice(list(BACKGROUNDS), p=[0.22, 0.18, 0.18, 0.17, 0.25]))
    if n_objects is None:
        probs = [0.3, 0.5, 0.2] if version == 1 else [0.25, 0.55, 0.2]
        n_objects = int(rng.choice([1, 2, 3], p=probs))
    sizes_by_n = {1: (20, 44), 2: (16, 32), 3: (14, 24)}
    if version >= 2:
        sizes_by_n[2] = (18, 32)
    lo, hi = sizes_by_n[n_objects]
    while True:
        sizes = [float(rng.uniform(lo, hi)) * s for _ in range(n_objects)]
        centres = _place(sizes, resolution, rng)
        if centres is not None:
            break
    colours = _allowed_colours(background, rng)
    objs = []
    for size, (cx, cy) in zip(sizes, centres):
        objs.append(
            ToyObject(
                shape=str(rng.choice(CLASSES)),
                colour=str(rng.choice(colours)),
                texture=str(rng.choice(TEXTURES)),
                cx=float(cx),
                cy=float(cy),
                size=size,
            )
        )
    if version >= 2 and n_objects == 2 and rng.random() < 0.5:
        marked = [t for t in TEXTURES if t != "plain"]
        t1, t2 = (str(t) for t in rng.choice(marked, size=2, replace=False))
        objs = [replace(objs[0], texture=t1), replace(objs[1], shape=objs[0].shape, colour=objs[0].colour, texture=t2)]
    return Scene(tuple(objs), background, int(rng.integers(0, 2**31 - 1)), resolution, version)


def subject_object(spec: SubjectSpec, cx: float, cy: float, size: float) -> ToyObject:
    return ToyObject(spec.shape, spec.colour, spec.texture, cx, cy, size)


def sample_subject_photo(
    spec: SubjectSpec, rng: np.random.Generator, resolution: int = 64, background: str | None = None
) -> Scene:
    """One reference photo of `spec`: alone, varied position, scale and background."""
    s = resolution / 64.0
    if background is None:
        bgs = [b for b in BACKGROUNDS if (spec.colour, b) not in FORBIDDEN]
        background = str(rng.choice(bgs))
    size = float(rng.uniform(26, 44)) * s
    cx = float(rng.uniform(size / 2 + 1, resolution - size / 2 - 1))
    cy = float(rng.uniform(size / 2 + 1, resolution - size / 2 - 1))
    return Scene((subject_object(spec, cx, cy, size),), background, int(rng.integers(0, 2**31 - 1)), resolution)
