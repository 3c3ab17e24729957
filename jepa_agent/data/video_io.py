"""MP4 (H.264) read/write through imageio-ffmpeg's bundled ffmpeg, and a cheap MP4 header probe.

* :func:`write_video` pipes raw RGB frames into one ``ffmpeg`` process (libx264, yuv420p, single
  thread so the bytes are reproducible) and renames the file into place atomically.
* :func:`read_video` decodes a whole file (optionally center-cropped to a square and resized, inside
  ffmpeg) into ``uint8 [T, H, W, 3]``.
* :func:`probe_mp4` reads only the MP4 box headers (no decoding, ~0.1 ms): frame count, size and fps.
  A truncated or non-MP4 file fails here, so datasets can validate thousands of files at start-up.

Every failure is a :class:`DataError` naming the file and the problem.
"""

from __future__ import annotations

import functools
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from jepa_agent.utils import atomic_path

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov")
# Lossless RGB H.264 (libx264rgb, crf 0) by default: decoded frames are the rendered ones bit for bit, so a
# world model trained on recorded episodes sees at planning time exactly what it saw in training. With the
# older lossy default (crf 18, yuv420p: ~1-2 grey levels of error, blurred chroma on the thin arm) the
# predictions from clean renders were about twice as far off, and the agent held only 70-85% of the goals
# it reached (docs/benchmarks.md, "Holding the goal"). Files are ~2x larger; crf=18 pix_fmt=yuv420p plays
# in every browser.
DEFAULT_CRF = 0
DEFAULT_PRESET = "veryfast"
DEFAULT_PIX_FMT = "rgb24"  # rgb24 (lossless with crf 0) | yuv444p | yuv420p (plays everywhere)


class DataError(ValueError):
    """A dataset file or directory is missing, corrupt or does not match what was expected."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_mp4` reads from an MP4 header (first video track)."""

    num_frames: int
    width: int
    height: int
    fps: float


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped inside the imageio-ffmpeg wheel (works offline)."""
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def _file_mode() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def set_default_mode(path: str | os.PathLike) -> None:
    """Give a temp file (created 0600) the permissions a plain ``open()`` would have (umask)."""
    os.chmod(path, _file_mode())


def _stderr_tail(stderr: bytes, n: int = 400) -> str:
    text = stderr.decode(errors="replace").strip()
    return text[-n:] if text else "(no ffmpeg message)"


# ------------------------------------------------------------------------------------------ write
def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    crf: int = DEFAULT_CRF,
    preset: str = DEFAULT_PRESET,
    pix_fmt: str = DEFAULT_PIX_FMT,
) -> Path:
    """Encode ``frames`` (uint8 ``[T, H, W, 3]``, even H and W) as H.264 MP4 at ``path``, atomically.

    ``pix_fmt="rgb24"`` encodes RGB itself (libx264rgb; with ``crf=0`` lossless, so decoded frames are the
    rendered ones bit for bit); ``yuv420p`` / ``yuv444p`` convert to YUV first (rounding, chroma blur).

    The file appears under its final name only once ffmpeg has finished; a crash leaves at most a
    hidden ``.tmp.mp4`` beside it. Frames are never resized (no macro-block padding).

    Raises:
        ValueError: for frames of the wrong dtype/shape or odd sizes (yuv420p needs even sizes).
        DataError: when ffmpeg fails.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames: expected uint8 [T>0, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    t, h, w, _ = frames.shape
    if pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"frames are {h}x{w}: H.264 yuv420p needs even height and width")
    if not 0 <= crf <= 51:
        raise ValueError(f"crf={crf!r}: expected an int in [0, 51] (lower = better quality)")
    path = Path(path)
    with atomic_path(path) as tmp:
        cmd = [
            ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-nostdin",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps}", "-i", "-",
            "-an", "-c:v", "libx264rgb" if pix_fmt == "rgb24" else "libx264", "-preset", preset,
            "-crf", str(int(crf)), "-pix_fmt", pix_fmt,
            "-threads", "1", "-f", "mp4", str(tmp),
        ]  # fmt: skip
        proc = subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
        if proc.returncode != 0:
            raise DataError(f"{path}: ffmpeg failed to encode {t} frames: {_stderr_tail(proc.stderr)}")
        set_default_mode(tmp)
    return path


