"""Recorded episodes on disk: one MP4 + one NPZ per episode and a dataset ``meta.json``.

Layout of a dataset directory::

    meta.json               format_version, env_id, env_kwargs, image_size, fps, action_space, dims,
                            video codec, collection settings, total_episodes / total_frames
    episode_000000.mp4      frames uint8 [T, H, W, 3] (H.264)
    episode_000000.npz      action [T-1, A] f32, observation.state [T, P] f32 (proprio),
                            state [T, S] f64 (sim state), goal.state [G] f64, seed, episode_index,
                            next.reward [T-1] f32, next.success [T-1] bool (optional)

Key names follow LeRobot (``action``, ``observation.state``, ``next.reward``). An episode is
*finished* when its NPZ exists: the writer (:mod:`jepa_agent.data.episode_writer`) renames the MP4
into place first and the NPZ last, each atomically, and readers only list NPZ files, so a killed
collection never leaves a half-written episode that loads. :class:`EpisodeDataset` serves
fixed-length windows of frames, actions, proprio and states for world-model training.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from jepa_agent.data.video_io import DataError, probe_mp4, read_video

FORMAT_VERSION = 1
META_NAME = "meta.json"
EPISODE_RE = re.compile(r"^episode_(\d{6})\.npz$")
REQUIRED_KEYS = ("action", "observation.state", "state", "goal.state", "seed", "episode_index")


def episode_stem(index: int) -> str:
    """File stem of episode ``index``: ``episode_000042``."""
    return f"episode_{int(index):06d}"


def episode_paths(root: str | os.PathLike, index: int) -> tuple[Path, Path]:
    """``(mp4, npz)`` paths of episode ``index`` under ``root``."""
    stem = Path(root) / episode_stem(index)
    return stem.with_suffix(".mp4"), stem.with_suffix(".npz")


def list_episodes(root: str | os.PathLike) -> list[int]:
    """Sorted indices of the episodes whose NPZ exists (temp files and stray names are ignored)."""
    return sorted(int(m.group(1)) for p in Path(root).iterdir() if (m := EPISODE_RE.match(p.name)))


def build_meta(
    env_id: str,
    env_kwargs: dict[str, Any],
    image_size: int,
    fps: float,
    action_low: np.ndarray,
    action_high: np.ndarray,
    proprio_dim: int,
    state_dim: int,
    goal_dim: int,
    video: dict[str, Any],
    collection: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``meta.json`` dict of a new dataset (counts start at zero; the writer keeps them current)."""
    low, high = np.asarray(action_low, np.float32), np.asarray(action_high, np.float32)
    s = int(image_size)
    return {
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs),
        "image_size": s,
        "fps": float(fps),
        "action_space": {
            "shape": list(low.shape),
            "low": low.tolist(),
            "high": high.tolist(),
            "dtype": "float32",
        },
        "proprio_dim": int(proprio_dim),
        "state_dim": int(state_dim),
        "goal_dim": int(goal_dim),
        "video": dict(video),
        "features": {  # LeRobot-style feature table
            "observation.image": {"dtype": "video", "shape": [s, s, 3], "file": "episode_XXXXXX.mp4"},
            "action": {"dtype": "float32", "shape": list(low.shape)},
            "observation.state": {"dtype": "float32", "shape": [int(proprio_dim)]},
            "state": {"dtype": "float64", "shape": [int(state_dim)]},
            "goal.state": {"dtype": "float64", "shape": [int(goal_dim)]},
        },
        "collection": dict(collection or {}),
        "total_episodes": 0,
        "total_frames": 0,
    }


