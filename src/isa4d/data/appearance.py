"""Real photos shipped inside installed packages, and clothing-like appearances for the procedural body.

The synthetic generator (:mod:`isa4d.data.synth`, docs/synth.md) textures its people, walls and floors
with real photographs. None is downloaded: every photo is a file that a dependency ships in its wheel
(scikit-image's bundled sample images, matplotlib's `grace_hopper.jpg`, scikit-learn's `china.jpg` and
`flower.jpg`), read straight from the package folder (found with `importlib.util.find_spec`, without
importing the package). A photo whose package or file is missing is skipped; scikit-image's data
functions are deliberately not called, because for images that are not bundled they would fetch them
over the network (with `pooch`).

Appearance: the body's vertices are split into parts by the joint with the largest skinning weight
(head, torso, arms, hands, legs, feet). Each part gets a cylindrical texture projection about its bone
in the rest pose, and the per-vertex colours are sampled (with `isa4d.render.sample_texture`) from
photo crops, solid colours and photo-textured tints: a shirt, trousers or shorts, shoes, skin and hair.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from isa4d.body import JOINT_INDEX, procedural_body_data, rest_joints
from isa4d.render import sample_texture

# ------------------------------------------------------------------------------------------------ photos


@dataclass(frozen=True)
class PhotoSource:
    """A photo file inside an installed package.

    Attributes:
        package: the top-level package that ships it.
        path: the file, relative to the package folder.
        licence: its licence, as its package documents it.
        credit: author / origin, for attribution.
        kind: "scene" (a picture of a scene: walls, printed fabric) or "texture" (a material, grey:
            floors, fabric weaves, hair).
    """

    package: str
    path: str
    licence: str
    credit: str
    kind: str


PHOTO_SOURCES: dict[str, PhotoSource] = {
    "astronaut": PhotoSource(
        "skimage", "data/astronaut.png", "public domain", "NASA (Eileen Collins), via scikit-image", "scene"
    ),
    "chelsea": PhotoSource(
        "skimage", "data/chelsea.png", "CC0", "Stefan van der Walt, via scikit-image", "scene"
    ),
    "coffee": PhotoSource("skimage", "data/coffee.png", "CC0", "Rachel Michetti, via scikit-image", "scene"),
    "rocket": PhotoSource("skimage", "data/rocket.jpg", "public domain", "SpaceX, via scikit-image", "scene"),
    "camera": PhotoSource("skimage", "data/camera.png", "CC0", "Lav Varshney, via scikit-image", "scene"),
    "brick": PhotoSource(
        "skimage", "data/brick.png", "CC0", "CC0Textures (Bricks25), via scikit-image", "texture"
    ),
    "grass": PhotoSource(
        "skimage", "data/grass.png", "CC0", "CC0Textures (Grass004), via scikit-image", "texture"
    ),
    "gravel": PhotoSource(
        "skimage", "data/gravel.png", "CC0", "CC0Textures (Gravel04), via scikit-image", "texture"
    ),
    "text": PhotoSource("skimage", "data/text.png", "public domain", "scikit-image", "texture"),
    "coins": PhotoSource(
        "skimage",
        "data/coins.png",
        "no known copyright restrictions",
        "Brooklyn Museum, via scikit-image",
        "texture",
    ),
    "grace_hopper": PhotoSource(
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "public domain",
        "U.S. Navy (Grace Hopper portrait), via matplotlib",
        "scene",
    ),
    "china": PhotoSource(
        "sklearn",
        "datasets/images/china.jpg",
        "CC BY 2.0",
        "danielbuechele (Flickr), via scikit-learn",
        "scene",
    ),
    "flower": PhotoSource(
        "sklearn", "datasets/images/flower.jpg", "CC BY 2.0", "vultilion (Flickr), via scikit-learn", "scene"
    ),
}
"""Every photo the generator may use, by name; :func:`available_photos` says which are installed."""

FLOOR_TEXTURES = ("brick", "grass", "gravel")
"""Texture photos for floors (tinted, as they are grey)."""
FLOOR_TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (0.78, 0.48, 0.38),
    "grass": (0.42, 0.62, 0.30),
    "gravel": (0.66, 0.62, 0.56),
}


def photo_path(name: str) -> Path | None:
    """The file of photo `name`, or None if its package or the file is not installed (nothing is imported)."""
    source = PHOTO_SOURCES[name]
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / source.path
        if path.is_file():
            return path
    return None


@functools.cache
def available_photos(kind: str | None = None) -> tuple[str, ...]:
    """Names of the photos that are installed (all kinds, or only "scene" / "texture"), in registry order."""
    return tuple(
        name
        for name, source in PHOTO_SOURCES.items()
        if (kind is None or source.kind == kind) and photo_path(name) is not None
    )


@functools.lru_cache(maxsize=32)
def load_photo(name: str) -> np.ndarray:
    """Photo `name` as `(h, w, 3)` uint8 RGB (grey photos are repeated over the channels; cached, read-only).

    Raises:
        FileNotFoundError: if the photo is not installed.
    """
    path = photo_path(name)
    if path is None:
        source = PHOTO_SOURCES[name]
        raise FileNotFoundError(f"photo {name!r} ({source.package}: {source.path}) is not installed")
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"))
    array.flags.writeable = False
    return array


def photo_licences(names: Sequence[str]) -> str:
    """A licence line for photos `names`, e.g. `"photos: coffee (CC0); china (CC BY 2.0, <credit>)"`."""
    parts = []
    for name in sorted(set(names)):
        source = PHOTO_SOURCES[name]
        credit = f", {source.credit}" if "BY" in source.licence else ""
        parts.append(f"{name} ({source.licence}{credit})")
    return "photos: " + "; ".join(parts)


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an `(h, w, 3)` uint8 image with antialiasing (PIL's box filter when shrinking)."""
    height, width = max(1, int(height)), max(1, int(width))
    if image.shape[:2] == (height, width):
        return np.asarray(image)
    shrink = height < image.shape[0] and width < image.shape[1]
    method = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.asarray(image)).resize((width, height), method))


