"""The masked-token predictor of V-JEPA pretraining (not the action-conditioned world-model predictor).

A narrow transformer: context tokens from the encoder are projected to the predictor width and
given their positions; one learnable mask token per mask kind, plus the positions of the target
tokens, stands in for every target; after the blocks, the target slots are projected back to the
encoder width. Positions are the same fixed 3D sin-cos grid as the encoder's.
"""

from __future__ import annotations

import torch
from torch import nn

from jepa_agent.models.vit import (
    Block,
    gather_tokens,
    init_transformer_weights,
    register_positions,
    rope_cos_sin,
)


class MaskedPredictor(nn.Module):
    """Predict encoder features at target positions from context tokens.

    Args:
        grid: the encoder's token grid ``(T', H', W')`` (``VideoViT.grid``).
        encoder_dim: encoder token width ``D``.
        embed_dim: predictor width (narrow: ~96-192).
        depth: predictor blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        num_mask_tokens: learnable mask tokens, one per mask kind (V-JEPA: one per mask config).
        pos_embed: ``"sincos"`` or ``"rope"`` (see :class:`jepa_agent.models.vit.VideoViT`).
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        encoder_dim: int,
        embed_dim: int = 192,
        depth: int = 6,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 2,
        pos_embed: str = "sincos",
    ) -> None:
        super().__init__()
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens={num_mask_tokens}; expected >= 1")
        self.grid = tuple(int(g) for g in grid)
        self.encoder_dim, self.embed_dim, self.depth = encoder_dim, embed_dim, depth
        self.num_heads, self.mlp_ratio, self.num_mask_tokens = num_heads, mlp_ratio, num_mask_tokens
        self.embed = nn.Linear(encoder_dim, embed_dim)
        # zero-initialised mask tokens, as V-JEPA (zero_init_mask_tokens=True)
        self.mask_tokens = nn.Parameter(torch.zeros(num_mask_tokens, 1, 1, embed_dim))
        register_positions(self, pos_embed, embed_dim, num_heads, self.grid)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Linear(embed_dim, encoder_dim)
        init_transformer_weights(self, self.blocks)

    def forward(
        self, ctx: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, mask_index: int = 0
    ) -> torch.Tensor:
        """Predict target tokens.

        Args:
            ctx: context tokens from the encoder ``[B, Kc, D]``.
            ctx_idx: their grid indices, Long ``[B, Kc]``.
            tgt_idx: the target grid indices, Long ``[B, Kt]``.
            mask_index: which learnable mask token to use (the mask kind).

        Returns:
            Predicted target features ``[B, Kt, D]`` (encoder width).
        """
        if ctx.shape[:2] != ctx_idx.shape:
            raise ValueError(
                f"context tokens {tuple(ctx.shape)} do not match their indices {tuple(ctx_idx.shape)}"
            )
        if not 0 <= mask_index < self.num_mask_tokens:
            raise ValueError(f"mask_index={mask_index}; expected 0..{self.num_mask_tokens - 1}")
        B, Kc, _ = ctx.shape
        x = self.embed(ctx)  # [B, Kc, Dp]
        m = self.mask_tokens[mask_index].to(x.dtype).expand(B, tgt_idx.shape[1], -1)  # [B, Kt, Dp]
        rope = None
        if self.pos_embed_kind == "sincos":
            pos = self.pos_embed.to(ctx.dtype).expand(B, -1, -1)  # [B, N, Dp]
            x, m = x + gather_tokens(pos, ctx_idx), m + gather_tokens(pos, tgt_idx)
        else:
            idx = torch.cat([ctx_idx, tgt_idx], dim=1)  # [B, Kc + Kt]
            rope = rope_cos_sin(self.rope_angles, idx, x)  # [B, 1, Kc + Kt, hd/2] each
        x = torch.cat([x, m], dim=1)  # [B, Kc + Kt, Dp]
        for blk in self.blocks:
            x = blk(x, rope)
        x = self.norm(x[:, Kc:])  # [B, Kt, Dp]
        return self.proj(x)  # [B, Kt, D]


def predictor_config(model: MaskedPredictor) -> dict:
    """Constructor arguments that rebuild ``model``."""
    keys = ("grid", "encoder_dim", "embed_dim", "depth", "num_heads", "mlp_ratio", "num_mask_tokens")
    out = {k: (list(getattr(model, k)) if k == "grid" else getattr(model, k)) for k in keys}
    return {**out, "pos_embed": model.pos_embed_kind}