def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    """Load ``root/meta.json``; a missing or empty directory or a bad meta file is a :class:`DataError`."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset directory does not exist (collect one with scripts/collect.py)")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset directory, found a file")
    path = root / META_NAME
    if not path.is_file():
        has_files = any(not p.name.startswith(".") for p in root.iterdir())
        what = "has no meta.json" if has_files else "is empty"
        raise DataError(f"{root}: {what}; expected an episode dataset written by scripts/collect.py")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable meta.json: {e}") from e
    missing = [k for k in ("format_version", "env_id", "image_size", "action_space") if k not in meta]
    if missing:
        raise DataError(f"{path}: meta.json lacks keys {missing}")
    if meta["format_version"] > FORMAT_VERSION:
        raise DataError(
            f"{path}: format_version {meta['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    return meta


def check_expected(meta: dict, root: Path, env_id: str | None, image_size: int | None) -> None:
    """Raise a :class:`DataError` when the dataset is of another env or image size than expected."""
    if env_id is not None and meta["env_id"] != env_id:
        try:  # accept short names ("reach") when the envs package is importable
            import envs

            env_id = envs.resolve_env_id(env_id)
        except (ImportError, ValueError):
            pass
        if meta["env_id"] != env_id:
            raise DataError(f"{root}: dataset is of env {meta['env_id']!r}, expected {env_id!r}")
    if image_size is not None and int(meta["image_size"]) != int(image_size):
        raise DataError(f"{root}: dataset has image_size {meta['image_size']}, expected {image_size}")


@dataclass
class EpisodeRecord:
    """One validated episode: its index, length and the (small) NPZ arrays held in memory."""

    index: int
    length: int
    mp4: Path
    arrays: dict[str, np.ndarray] = field(repr=False)


def load_episode(root: str | os.PathLike, index: int, meta: dict[str, Any]) -> EpisodeRecord:
    """Load and validate episode ``index`` (NPZ arrays + MP4 header; no video decoding).

    Raises:
        DataError: naming the file and what disagrees (missing keys, lengths, frame count, size).
    """
    mp4, npz = episode_paths(root, index)
    try:
        with np.load(npz, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise DataError(f"{npz}: episode file does not exist") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{npz}: unreadable NPZ ({type(e).__name__}: {e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DataError(f"{npz}: missing keys {missing}; has {sorted(arrays)}")
    proprio = arrays["observation.state"]
    if proprio.ndim != 2 or len(proprio) < 1:
        raise DataError(f"{npz}: 'observation.state' has shape {list(proprio.shape)}, expected [T >= 1, P]")
    t = len(proprio)
    a_shape = tuple(meta["action_space"]["shape"])
    checks = {
        "action": (t - 1, *a_shape),
        "observation.state": (t, meta.get("proprio_dim", arrays["observation.state"].shape[-1])),
        "state": (t, meta.get("state_dim", arrays["state"].shape[-1])),
    }
    for key, shape in checks.items():
        if arrays[key].shape != shape:
            raise DataError(f"{npz}: {key!r} has shape {list(arrays[key].shape)}, expected {list(shape)}")
    if arrays["episode_index"].shape != () or int(arrays["episode_index"]) != index:
        raise DataError(f"{npz}: holds episode_index {arrays['episode_index'].tolist()}, expected {index}")
    info = probe_mp4(mp4)
    if info.num_frames != t:
        raise DataError(f"{mp4}: video has {info.num_frames} frames but {npz.name} has {t} time steps")
    size = int(meta["image_size"])
    if (info.height, info.width) != (size, size):
        raise DataError(f"{mp4}: video is {info.width}x{info.height}, dataset image_size is {size}")
    return EpisodeRecord(index=index, length=t, mp4=mp4, arrays=arrays)


# ---------------------------------------------------------------------------------------- dataset
def split_indices(indices: list[int], split: str | None, val_fraction: float) -> list[int]:
    """Train/val split by episode index: ``val`` is the last ``ceil(val_fraction * n)`` episodes.

    At least one episode stays in train; with one episode or ``val_fraction=0`` val is empty.
    """
    if split not in (None, "train", "val"):
        raise ValueError(f"split={split!r}: expected None, 'train' or 'val'")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a number in [0, 1)")
    indices = sorted(indices)
    n_val = min(math.ceil(len(indices) * val_fraction), max(len(indices) - 1, 0))
    if split == "train":
        return indices[: len(indices) - n_val]
    if split == "val":
        return indices[len(indices) - n_val :]
    return indices


class EpisodeDataset(Dataset):
    """Fixed-length windows of recorded episodes, for world-model training.

    Item ``i`` is a dict with ``frames`` uint8 ``[T, 3, H, W]``, ``actions`` float32
    ``[T-1, frame_stride * A]`` (the actions between consecutive sampled frames, concatenated in
    time order), ``proprio`` float32 ``[T, P]``, ``state`` float32 ``[T, S]`` and ``episode`` (the
    on-disk episode index), where ``T = window`` frames are taken every ``frame_stride`` steps.

    Construction validates every episode cheaply (NPZ arrays, MP4 header frame count and size);
    an unreadable episode is skipped with a warning and listed in :attr:`skipped` as ``(path,
    reason)``. A video that only fails when decoded (damaged content) is skipped the same way, its
    windows served from the next episode, so one bad file never stops a long run. Videos are decoded
    lazily, once per episode and process, and cached when ``cache`` (64x64 x 51 frames: 0.6 MB), so a
    ``DataLoader`` with workers works (each worker keeps its own cache).

    Args:
        root: dataset directory written by :class:`EpisodeWriter` (``scripts/collect.py``).
        window: frames per item (>= 1).
        frame_stride: env steps between sampled frames (>= 1).
        split: ``None`` (all), ``"train"`` or ``"val"`` (the last ``val_fraction`` of episodes by index).
        val_fraction: share of episodes held out for ``"val"``.
        expect_env_id: fail unless the dataset is of this env (short name or full id).
        expect_image_size: fail unless the frames are this size.
        cache: keep decoded videos in memory.

    Raises:
        DataError: missing/empty directory, unexpected env or image size, no readable episode, or no
            episode long enough for one window.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        window: int,
        frame_stride: int = 1,
        split: str | None = None,
        val_fraction: float = 0.1,
        expect_env_id: str | None = None,
        expect_image_size: int | None = None,
        cache: bool = True,
    ) -> None:
        if not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window={window!r}: expected an int >= 1 (frames per item)")
        if not isinstance(frame_stride, (int, np.integer)) or frame_stride < 1:
            raise ValueError(f"frame_stride={frame_stride!r}: expected an int >= 1")
        self.root = Path(root)
        self.window, self.frame_stride, self.split, self.cache = int(window), int(frame_stride), split, cache
        self.meta = read_meta(self.root)
        check_expected(self.meta, self.root, expect_env_id, expect_image_size)
        all_indices = list_episodes(self.root)
        if not all_indices:
            raise DataError(f"{self.root}: no finished episodes (no episode_XXXXXX.npz files)")
        chosen = split_indices(all_indices, split, val_fraction)
        if not chosen:
            raise DataError(
                f"{self.root}: split={split!r} is empty "
                f"({len(all_indices)} episodes, val_fraction={val_fraction})"
            )
        self.records: list[EpisodeRecord] = []
        self.skipped: list[tuple[str, str]] = []
        for index in chosen:
            try:
                self.records.append(load_episode(self.root, index, self.meta))
            except DataError as e:
                warnings.warn(f"skipping episode {index}: {e}", stacklevel=2)
                self.skipped.append((str(episode_paths(self.root, index)[1]), str(e)))
        if not self.records:
            raise DataError(
                f"{self.root}: none of the {len(chosen)} episodes loads; first error: {self.skipped[0][1]}"
            )
        span = (self.window - 1) * self.frame_stride + 1  # raw frames covered by one window
        starts = [np.arange(max(rec.length - span + 1, 0)) for rec in self.records]
        self._episode_of = np.concatenate([np.full(len(s), i) for i, s in enumerate(starts)])  # [N]
        self._start_of = np.concatenate(starts)  # [N]
        if len(self._start_of) == 0:
            longest = max(rec.length for rec in self.records)
            raise DataError(
                f"{self.root}: window={window} with frame_stride={frame_stride} needs {span} frames but the "
                f"longest episode has {longest}"
            )
        self._frames: dict[int, np.ndarray] = {}
        self._undecodable: set[int] = set()

    @property
    def num_episodes(self) -> int:
        """Episodes in this dataset (after the split and skipping unreadable ones)."""
        return len(self.records)

    @property
    def episode_indices(self) -> list[int]:
        """On-disk indices of the episodes, in order."""
        return [rec.index for rec in self.records]

    def __len__(self) -> int:
        return len(self._start_of)

    def _episode_frames(self, pos: int) -> np.ndarray:
        """Decoded frames uint8 ``[T, H, W, 3]`` of the ``pos``-th episode (cached when asked)."""
        frames = self._frames.get(pos)
        if frames is None:
            rec = self.records[pos]
            frames = read_video(rec.mp4)
            size = int(self.meta["image_size"])
            if frames.shape != (rec.length, size, size, 3):
                raise DataError(
                    f"{rec.mp4}: decoded {list(frames.shape)}, expected [{rec.length}, {size}, {size}, 3]"
                )
            if self.cache:
                self._frames[pos] = frames
        return frames

    def _decodable(self, i: int) -> tuple[int, np.ndarray]:
        """``(i, frames)``, or when window ``i``'s video fails to decode (corrupt content behind a
        valid header), a warning and the first window of the next episode that decodes: one bad
        file never stops a long run."""
        for _ in range(self.num_episodes):
            pos = int(self._episode_of[i])
            if pos not in self._undecodable:
                try:
                    return i, self._episode_frames(pos)
                except DataError as e:
                    self._undecodable.add(pos)
                    warnings.warn(f"skipping episode {self.records[pos].index}: {e}", stacklevel=3)
                    self.skipped.append((str(self.records[pos].mp4), str(e)))
            i = int(np.searchsorted(self._episode_of, pos, side="right")) % len(self)  # next episode
        raise DataError(f"{self.root}: no episode video decodes; first error: {self.skipped[-1][1]}")

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} windows")
        i, video = self._decodable(i % len(self))
        pos, s = int(self._episode_of[i]), int(self._start_of[i])
        rec, k = self.records[pos], self.frame_stride
        end = s + (self.window - 1) * k + 1
        frames = video[s:end:k]  # [T, H, W, 3]
        actions = rec.arrays["action"][s : end - 1]  # [(T-1)*k, A]
        actions = actions.reshape(self.window - 1, k * actions.shape[-1])  # [T-1, k*A]
        proprio = rec.arrays["observation.state"][s:end:k]  # [T, P]
        state = rec.arrays["state"][s:end:k]  # [T, S]
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),  # [T, 3, H, W]
            "actions": torch.from_numpy(np.ascontiguousarray(actions, dtype=np.float32)),
            "proprio": torch.from_numpy(np.ascontiguousarray(proprio, dtype=np.float32)),
            "state": torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)),
            "episode": rec.index,
        }

    def episode(self, i: int) -> dict[str, Any]:
        """The whole ``i``-th episode of this dataset (``0 <= i < num_episodes``) as NumPy arrays.

        Keys: ``frames`` uint8 ``[T, H, W, 3]``, ``action`` ``[T-1, A]``, ``proprio`` ``[T, P]``,
        ``state`` float64 ``[T, S]``, ``goal_state`` ``[G]``, ``seed``, ``episode_index``, and any
        extra arrays stored with it (e.g. ``next.reward``).
        """
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: this dataset has {self.num_episodes} episodes")
        arrays = self.records[i].arrays
        renamed = {"observation.state": "proprio", "goal.state": "goal_state"}
        out = {renamed.get(k, k): v for k, v in arrays.items()}
        out["seed"], out["episode_index"] = int(arrays["seed"]), int(arrays["episode_index"])
        out["frames"] = self._episode_frames(i)
        return out


