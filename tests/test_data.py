"""Episode datasets and video folders: round trips, windows, splits and every bad-input case."""

from __future__ import annotations

import json
import os
import subprocess
import warnings

import numpy as np
import pytest
import torch

from jepa_agent.data import (
    DataError,
    EpisodeDataset,
    EpisodeWriter,
    VideoFolderDataset,
    build_meta,
    episode_paths,
    probe_mp4,
    read_video,
    write_video,
)
from jepa_agent.data.video_io import count_frames, ffmpeg_exe

SIZE, T, A, P, S, G = 16, 9, 2, 4, 4, 4
VIDEO = {"codec": "h264", "crf": 18, "preset": "veryfast", "pix_fmt": "yuv420p"}


def make_meta(env_id: str = "Test/Fake-v0", image_size: int = SIZE) -> dict:
    return build_meta(
        env_id=env_id,
        env_kwargs={"image_size": image_size},
        image_size=image_size,
        fps=10,
        action_low=-np.ones(A),
        action_high=np.ones(A),
        proprio_dim=P,
        state_dim=S,
        goal_dim=G,
        video=VIDEO,
        collection={"policy": "test", "seed": 0},
    )


def smooth_frames(rng: np.random.Generator, t: int, size: int) -> np.ndarray:
    """A moving bright square on a gradient: realistic for the codec, uint8 [t, size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size]
    frames = np.empty((t, size, size, 3), np.uint8)
    offset = rng.integers(0, size // 2)
    for i in range(t):
        grey = 40 + (x + y) * 80 // size  # a luma gradient (yuv420p subsamples chroma)
        img = np.stack([grey, grey, grey + 20], -1)
        c = (offset + i) % (size - 4)
        img[c : c + 4, c : c + 4] = 230
        frames[i] = img
    return frames


def synth_episode(seed: int, t: int = T, size: int = SIZE) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "frames": smooth_frames(rng, t, size),
        "action": rng.uniform(-1, 1, (t - 1, A)).astype(np.float32),
        "proprio": rng.normal(size=(t, P)).astype(np.float32),
        "state": rng.normal(size=(t, S)),
        "goal_state": rng.normal(size=G),
        "seed": seed,
    }


@pytest.fixture
def dataset_dir(tmp_path):
    """A dataset of 5 synthetic episodes of T frames; returns (root, {index: episode arrays})."""
    root = tmp_path / "ds"
    episodes = {}
    with EpisodeWriter(root, make_meta()) as writer:
        for i in range(5):
            episodes[i] = synth_episode(i)
            writer.write(i, **episodes[i])
        writer.finalize()
    return root, episodes


# ------------------------------------------------------------------------------------- video io
def test_video_roundtrip_and_probe(tmp_path):
    frames = smooth_frames(np.random.default_rng(0), 12, 64)
    path = write_video(tmp_path / "v.mp4", frames, fps=20)
    info = probe_mp4(path)
    assert (info.num_frames, info.width, info.height) == (12, 64, 64)
    assert info.fps == pytest.approx(20)
    decoded = read_video(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(ValueError, match="even"):  # yuv420p halves the chroma resolution
        write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8), fps=10, pix_fmt="yuv420p")


def test_default_video_is_lossless(tmp_path):
    """The default (libx264rgb, crf 0) decodes to the frames bit for bit: a world model trained on recorded
    episodes sees at planning time exactly the renders it learned from (odd sizes are fine too)."""
    rng = np.random.default_rng(0)
    for shape in ((6, 64, 64, 3), (3, 15, 17, 3)):
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        path = write_video(tmp_path / f"{shape[1]}.mp4", frames, fps=20)
        np.testing.assert_array_equal(read_video(path), frames)


def test_read_video_crop_resize(tmp_path):
    frames = np.zeros((5, 32, 48, 3), np.uint8)
    frames[:, :, 8:40] = 200  # the central square of a 48-wide frame
    write_video(tmp_path / "wide.mp4", frames, fps=10)
    out = read_video(tmp_path / "wide.mp4", size=16)
    assert out.shape == (5, 16, 16, 3)
    assert out.mean() > 180  # the center crop keeps only the bright square


# -------------------------------------------------------------------------------- episode data
def test_episode_roundtrip(dataset_dir):
    root, episodes = dataset_dir
    ds = EpisodeDataset(root, window=3, expect_env_id="Test/Fake-v0", expect_image_size=SIZE)
    assert ds.num_episodes == 5 and ds.skipped == []
    meta = json.loads((root / "meta.json").read_text())
    assert meta["total_episodes"] == 5 and meta["total_frames"] == 5 * T
    for i in range(5):
        ep, ref = ds.episode(i), episodes[i]
        np.testing.assert_array_equal(ep["action"], ref["action"])
        np.testing.assert_array_equal(ep["proprio"], ref["proprio"])
        np.testing.assert_array_equal(ep["state"], ref["state"])
        np.testing.assert_array_equal(ep["goal_state"], ref["goal_state"])
        assert ep["seed"] == i and ep["episode_index"] == i
        assert ep["frames"].shape == (T, SIZE, SIZE, 3)
        assert np.abs(ep["frames"].astype(int) - ref["frames"]).mean() < 3


@pytest.mark.parametrize("window,stride", [(1, 1), (3, 1), (3, 2), (3, 4)])
def test_windows_shapes_and_stride(dataset_dir, window, stride):
    root, episodes = dataset_dir
    ds = EpisodeDataset(root, window=window, frame_stride=stride)
    span = (window - 1) * stride + 1
    assert len(ds) == 5 * (T - span + 1)
    item = ds[len(ds) - 1]  # last window of the last episode: starts at T - span
    assert item["frames"].shape == (window, 3, SIZE, SIZE) and item["frames"].dtype == torch.uint8
    assert item["actions"].shape == (window - 1, stride * A) and item["actions"].dtype == torch.float32
    assert item["proprio"].shape == (window, P) and item["state"].shape == (window, S)
    assert item["state"].dtype == torch.float32 and item["episode"] == 4
    ref, s = episodes[4], T - span
    between = [ref["action"][s + j * stride : s + (j + 1) * stride].reshape(-1) for j in range(window - 1)]
    expected = np.concatenate(between) if between else np.zeros(0, np.float32)
    np.testing.assert_array_equal(item["actions"].numpy().reshape(-1), expected)
    np.testing.assert_array_equal(item["proprio"].numpy(), ref["proprio"][s : s + span : stride])
    whole = ds.episode(4)["frames"]
    np.testing.assert_array_equal(item["frames"].numpy(), whole[s : s + span : stride].transpose(0, 3, 1, 2))


def test_split_disjoint(dataset_dir):
    root, _ = dataset_dir
    train = EpisodeDataset(root, window=2, split="train", val_fraction=0.4)
    val = EpisodeDataset(root, window=2, split="val", val_fraction=0.4)
    assert train.episode_indices == [0, 1, 2] and val.episode_indices == [3, 4]
    assert {int(train[i]["episode"]) for i in range(len(train))}.isdisjoint(
        val[i]["episode"] for i in range(len(val))
    )
    with pytest.raises(ValueError, match="split"):
        EpisodeDataset(root, window=2, split="test")


def test_dataloader_with_workers(dataset_dir):
    root, _ = dataset_dir
    ds = EpisodeDataset(root, window=4, frame_stride=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, num_workers=2)
    batch = next(iter(loader))
    assert batch["frames"].shape == (4, 4, 3, SIZE, SIZE) and batch["actions"].shape == (4, 3, 2 * A)


def test_missing_and_empty_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        EpisodeDataset(tmp_path / "nope", window=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        EpisodeDataset(tmp_path / "empty", window=2)
    with pytest.raises(DataError, match="no video files"):
        VideoFolderDataset(tmp_path / "empty", clip_len=2)
    with pytest.raises(DataError, match="does not exist"):
        VideoFolderDataset(tmp_path / "nope", clip_len=2)


def test_wrong_env_or_image_size(dataset_dir):
    root, _ = dataset_dir
    with pytest.raises(DataError, match="Test/Fake-v0.*expected 'Other-v0'"):
        EpisodeDataset(root, window=2, expect_env_id="Other-v0")
    with pytest.raises(DataError, match="image_size 16, expected 64"):
        EpisodeDataset(root, window=2, expect_image_size=64)


def test_window_too_long(dataset_dir):
    root, _ = dataset_dir
    with pytest.raises(DataError, match="needs 17 frames"):
        EpisodeDataset(root, window=9, frame_stride=2)


def _corrupt(root, case: str) -> None:
    mp4, npz = episode_paths(root, 2)
    if case == "corrupt_mp4":
        mp4.write_bytes(np.random.default_rng(0).bytes(mp4.stat().st_size))
    elif case == "truncated_mp4":
        mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    elif case == "missing_mp4":
        mp4.unlink()
    elif case == "npz_length":
        with np.load(npz) as f:
            arrays = dict(f)
        arrays["action"] = arrays["action"][:-1]
        arrays["observation.state"] = arrays["observation.state"][:-1]
        arrays["state"] = arrays["state"][:-1]
        np.savez(npz, **arrays)
    elif case == "corrupt_npz":
        npz.write_bytes(b"not a zip file at all")


@pytest.mark.parametrize(
    "case,reason",
    [
        ("corrupt_mp4", "not an MP4|claims|truncated"),
        ("truncated_mp4", "truncated"),
        ("missing_mp4", "does not exist"),
        ("npz_length", "frames but .* has 8 time steps"),
        ("corrupt_npz", "unreadable NPZ"),
    ],
)
def test_one_bad_episode_is_skipped(dataset_dir, case, reason):
    root, _ = dataset_dir
    _corrupt(root, case)
    with pytest.warns(UserWarning, match="skipping episode 2"):
        ds = EpisodeDataset(root, window=2)
    assert ds.num_episodes == 4 and ds.episode_indices == [0, 1, 3, 4]
    assert len(ds.skipped) == 1 and "episode_000002" in ds.skipped[0][0]
    assert __import__("re").search(reason, ds.skipped[0][1]), ds.skipped[0][1]
    assert all(int(ds[i]["episode"]) != 2 for i in range(len(ds)))


def test_undecodable_video_is_replaced_during_a_run(dataset_dir):
    root, _ = dataset_dir
    ds = EpisodeDataset(root, window=2)  # headers are fine at construction ...
    mp4 = episode_paths(root, 1)[0]
    data = bytearray(mp4.read_bytes())
    start = data.find(b"mdat") + 4
    data[start : start + 400] = bytes(400)  # ... then the coded frames get damaged
    mp4.write_bytes(bytes(data))
    first = (T - 1) * 1  # first window of episode 1
    with pytest.warns(UserWarning, match="skipping episode 1"):
        item = ds[first]
    assert item["episode"] == 2 and len(ds.skipped) == 1
    assert ds[first + 1]["episode"] == 2  # no second warning, no crash


def test_all_bad_raises(dataset_dir):
    root, _ = dataset_dir
    for i in range(5):
        episode_paths(root, i)[0].write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 5 episodes loads"):
            EpisodeDataset(root, window=2)


def test_temp_files_ignored_and_cleaned(dataset_dir):
    root, _ = dataset_dir
    junk = [root / ".episode_000007.abc123.tmp.npz", root / ".episode_000007.xyz.tmp.mp4"]
    for p in junk:
        p.write_bytes(b"half written")
    (root / "episode_000008.mp4").write_bytes(b"mp4 renamed, npz never written")  # killed between renames
    ds = EpisodeDataset(root, window=2)
    assert ds.episode_indices == [0, 1, 2, 3, 4] and ds.skipped == []
    with EpisodeWriter(root, make_meta()) as writer:
        assert writer.removed_temp_files == 2 and not any(p.exists() for p in junk)
        assert not writer.is_finished(8) and writer.is_finished(4, seed=4)
        with pytest.raises(DataError, match="seed 4, this run would use 9"):
            writer.is_finished(4, seed=9)


def test_writer_refuses_other_dataset(dataset_dir):
    root, _ = dataset_dir
    with pytest.raises(DataError, match="env_id.*Other-v0.*never overwritten"):
        EpisodeWriter(root, make_meta(env_id="Other-v0"))
    with pytest.raises(DataError, match="image_size"):
        EpisodeWriter(root, make_meta(image_size=32))
    with EpisodeWriter(root, make_meta()):  # a refused writer released its lock
        pass
    other_policy = make_meta()
    other_policy["collection"] = {"policy": "noisy", "seed": 0}
    with pytest.raises(DataError, match="collected with"):
        EpisodeWriter(root, other_policy)


def test_writer_refuses_a_foreign_directory_and_leaves_it_untouched(tmp_path):
    run = tmp_path / "pretrain_run"  # e.g. out= pointed at a training run by mistake
    (run / "checkpoint").mkdir(parents=True)
    (run / "metrics.csv").write_text("step,loss\n")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(
        DataError, match=r"not a dataset \(no meta.json\) and not empty \('checkpoint', 'metrics.csv'\)"
    ):
        EpisodeWriter(run, make_meta())
    assert sorted(p.name for p in run.iterdir()) == before  # no lock, no meta.json left behind
    (run / "episode_000000.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="holds episode files but no meta.json"):
        EpisodeWriter(run, make_meta())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".writer.lock").touch()  # a killed writer's leftovers and other hidden files are not foreign
    (empty / ".DS_Store").touch()
    EpisodeWriter(empty, make_meta()).close()
    assert (empty / "meta.json").exists()


def test_writer_lock(tmp_path):
    with EpisodeWriter(tmp_path / "ds", make_meta()):
        with pytest.raises(DataError, match="another process is writing"):
            EpisodeWriter(tmp_path / "ds", make_meta())
    EpisodeWriter(tmp_path / "ds", make_meta()).close()  # released


def test_writer_validates_shapes(tmp_path):
    ep = synth_episode(0)
    ep["action"] = ep["action"][:-1]
    with EpisodeWriter(tmp_path / "ds", make_meta()) as writer:
        with pytest.raises(ValueError, match="'action' has shape"):
            writer.write(0, **ep)
    assert not episode_paths(tmp_path / "ds", 0)[1].exists()


# -------------------------------------------------------------------------------- video folders
def test_video_folder(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_video(root / "a.mp4", smooth_frames(rng, 10, 32), fps=10)
    write_video(root / "sub" / "b.mp4", np.repeat(smooth_frames(rng, 7, 48), 1, 0)[:, :32], fps=10)  # 32x48
    write_video(root / "short.mp4", smooth_frames(rng, 2, 32), fps=10)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.warns(UserWarning):
        ds = VideoFolderDataset(root, clip_len=3, frame_stride=2, image_size=16)
    assert ds.num_videos == 2 and len(ds) == (10 - 4) + (7 - 4)
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in ds.skipped) == ["broken.mp4", "short.mp4"]
    for i in (0, len(ds) - 1):
        clip = ds[i]["frames"]
        assert clip.shape == (3, 3, 16, 16) and clip.dtype == torch.uint8


def test_probe_faststart_and_fragmented(tmp_path):
    src = write_video(tmp_path / "src.mp4", smooth_frames(np.random.default_rng(0), 6, 16), fps=10)
    for name, flags in (("fast.mp4", "+faststart"), ("frag.mp4", "frag_keyframe+empty_moov")):
        cmd = [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c", "copy", "-movflags", flags]
        subprocess.run([*cmd, str(tmp_path / name)], check=True)
        assert count_frames(tmp_path / name) == 6 and read_video(tmp_path / name).shape == (6, 16, 16, 3)
    assert probe_mp4(tmp_path / "frag.mp4").num_frames == 0  # no sample table: counted by demuxing
    ds = VideoFolderDataset(tmp_path, clip_len=6, image_size=8)
    assert ds.num_videos == 3 and len(ds) == 3


def test_video_folder_undecodable_is_replaced(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / name, smooth_frames(rng, 5, 16), fps=10)
    ds = VideoFolderDataset(tmp_path, clip_len=5, image_size=16)
    data = bytearray((tmp_path / "a.mp4").read_bytes())
    start = data.find(b"mdat") + 4
    data[start : start + 400] = bytes(400)
    (tmp_path / "a.mp4").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="a.mp4"):
        assert ds[0]["frames"].shape == (5, 3, 16, 16)  # served from b.mp4
    assert [p.rsplit("/", 1)[-1] for p, _ in ds.skipped] == ["a.mp4"]


def test_video_folder_all_bad(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"junk")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match="none of the 1 videos is usable"):
            VideoFolderDataset(tmp_path, clip_len=2)
