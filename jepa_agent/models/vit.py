"""Perception: a video Vision Transformer (V-JEPA style) on tubelet tokens.

``[B, 3, T, H, W]`` pixels in ``[0, 1]`` -> ``[B, N, D]`` patch tokens, with ``N = T/t * H/p * W/p``
(tubelet of ``t`` frames x ``p`` x ``p`` pixels, a Conv3d), positions as fixed 3D sin-cos embeddings added
to the tokens (``pos_embed="sincos"``, V-JEPA) or as 3D rotary embeddings inside attention
(``pos_embed="rope"``, V-JEPA 2: tokens then carry no absolute position, only attention sees relative
offsets), and pre-norm transformer blocks on ``F.scaled_dot_product_attention``. Passing ``keep``
encodes only those token indices (the masked-out tokens are dropped before the transformer, which is
what makes V-JEPA's context encoder cheap). A single image is encoded by repeating it to fill one tubelet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ImageNet statistics: pixels are normalised inside the model, callers pass [0, 1] floats.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """[M] positions -> [M, dim] sin-cos embedding (dim even)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # [M, dim/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Fixed 3D sin-cos positions for a ``(T', H', W')`` token grid -> ``[T'*H'*W', dim]`` (V-JEPA split).

    A quarter of the channels encode time, and three eighths each height and width (rounded to even).
    """
    gt, gh, gw = grid
    d_t = (dim // 4) // 2 * 2
    d_s = ((dim - d_t) // 2) // 2 * 2
    d_t = dim - 2 * d_s  # absorb rounding
    if d_t % 2:
        raise ValueError(f"embed_dim={dim} cannot be split into even sin-cos parts; use a multiple of 8")
    t, h, w = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
    emb = np.concatenate([_sincos_1d(d_t, t), _sincos_1d(d_s, h), _sincos_1d(d_s, w)], axis=1)
    return torch.from_numpy(emb).float()  # [T'*H'*W', dim], ordered t-major then h then w


def rope_angles_3d(head_dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Rotation angles of 3D rotary embeddings for a ``(T', H', W')`` grid -> ``[T'*H'*W', head_dim/2]``.

    As V-JEPA 2: each axis rotates its own ``2 * (head_dim // 6)`` channels (``head_dim // 6`` pairs)
    with frequencies ``10000^(-2k/d)``; channels left over (``head_dim mod 6``) are not rotated (angle 0).
    """
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"head_dim={head_dim}; rotary embeddings need an even head width >= 6")
    pairs = head_dim // 6  # rotation pairs per axis
    omega = 1.0 / 10000 ** (np.arange(pairs, dtype=np.float64) / pairs)  # [pairs]
    coords = np.meshgrid(*(np.arange(g) for g in grid), indexing="ij")  # 3 x [T', H', W']
    ang = [np.einsum("m,d->md", c.reshape(-1).astype(np.float64), omega) for c in coords]  # 3 x [N, pairs]
    out = np.zeros((coords[0].size, head_dim // 2))
    out[:, : 3 * pairs] = np.concatenate(ang, axis=1)
    return torch.from_numpy(out).float()  # [N, head_dim/2], t-major then h then w


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` of ``x`` [B, heads, N, hd] by cos/sin [B|1, 1, N, hd/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # [B, heads, N, hd/2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def rope_cos_sin(
    angles: torch.Tensor, idx: torch.Tensor | None, ref: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``angles`` [N, hd/2] (gathered at Long ``idx`` [B, K] if given) -> cos, sin ``[B|1, 1, N|K, hd/2]``."""
    a = angles.to(ref.device, torch.float32)
    a = a[None] if idx is None else a[idx]  # [1, N, hd/2] or [B, K, hd/2]
    return a.cos().unsqueeze(1).to(ref.dtype), a.sin().unsqueeze(1).to(ref.dtype)


POS_EMBEDS = ("sincos", "rope")


def register_positions(
    module: nn.Module, kind: str, dim: int, num_heads: int, grid: tuple[int, int, int]
) -> None:
    """Give ``module`` its fixed positions for ``grid``: a ``pos_embed`` [1, N, dim] (``"sincos"``) or
    ``rope_angles`` [N, dim/heads/2] (``"rope"``) buffer, and ``pos_embed_kind``; validates ``kind``."""
    if kind not in POS_EMBEDS:
        raise ValueError(f"pos_embed={kind!r}; expected one of {list(POS_EMBEDS)}")
    if dim % num_heads:
        raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
    module.pos_embed_kind = kind
    if kind == "sincos":
        module.register_buffer("pos_embed", sincos_pos_embed_3d(dim, grid)[None], persistent=False)
    else:
        module.register_buffer("rope_angles", rope_angles_3d(dim // num_heads, grid), persistent=False)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Select tokens: ``x`` [B, N, D], ``idx`` Long [B, K] -> [B, K, D]."""
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"token index of shape {tuple(idx.shape)}; expected [B={x.shape[0]}, K]")
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` [B, N, D]; ``rope``: optional (cos, sin) ``[B|1, 1, N, D/heads/2]`` for queries and keys."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, D/heads]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


def init_weights(m: nn.Module) -> None:
    """Trunc-normal (std 0.02) weights and zero biases for linears; unit LayerNorms (one module)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_transformer_weights(module: nn.Module, blocks: nn.ModuleList) -> None:
    """:func:`init_weights` on every module, then V-JEPA depth rescaling of output projections."""
    for m in module.modules():
        init_weights(m)
    for i, blk in enumerate(blocks):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * (i + 1)))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * (i + 1)))


class VideoViT(nn.Module):
    """Video ViT encoder: ``[B, 3, T, H, W]`` in ``[0, 1]`` -> patch tokens ``[B, N, D]``.

    Args:
        img_size: input height = width in pixels (multiple of ``patch_size``).
        patch_size: spatial patch size ``p``.
        num_frames: frames per clip the model is built for (multiple of ``tubelet_size``); other
            frame counts (multiples of ``tubelet_size``) are accepted at run time.
        tubelet_size: frames per token ``t``.
        embed_dim: token width ``D``.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``D``.
        in_chans: input channels (3 = RGB; pixel normalisation uses ImageNet statistics).
        pos_embed: ``"sincos"`` (fixed 3D sin-cos added to the tokens) or ``"rope"`` (3D rotary
            embeddings of queries and keys in every block; needs ``embed_dim / num_heads >= 6``).
    """

    def __init__(
        self,
        img_size: int = 64,
        patch_size: int = 8,
        num_frames: int = 8,
        tubelet_size: int = 2,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        pos_embed: str = "sincos",
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of patch_size={patch_size}")
        if num_frames % tubelet_size:
            raise ValueError(f"num_frames={num_frames} is not a multiple of tubelet_size={tubelet_size}")
        if depth < 1:
            raise ValueError(f"depth={depth}; expected >= 1")
        self.img_size, self.patch_size, self.num_frames = img_size, patch_size, num_frames
        self.tubelet_size, self.embed_dim, self.depth = tubelet_size, embed_dim, depth
        self.num_heads, self.mlp_ratio, self.in_chans = num_heads, mlp_ratio, in_chans
        self.grid = (num_frames // tubelet_size, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.patch_embed = nn.Conv3d(
            in_chans, embed_dim, kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )  # fmt: skip
        register_positions(self, pos_embed, embed_dim, num_heads, self.grid)
        mean = torch.tensor(PIXEL_MEAN if in_chans == 3 else [0.5] * in_chans).view(1, -1, 1, 1, 1)
        std = torch.tensor(PIXEL_STD if in_chans == 3 else [0.5] * in_chans).view(1, -1, 1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        init_transformer_weights(self, self.blocks)
        w = self.patch_embed.weight.data
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=0.02)
        nn.init.zeros_(self.patch_embed.bias)

    def _pos_embed(self, grid: tuple[int, int, int], ref: torch.Tensor) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed.to(ref.dtype)
        return sincos_pos_embed_3d(self.embed_dim, grid)[None].to(ref.device, ref.dtype)

    def _rope_angles(self, grid: tuple[int, int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.rope_angles
        return rope_angles_3d(self.embed_dim // self.num_heads, grid)

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per tubelet time step (``H/p * W/p``): the length of ``encode_images`` output."""
        return self.grid[1] * self.grid[2]

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode a clip.

        Args:
            x: float ``[B, 3, T, H, W]`` in ``[0, 1]`` (T a multiple of the tubelet size).
            keep: optional Long ``[B, K]`` token indices (into the ``t, h, w``-ordered grid) to encode;
                the others are dropped before the transformer.

        Returns:
            ``[B, N, D]`` tokens, or ``[B, K, D]`` with ``keep``.
        """
        if x.dim() != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"input of shape {tuple(x.shape)}; expected [B, {self.in_chans}, T, H, W]")
        B, _, T, H, W = x.shape
        if T % self.tubelet_size or H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"clip of T={T}, H={H}, W={W}; expected T a multiple of tubelet_size={self.tubelet_size} "
                f"and H, W multiples of patch_size={self.patch_size}"
            )
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        x = self.patch_embed(x)  # [B, D, T/t, H/p, W/p]
        grid = (x.shape[2], x.shape[3], x.shape[4])
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        rope = None
        if self.pos_embed_kind == "sincos":
            x = x + self._pos_embed(grid, x)
        else:
            rope = rope_cos_sin(self._rope_angles(grid), keep, x)  # [B|1, 1, N|K, hd/2] each
        if keep is not None:
            x = gather_tokens(x, keep)  # [B, K, D]
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images ``[B, 3, H, W]`` in [0, 1] -> ``[B, (H/p)*(W/p), D]`` (repeated to one tubelet)."""
        if x.dim() != 4:
            raise ValueError(f"images of shape {tuple(x.shape)}; expected [B, 3, H, W]")
        clip = x.unsqueeze(2).expand(-1, -1, self.tubelet_size, -1, -1)  # [B, 3, t, H, W]
        return self.forward(clip)


def pixels_to_images(pixels: torch.Tensor | Any, device: torch.device | str) -> torch.Tensor:
    """uint8 frames ``[B, H, W, 3]`` (tensor or array) -> float ``[B, 3, H, W]`` in [0, 1] on ``device``."""
    return torch.as_tensor(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)


# --------------------------------------------------------------------------- presets and registry


def vit_micro(**kw: Any) -> VideoViT:
    """Micro encoder for smoke runs and the CPU default: dim 128, depth 4, 4 heads."""
    return VideoViT(**{"embed_dim": 128, "depth": 4, "num_heads": 4, **kw})


def vit_tiny(**kw: Any) -> VideoViT:
    """ViT-tiny width (dim 192, 3 heads); depth 6 by default (12 in the original ViT-tiny; pass depth=12)."""
    return VideoViT(**{"embed_dim": 192, "depth": 6, "num_heads": 3, **kw})


def vit_small(**kw: Any) -> VideoViT:
    """ViT-small: dim 384, depth 12, 6 heads."""
    return VideoViT(**{"embed_dim": 384, "depth": 12, "num_heads": 6, **kw})


def vit_base(**kw: Any) -> VideoViT:
    """ViT-base: dim 768, depth 12, 12 heads."""
    return VideoViT(**{"embed_dim": 768, "depth": 12, "num_heads": 12, **kw})


ENCODERS: dict[str, Callable[..., VideoViT]] = {
    "vit_micro": vit_micro,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
}

_CONSTRUCTOR_ARGS = (
    "img_size", "patch_size", "num_frames", "tubelet_size", "embed_dim", "depth", "num_heads", "mlp_ratio",
    "in_chans", "pos_embed",
)  # fmt: skip


def build_encoder(name: str, **kw: Any) -> VideoViT:
    """Build a registered encoder preset by name, with constructor overrides.

    Raises:
        ValueError: unknown name (the message lists the available ones) or unknown keyword.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
    bad = sorted(set(kw) - set(_CONSTRUCTOR_ARGS))
    if bad:
        raise ValueError(f"unknown encoder argument(s) {bad}; expected some of {list(_CONSTRUCTOR_ARGS)}")
    return ENCODERS[name](**kw)


def encoder_config(model: VideoViT) -> dict[str, Any]:
    """The constructor arguments that rebuild ``model`` (``VideoViT(**encoder_config(model))``)."""
    return {k: getattr(model, "pos_embed_kind" if k == "pos_embed" else k) for k in _CONSTRUCTOR_ARGS}


def load_encoder(ckpt_path: str | os.PathLike, which: str = "target_encoder") -> VideoViT:
    """Rebuild a pretrained encoder from a pretraining checkpoint (config ``encoder:`` + safetensors weights).

    Args:
        ckpt_path: checkpoint directory written by ``scripts/pretrain.py``.
        which: ``"target_encoder"`` (the EMA encoder, default; what V-JEPA evaluates) or ``"encoder"``.

    Raises:
        CheckpointError: missing/incomplete checkpoint, or not a pretraining checkpoint.
    """
    from jepa_agent.checkpoint import CheckpointError, load_config, load_into, load_meta

    if which not in ("target_encoder", "encoder"):
        raise ValueError(f"which={which!r}; expected 'target_encoder' or 'encoder'")
    meta = load_meta(ckpt_path)
    cfg = load_config(ckpt_path)
    enc_cfg = cfg.get("encoder") if hasattr(cfg, "get") else None
    if which not in meta.get("modules", []) or enc_cfg is None:
        raise CheckpointError(
            f"checkpoint {str(ckpt_path)!r} is not a pretraining checkpoint (modules {meta.get('modules')}, "
            f"config has encoder: {enc_cfg is not None}); expected one written by scripts/pretrain.py"
        )
    kw = {k: v for k, v in dict(enc_cfg).items() if k in _CONSTRUCTOR_ARGS}
    model = build_encoder(str(enc_cfg.get("name", "vit_tiny")), **kw)
    load_into(ckpt_path, which, model)
    return model.eval()


__all__ = [
    "VideoViT", "Block", "Attention", "build_encoder", "encoder_config", "load_encoder", "gather_tokens",
    "sincos_pos_embed_3d", "rope_angles_3d", "apply_rope", "POS_EMBEDS", "vit_micro", "vit_tiny", "vit_small",
    "vit_base", "ENCODERS",
]  # fmt: skip
