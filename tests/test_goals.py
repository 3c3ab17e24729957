"""Goal images from files: resizing, colour modes, and clear errors for missing or unreadable files."""

import numpy as np
import pytest
from PIL import Image

from jepa_agent.goals import GoalError, goal_kind, load_goal_image


def test_png_is_cropped_and_resized(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the centre square is white
    Image.fromarray(img).save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match="is 80x40, not square: its centre 40x40 square is used"):
        out = load_goal_image(tmp_path / "g.png", 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and out.min() == 255


def test_small_image_is_upsampled_with_a_warning(tmp_path):
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "g.png")
    with pytest.warns(UserWarning, match=r"\(4x4\) is smaller than the model's 16x16 input"):
        out = load_goal_image(tmp_path / "g.png", 16)
    assert (out == (10, 200, 30)).all()


def test_16_bit_and_float_greyscale_are_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "g16.png")  # mid-grey
    assert abs(int(load_goal_image(tmp_path / "g16.png", 8)[0, 0, 0]) - 128) <= 1
    Image.fromarray(np.full((8, 8), 0.5, np.float32), mode="F").save(tmp_path / "f.tiff")
    assert abs(int(load_goal_image(tmp_path / "f.tiff", 8)[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_colour_modes_become_rgb(tmp_path, mode):
    Image.new(mode, (8, 8)).save(tmp_path / "g.png")
    assert load_goal_image(tmp_path / "g.png", 8).shape == (8, 8, 3)


def test_missing_file(tmp_path):
    with pytest.raises(GoalError, match="does not exist"):
        load_goal_image(tmp_path / "nope.png", 64)


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(GoalError, match="not a readable image"):
        load_goal_image(tmp_path / "bad.png", 64)


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "g.png"
    )
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(GoalError, match="not a readable image"):
        load_goal_image(tmp_path / "t.png", 64)


def test_goal_kind():
    assert goal_kind("image") == "image" and goal_kind("state") == "state"
    assert goal_kind("some/file.png") == "file"
    with pytest.raises(GoalError):
        goal_kind("")
