"""Recorded episodes on disk: one MP4 + one NPZ per episode and a dataset ``meta.json``.

Layout of a dataset directory::

    meta.json               format_version, env_id, env_kwargs, image_size, fps, action_space, dims,
                            video codec, collection settings, total_episodes / total_frames
    episode_000000.mp4      frames uint8 [T, H, W, 3] (H.264)
    episode_000000.npz      action [T-1, A] f32, observation.state [T, P] f32 (proprio),
                            state [T, S] f64 (sim state), goal.state [G] f64, seed, episode_index,
                            next.reward [T-1] f32, next.success [T-1] bool (optional)

Key names follow LeRobot (``action``, ``observation.state``, ``next.reward``). An episode is
*finished* when its NPZ exists: :class:`EpisodeWriter` renames the MP4 into place first and the NPZ
last, each atomically, and readers only list NPZ files, so a killed collection never leaves a
half-written episode that loads. :class:`EpisodeDataset` serves fixed-length windows of frames,
actions, proprio and states for world-model training.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from jepa_agent.data.video_io import DataError, probe_mp4, read_video, set_default_mode, write_video
from jepa_agent.utils import atomic_path, atomic_write_json

try:  # advisory lock so two collections never write into one directory at once (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

FORMAT_VERSION = 1
META_NAME = "meta.json"
LOCK_NAME = ".writer.lock"
_EPISODE_RE = re.compile(r"^episode_(\d{6})\.npz$")
_TEMP_RE = re.compile(r"^\.(episode_\d{6}|meta)\..*\.tmp.*$")
REQUIRED_KEYS = ("action", "observation.state", "state", "goal.state", "seed", "episode_index")
# meta keys that must agree before new episodes may be added to an existing dataset
IDENTITY_KEYS = ("format_version", "env_id", "env_kwargs", "image_size", "fps", "action_space", "video")


def episode_stem(index: int) -> str:
    """File stem of episode ``index``: ``episode_000042``."""
    return f"episode_{int(index):06d}"


def episode_paths(root: str | os.PathLike, index: int) -> tuple[Path, Path]:
    """``(mp4, npz)`` paths of episode ``index`` under ``root``."""
    stem = Path(root) / episode_stem(index)
    return stem.with_suffix(".mp4"), stem.with_suffix(".npz")


def list_episodes(root: str | os.PathLike) -> list[int]:
    """Sorted indices of the episodes whose NPZ exists (temp files and stray names are ignored)."""
    return sorted(int(m.group(1)) for p in Path(root).iterdir() if (m := _EPISODE_RE.match(p.name)))


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


# ----------------------------------------------------------------------------------------- writer
class EpisodeWriter:
    """Adds episodes to a dataset directory atomically; opening an existing dataset resumes it.

    Opening checks that an existing ``meta.json`` describes the same dataset (env, env kwargs, image
    size, fps, action space, video settings, collection policy and seed) and raises a
    :class:`DataError` otherwise: existing data is never overwritten by another kind of data. It
    also takes an advisory lock (one writer per directory) and deletes stale temp files of killed
    runs. :meth:`write` is thread-safe for distinct indices.

    Args:
        root: dataset directory (created when missing).
        meta: the dataset description from :func:`build_meta`.
    """

    def __init__(self, root: str | os.PathLike, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise DataError(f"{self.root}: expected a dataset directory, found a file")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._acquire_lock()
        self._mutex = threading.Lock()
        try:
            self._open(meta)
        except BaseException:
            self.close()
            raise

    def _open(self, meta: dict[str, Any]) -> None:
        """Check or create ``meta.json``, clean temp files, and index the finished episodes."""
        if (self.root / META_NAME).exists():
            self.meta = read_meta(self.root)
            _check_same_dataset(self.meta, meta, self.root)
        else:
            if any(_EPISODE_RE.match(p.name) or p.suffix == ".mp4" for p in self.root.iterdir()):
                raise DataError(f"{self.root}: holds episode files but no meta.json; refusing to add to it")
            self.meta = _as_json(meta)
            self._write_meta()
        self.removed_temp_files = self._clean_temp_files()
        self.lengths: dict[int, int] = {}  # finished episode -> number of frames
        self.seeds: dict[int, int] = {}
        self.invalid: dict[int, str] = {}  # NPZ present but the episode does not load: reason
        for index in list_episodes(self.root):
            try:
                rec = load_episode(self.root, index, self.meta)
            except DataError as e:
                self.invalid[index] = str(e)
                continue
            self.lengths[index] = rec.length
            self.seeds[index] = int(rec.arrays["seed"])

    def _write_meta(self) -> None:
        atomic_write_json(self.root / META_NAME, self.meta)
        set_default_mode(self.root / META_NAME)

    def _acquire_lock(self):
        f = open(self.root / LOCK_NAME, "a")
        if fcntl is not None:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise DataError(
                    f"{self.root}: another process is writing episodes here; wait or use another directory"
                ) from None
        return f

    def _clean_temp_files(self) -> int:
        stale = [p for p in self.root.iterdir() if _TEMP_RE.match(p.name)]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def is_finished(self, index: int, seed: int | None = None) -> bool:
        """Whether episode ``index`` is on disk and valid; with ``seed``, also that it was made from it.

        Raises:
            DataError: the finished episode was recorded from another seed (a different command).
        """
        if index not in self.lengths:
            return False
        if seed is not None and self.seeds[index] != seed:
            raise DataError(
                f"{episode_paths(self.root, index)[1]}: recorded with seed {self.seeds[index]}, this run "
                f"would use {seed}; use the same seed or another directory"
            )
        return True

    def write(
        self,
        index: int,
        frames: np.ndarray,
        action: np.ndarray,
        proprio: np.ndarray,
        state: np.ndarray,
        goal_state: np.ndarray,
        seed: int,
        extras: dict[str, np.ndarray] | None = None,
    ) -> int:
        """Write episode ``index`` (MP4 first, NPZ last, each atomically); returns its frame count.

        Args:
            frames: uint8 ``[T, H, W, 3]`` with H = W = the dataset's image size.
            action: ``[T-1, A]``; proprio: ``[T, P]``; state: ``[T, S]``; goal_state: ``[G]``.
            seed: the reset seed of this episode.
            extras: more per-episode arrays to store (e.g. ``next.reward``).
        """
        frames = np.asarray(frames, dtype=np.uint8)
        t, size = len(frames), int(self.meta["image_size"])
        arrays = {
            "action": np.asarray(action, dtype=np.float32),
            "observation.state": np.asarray(proprio, dtype=np.float32),
            "state": np.asarray(state, dtype=np.float64),
            "goal.state": np.asarray(goal_state, dtype=np.float64),
            "seed": np.asarray(seed, dtype=np.int64),
            "episode_index": np.asarray(index, dtype=np.int64),
            **{k: np.asarray(v) for k, v in (extras or {}).items()},
        }
        expected = {
            "action": (t - 1, *self.meta["action_space"]["shape"]),
            "observation.state": (t, self.meta["proprio_dim"]),
            "state": (t, self.meta["state_dim"]),
            "goal.state": (self.meta["goal_dim"],),
        }
        if frames.shape != (t, size, size, 3) or t < 1:
            raise ValueError(
                f"episode {index}: frames have shape {list(frames.shape)}, expected [T, {size}, {size}, 3]"
            )
        for key, shape in expected.items():
            if arrays[key].shape != shape:
                got = list(arrays[key].shape)
                raise ValueError(f"episode {index}: {key!r} has shape {got}, expected {list(shape)}")
        mp4, npz = episode_paths(self.root, index)
        video = self.meta["video"]
        write_video(mp4, frames, self.meta["fps"], video["crf"], video["preset"], video["pix_fmt"])
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            set_default_mode(tmp)
        with self._mutex:
            self.lengths[index] = t
            self.seeds[index] = int(seed)
            self.invalid.pop(index, None)
        return t

    def finalize(self) -> dict[str, Any]:
        """Record the episode and frame counts in ``meta.json``; returns the meta dict."""
        with self._mutex:
            self.meta["total_episodes"] = len(self.lengths)
            self.meta["total_frames"] = int(sum(self.lengths.values()))
            self._write_meta()
        return self.meta

    def close(self) -> None:
        """Release the directory lock (also released when the process dies)."""
        if not self._lock_file.closed:
            self._lock_file.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_default(o: Any) -> Any:
    return o.tolist() if isinstance(o, (np.generic, np.ndarray)) else str(o)


def _as_json(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, NumPy scalars -> numbers)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _check_same_dataset(existing: dict, new: dict, root: Path) -> None:
    new = _as_json(new)
    diffs = [k for k in IDENTITY_KEYS if existing.get(k) != new.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: on disk {existing.get(k)!r}, this run {new.get(k)!r}" for k in diffs)
        raise DataError(
            f"{root}: holds a different dataset ({detail}). "
            f"Use another directory; existing data is never overwritten"
        )
    if existing.get("collection") != new.get("collection"):
        raise DataError(
            f"{root}: was collected with {existing.get('collection')!r}, "
            f"this run asks {new.get('collection')!r}; "
            f"re-run with the same settings to resume, or use another directory"
        )


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
