"""VideoViT: shapes for every preset, keep-index encoding, image encoding, registry, reload."""

from __future__ import annotations

import copy

import pytest
import torch

from jepa_agent.models.predictor import MaskedPredictor, predictor_config
from jepa_agent.models.vit import (
    ENCODERS,
    VideoViT,
    apply_rope,
    build_encoder,
    encoder_config,
    gather_tokens,
    load_encoder,
    rope_angles_3d,
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


# --------------------------------------------------------------------------- rotary positions


def test_rope_scores_depend_only_on_relative_position() -> None:
    hd = 16
    angles = rope_angles_3d(hd, (3, 5, 5))  # [75, 8]
    assert angles.shape == (75, hd // 2)
    assert torch.all(angles[:, 3 * (hd // 6) :] == 0)  # the leftover pair is not rotated
    q, k = torch.randn(1, 1, 1, hd), torch.randn(1, 1, 1, hd)

    def score(a: int, b: int) -> torch.Tensor:
        ca, sa = angles[a].cos().view(1, 1, 1, -1), angles[a].sin().view(1, 1, 1, -1)
        cb, sb = angles[b].cos().view(1, 1, 1, -1), angles[b].sin().view(1, 1, 1, -1)
        return (apply_rope(q, ca, sa) * apply_rope(k, cb, sb)).sum()

    idx = lambda t, h, w: t * 25 + h * 5 + w  # noqa: E731
    # the same offset (0, 1, 2) from two places scores the same; another offset does not
    torch.testing.assert_close(score(idx(0, 0, 0), idx(0, 1, 2)), score(idx(1, 3, 2), idx(1, 4, 4)))
    assert not torch.allclose(score(idx(0, 0, 0), idx(0, 1, 2)), score(idx(0, 0, 0), idx(0, 2, 1)))
    rot = apply_rope(q, angles[7].cos().view(1, 1, 1, -1), angles[7].sin().view(1, 1, 1, -1))
    torch.testing.assert_close(rot.norm(), q.norm())  # a rotation


def test_rope_encoder_tokens_carry_no_absolute_position() -> None:
    torch.manual_seed(0)
    rope = vit_micro(img_size=32, num_frames=4, depth=2, pos_embed="rope")
    sincos = vit_micro(img_size=32, num_frames=4, depth=2)
    flat = torch.full((1, 3, 4, 32, 32), 0.3)  # the same content everywhere
    with torch.no_grad():
        out = rope(flat)[0]  # [32, D]
        torch.testing.assert_close(out, out[:1].expand_as(out))  # every token alike: no position in them
        assert sincos(flat)[0].std(0).mean() > 0.1  # sin-cos tokens differ by position
        # keep-index encoding gathers the rotations with the tokens: all tokens, shuffled, in any order
        x = torch.rand(2, 3, 4, 32, 32)
        perm = torch.stack([torch.randperm(32) for _ in range(2)])
        torch.testing.assert_close(rope(x, keep=perm), gather_tokens(rope(x), perm))
        # other frame counts work (angles for the run-time grid)
        assert rope(torch.rand(1, 3, 6, 32, 32)).shape == (1, 48, 128)


def test_rope_predictor_config_and_errors(tmp_path) -> None:
    from jepa_agent.checkpoint import save_checkpoint

    enc = vit_micro(img_size=16, num_frames=4, depth=1, pos_embed="rope")
    assert encoder_config(enc)["pos_embed"] == "rope"
    save_checkpoint(tmp_path / "ck", {"encoder": enc, "target_encoder": copy.deepcopy(enc)},
                    {"encoder": {"name": "vit_micro", **encoder_config(enc)}})  # fmt: skip
    x = torch.rand(1, 3, 4, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(tmp_path / "ck")(x), enc.eval()(x))
    pred = MaskedPredictor(enc.grid, enc.embed_dim, embed_dim=48, depth=1, num_heads=2, pos_embed="rope")
    ctx_idx, tgt_idx = torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.tensor([[6, 7], [0, 1]])
    with torch.no_grad():
        pred.mask_tokens.normal_()  # (zero at init, so its queries are too)
        for lin in (pred.blocks[0].attn.qkv, pred.blocks[0].attn.proj):
            lin.weight.normal_(0, 0.5)  # sharp attention that shows (near-uniform and damped at init)
    out = pred(torch.rand(2, 3, enc.embed_dim), ctx_idx, tgt_idx)
    assert out.shape == (2, 2, enc.embed_dim)
    # two targets at different places get different predictions from the same mask token
    assert (out[:, 0] - out[:, 1]).abs().max() > 1e-3
    assert predictor_config(pred)["pos_embed"] == "rope"
    assert MaskedPredictor(**predictor_config(pred)).state_dict().keys() == pred.state_dict().keys()
    with pytest.raises(ValueError, match="pos_embed='alibi'; expected one of"):
        vit_micro(pos_embed="alibi")
    with pytest.raises(ValueError, match="pos_embed='alibi'"):
        MaskedPredictor(enc.grid, enc.embed_dim, pos_embed="alibi")
    with pytest.raises(ValueError, match="head_dim=4"):
        VideoViT(embed_dim=16, num_heads=4, pos_embed="rope")
