"""Clips from any folder of MP4 videos (recursive), for self-supervised video pretraining.

No actions or states are needed: a directory of recorded episodes (``scripts/collect.py``) works,
and so does any folder of phone or web videos. Frames are center-cropped to a square and resized
inside ffmpeg while decoding, so long high-resolution videos cost little memory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from jepa_agent.data.video_io import VIDEO_EXTENSIONS, DataError, count_frames, read_video

MAX_MISSING_FRAMES = 2  # decoded frames may fall this short of the header's count (edit lists)


def find_videos(root: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[Path]:
    """Sorted video files under ``root`` (recursive); hidden files (e.g. writers' temp files) are ignored."""
    exts = {e.lower() for e in extensions}
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in exts
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


class VideoFolderDataset(Dataset):
    """Clips of ``clip_len`` frames, taken every ``frame_stride`` frames, from every video under ``root``.

    Item ``i`` is ``{"frames": uint8 [T, 3, H, W]}`` with ``T = clip_len`` and ``H = W = image_size``
    (center-crop to a square, then area resize). Every start position of every video is one item.
    Construction reads only MP4 headers (frame counts); a file that is not a readable MP4 is
    skipped with a warning and listed in :attr:`skipped` as ``(path, reason)``, as is a video too
    short for one clip, or one that fails only when decoded (its clips are then served from the
    next video). Videos are decoded lazily, once per process, and cached when ``cache``
    (``image_size**2 * 3`` bytes per frame: 12 KB at 64 px).

    Args:
        root: folder searched recursively for ``.mp4`` / ``.m4v`` / ``.mov`` files.
        clip_len: frames per clip (>= 1).
        frame_stride: source frames between sampled frames (>= 1).
        image_size: output height and width.
        cache: keep decoded videos in memory.

    Raises:
        DataError: the folder is missing or holds no usable video.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        clip_len: int,
        frame_stride: int = 1,
        image_size: int = 64,
        cache: bool = True,
    ) -> None:
        for name, value in (
            ("clip_len", clip_len),
            ("frame_stride", frame_stride),
            ("image_size", image_size),
        ):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1")
        self.root = Path(root)
        if not self.root.is_dir():
            what = "is a file, expected a folder" if self.root.exists() else "does not exist"
            raise DataError(f"{self.root}: video folder {what}")
        self.clip_len, self.frame_stride, self.image_size = int(clip_len), int(frame_stride), int(image_size)
        self.cache = cache
        files = find_videos(self.root)
        if not files:
            raise DataError(
                f"{self.root}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found (searched recursively)"
            )
        self.span = (self.clip_len - 1) * self.frame_stride + 1  # source frames covered by one clip
        self.files: list[Path] = []
        self.num_frames: list[int] = []
        self.skipped: list[tuple[str, str]] = []
        too_short = 0
        for path in files:
            try:
                n = count_frames(path)
            except DataError as e:
                warnings.warn(f"skipping video: {e}", stacklevel=2)
                self.skipped.append((str(path), str(e)))
                continue
            if n < self.span:
                too_short += 1
                self.skipped.append((str(path), f"{n} frames, a clip needs {self.span}"))
                continue
            self.files.append(path)
            self.num_frames.append(n)
        if too_short:
            warnings.warn(
                f"{self.root}: {too_short} videos are shorter than one clip ({self.span} frames); skipped",
                stacklevel=2,
            )
        if not self.files:
            reasons = "; ".join(f"{p}: {r}" for p, r in self.skipped[:3])
            raise DataError(f"{self.root}: none of the {len(files)} videos is usable ({reasons})")
        starts = [np.arange(n - self.span + 1) for n in self.num_frames]
        self._video_of = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])  # [N]
        self._start_of = np.concatenate(starts)  # [N]
        self._frames: dict[int, np.ndarray] = {}
        self._undecodable: set[int] = set()

    @property
    def num_videos(self) -> int:
        """Usable videos."""
        return len(self.files)

    def __len__(self) -> int:
        return len(self._start_of)

    def _video_frames(self, pos: int) -> np.ndarray:
        """Decoded, cropped and resized frames uint8 ``[N, S, S, 3]`` of the ``pos``-th video."""
        frames = self._frames.get(pos)
        if frames is not None:
            return frames
        path, n = self.files[pos], self.num_frames[pos]
        frames = read_video(path, size=self.image_size, max_frames=n)
        if len(frames) < n - MAX_MISSING_FRAMES:
            raise DataError(f"{path}: header says {n} frames but only {len(frames)} decode (damaged video?)")
        if len(frames) < n:
            # decoders may drop a frame or two of the header's count (edit lists, broken tails):
            # repeat the last frame so every indexed clip stays valid
            frames = np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), axis=0)])
        if self.cache:
            self._frames[pos] = frames
        return frames

    def _decodable(self, i: int) -> tuple[int, np.ndarray]:
        """``(i, frames)``, or when clip ``i``'s video fails to decode, a warning and the first clip of
        the next video that decodes: one bad file never stops a long run."""
        for _ in range(self.num_videos):
            pos = int(self._video_of[i])
            if pos not in self._undecodable:
                try:
                    return i, self._video_frames(pos)
                except DataError as e:
                    self._undecodable.add(pos)
                    warnings.warn(f"skipping video: {e}", stacklevel=3)
                    self.skipped.append((str(self.files[pos]), str(e)))
            i = int(np.searchsorted(self._video_of, pos, side="right")) % len(self)  # next video
        raise DataError(f"{self.root}: no video decodes; first error: {self.skipped[-1][1]}")

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        i, video = self._decodable(i % len(self))
        s = int(self._start_of[i])
        clip = video[s : s + self.span : self.frame_stride]  # [T, S, S, 3]
        return {"frames": torch.from_numpy(np.ascontiguousarray(clip.transpose(0, 3, 1, 2)))}  # [T, 3, S, S]
