"""Development harness, not part of the library: run a repo script with episode frames stored as .npy.

Some GPU containers have no ffmpeg binary, so ``scripts/collect.py`` cannot write H.264 episodes there.
This runs any script with the episode writer and reader patched to store each episode's frames
losslessly with ``numpy.save`` under the usual ``episode_XXXXXX.mp4`` name (so the dataset is only
readable through this harness). Everything else is the repo's own code path. The H100 figures in
docs/benchmarks.md were measured this way:

    python scripts/dev/npyvideo.py scripts/collect.py env=reach episodes=1500 policy=noisy num_envs=16 out=D
    python scripts/dev/npyvideo.py scripts/pretrain.py data.path=D out=RUN train.steps=3000
    python scripts/dev/npyvideo.py scripts/probe.py checkpoint=RUN/checkpoint data.path=D
"""

import runpy
import sys

import numpy as np

from jepa_agent.data import episode_writer, episodes, video_io
from jepa_agent.utils import atomic_path


def write_video(path, frames, *args, **kwargs) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(frames, dtype=np.uint8))


def read_video(path, *args, **kwargs) -> np.ndarray:
    return np.load(path)


def probe_mp4(path) -> video_io.VideoInfo:
    a = np.load(path, mmap_mode="r")
    return video_io.VideoInfo(num_frames=a.shape[0], width=a.shape[2], height=a.shape[1], fps=20.0)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python scripts/dev/npyvideo.py scripts/SCRIPT.py [hydra overrides ...]")
    episode_writer.write_video = write_video
    episodes.read_video, episodes.probe_mp4 = read_video, probe_mp4
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