def mirror_tile(image: np.ndarray) -> np.ndarray:
    """`[[I, fliplr I], [flipud I, flip I]]`: a 2h x 2w image that tiles seamlessly under wrap-around."""
    top = np.concatenate([image, image[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def random_crop(rng: np.random.Generator, image: np.ndarray, fraction: tuple[float, float]) -> np.ndarray:
    """A random square crop whose side is `fraction` (uniform in the range) of the image's shorter side."""
    h, w = image.shape[:2]
    side = max(2, int(round(rng.uniform(*fraction) * min(h, w))))
    top = int(rng.integers(0, h - side + 1))
    left = int(rng.integers(0, w - side + 1))
    return image[top : top + side, left : left + side]


def luminance(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB image in [0, 1], `(h, w)` float64."""
    return np.asarray(image, dtype=np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def tinted_texture(image: np.ndarray, color: Sequence[float], contrast: float) -> np.ndarray:
    """`color * (1 + contrast * (lum - mean lum) / std lum)`, clipped to [0, 1]: a material in a colour."""
    lum = luminance(image)
    detail = (lum - lum.mean()) / max(float(lum.std()), 1e-3)
    return np.clip(np.asarray(color, dtype=np.float64) * (1.0 + contrast * detail[..., None]), 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ body parts

PART_NAMES = ("head", "torso", "pelvis", "upper_arm", "forearm", "hand", "thigh", "shin", "foot")
"""Body parts, indexed by :func:`body_part_labels`."""
_PART_JOINTS: dict[str, tuple[str, ...]] = {
    "head": ("neck", "head"),
    "torso": ("spine1", "spine2", "spine3", "left_collar", "right_collar"),
    "pelvis": ("pelvis",),
    "upper_arm": ("left_shoulder", "right_shoulder"),
    "forearm": ("left_elbow", "right_elbow"),
    "hand": ("left_wrist", "right_wrist", "left_hand", "right_hand"),
    "thigh": ("left_hip", "right_hip"),
    "shin": ("left_knee", "right_knee"),
    "foot": ("left_ankle", "right_ankle", "left_foot", "right_foot"),
}
# Texture projections: the joints they cover and their axis (start joint -> end point, rest pose).
_UV_GROUPS: tuple[tuple[tuple[str, ...], str, str | tuple[float, float, float]], ...] = (
    (("pelvis", "spine1", "spine2", "spine3", "left_collar", "right_collar"), "pelvis", "neck"),
    (("neck", "head"), "neck", (0.0, 0.52, 0.03)),
    (("left_shoulder", "left_elbow", "left_wrist", "left_hand"), "left_shoulder", "left_hand"),
    (("right_shoulder", "right_elbow", "right_wrist", "right_hand"), "right_shoulder", "right_hand"),
    (("left_hip", "left_knee"), "left_hip", "left_ankle"),
    (("right_hip", "right_knee"), "right_hip", "right_ankle"),
    (("left_ankle", "left_foot"), "left_ankle", (0.12, -1.165, 0.175)),
    (("right_ankle", "right_foot"), "right_ankle", (-0.12, -1.165, 0.175)),
)


@functools.cache
def body_part_labels() -> np.ndarray:
    """Part (index into :data:`PART_NAMES`) of each procedural-body vertex: its strongest joint's part."""
    strongest = procedural_body_data()["weights"].argmax(axis=1)
    joint_part = np.zeros(len(JOINT_INDEX), dtype=np.int64)
    for part, joints in enumerate(_PART_JOINTS.values()):
        joint_part[[JOINT_INDEX[joint] for joint in joints]] = part
    labels = joint_part[strongest]
    labels.flags.writeable = False
    return labels


@functools.cache
def body_uvs() -> np.ndarray:
    """Per-vertex `(u, v)` of the procedural body: cylindrical projections about the parts' bones (rest pose).

    `u` is the angle about the bone axis over 2 pi (one period around the limb), `v` the position along the
    bone divided by the part's mean circumference, so a texture period is about as tall as it is wide.
    """
    data = procedural_body_data()
    vertices = data["v_template"].astype(np.float64)
    joints = rest_joints()
    strongest = data["weights"].argmax(axis=1)
    uv = np.zeros((len(vertices), 2))
    for members, start, end in _UV_GROUPS:
        selected = np.isin(strongest, [JOINT_INDEX[name] for name in members])
        origin = joints[JOINT_INDEX[start]]
        tip = joints[JOINT_INDEX[end]] if isinstance(end, str) else np.asarray(end)
        axis = (tip - origin) / np.linalg.norm(tip - origin)
        reference = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = reference - axis * (reference @ axis)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        offsets = vertices[selected] - origin
        along = offsets @ axis
        radial = offsets - along[:, None] * axis
        circumference = 2 * np.pi * max(float(np.linalg.norm(radial, axis=1).mean()), 1e-3)
        uv[selected, 0] = np.arctan2(radial @ e2, radial @ e1) / (2 * np.pi) + 0.5
        uv[selected, 1] = along / circumference
    uv.flags.writeable = False
    return uv


@functools.cache
def _face_regions() -> tuple[np.ndarray, np.ndarray]:
    """Hair and eye vertex masks of the procedural head (rest pose)."""
    vertices = procedural_body_data()["v_template"].astype(np.float64)
    head = body_part_labels() == PART_NAMES.index("head")
    x, y, z = vertices.T
    hair = head & ((y > 0.475) | ((z < 0.0) & (y > 0.36)) | ((z < 0.05) & (y > 0.45)))
    eyes = np.zeros(len(vertices), dtype=bool)
    for side in (-1.0, 1.0):
        near = head & (np.abs(x - 0.032 * side) < 0.02) & (np.abs(y - 0.43) < 0.02)
        if near.any():
            front = np.flatnonzero(near)[np.argmax(z[near])]
            eyes |= np.linalg.norm(vertices - vertices[front], axis=1) < 0.013
    return hair, eyes


# ------------------------------------------------------------------------------------------------ appearance

SKIN_TONES = np.array(
    [
        (0.98, 0.84, 0.74),
        (0.94, 0.76, 0.62),
        (0.86, 0.66, 0.52),
        (0.74, 0.54, 0.40),
        (0.58, 0.40, 0.28),
        (0.42, 0.28, 0.20),
        (0.30, 0.20, 0.15),
    ]
)
HAIR_COLORS = np.array(
    [(0.08, 0.06, 0.05), (0.25, 0.16, 0.09), (0.45, 0.30, 0.16), (0.80, 0.66, 0.40), (0.62, 0.60, 0.58)]
)


@dataclass
class Appearance:
    """The look of one person.

    Attributes:
        seed: the seed it was drawn from (`random_appearance(seed)` rebuilds it exactly).
        vertex_colors: `(V, 3)` float albedo in [0, 1] of every procedural-body vertex.
        description: JSON-ready summary (garments, their colours and the photos used).
        photos: names of the photos used.
    """

    seed: int
    vertex_colors: np.ndarray
    description: dict[str, Any]
    photos: list[str]


def _random_color(
    rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float]
) -> np.ndarray:
    """An RGB colour from a random hue and the given saturation and value ranges."""
    hue = rng.uniform(0.0, 1.0)
    s, v = rng.uniform(*saturation), rng.uniform(*value)
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _garment_texture(
    rng: np.random.Generator, photos: Sequence[str], color: np.ndarray, texel_size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """A fabric: a printed photo crop (blended with `color`), or `color` textured by a photo's luminance."""
    name = str(rng.choice(photos))
    crop = random_crop(rng, load_photo(name), (0.12, 0.45))
    crop = resize_image(crop, texel_size, texel_size)
    if rng.uniform() < 0.45:
        mix = rng.uniform(0.55, 1.0)
        texture = mix * crop / 255.0 + (1.0 - mix) * color
        style = {"style": "print", "photo": name, "mix": round(float(mix), 3)}
    else:
        contrast = rng.uniform(0.08, 0.3)
        texture = tinted_texture(crop, color, contrast)
        style = {"style": "weave", "photo": name, "contrast": round(float(contrast), 3)}
    style["color"] = [round(float(c), 3) for c in color]
    return mirror_tile(texture), style


def random_appearance(seed: int, texel_size: int = 40) -> Appearance:
    """Draw a person's look from `seed`: skin, hair, a shirt, trousers or shorts, shoes.

    Garment textures are crops of the installed photos (:func:`available_photos`), mirror-tiled and
    sampled per vertex through :func:`body_uvs`; `texel_size` is the crop's side in texels after
    resizing (about one texel per vertex around a limb).

    Raises:
        RuntimeError: if no photo is installed.
    """
    rng = np.random.default_rng(seed)
    photos = available_photos()
    if not photos:
        raise RuntimeError("no photos available: install scikit-image (it ships the sample photos)")
    labels = body_part_labels()
    uv = body_uvs()
    part = {name: labels == index for index, name in enumerate(PART_NAMES)}
    used: list[str] = []

    skin_tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.93, 1.05, size=3)
    skin_photo = str(rng.choice(photos))
    skin_detail = resize_image(random_crop(rng, load_photo(skin_photo), (0.1, 0.3)), 16, 16)
    skin = mirror_tile(tinted_texture(skin_detail, np.clip(skin_tone, 0, 1), 0.03))
    colors = sample_texture(skin, uv)

    garments: dict[str, Any] = {}
    sleeves = str(rng.choice(["long", "short", "none"], p=[0.45, 0.4, 0.15]))
    legs = str(rng.choice(["long", "shorts"], p=[0.7, 0.3]))
    shirt_color = _random_color(rng, (0.0, 0.85), (0.15, 0.95))
    shirt, garments["shirt"] = _garment_texture(rng, photos, shirt_color, texel_size)
    trouser_color = _random_color(rng, (0.0, 0.7), (0.1, 0.7))
    trousers, garments["trousers"] = _garment_texture(rng, photos, trouser_color, texel_size)
    shoe_color = _random_color(rng, (0.0, 0.6), (0.05, 0.8))
    shoes, garments["shoes"] = _garment_texture(rng, photos, shoe_color, texel_size // 2)
    garments["shirt"]["sleeves"] = sleeves
    garments["trousers"]["length"] = legs

    shirt_parts = part["torso"] | (part["upper_arm"] if sleeves != "none" else False)
    if sleeves == "long":
        shirt_parts = shirt_parts | part["forearm"]
    trouser_parts = part["pelvis"] | part["thigh"] | (part["shin"] if legs == "long" else False)
    for mask, texture in ((shirt_parts, shirt), (trouser_parts, trousers), (part["foot"], shoes)):
        colors[mask] = sample_texture(texture, uv[mask])

    hair_region, eyes = _face_regions()
    bald = rng.uniform() < 0.12
    hair_color = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.85, 1.15)
    if not bald:
        texture_photos = available_photos("texture") or photos
        hair_name = str(rng.choice(texture_photos))
        strands = resize_image(random_crop(rng, load_photo(hair_name), (0.1, 0.3)), 24, 24)
        hair = mirror_tile(tinted_texture(strands, np.clip(hair_color, 0, 1), 0.25))
        colors[hair_region] = sample_texture(hair, uv[hair_region])
        garments["hair"] = {"photo": hair_name, "color": [round(float(c), 3) for c in hair_color]}
        used.append(hair_name)
    colors[eyes] = (0.05, 0.04, 0.04)
    garments["skin"] = {"photo": skin_photo, "color": [round(float(c), 3) for c in skin_tone]}
    used += [skin_photo] + [garments[name]["photo"] for name in ("shirt", "trousers", "shoes")]
    return Appearance(int(seed), np.clip(colors, 0.0, 1.0), garments, sorted(set(used)))
