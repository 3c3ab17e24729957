"""Action-conditioned latent predictor: a small block-causal transformer over time steps.

Each time step ``t`` contributes ``M = 1 + [proprio] + N`` tokens: the action ``a_t`` (the action taken
after observing frame ``t``), optionally the proprioception ``p_t``, and the ``N`` latent tokens of
frame ``t``. Attention is *frame-causal*: every token of step ``t`` sees every token of steps ``<= t``
and nothing later. The latent tokens' outputs at step ``t`` predict the latent of step ``t + 1``
(as a residual on ``z_t`` by default), and the proprio token's output predicts ``p_{t+1}``.

Because the mask is block-causal, the keys/values of past steps never change when a new step is
appended, so imagination caches them (:class:`KVCache`): each imagined step only runs its own ``M``
tokens per sample. :meth:`ACPredictor.imagine` does this; ``use_cache=False`` recomputes the whole
window each step (the reference the cache is tested against).

Its losses (named, as in V-JEPA 2-AC) are in :mod:`jepa_agent.losses`: ``teacher_forcing_loss``
(one-step, ground-truth inputs) and ``rollout_loss`` (k-step autoregressive, outputs fed back).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_agent.models.vit import init_weights


@dataclass
class KVCache:
    """Per-layer keys/values of the steps processed so far, in the fast "batch-last" layout.

    Each entry is ``[heads, head_dim, L, B]`` (``L`` tokens so far): the per-step attention of
    :meth:`ACPredictor.step` then reduces over small axes while vectorising over the samples ``B``.
    """

    keys: list[Tensor]
    values: list[Tensor]
    steps: int  # number of time steps held
    # optional per-layer preallocated ``(K, V)`` buffers ``[heads, head_dim, L_max, B]`` whose first ``L``
    # positions are ``keys`` / ``values`` (views): a step writes its keys in place instead of concatenating
    # (outside autograd only; see :meth:`ACPredictor.imagine`)
    buffers: list[tuple[Tensor, Tensor]] | None = None

    @staticmethod
    def preallocate(
        cache: KVCache | None, layers: int, shape: tuple[int, int, int, int], like: Tensor
    ) -> KVCache:
        """A cache of the same keys/values held in buffers of ``shape`` ``[h, hd, L_max, B]`` (one per
        layer; ``cache`` None: empty), so each later step appends without copying what is held."""
        h, hd, cap, batch = shape
        held = 0 if cache is None else cache.keys[0].shape[2]
        if held > cap:
            raise ValueError(f"cannot hold {held} cached tokens in buffers of {cap}")
        buffers, keys, values = [], [], []
        for i in range(layers):
            kb = like.new_empty(shape)
            vb = like.new_empty(shape)
            if cache is not None:  # a batch-1 prefix broadcasts into every sample's slot
                kb[:, :, :held].copy_(cache.keys[i])
                vb[:, :, :held].copy_(cache.values[i])
            buffers.append((kb, vb))
            keys.append(kb[:, :, :held])
            values.append(vb[:, :, :held])
        return KVCache(keys, values, 0 if cache is None else cache.steps, buffers)

    def expand(self, batch: int) -> KVCache:
        """Broadcast a batch-1 cache to ``batch`` samples (a view; no copy)."""
        b = self.keys[0].shape[-1]
        if b == batch:
            return self
        if b != 1:
            raise ValueError(f"cannot expand a cache of batch {b} to {batch}; expected 1 or {batch}")
        return KVCache(
            [k.expand(-1, -1, -1, batch) for k in self.keys],
            [v.expand(-1, -1, -1, batch) for v in self.values],
            self.steps,
        )


def block_causal_mask(steps: int, tokens_per_step: int, past_steps: int = 0, device=None) -> Tensor:
    """Boolean attention mask (True = may attend) for ``steps`` new steps after ``past_steps`` cached ones.

    Returns:
        ``[steps * M, (past_steps + steps) * M]``: a query of step ``s`` sees keys of steps ``<= s``.
    """
    q_step = torch.arange(past_steps, past_steps + steps, device=device).repeat_interleave(tokens_per_step)
    k_step = torch.arange(past_steps + steps, device=device).repeat_interleave(tokens_per_step)
    return k_step[None, :] <= q_step[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with two paths sharing weights.

    ``forward``: a whole window ``[B, L, dim]`` under a mask (training, prefill). ``step``: one time
    step's tokens in token-major layout ``[M * B, dim]`` attending over a batch-last cache; at
    planning sizes (hundreds of samples, a handful of tokens) this is ~3x faster than batched SDPA.
    """

    # queries per step from which :meth:`step` uses batched GEMMs instead of broadcast products (a frame of
    # many tokens, e.g. world_model.flatten=false); measured in docs/benchmarks.md (twenty-second session)
    bmm_queries: int = 8

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, L, dim]`` -> ``(out [B, L, dim], k, v)`` with ``k, v`` as ``[B, h, L, hd]``."""
        B, L, D = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, h, L, hd]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, h, L, hd]
        return self.proj(y.transpose(1, 2).reshape(B, L, D)), k, v

    def step(
        self,
        x: Tensor,
        tokens: int,
        past: tuple[Tensor, Tensor] | None,
        queries: int | None = None,
        buffer: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x [M * B, dim]`` (token-major) -> ``(out [Q * B, dim], k, v)``, ``k, v`` as ``[h, hd, L, B]``.

        The ``M`` new tokens attend to every cached token and to each other (one time step). Only the
        last ``Q = queries`` tokens (default all ``M``) are returned; all ``M`` enter the keys/values.
        With ``buffer`` (preallocated ``[h, hd, L_max, B]`` keys and values whose first positions are
        ``past``), the new keys are written into it in place and ``k, v`` are views of it.
        """
        h, hd, M = self.num_heads, self.head_dim, tokens
        Q = M if queries is None else queries
        B = x.shape[0] // M
        qkv_t = torch.addmm(self.qkv.bias[:, None], self.qkv.weight, x.t())  # [3 * dim, M * B]
        q, k, v = qkv_t.view(3, h, hd, M, B).unbind(0)  # each [h, hd, M, B]
        q = q[:, :, M - Q :]  # [h, hd, Q, B]
        if buffer is not None:
            held = 0 if past is None else past[0].shape[2]
            buffer[0][:, :, held : held + M].copy_(k)
            buffer[1][:, :, held : held + M].copy_(v)
            k, v = buffer[0][:, :, : held + M], buffer[1][:, :, : held + M]
        elif past is not None:
            k = torch.cat([past[0], k], dim=2)  # [h, hd, L, B]
            v = torch.cat([past[1], v], dim=2)
        if Q < self.bmm_queries:  # a few queries: reduce over the small axes, vectorised over the samples
            scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(1).mul_(hd**-0.5)  # [h, Q, L, B]
            w = scores.softmax(dim=2)
            y = (w.unsqueeze(1) * v.unsqueeze(2)).sum(3).reshape(h * hd, Q * B).t()  # [Q * B, h * hd]
        else:  # many (a frame of several tokens): the products above would be hd x the scores; batch GEMMs
            L = k.shape[2]
            qb = q.permute(3, 0, 2, 1).reshape(B * h, Q, hd)
            kb = k.permute(3, 0, 1, 2).reshape(B * h, hd, L)
            vb = v.permute(3, 0, 2, 1).reshape(B * h, L, hd)
            w = torch.bmm(qb, kb).mul_(hd**-0.5).softmax(dim=-1)  # [B * h, Q, L]
            y = torch.bmm(w, vb).view(B, h, Q, hd).permute(2, 0, 1, 3).reshape(Q * B, h * hd)
        out = torch.addmm(self.proj.bias, y, self.proj.weight.t())  # [Q * B, dim]
        return out, k, v


