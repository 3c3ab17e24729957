"""Goals for planning: the env's rendered goal image, any user image file, or the true goal state."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

GOAL_KINDS = ("image", "state")


class GoalError(ValueError):
    """A goal cannot be used: unknown kind, missing or unreadable image file."""


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Center-crop an ``[H, W, C]`` uint8 image to a square and resize it to ``[size, size, 3]`` (RGB)."""
    img = Image.fromarray(image)
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.array(img, dtype=np.uint8)  # a writable copy


def _rgb8(img: Image.Image) -> np.ndarray:
    """Any PIL image as RGB uint8 ``[H, W, 3]``; 16-bit and float greyscale are rescaled, not clipped."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.max() > 255):
            a = a * (255.0 / 65535.0)  # 16-bit range
        elif img.mode == "F" and a.max() <= 1.0:
            a = a * 255.0  # float in [0, 1]
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"))


def load_goal_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read an image file (PNG, JPEG, ...) as the goal: RGB uint8 ``[size, size, 3]``.

    A non-square image is centre-cropped and a smaller one upsampled, each with a warning: the
    model sees ``size x size`` pixels framed like the env's camera.

    Raises:
        GoalError: the file is missing, not an image, or empty.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise GoalError(
            f"goal image {str(path)!r} does not exist; pass goal=image (the env's rendered goal), "
            "goal=state (true-state oracle) or goal=<path to an existing PNG/JPEG>"
        )
    try:
        with Image.open(path) as img:
            img.load()
            arr = _rgb8(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise GoalError(
            f"goal image {str(path)!r} is not a readable image ({e}); expected a PNG or JPEG"
        ) from e
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise GoalError(f"goal image {str(path)!r} has shape {arr.shape}; expected [H, W, 3] with H, W > 0")
    h, w = arr.shape[:2]
    if h != w:
        warnings.warn(
            f"goal image {str(path)!r} is {w}x{h}, not square: its centre {min(h, w)}x{min(h, w)} square is "
            "used; crop it like the env's camera view for a faithful goal",
            stacklevel=2,
        )
    if min(h, w) < size:
        warnings.warn(
            f"goal image {str(path)!r} ({w}x{h}) is smaller than the model's {size}x{size} input: it is "
            "upsampled, so the goal is blurred",
            stacklevel=2,
        )
    return resize_square(arr, size)


def goal_kind(goal: str) -> str:
    """``"image"``, ``"state"`` or ``"file"`` (any other value is taken as an image path)."""
    if goal in GOAL_KINDS:
        return goal
    if not goal:
        raise GoalError("goal is empty; expected 'image', 'state' or a path to an image file")
    return "file"
