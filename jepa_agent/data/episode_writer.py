"""Writing episode datasets: :class:`EpisodeWriter` adds episodes to a directory atomically and resumes.

The on-disk layout, ``meta.json`` and the readers are in :mod:`jepa_agent.data.episodes`.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from jepa_agent.data.episodes import (
    EPISODE_RE,
    META_NAME,
    episode_paths,
    list_episodes,
    load_episode,
    read_meta,
)
from jepa_agent.data.video_io import DataError, set_default_mode, write_video
from jepa_agent.utils import atomic_path, atomic_write_json

try:  # advisory lock so two collections never write into one directory at once (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".writer.lock"
TEMP_RE = re.compile(r"^\.(episode_\d{6}|meta)\..*\.tmp.*$")  # leftovers of a killed writer
# meta keys that must agree before new episodes may be added to an existing dataset
IDENTITY_KEYS = ("format_version", "env_id", "env_kwargs", "image_size", "fps", "action_space", "video")


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
        _refuse_foreign_directory(self.root)  # before the lock file: a refused directory is left as it was
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
        stale = [p for p in self.root.iterdir() if TEMP_RE.match(p.name)]
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


def _refuse_foreign_directory(root: Path) -> None:
    """A new dataset starts in a new or empty directory, never among someone else's files.

    Raises:
        DataError: ``root`` exists, has no ``meta.json`` and holds visible files (names listed); hidden
            ones (a killed writer's lock and temp files, ``.DS_Store``, ...) are ignored.
    """
    if not root.is_dir() or (root / META_NAME).exists():
        return
    if any(EPISODE_RE.match(p.name) or p.suffix == ".mp4" for p in root.iterdir()):
        raise DataError(f"{root}: holds episode files but no meta.json; refusing to add to it")
    other = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))  # our lock/temps are hidden
    if other:
        shown = ", ".join(repr(n) for n in other[:5]) + (", ..." if len(other) > 5 else "")
        raise DataError(
            f"{root}: not a dataset (no meta.json) and not empty ({shown}); pass a new or empty "
            "directory, or an existing dataset, to write episodes into"
        )


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