class Block(nn.Module):
    """Pre-norm transformer block (``forward``: masked window; ``step``: one cached time step)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.norm1(x), mask)
        x = x + a
        return x + self.mlp(self.norm2(x)), k, v

    def step(
        self,
        x: Tensor,
        tokens: int,
        past: tuple[Tensor, Tensor] | None,
        queries: int | None = None,
        buffer: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Token-major ``x [M * B, dim]`` -> outputs of the last ``queries`` tokens ``[Q * B, dim]``, k, v."""
        a, k, v = self.attn.step(self.norm1(x), tokens, past, queries, buffer)
        x = x[x.shape[0] - a.shape[0] :] + a
        return x + self.mlp(self.norm2(x)), k, v


class ACPredictor(nn.Module):
    """Block-causal action-conditioned predictor ``(z_<=t, a_<=t[, p_<=t]) -> z_{t+1}[, p_{t+1}]``.

    Args:
        latent_dim: width ``D`` of the latent tokens (the encoder's embed dim).
        action_dim: ``A``, the action size per step.
        num_tokens: ``N``, latent tokens per frame (1 for mean pooling, g*g for grid pooling).
        proprio_dim: ``P``; 0 disables the proprio token.
        dim: transformer width.
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden size / width.
        max_steps: longest sequence of time steps (learned temporal position embedding).
        residual: predict ``z_{t+1} - z_t`` (in units of the ``delta_scale`` buffer) or ``z_{t+1}`` directly.
    """

    # outside autograd, :meth:`imagine` writes each step's keys into buffers sized for the whole rollout
    # instead of concatenating them onto the cache (False: concatenate, the reference bench_plan times)
    preallocate_cache: bool = True

    def __init__(
        self,
        latent_dim: int,
        action_dim: int,
        num_tokens: int = 1,
        proprio_dim: int = 0,
        dim: int = 128,
        depth: int = 4,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        max_steps: int = 16,
        residual: bool = True,
    ) -> None:
        super().__init__()
        for name, val in dict(
            latent_dim=latent_dim,
            action_dim=action_dim,
            num_tokens=num_tokens,
            dim=dim,
            depth=depth,
            num_heads=num_heads,
            max_steps=max_steps,
        ).items():
            if int(val) < 1:
                raise ValueError(f"ACPredictor {name}={val} must be >= 1")
        if proprio_dim < 0:
            raise ValueError(f"ACPredictor proprio_dim={proprio_dim} must be >= 0")
        self.latent_dim, self.action_dim, self.num_tokens = latent_dim, action_dim, num_tokens
        self.proprio_dim, self.dim, self.max_steps, self.residual = proprio_dim, dim, max_steps, residual
        self.tokens_per_step = 1 + (proprio_dim > 0) + num_tokens
        self.action_embed = nn.Linear(action_dim, dim)
        self.proprio_embed = nn.Linear(proprio_dim, dim) if proprio_dim else None
        self.latent_embed = nn.Linear(latent_dim, dim)
        self.time_embed = nn.Parameter(torch.zeros(max_steps, dim))
        self.type_embed = nn.Parameter(torch.zeros(self.tokens_per_step, dim))  # action/proprio/latent slot
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.latent_head = nn.Linear(dim, latent_dim)
        # residual mode predicts (z_{t+1} - z_t) / delta_scale: set it to the data's typical frame-to-frame
        # change (set_delta_scale) so the head regresses unit-scale targets, however small the changes
        self.register_buffer("delta_scale", torch.ones(latent_dim))
        self.proprio_head = nn.Linear(dim, proprio_dim) if proprio_dim else None
        self.apply(init_weights)
        nn.init.trunc_normal_(self.time_embed, std=0.02)
        nn.init.trunc_normal_(self.type_embed, std=0.02)
        for i, blk in enumerate(self.blocks):  # GPT-2 style rescale of residual branches
            scale = 1.0 / math.sqrt(2.0 * (i + 1))
            blk.attn.proj.weight.data.mul_(scale)
            blk.mlp[2].weight.data.mul_(scale)

    def set_delta_scale(self, scale: Tensor | float) -> None:
        """Scale of the residual head's output: a scalar or ``[D]`` (e.g. the std of ``z_{t+1} - z_t``)."""
        scale = torch.as_tensor(scale, dtype=self.delta_scale.dtype, device=self.delta_scale.device)
        if not bool((scale > 0).all()):
            raise ValueError(f"delta_scale must be > 0; got min {float(scale.min())}")
        self.delta_scale.copy_(scale.expand_as(self.delta_scale))

    # -- core -----------------------------------------------------------------------------------
    def _check(self, z: Tensor, actions: Tensor, proprio: Tensor | None, start: int, steps: int) -> None:
        N, D = z.shape[-2:]
        if N != self.num_tokens or D != self.latent_dim:
            raise ValueError(
                f"z has {N} tokens of dim {D}; predictor expects {self.num_tokens} x {self.latent_dim}"
            )
        if actions.shape[-1] != self.action_dim or actions.shape[:-1] != z.shape[:-2]:
            raise ValueError(
                f"actions shape {tuple(actions.shape)} does not match z {tuple(z.shape)} "
                f"with action_dim={self.action_dim}"
            )
        if (proprio is None) != (self.proprio_embed is None):
            raise ValueError(
                f"predictor built with proprio_dim={self.proprio_dim} but proprio "
                f"{'was not' if proprio is None else 'was'} given"
            )
        if start + steps > self.max_steps:
            raise ValueError(
                f"sequence of {start + steps} time steps exceeds the predictor's max_steps={self.max_steps}; "
                "shorten the context/horizon or train with a larger max_steps"
            )

    def _tokens(self, e: Tensor, actions: Tensor, proprio: Tensor | None) -> Tensor:
        """Embedded latents ``e [..., N, dim]`` and ``actions [..., A]`` -> tokens ``[..., M, dim]``."""
        parts = [self.action_embed(actions).unsqueeze(-2)]  # [..., 1, dim]
        if self.proprio_embed is not None:
            parts.append(self.proprio_embed(proprio).unsqueeze(-2))
        parts.append(e)  # [..., N, dim]
        return torch.cat(parts, dim=-2) + self.type_embed

    def _latent_out(self, h: Tensor, z: Tensor) -> Tensor:
        """Normed latent-token features ``h [..., N, dim]`` -> next latent ``[..., N, D]``."""
        out = self.latent_head(h)
        return z + self.delta_scale * out if self.residual else out

    def _proprio_out(self, x: Tensor, proprio: Tensor | None) -> Tensor | None:
        """Normed proprio-token features ``x [..., dim]`` -> next proprio ``[..., P]`` (or None)."""
        if self.proprio_head is None:
            return None
        out = self.proprio_head(x)
        return out + proprio if self.residual else out

    def forward(
        self, z: Tensor, actions: Tensor, proprio: Tensor | None = None, return_cache: bool = False
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, KVCache]:
        """Predict the next latent (and proprio) for every step of a window (teacher forcing).

        Args:
            z: ``[B, T, N, D]`` latents of steps ``0 .. T-1``.
            actions: ``[B, T, A]``; ``actions[:, t]`` is taken after observing ``z[:, t]``.
            proprio: ``[B, T, P]`` when the predictor uses proprio, else None.
            return_cache: also return the keys/values of these ``T`` steps (to continue with :meth:`step`).

        Returns:
            ``(z_next [B, T, N, D], proprio_next [B, T, P] | None[, cache])``.
        """
        B, T = z.shape[:2]
        self._check(z, actions, proprio, 0, T)
        M = self.tokens_per_step
        x = (
            self._tokens(self.latent_embed(z), actions, proprio) + self.time_embed[:T, None, :]
        )  # [B, T, M, dim]
        x = x.reshape(B, T * M, self.dim)
        mask = None if T == 1 else block_causal_mask(T, M, device=x.device)
        keys, values = [], []
        for blk in self.blocks:
            x, k, v = blk(x, mask)  # k, v: [B, h, T*M, hd]
            if return_cache:
                keys.append(k.permute(1, 3, 2, 0))  # [h, hd, T*M, B]
                values.append(v.permute(1, 3, 2, 0))
        x = self.norm(x).view(B, T, M, self.dim)
        z_next, p_next = (
            self._latent_out(x[:, :, M - self.num_tokens :], z),
            self._proprio_out(x[:, :, 1], proprio),
        )
        if return_cache:
            return z_next, p_next, KVCache(keys, values, T)
        return z_next, p_next

    def step(
        self, z: Tensor, action: Tensor, proprio: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None, KVCache]:
        """Process ONE new time step on top of ``cache``; only this step's tokens are computed.

        Args:
            z: ``[B, N, D]`` latent of the new step.
            action: ``[B, A]`` action taken at this step.
            proprio: ``[B, P]`` or None.
            cache: keys/values of the earlier steps (batch 1 or B), or None at step 0.

        Returns:
            ``(z_next [B, N, D], proprio_next [B, P] | None, cache extended by this step)``.
        """
        self._check(z, action, proprio, 0 if cache is None else cache.steps, 1)
        h, p_next, cache = self._step_embedded(self.latent_embed(z), action, proprio, cache)
        return self._latent_out(h, z), p_next, cache

    def _step_embedded(
        self, e: Tensor, action: Tensor, proprio: Tensor | None, cache: KVCache | None
    ) -> tuple[Tensor, Tensor | None, KVCache]:
        """:meth:`step` from embedded latents ``e [B, N, dim]`` -> ``(h [B, N, dim], p_next, cache)``,
        ``h`` the normed latent-token features (the latent head is left to the caller)."""
        B = e.shape[0]
        t = 0 if cache is None else cache.steps
        if t + 1 > self.max_steps:
            raise ValueError(f"step {t + 1} exceeds the predictor's max_steps={self.max_steps}")
        if cache is not None:
            cache = cache.expand(B)
        M = self.tokens_per_step
        x = self._tokens(e, action, proprio) + self.time_embed[t]  # [B, M, dim]
        x = x.transpose(0, 1).reshape(M * B, self.dim)  # token-major [M*B, dim]
        # the last block only needs outputs for the tokens the heads read (latents, + proprio)
        Q = M - 1
        keys, values = [], []
        for i, blk in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            past = None if cache is None or cache.steps == 0 else (cache.keys[i], cache.values[i])
            buffer = None if cache is None or cache.buffers is None else cache.buffers[i]
            x, k, v = blk.step(x, M, past, Q if last else None, buffer)
            keys.append(k)
            values.append(v)
        x = self.norm(x).view(Q, B, self.dim).transpose(0, 1)  # [B, M-1, dim]
        h = x[:, Q - self.num_tokens :]  # [B, N, dim]
        buffers = None if cache is None else cache.buffers
        return h, self._proprio_out(x[:, 0], proprio), KVCache(keys, values, t + 1, buffers)

    # -- imagination ----------------------------------------------------------------------------
    def imagine(
        self,
        z_ctx: Tensor,
        actions: Tensor,
        actions_ctx: Tensor | None = None,
        proprio_ctx: Tensor | None = None,
        use_cache: bool = True,
        project: nn.Linear | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Roll out ``H`` imagined steps autoregressively from a context of ``C`` observed frames.

        Args:
            z_ctx: ``[B, C, N, D]`` observed latents, the last one is the current frame (B = 1 or S).
            actions: ``[S, H, A]`` candidate action sequences (``actions[:, 0]`` acts on the current frame).
            actions_ctx: ``[B, C-1, A]`` the actions taken between the context frames (None when C == 1).
            proprio_ctx: ``[B, C, P]`` when the predictor uses proprio.
            use_cache: cache past keys/values (fast); False recomputes the whole window each step.
            project: a linear map of one frame's flattened latent ``[N * D] -> [F]`` (e.g. the first layer
                of a readout): return ``project(z)`` ``[S, H, F]`` instead of ``z``, fused into the latent
                head, so the (wide) latents are never materialised.

        Returns:
            ``(z [S, H, N, D] or project(z) [S, H, F], proprio [S, H, P] | None)``: the predicted latents
            of steps ``C .. C+H-1``.
        """
        B, C = z_ctx.shape[:2]
        S, H, _ = actions.shape
        if B not in (1, S):
            raise ValueError(f"context batch {B} must be 1 or the number of action samples {S}")
        if C > 1 and (actions_ctx is None or tuple(actions_ctx.shape[:2]) != (B, C - 1)):
            got = None if actions_ctx is None else tuple(actions_ctx.shape)
            raise ValueError(f"{C} context frames need actions_ctx of shape ({B}, {C - 1}, A); got {got}")
        if C + H - 1 > self.max_steps:
            raise ValueError(
                f"context {C} + horizon {H} - 1 = {C + H - 1} steps exceeds max_steps={self.max_steps}"
            )
        if project is not None and project.in_features != self.num_tokens * self.latent_dim:
            raise ValueError(
                f"project takes {project.in_features} inputs; one latent frame has "
                f"{self.num_tokens} x {self.latent_dim}"
            )
        if not use_cache:
            z, p = self._imagine_full(z_ctx, actions, actions_ctx, proprio_ctx)
            return (z if project is None else project(z.flatten(-2))), p
        cache = None
        if C > 1:  # the observed past is the same for every sample: run it once at batch B
            p = None if proprio_ctx is None else proprio_ctx[:, :-1]
            _, _, cache = self(z_ctx[:, :-1], actions_ctx, p, return_cache=True)
        z0 = z_ctx[:, -1]  # [B, N, D]
        self._check(z0, actions[:B, 0], None if proprio_ctx is None else proprio_ctx[:, -1], C - 1, H)
        fast = self.preallocate_cache and not torch.is_grad_enabled()
        fast = fast and not torch.is_autocast_enabled(z0.device.type)
        if fast and H > 1:  # planning: append keys in place, not by concatenation
            blk = self.blocks[0].attn
            shape = (blk.num_heads, blk.head_dim, (C - 1 + H) * self.tokens_per_step, S)
            cache = KVCache.preallocate(cache, len(self.blocks), shape, blk.qkv.weight)  # keys' dtype
        e = self.latent_embed(z0).expand(S, -1, -1)  # [S, N, dim]
        p = None if proprio_ctx is None else proprio_ctx[:, -1].expand(S, -1)
        # The next step's input embedding, latent_embed(z_next), is affine in this step's features h
        # (residual: e + h @ R^T + c, R = W_e diag(s) W_h), so the loop stays in the predictor's width;
        # the latent head then runs once after it: z_t = z0 + s * (W_h sum_{u<=t} h_u + t b_h), one GEMM
        # with z0 as its bias -- cheap even for wide (flattened-grid) latents.
        w_e, w_h, b_h = self.latent_embed.weight, self.latent_head.weight, self.latent_head.bias
        scale = self.delta_scale if self.residual else torch.ones_like(self.delta_scale)
        R = (w_e * scale) @ w_h  # [dim, dim]
        c = w_e @ (scale * b_h) + (0 if self.residual else self.latent_embed.bias)  # [dim]
        hs, ps = [], []
        for t in range(H):
            h, p, cache = self._step_embedded(e, actions[:, t], p, cache)  # h: [S, N, dim]
            hs.append(h)
            ps.append(p)
            if t < H - 1:
                e = (e if self.residual else 0) + h @ R.T + c
        hs = torch.stack(hs, dim=1)  # [S, H, N, dim]
        N, D = z0.shape[-2:]
        ps = torch.stack(ps, dim=1) if p is not None else None
        if project is not None:
            return self._project_out(hs, z0, scale, project), ps
        if not self.residual:
            out = self.latent_head(hs)
        else:
            count = torch.arange(1, H + 1, dtype=hs.dtype, device=hs.device).view(1, H, 1, 1)
            feats = torch.cat([hs.cumsum(1), count.expand(S, H, N, 1)], dim=-1)  # [S, H, N, dim+1]
            w = torch.cat([w_h, b_h[:, None]], dim=1) * scale[:, None]  # [D, dim+1]
            flat = feats.reshape(S * H * N, -1)
            if B == 1 and N == 1:  # z0 shared by every row: fuse it as the GEMM's bias
                out = torch.addmm(z0.reshape(D), flat, w.T).view(S, H, N, D)
            else:
                out = (flat @ w.T).view(S, H, N, D) + z0.unsqueeze(1)
        return out, ps

    def motion_basis(self) -> Tensor:
        """An orthonormal basis ``[D, k]`` (``k <= dim + 1``) of the directions imagined latents move in.

        Every imagined token is ``z0 + scale * (W_h u + t b_h)`` (residual) or ``W_h h + b_h``, so
        ``z_t - z0`` (or ``z_t - b_h``) lies in the span of the head's scaled columns and bias. A squared
        distance ``||z_t - g||^2`` is then ``||Q^T (z_t - g)||^2`` plus a term that is the same for every
        imagined future of one plan: a cost can read ``k`` numbers per token instead of ``D``.
        """
        w_h, b_h = self.latent_head.weight, self.latent_head.bias  # [D, dim], [D]
        scale = self.delta_scale if self.residual else torch.ones_like(self.delta_scale)
        cols = torch.cat([w_h, b_h[:, None]], dim=1) * scale[:, None]  # [D, dim+1]
        return torch.linalg.qr(cols.detach().float()).Q.to(w_h.dtype)  # [D, dim+1]

    def _project_out(self, hs: Tensor, z0: Tensor, scale: Tensor, project: nn.Linear) -> Tensor:
        """``project(z_t)`` for the latents the head would give from features ``hs [S, H, N, dim]``.

        ``project`` is affine and so is the head: with ``W_n`` the columns of ``project.weight`` that
        read token ``n``, ``project(z_t) = b + sum_n W_n z_t[n]``, and the head's weights fold into
        ``W_n`` (``[F, D] @ [D, dim]``); the ``[S, H, N, D]`` latents never exist. Outside autograd the
        folded map is kept between calls (a planner rolls out the same ``project`` every iteration) until
        any weight it was folded from changes.
        """
        S, H, N, _ = hs.shape
        if self.residual:  # z_t = z0 + scale * (W_h sum_{u<=t} h_u + t b_h)
            count = torch.arange(1, H + 1, dtype=hs.dtype, device=hs.device).view(1, H, 1, 1)
            feats = torch.cat([hs.cumsum(1), count.expand(S, H, N, 1)], dim=-1)  # [S, H, N, dim+1]
            base = project(z0.flatten(-2)).unsqueeze(-2)  # [B, 1, F]
        else:  # z_t = W_h h_t + b_h
            feats = hs
        M, bias = self._folded_projection(project, scale, N)
        if not self.residual:
            base = bias.view(1, 1, -1)  # [1, 1, F]
        flat = feats.reshape(S * H, -1)
        if base.shape[0] == 1:  # one base for every sample: the GEMM's bias
            return torch.addmm(base.reshape(-1), flat, M.T).view(S, H, -1)
        return (flat @ M.T).view(S, H, -1) + base  # [S, H, F]

    def _folded_projection(self, project: nn.Linear, scale: Tensor, N: int) -> tuple[Tensor, Tensor | None]:
        """``(M [F, N * k], bias [F] | None)``: the latent head folded into ``project`` (see
        :meth:`_project_out`), cached by the identity and versions of the tensors it is made from."""
        w_h, b_h = self.latent_head.weight, self.latent_head.bias  # [D, dim], [D]
        sources = (project.weight, project.bias, w_h, b_h, scale)
        versions = None
        if not torch.is_grad_enabled():  # (autocast changes the folded map's dtype)
            counters = _versions(sources)
            mode = (str(scale.device), torch.is_autocast_enabled(scale.device.type))
            versions = None if counters is None else counters + mode
        cached = self.__dict__.get("_fold_cache")  # (sources, versions, M, bias): the sources are held, so
        if (  # an identity can't be reused by another tensor while it is cached
            versions is not None
            and cached is not None
            and cached[1] == versions
            and all(a is b for a, b in zip(cached[0], sources, strict=True))
        ):
            return cached[2], cached[3]
        W = project.weight.view(-1, N, self.latent_dim)  # [F, N, D]
        if self.residual:
            w = torch.cat([w_h, b_h[:, None]], dim=1) * scale[:, None]  # [D, dim+1]
            bias = None
        else:
            w = w_h
            bias = torch.einsum("fnd,d->f", W, b_h)
            bias = bias if project.bias is None else bias + project.bias
        M = torch.einsum("fnd,dk->fnk", W, w).flatten(1)  # [F, N * k]
        if versions is not None:
            self.__dict__["_fold_cache"] = (sources, versions, M, bias)  # not state, not a buffer
        return M, bias

    def _imagine_full(
        self, z_ctx: Tensor, actions: Tensor, actions_ctx: Tensor | None, proprio_ctx: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """Reference rollout without a cache: the whole window is re-run for every new step."""
        S, H, _ = actions.shape
        z_seq = z_ctx.expand(S, -1, -1, -1)  # [S, C, N, D]
        p_seq = None if proprio_ctx is None else proprio_ctx.expand(S, -1, -1)
        a_ctx = actions[:, :0] if actions_ctx is None else actions_ctx.expand(S, -1, -1)
        zs, ps = [], []
        for h in range(H):
            a_seq = torch.cat([a_ctx, actions[:, : h + 1]], dim=1)  # [S, C+h, A]
            z_all, p_all = self(z_seq, a_seq, p_seq)
            zs.append(z_all[:, -1:])
            z_seq = torch.cat([z_seq, z_all[:, -1:]], dim=1)
            if p_all is not None:
                ps.append(p_all[:, -1:])
                p_seq = torch.cat([p_seq, p_all[:, -1:]], dim=1)
        return torch.cat(zs, dim=1), (torch.cat(ps, dim=1) if ps else None)


def _versions(tensors: tuple[Tensor | None, ...]) -> tuple[int | None, ...] | None:
    """The in-place version counters of ``tensors`` (None: one has none, e.g. an inference tensor)."""
    try:
        return tuple(None if t is None else t._version for t in tensors)
    except RuntimeError:
        return None


def ac_predictor_config(model: ACPredictor) -> dict[str, Any]:
    """The constructor kwargs that rebuild ``model`` (stored in checkpoints)."""
    blk = model.blocks[0]
    return dict(
        latent_dim=model.latent_dim,
        action_dim=model.action_dim,
        num_tokens=model.num_tokens,
        proprio_dim=model.proprio_dim,
        dim=model.dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=blk.mlp[0].out_features / model.dim,
        max_steps=model.max_steps,
        residual=model.residual,
    )
