"""VideoViT: shapes for every preset, keep-index encoding, image encoding, registry, reload."""

from __future__ import annotations

import copy

import pytest
import torch

from jepa_agent.models.predictor import MaskedPredictor, predictor_config
from jepa_agent.models.vit import (
    ENCODERS,
    VideoViT,
    build_encoder,
    encoder_config,
    gather_tokens,
    load_encoder,
    sincos_pos_embed_3d,
    vit_base,
    vit_micro,
    vit_small,
    vit_tiny,
)

WIDTHS = {"vit_micro": 128, "vit_tiny": 192, "vit_small": 384, "vit_base": 768}


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_every_preset_shapes(name: str) -> None:
    # full width, shallow depth and small input for speed; each preset instantiated at least once
    model = build_encoder(name, img_size=16, patch_size=8, num_frames=4, depth=1)
    assert model.embed_dim == WIDTHS[name]
    x = torch.rand(2, 3, 4, 16, 16)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 2 * 2 * 2, WIDTHS[name])
        assert model.encode_images(x[:, :, 0]).shape == (2, 4, WIDTHS[name])


def test_factory_functions_default_depths() -> None:
    assert [f(img_size=16, num_frames=2).depth for f in (vit_micro, vit_tiny, vit_small, vit_base)] == [
        4,
        6,
        12,
        12,
    ]
    assert vit_tiny(depth=12, img_size=16, num_frames=2).depth == 12


def test_default_geometry_and_keep() -> None:
    model = VideoViT(embed_dim=64, depth=2, num_heads=2)  # defaults: 64x64, patch 8, 8 frames
    assert model.grid == (4, 8, 8) and model.num_patches == 256 and model.tokens_per_frame == 64
    x = torch.rand(2, 3, 8, 64, 64)
    keep = torch.stack([torch.randperm(256)[:40].sort().values for _ in range(2)])
    with torch.no_grad():
        assert model(x).shape == (2, 256, 64)
        assert model(x, keep=keep).shape == (2, 40, 64)
        # keeping every token equals encoding all tokens
        all_idx = torch.arange(256).expand(2, -1)
        torch.testing.assert_close(model(x, keep=all_idx), model(x))


def test_image_is_a_repeated_tubelet() -> None:
    model = vit_micro(img_size=16, num_frames=4, depth=1)
    img = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        clip = img.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # [B, 3, 2, H, W]
        torch.testing.assert_close(model.encode_images(img), model(clip))


def test_bad_inputs_raise_clear_errors() -> None:
    model = vit_micro(img_size=16, num_frames=4, depth=1)
    with pytest.raises(ValueError, match="expected \\[B, 3, T, H, W\\]"):
        model(torch.rand(2, 4, 16, 16))
    with pytest.raises(ValueError, match="multiple of tubelet_size"):
        model(torch.rand(1, 3, 3, 16, 16))
    with pytest.raises(ValueError, match="available"):
        build_encoder("vit_huge")
    with pytest.raises(ValueError, match="unknown encoder argument"):
        build_encoder("vit_tiny", width=3)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        VideoViT(img_size=60, patch_size=8)


def test_pos_embed_and_gather() -> None:
    pe = sincos_pos_embed_3d(64, (2, 3, 3))
    assert pe.shape == (18, 64) and len({tuple(r.tolist()) for r in pe}) == 18  # unique positions
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    idx = torch.tensor([[4, 0], [1, 1]])
    assert gather_tokens(x, idx).tolist() == [[x[0, 4].tolist(), x[0, 0].tolist()], [x[1, 1].tolist()] * 2]


def test_predictor_shapes_and_config() -> None:
    enc = vit_micro(img_size=16, num_frames=4, depth=1)
    pred = MaskedPredictor(enc.grid, enc.embed_dim, embed_dim=32, depth=1, num_heads=2)
    ctx_idx = torch.tensor([[0, 1, 2], [3, 4, 5]])
    tgt_idx = torch.tensor([[6, 7], [0, 1]])
    out = pred(torch.rand(2, 3, enc.embed_dim), ctx_idx, tgt_idx, mask_index=1)
    assert out.shape == (2, 2, enc.embed_dim)
    assert MaskedPredictor(**predictor_config(pred)).state_dict().keys() == pred.state_dict().keys()
    with pytest.raises(ValueError, match="mask_index"):
        pred(torch.rand(2, 3, enc.embed_dim), ctx_idx, tgt_idx, mask_index=2)


def test_encoder_config_roundtrip_and_load(tmp_path) -> None:
    from jepa_agent.checkpoint import CheckpointError, save_checkpoint

    enc = vit_micro(img_size=16, num_frames=4, depth=1)
    cfg = encoder_config(enc)
    assert VideoViT(**cfg).state_dict().keys() == enc.state_dict().keys()
    save_checkpoint(
        tmp_path / "ck",
        {"encoder": enc, "target_encoder": copy.deepcopy(enc)},
        {"encoder": {"name": "vit_micro", **cfg}},
    )
    loaded = load_encoder(tmp_path / "ck")
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc.eval()(x))
    save_checkpoint(tmp_path / "wm", {"predictor": enc}, {"world_model": {}})
    with pytest.raises(CheckpointError, match="not a pretraining checkpoint"):
        load_encoder(tmp_path / "wm")
    assert set(ENCODERS) == set(WIDTHS)