# ------------------------------------------------------------------------------------------- read
def read_video(
    path: str | os.PathLike,
    size: int | None = None,
    square: bool = False,
    max_frames: int | None = None,
) -> np.ndarray:
    """Decode a video file into uint8 ``[T, H, W, 3]`` (RGB).

    Args:
        path: any video ffmpeg can read (MP4 here).
        size: resize to ``size x size`` (area filter); implies ``square``.
        square: center-crop to a square first (the short side).
        max_frames: stop after this many frames (decodes only the prefix).

    Raises:
        DataError: missing file, or ffmpeg cannot decode it (corrupt, truncated, not a video).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: video file does not exist")
    filters = []
    if square or size is not None:
        filters.append("crop='min(iw,ih)':'min(iw,ih)'")
    if size is not None:
        filters.append(f"scale={int(size)}:{int(size)}:flags=area")
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-threads", "1", "-i", str(path)]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    if max_frames is not None:
        cmd += ["-frames:v", str(int(max_frames))]
    cmd += ["-an", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise DataError(f"{path}: cannot decode video (corrupt or truncated?): {_stderr_tail(proc.stderr)}")
    if size is not None:
        h = w = int(size)
    else:
        try:
            info = probe_mp4(path)
        except DataError:
            info = None
        if info is None:  # not an MP4 container: ask ffmpeg for the size
            h, w = _ffmpeg_size(path, square)
        else:
            h, w = info.height, info.width
            if square:
                h = w = min(h, w)
    frame_bytes = h * w * 3
    data = proc.stdout
    if len(data) == 0 or len(data) % frame_bytes:
        raise DataError(
            f"{path}: decoded {len(data)} bytes, not a whole number of {w}x{h} RGB frames "
            f"(corrupt video, or a rotated/odd-sized stream)"
        )
    return np.frombuffer(data, np.uint8).reshape(-1, h, w, 3).copy()


def _ffmpeg_size(path: Path, square: bool) -> tuple[int, int]:
    """(height, width) of the first decoded frame, for containers :func:`probe_mp4` cannot read."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)]
    proc = subprocess.run(cmd, capture_output=True)
    m = re.search(rb"Video: .*?(\d{2,5})x(\d{2,5})", proc.stderr)
    if m is None:
        raise DataError(f"{path}: ffmpeg finds no video stream: {_stderr_tail(proc.stderr)}")
    w, h = int(m.group(1)), int(m.group(2))
    return (min(h, w), min(h, w)) if square else (h, w)


