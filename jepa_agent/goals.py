"""Goals for planning: the env's rendered goal image, any user image file, or the true goal state."""

from __future__ import annotations

import os
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
    return np.asarray(img, dtype=np.uint8)


def load_goal_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read an image file (PNG, JPEG, ...) as the goal: RGB uint8 ``[size, size, 3]``.

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
            arr = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise GoalError(
            f"goal image {str(path)!r} is not a readable image ({e}); expected a PNG or JPEG"
        ) from e
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise GoalError(f"goal image {str(path)!r} has shape {arr.shape}; expected [H, W, 3] with H, W > 0")
    return resize_square(arr, size)


def goal_kind(goal: str) -> str:
    """``"image"``, ``"state"`` or ``"file"`` (any other value is taken as an image path)."""
    if goal in GOAL_KINDS:
        return goal
    if not goal:
        raise GoalError("goal is empty; expected 'image', 'state' or a path to an image file")
    return "file"
