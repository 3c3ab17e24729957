"""Data: recorded episodes (MP4 + NPZ per episode) and plain video folders.

* :class:`EpisodeWriter` / :class:`EpisodeDataset`: episodes written by ``scripts/collect.py`` and
  windows of (frames, actions, proprio, state) for world-model training.
* :class:`VideoFolderDataset`: clips from any folder of MP4 files, for video pretraining.
* :class:`DataError`: every bad-input error (missing/empty directory, corrupt or truncated video,
  inconsistent episode, dataset of another env or image size), naming the file and the problem.
"""

from jepa_agent.data.episode_writer import EpisodeWriter
from jepa_agent.data.episodes import (
    ConcatEpisodes,
    EpisodeDataset,
    EpisodeRecord,
    build_meta,
    episode_paths,
    list_episodes,
    load_episode,
    open_episodes,
    read_meta,
)
from jepa_agent.data.video_io import DataError, VideoInfo, count_frames, probe_mp4, read_video, write_video
from jepa_agent.data.videos import VideoFolderDataset

__all__ = [
    "ConcatEpisodes",
    "DataError",
    "EpisodeDataset",
    "EpisodeRecord",
    "EpisodeWriter",
    "VideoFolderDataset",
    "VideoInfo",
    "build_meta",
    "count_frames",
    "episode_paths",
    "list_episodes",
    "load_episode",
    "open_episodes",
    "probe_mp4",
    "read_meta",
    "read_video",
    "write_video",
]