# ------------------------------------------------------------------------------------------ probe
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _iter_boxes(buf: bytes, start: int, end: int, path: Path):
    """Yield ``(type, payload_start, box_end)`` for the ISO-BMFF boxes in ``buf[start:end]``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise DataError(f"{path}: truncated MP4 box header at byte {pos}")
            size = struct.unpack(">Q", buf[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise DataError(
                f"{path}: MP4 box {kind!r} at byte {pos} claims {size} bytes but only {end - pos} remain "
                f"(file truncated?)"
            )
        yield kind, pos + header, pos + size
        pos += size
    if pos != end:
        raise DataError(f"{path}: {end - pos} stray bytes at the end of an MP4 box list (file truncated?)")


def _parse_track(buf: bytes, start: int, end: int, path: Path) -> dict:
    """Collect handler, timescale/duration, sample count and sample-entry size of one ``trak``."""
    out: dict = {}
    stack = [(start, end)]
    while stack:
        s, e = stack.pop()
        for kind, ps, pe in _iter_boxes(buf, s, e, path):
            if kind in _CONTAINERS:
                stack.append((ps, pe))
            elif kind == b"hdlr" and pe - ps >= 12:
                out["handler"] = buf[ps + 8 : ps + 12]
            elif kind == b"mdhd" and pe - ps >= 24:
                if buf[ps] == 1:
                    out["timescale"], out["duration"] = struct.unpack(">IQ", buf[ps + 20 : ps + 32])
                else:
                    out["timescale"], out["duration"] = struct.unpack(">II", buf[ps + 12 : ps + 20])
            elif kind == b"stsz" and pe - ps >= 12:
                out["num_frames"] = struct.unpack(">I", buf[ps + 8 : ps + 12])[0]
            elif kind == b"stsd" and pe - ps >= 8 + 8 + 32:
                entry = ps + 8  # after version/flags and entry_count
                out["width"], out["height"] = struct.unpack(">HH", buf[entry + 32 : entry + 36])
    return out


def _top_level_boxes(f, file_size: int, path: Path) -> dict[bytes, tuple[int, int]]:
    """``{type: (payload_start, box_end)}`` of the top-level boxes, reading only their headers."""
    boxes: dict[bytes, tuple[int, int]] = {}
    pos = 0
    while pos < file_size:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            raise DataError(f"{path}: {len(head)} stray bytes at the end of the MP4 (file truncated?)")
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1 and len(head) == 16:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = file_size - pos
        if size < header or pos + size > file_size:
            raise DataError(
                f"{path}: MP4 box {kind!r} at byte {pos} claims {size} bytes but only {file_size - pos} "
                f"remain (file truncated?)"
            )
        boxes.setdefault(kind, (pos + header, pos + size))
        pos += size
    return boxes


def probe_mp4(path: str | os.PathLike) -> VideoInfo:
    """Read frame count, size and fps of the first video track from MP4 box headers (no decoding).

    Reads the top-level box headers and the ``moov`` index only, so it is cheap for long videos too;
    a file whose boxes do not add up to its size (truncated) fails.

    Raises:
        DataError: the file is missing, empty, not an MP4, truncated, or has no video track.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 8:
                raise DataError(f"{path}: video file is empty or truncated ({file_size} bytes)")
            top = _top_level_boxes(f, file_size, path)
            if b"ftyp" not in top:
                raise DataError(f"{path}: not an MP4 file (no 'ftyp' box)")
            if b"moov" not in top:
                raise DataError(f"{path}: MP4 has no 'moov' index (file truncated or still being written)")
            if b"mdat" not in top:
                raise DataError(f"{path}: MP4 has no 'mdat' media data (file truncated?)")
            start, end = top[b"moov"]
            f.seek(start)
            moov = f.read(end - start)
    except FileNotFoundError:
        raise DataError(f"{path}: video file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"{path}: expected a video file, found a directory") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read video file: {e}") from e
    for kind, ps, pe in _iter_boxes(moov, 0, len(moov), path):
        if kind != b"trak":
            continue
        trak = _parse_track(moov, ps, pe, path)
        if trak.get("handler") != b"vide":
            continue
        missing = {"num_frames", "width", "height", "timescale", "duration"} - trak.keys()
        if missing:
            raise DataError(f"{path}: MP4 video track lacks {sorted(missing)} (corrupt header)")
        n = int(trak["num_frames"])
        fps = n * trak["timescale"] / trak["duration"] if trak["duration"] else 0.0
        return VideoInfo(num_frames=n, width=int(trak["width"]), height=int(trak["height"]), fps=float(fps))
    raise DataError(f"{path}: MP4 has no video track")


def count_frames(path: str | os.PathLike) -> int:
    """Frames in a video: from the MP4 header, or by demuxing when the header has no sample table
    (fragmented MP4).

    Raises:
        DataError: the file is not a readable video.
    """
    path = Path(path)
    n = probe_mp4(path).num_frames
    if n > 0:
        return n
    try:
        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path}: cannot count frames: {e}") from e