# keys two datasets must share before their episodes may be trained on together (env_kwargs but for the
# episode length, which changes no step)
COMPATIBLE_KEYS = ("env_id", "env_kwargs", "image_size", "fps", "action_space")


def _task_settings(meta: dict[str, Any], key: str) -> Any:
    value = meta.get(key)
    if key == "env_kwargs" and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "max_episode_steps"}
    return value


class ConcatEpisodes:
    """Several episode datasets of one task read as one (``data.path=[DIR_A, DIR_B]``), e.g. the scripted
    collection and the planner's own recorded episodes (``plan.py record=DIR``).

    It offers what world-model training reads (:attr:`num_episodes`, :meth:`episode`, :attr:`skipped`,
    :attr:`meta` of the first dataset); each dataset keeps its own train/val split. Episode lengths may
    differ (``max_episode_steps``); every other env setting must agree.

    Raises:
        DataError: no dataset, or datasets of different tasks (env, its settings, image size, frame rate
            or action space), naming both directories and the setting that differs.
    """

    def __init__(self, datasets: list[EpisodeDataset]) -> None:
        if not datasets:
            raise DataError("no episode dataset given")
        first = datasets[0]
        for ds in datasets[1:]:
            for key in COMPATIBLE_KEYS:
                theirs, ours = _task_settings(ds.meta, key), _task_settings(first.meta, key)
                if theirs != ours:
                    raise DataError(
                        f"{ds.root} and {first.root} are different tasks ({key}: {theirs!r} against "
                        f"{ours!r}); train on datasets of one env and its settings"
                    )
        self.datasets = list(datasets)
        self.meta = first.meta
        self.roots = [ds.root for ds in datasets]
        self._offsets = np.cumsum([0] + [ds.num_episodes for ds in datasets])  # [n + 1]

    @property
    def num_episodes(self) -> int:
        return int(self._offsets[-1])

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for ds in self.datasets for s in ds.skipped]

    def episode(self, i: int) -> dict[str, Any]:
        """The ``i``-th episode over all datasets, in the order given (see :meth:`EpisodeDataset.episode`)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range: these datasets hold {self.num_episodes} episodes")
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self.datasets[k].episode(i - int(self._offsets[k]))


def open_episodes(paths: str | os.PathLike | list, **kwargs: Any) -> EpisodeDataset | ConcatEpisodes:
    """One :class:`EpisodeDataset` for a directory, or a :class:`ConcatEpisodes` for a list of them
    (``kwargs`` go to each :class:`EpisodeDataset`)."""
    if isinstance(paths, (str, os.PathLike)):
        return EpisodeDataset(paths, **kwargs)
    paths = list(paths)
    if not paths:
        raise DataError("data.path=[]: expected a dataset directory or a list of them")
    if len(set(map(str, paths))) != len(paths):
        raise DataError(f"data.path={[str(p) for p in paths]}: a directory is listed twice")
    if len(paths) == 1:
        return EpisodeDataset(paths[0], **kwargs)
    return ConcatEpisodes([EpisodeDataset(p, **kwargs) for p in paths])
