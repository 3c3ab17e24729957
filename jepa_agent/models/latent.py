"""The planning latent's parts: pooling frozen tokens, its normalisation, and the state readout.

* :class:`LatentPooler` reduces the encoder's ``Hp x Wp`` patch tokens to ``g x g`` average-pooled
  tokens (``g = 1``: the mean token), keeps all patch tokens (``patch``), or learns ``Q`` attentive
  queries (``attentive``; trained with the predictor, guarded against collapse by
  :func:`variance_loss`). Tokens are layer-normed (no affine) as in V-JEPA 2-AC.
* :class:`Normalizer` standardises actions, proprio and latents with training-set statistics.
* :class:`TemporalDistanceHead` maps one frame's latent to a space whose Euclidean distance counts the
  steps between frames, learned from episodes alone (no labels): the default planning cost's space
  (``cost.space=metric``).
* :class:`GoalCritic` reads the steps from a frame to a goal frame from the pair (``world_model.metric.kind=
  critic``): the same label-free space, asymmetric where the task is (a pushed block is not pulled back).
* :class:`DisplacementHead` maps a frame and a goal frame to the summed actions between them (label-free:
  hindsight inverse dynamics on recorded actions); the metric cost adds its squared norm, sharp at the goal.
* :class:`AnchorHead` reads the same from a real frame's unpooled patch tokens, once per replan; the plan's
  actions carry it forward (where pooling mixes the arm with a changing scene).
* :class:`StateReadout` regresses the recorded joint angles from one frame's latent; the planning
  cost compares readouts (``cost.space=readout``, a labelled baseline).

:class:`jepa_agent.world_model.WorldModel` composes them with the encoder and the AC predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLINGS = ("grid", "patch", "attentive")


# -- pooling ---------------------------------------------------------------------------------------
class LatentPooler(nn.Module):
    """Patch tokens ``[B, Hp*Wp, D]`` -> latent tokens ``[B, N_lat, D]``.

    Args:
        mode: ``"grid"`` (``g x g`` average pooling), ``"patch"`` (all tokens) or ``"attentive"``.
        embed_dim: token width ``D``.
        grid_hw: the patch grid ``(Hp, Wp)`` of one frame.
        grid_size: ``g`` for grid pooling.
        num_queries: learned queries for attentive pooling.
        num_heads: attention heads for attentive pooling.
        normalize: layer-norm each output token (no affine).
        flatten: concatenate the output tokens into ONE token of width ``N_lat * D`` (keeps the grid's
            spatial layout at the planning cost of a single token per frame).
        frame_tokens: with ``flatten``, concatenate them into this many tokens instead, each joining a run
            of ``N_lat / frame_tokens`` consecutive tokens (row-major: a 4 x 4 grid at 4 is its 4 rows). The
            flattened frame ``z.flatten(-2)`` is the same for every value, so heads that read it fit all.
    """

    def __init__(
        self,
        mode: str = "grid",
        embed_dim: int = 192,
        grid_hw: tuple[int, int] = (8, 8),
        grid_size: int = 1,
        num_queries: int = 4,
        num_heads: int = 4,
        normalize: bool = True,
        flatten: bool = False,
        frame_tokens: int = 1,
    ) -> None:
        super().__init__()
        if mode not in POOLINGS:
            raise ValueError(f"pooling={mode!r}; expected one of {list(POOLINGS)}")
        hp, wp = grid_hw
        if mode == "grid" and not 1 <= grid_size <= min(hp, wp):
            raise ValueError(
                f"grid_size={grid_size} must be in [1, {min(hp, wp)}] for a {hp}x{wp} patch grid"
            )
        self.mode, self.embed_dim, self.grid_hw = mode, embed_dim, (int(hp), int(wp))
        self.grid_size, self.normalize, self.num_heads = grid_size, normalize, num_heads
        self.queries: nn.Parameter | None = None
        if mode == "attentive":
            if embed_dim % num_heads:
                raise ValueError(
                    f"embed_dim={embed_dim} must be divisible by attentive num_heads={num_heads}"
                )
            self.queries = nn.Parameter(torch.randn(num_queries, embed_dim) * 0.02)
            self.norm_in = nn.LayerNorm(embed_dim)
            self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.flatten, self.num_queries = flatten, num_queries
        tokens = {"grid": grid_size**2, "patch": hp * wp, "attentive": num_queries}[mode]
        whole = isinstance(frame_tokens, int) and not isinstance(frame_tokens, bool)
        if not whole or frame_tokens < 1 or tokens % frame_tokens or (frame_tokens > 1 and not flatten):
            need = f"a divisor of the {tokens} pooled tokens" if flatten else "1 (flatten=false keeps all)"
            raise ValueError(f"world_model.frame_tokens={frame_tokens!r}; expected {need}")
        self.frame_tokens = frame_tokens
        self.num_tokens = frame_tokens if flatten else tokens  # latent tokens per frame
        self.out_dim = tokens * embed_dim // self.num_tokens  # their width

    @property
    def learned(self) -> bool:
        """True when the pooler has trainable parameters (saved in the world-model checkpoint)."""
        return self.mode == "attentive"

    def forward(self, tokens: Tensor) -> Tensor:
        B, n, D = tokens.shape
        hp, wp = self.grid_hw
        if n != hp * wp or D != self.embed_dim:
            raise ValueError(
                f"patch tokens of shape {tuple(tokens.shape)}; expected [B, {hp * wp}, {self.embed_dim}]"
            )
        if self.mode == "grid":
            x = tokens.transpose(1, 2).reshape(B, D, hp, wp)  # [B, D, Hp, Wp]
            z = F.adaptive_avg_pool2d(x, self.grid_size).flatten(2).transpose(1, 2)  # [B, g*g, D]
        elif self.mode == "patch":
            z = tokens
        else:
            kv = self.norm_in(tokens)
            q = self.queries.unsqueeze(0).expand(B, -1, -1)  # [B, Q, D]
            z = self.attn(q, kv, kv, need_weights=False)[0] + tokens.mean(1, keepdim=True)  # [B, Q, D]
        if self.normalize:
            z = F.layer_norm(z, (D,))
        # [B, N_lat, D], or joined: [B, frame_tokens, N_lat * D / frame_tokens]
        return z.reshape(B, self.frame_tokens, -1) if self.flatten else z


def variance_loss(z: Tensor, target_std: float = 1.0, eps: float = 1e-4) -> Tensor:
    """Collapse guard (VICReg variance term): hinge ``relu(target - std)`` of each latent dim over the batch.

    Args:
        z: ``[..., D]`` latents; every leading dim is treated as batch.
    """
    flat = z.reshape(-1, z.shape[-1])
    std = torch.sqrt(flat.var(dim=0) + eps)
    return F.relu(target_std - std).mean()


class TemporalDistanceHead(nn.Module):
    """Latent -> ``phi`` in R^dim whose distance ``||phi(x) - phi(y)||`` counts the steps from x to y.

    The label-free planning space (``cost.space=metric``): trained on recorded episodes only (their
    frames through the frozen encoder, and their order), before the predictor, with the HILP objective
    (:func:`jepa_agent.losses.temporal_distance_loss`): the value ``V(s, g) = -||phi(s) - phi(g)||`` is
    fitted by expectile TD with reward -1 per step, so the distance approximates the *fewest* steps
    between two frames that the data shows, not how far apart their pixels or latents are. A state the
    actions do not move (a background) costs no steps to keep, so it carries no distance.

    Same interface as :class:`StateReadout` (``input_layer`` / ``from_input_layer``), so the planning cost
    fuses its first layer into the rollout exactly as it does the readout's.

    Args:
        in_dim: ``N * D`` (one frame's latent, flattened).
        dim: output dimension.
        hidden: MLP width (two hidden layers, layer-normed as in HILP's value networks).
    """

    def __init__(self, in_dim: int, dim: int = 32, hidden: int = 256) -> None:
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"metric dim={dim}, hidden={hidden}; expected positive sizes")
        self.in_dim, self.dim, self.hidden = int(in_dim), int(dim), int(hidden)
        self.out_dim = self.dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Latents ``[..., N, D]`` -> ``phi [..., dim]``."""
        return self.net(z.flatten(-2))

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """``||phi(a) - phi(b)||`` for latents ``[..., N, D]`` (broadcast) -> ``[...]`` (in steps)."""
        return (self(a) - self(b)).square().sum(-1).clamp_min(1e-12).sqrt()

    @property
    def input_layer(self) -> nn.Linear:
        """The first (linear) layer on the flattened latent: a rollout can fuse it into its output head."""
        return self.net[0]

    def from_input_layer(self, x: Tensor) -> Tensor:
        """The rest of the head: ``input_layer`` outputs ``[..., hidden]`` -> ``[..., dim]``."""
        return self.net[1:](x)


class GoalCritic(nn.Module):
    """(latent, goal latent) -> the steps from one to the other, ``>= 0``: a goal-conditioned value.

    The other kind of the label-free planning space (``world_model.metric.kind=critic``). A
    :class:`TemporalDistanceHead` is a distance, ``||phi(s) - phi(g)||``, so it is symmetric: it counts the
    steps from a pushed block back to where it was as if the pusher could pull it. This critic reads the
    pair, so the way there and the way back may differ. It is fitted by the same expectile TD on recorded
    episodes alone (:func:`jepa_agent.losses.goal_critic_loss`, GCIVL's value: Park et al. 2024, OGBench),
    counting the steps to a later frame of the episode or to any frame.

    Measured on push, planned with the true simulator from the true state (a diagnostic; docs/benchmarks.md,
    seventeenth session): counting env steps, the distance head plans 2 of 10 offset goals, this critic
    6-7 of 10, as the hand-made oracle cost does (7).

    The first layer is split between the frame and the goal (``state_in``, ``goal_in``): the goal's part
    is computed once per plan, and the frame's is a linear map of the latent (``input_layer``), so the
    world model's rollout can fuse it as it does the distance head's.

    Args:
        in_dim: ``N * D`` (one frame's latent, flattened).
        hidden: MLP width (three hidden layers, layer-normed).
    """

    def __init__(self, in_dim: int, hidden: int = 256) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"metric hidden={hidden}; expected a positive size")
        self.in_dim, self.hidden = int(in_dim), int(hidden)
        self.dim = self.out_dim = 1
        self.state_in = nn.Linear(in_dim, hidden)
        self.goal_in = nn.Linear(in_dim, hidden, bias=False)
        self.net = nn.Sequential(
            nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, 1),
        )  # fmt: skip

    def goal_features(self, g: Tensor) -> Tensor:
        """A goal latent ``[..., N, D]`` -> its part of the first layer ``[..., hidden]`` (once per plan)."""
        return self.goal_in(g.flatten(-2))

    def features(self, z: Tensor) -> Tensor:
        """A frame's part of the first layer ``[..., N, D] -> [..., hidden]``: what the critic reads of a
        frame (the predictor's term in the head's space compares these)."""
        return self.state_in(z.flatten(-2))

    def steps_from_features(self, h: Tensor, goal_h: Tensor) -> Tensor:
        """``features`` of frames ``[..., hidden]`` and of a goal (broadcast) -> steps ``[...]``."""
        return F.softplus(self.net(h + goal_h)).squeeze(-1)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """The steps from latents ``a`` to goal latents ``b`` (``[..., N, D]``, broadcast) -> ``[...]``."""
        return self.steps_from_features(self.features(a), self.goal_features(b))

    forward = features

    @property
    def input_layer(self) -> nn.Linear:
        """The frame's first (linear) layer: a rollout can fuse it into its output head."""
        return self.state_in

    def from_input_layer(self, x: Tensor) -> Tensor:
        """``input_layer`` outputs are already the features (the goal joins after it)."""
        return x


class DisplacementHead(nn.Module):
    """(a frame's latent, a goal frame's latent) -> the summed actions that lead from the one to the other.

    The label-free counterpart of the state readout's precision near the goal. Its targets are sums of
    the recorded actions between two frames of one episode (hindsight inverse dynamics), so it reads
    frames and actions only. Trained with the predictor on encoded AND predicted latents, as the readout
    is, so imagined futures read out right. For a servoed arm the summed actions are the joint displacement
    itself (``q' - q = max_delta * sum(a)``), so the cost ``||D(z, g)||^2`` is as sharp at the goal as the
    readout's, and it is flat nowhere. Targets are capped (``sum / max(1, |sum|_inf / cap)``): far goals read
    as "a full ``cap``-step move in their direction", and the temporal-distance head leads there.

    Same fusable interface as the heads (``input_layer`` / ``from_input_layer`` for the per-frame part):
    a rollout returns the first layer of each imagined frame, and the goal's embedding is computed once.

    Two ways to pair the frames (``inputs``):

    - ``"pair"``: each frame is embedded by an MLP, and a second MLP reads ``[h, g, g - h]``.
    - ``"diff"``: the only per-frame part is one linear layer, and the MLP reads ``W (z_goal - z)``: what the
      two frames share (the scene, whatever does not move) cancels exactly before any non-linearity, and
      a frame read against itself gives one learned constant (trained towards 0) whatever the scene. On the
      distracting reach, where a new background is drawn every episode, this halves a head's held-out
      error on frozen latents, and plans 7/20 goals against 2/20 (docs/benchmarks.md).

    Args:
        in_dim: ``N * D`` (one frame's latent, flattened).
        action_dim: ``A``.
        hidden: MLP width.
        inputs: ``"pair"`` or ``"diff"``.
    """

    INPUTS = ("pair", "diff")

    def __init__(self, in_dim: int, action_dim: int, hidden: int = 192, inputs: str = "pair") -> None:
        super().__init__()
        if action_dim < 1 or hidden < 1:
            raise ValueError(
                f"displacement action_dim={action_dim}, hidden={hidden}; expected positive sizes"
            )
        if inputs not in self.INPUTS:
            raise ValueError(
                f"world_model.displacement.inputs={inputs!r}; expected one of {list(self.INPUTS)}"
            )
        self.in_dim, self.action_dim, self.hidden = int(in_dim), int(action_dim), int(hidden)
        self.inputs = inputs
        if inputs == "pair":
            self.embed_net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(),
                nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(),
            )  # fmt: skip
            self.pair = nn.Sequential(
                nn.Linear(3 * hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, action_dim)
            )
        else:  # no normalisation of the difference: a small one must stay small
            self.embed_net = nn.Sequential(nn.Linear(in_dim, hidden))
            self.pair = nn.Sequential(
                _Offset(hidden),
                nn.GELU(),
                nn.Linear(hidden, hidden),
                nn.GELU(),
                nn.Linear(hidden, action_dim),
            )

    def embed(self, z: Tensor) -> Tensor:
        """Latents ``[..., N, D]`` -> per-frame embeddings ``[..., hidden]``."""
        return self.embed_net(z.flatten(-2))

    def from_embeddings(self, h: Tensor, h_goal: Tensor) -> Tensor:
        """Embeddings of frames ``[..., hidden]`` and of their goals (broadcast) -> ``[..., A]``."""
        if self.inputs == "diff":
            return self.pair(h_goal - h)
        h, h_goal = torch.broadcast_tensors(h, h_goal)
        return self.pair(torch.cat([h, h_goal, h_goal - h], -1))

    def towards(self, h_goal: Tensor) -> Callable[[Tensor], Tensor]:
        """For one goal embedding ``[1, hidden]``: ``h [..., hidden] -> [..., A]``, equal to
        ``from_embeddings(h, h_goal)`` but with the goal's share of the first pair layer computed once
        (``W [h, g, g - h] = (W_h - W_d) h + (W_g + W_d) g``): a third of that layer's work per frame."""
        if self.inputs == "diff":
            goal = h_goal.reshape(-1, self.hidden)[:1]
            return lambda h: self.pair(goal - h)
        first = self.pair[0]
        w_h, w_g, w_d = first.weight.split(self.hidden, dim=1)
        weight = w_h - w_d  # [hidden, hidden]
        bias = (h_goal.reshape(-1, self.hidden)[:1] @ (w_g + w_d).T + first.bias)[0]  # [hidden]
        rest = self.pair[1:]
        return lambda h: rest(F.linear(h, weight, bias))

    def forward(self, z: Tensor, goal: Tensor) -> Tensor:
        """Latents ``[..., N, D]`` and goal latents (broadcast) -> summed actions ``[..., A]`` (capped)."""
        return self.from_embeddings(self.embed(z), self.embed(goal))

    @property
    def input_layer(self) -> nn.Linear:
        """The first (linear) layer on the flattened latent: a rollout can fuse it into its output head."""
        return self.embed_net[0]

    def from_input_layer(self, x: Tensor) -> Tensor:
        """The rest of the embedding: ``input_layer`` outputs ``[..., hidden]`` -> ``[..., hidden]``."""
        return self.embed_net[1:](x)


class AnchorHead(nn.Module):
    """(a real frame's patch tokens, a goal frame's) -> the summed actions between them, read once per replan.

    The :class:`DisplacementHead` reads pooled latents, so it can read imagined frames; where the scene
    changes every episode (the distracting reach) pooling mixes the arm with the background and the head
    reads the way to the goal badly (held-out error 0.36 of the targets' variance). This head reads the
    encoder's unpooled patch tokens (``P`` tokens of width ``D``), standardised, through a factorised linear
    map (one ``D -> channels`` projection shared by every token, then ``P * channels -> hidden``) and an MLP
    on the *difference* of the two embeddings: the map is linear, so what both frames show cancels before
    any non-linearity, as in ``DisplacementHead(inputs="diff")``. On the distracting reach the planner with
    it reaches 45/50 goals (90%), against 7/20 with the pooled head (docs/benchmarks.md).

    It reads real frames only (the predictor imagines pooled latents): the planner reads it once per replan,
    at the current frame, and carries it forward with the planned actions, since the summed actions still
    needed after ``a_1..a_h`` are the reading minus ``a_1 + .. + a_h``
    (:class:`~jepa_agent.costs.AnchorCost`).
    Targets as the displacement head's: capped sums of the recorded actions (frames and actions only).

    Args:
        num_tokens, token_dim: ``P`` and ``D`` of the encoder's patch tokens.
        action_dim: ``A``.
        hidden: MLP width.
        channels: per-token projection width.
        inputs: what the MLP reads: ``"diff"``, the difference of the two embeddings alone (the scene cancels
            exactly), or ``"pair"``, ``[h, g, g - h]`` (it also knows where the arm is, at the price of
            seeing the scene: the map from embedding to actions need not be the same everywhere).
        token_hidden: 0: the per-token projection is linear; > 0: an MLP ``D -> token_hidden -> channels``
            shared by every token. A token that is the same in both frames (the scene where the arm is in
            neither) still cancels in the difference, while each token's features may be non-linear (what
            is arm in a patch, whatever the tiles behind it).
    """

    INPUTS = ("diff", "pair")

    def __init__(
        self,
        num_tokens: int,
        token_dim: int,
        action_dim: int,
        hidden: int = 192,
        channels: int = 16,
        inputs: str = "diff",
        token_hidden: int = 0,
    ) -> None:
        super().__init__()
        if min(num_tokens, token_dim, action_dim, hidden, channels) < 1:
            raise ValueError(
                f"anchor head num_tokens={num_tokens}, token_dim={token_dim}, action_dim={action_dim}, "
                f"hidden={hidden}, channels={channels}; expected positive sizes"
            )
        if isinstance(token_hidden, bool) or not isinstance(token_hidden, int) or token_hidden < 0:
            raise ValueError(
                f"world_model.anchor.token_hidden={token_hidden!r}; expected an int >= 0 (0: a linear "
                "per-token projection)"
            )
        if inputs not in self.INPUTS:
            raise ValueError(f"world_model.anchor.inputs={inputs!r}; expected one of {list(self.INPUTS)}")
        self.num_tokens, self.token_dim, self.action_dim = int(num_tokens), int(token_dim), int(action_dim)
        self.hidden, self.channels, self.inputs = int(hidden), int(channels), inputs
        self.token_hidden = token_hidden
        self.register_buffer("token_mean", torch.zeros(num_tokens, token_dim))
        self.register_buffer("token_std", torch.ones(num_tokens, token_dim))
        if token_hidden:  # shared by every token, non-linear
            self.project = nn.Sequential(
                nn.Linear(token_dim, token_hidden), nn.GELU(), nn.Linear(token_hidden, channels)
            )
        else:  # shared by every token
            self.project = nn.Linear(token_dim, channels, bias=False)
        self.embed_net = nn.Linear(num_tokens * channels, hidden)
        first = _Offset(hidden) if inputs == "diff" else nn.Linear(3 * hidden, hidden)
        self.pair = nn.Sequential(
            first, nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, action_dim)
        )

    @torch.no_grad()
    def set_token_stats(self, tokens: Tensor, chunk: int = 4096) -> None:
        """Standardisation statistics from training tokens ``[F, P, D]`` (in chunks: no float64 copy)."""
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != (self.num_tokens, self.token_dim):
            raise ValueError(
                f"tokens {tuple(tokens.shape)}; expected [F, {self.num_tokens}, {self.token_dim}]"
            )
        total = torch.zeros(self.num_tokens, self.token_dim, dtype=torch.float64, device=tokens.device)
        squares = torch.zeros_like(total)
        for i in range(0, len(tokens), chunk):
            x = tokens[i : i + chunk].double()
            total += x.sum(0)
            squares += x.square().sum(0)
        mean = total / len(tokens)
        var = (squares / len(tokens) - mean.square()).clamp_min(0.0)
        self.token_mean.copy_(mean.to(self.token_mean))
        self.token_std.copy_(var.sqrt().add(1e-3).to(self.token_std))

    def embed(self, tokens: Tensor) -> Tensor:
        """Raw patch tokens ``[..., P, D]`` -> per-frame embeddings ``[..., hidden]`` (linear)."""
        x = (tokens - self.token_mean) / self.token_std
        return self.embed_net(self.project(x).flatten(-2))

    def from_embeddings(self, h: Tensor, h_goal: Tensor) -> Tensor:
        """Embeddings of frames ``[..., hidden]`` and of their goals (broadcast) -> ``[..., A]``."""
        if self.inputs == "diff":
            return self.pair(h_goal - h)
        h, h_goal = torch.broadcast_tensors(h, h_goal)
        return self.pair(torch.cat([h, h_goal, h_goal - h], -1))

    def forward(self, tokens: Tensor, goal: Tensor) -> Tensor:
        """Patch tokens ``[..., P, D]`` and goal tokens (broadcast) -> summed actions ``[..., A]``."""
        return self.from_embeddings(self.embed(tokens), self.embed(goal))


class _Offset(nn.Module):
    """A learned bias, ``x + b`` (the difference of two embeddings has lost theirs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


def capped_action_sums(sums: Tensor, cap: float) -> Tensor:
    """Summed actions ``[..., A]`` rescaled so their largest component is at most ``cap`` (direction kept)."""
    scale = (sums.abs().amax(-1, keepdim=True) / cap).clamp_min(1.0)
    return sums / scale


class StateReadout(nn.Module):
    """Latent -> robot state features: the metric space of the planning cost (``cost.space=readout``).

    An MLP on one frame's latent ``[.., N, D]`` that regresses the joint angles (the first ``angles``
    proprio dims): ``(cos q, sin q)`` for the continuous joints listed in ``wrap`` (smooth across their
    +-pi wrap) and ``q`` itself for limited joints (so the distance follows the way the joint can really
    move, not the shortcut through its limit). Both give a squared distance ~ ``dq^2`` for small moves.
    It is trained with the predictor (on encoded AND on predicted latents, so imagined futures read out
    right) from the proprio recorded with the episodes. The goal is still only an image: planning
    compares the readout of the imagined latents with the readout of the goal image's latent.

    Why: the latent distance itself is a poor reach cost (``scripts/score.py``, in
    docs/benchmarks.md): two arm images that do not overlap are about equally far apart however far
    apart the poses are, so even with perfect dynamics greedy search on it strands many goals.

    Args:
        in_dim: ``N * D`` (one frame's latent, flattened).
        angles: leading proprio dims that are joint angles.
        wrap: indices (< ``angles``) of the continuous joints.
        hidden: MLP width.
    """

    def __init__(self, in_dim: int, angles: int, wrap: Sequence[int] = (), hidden: int = 256) -> None:
        super().__init__()
        if angles < 1:
            raise ValueError(f"readout angles={angles}; expected >= 1 joint angle in the proprio")
        wrap = sorted({int(i) for i in wrap})
        if any(not 0 <= i < angles for i in wrap):
            raise ValueError(f"readout wrap={wrap}: joint indices must be in [0, angles={angles})")
        self.in_dim, self.angles, self.hidden, self.wrap = int(in_dim), int(angles), int(hidden), wrap
        self.limited = [i for i in range(self.angles) if i not in wrap]
        self.out_dim = 2 * len(wrap) + len(self.limited)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, self.out_dim),
        )

    def targets(self, proprio: Tensor) -> Tensor:
        """Raw (un-normalised) proprio ``[..., P]`` -> ``[..., out_dim]`` regression targets:
        ``[cos q_wrap, sin q_wrap, q_limited]``."""
        if proprio.shape[-1] < self.angles:
            raise ValueError(
                f"proprio has {proprio.shape[-1]} dims; the readout needs the first {self.angles} "
                "(joint angles)"
            )
        q = proprio[..., : self.angles].float()
        w, lim = q[..., self.wrap], q[..., self.limited]
        return torch.cat([torch.cos(w), torch.sin(w), lim], -1)

    def forward(self, z: Tensor) -> Tensor:
        """Latents ``[..., N, D]`` -> state features ``[..., out_dim]``."""
        return self.net(z.flatten(-2))

    @property
    def input_layer(self) -> nn.Linear:
        """The first (linear) layer on the flattened latent: a rollout can fuse it into its output head."""
        return self.net[0]

    def from_input_layer(self, x: Tensor) -> Tensor:
        """The rest of the readout: ``input_layer`` outputs ``[..., hidden]`` -> ``[..., out_dim]``."""
        return self.net[1:](x)


class Normalizer(nn.Module):
    """Action / proprio / latent standardisation with statistics from the training data (saved as buffers).

    Latents are standardised per feature (``(z - mean) / std`` over the training frames): after the
    encoder's layer norm, what moves with the scene (a thin arm) is ~1% of each token, the rest is
    background and position; standardising makes the moving part O(1) for the predictor's loss and the
    planning cost. Features that barely vary are floored at ``latent_std_floor`` x the median std so
    codec noise is not amplified.
    """

    def __init__(
        self, action_dim: int, proprio_dim: int = 0, latent_shape: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))
        shape = tuple(latent_shape) if latent_shape is not None else (0,)
        self.register_buffer("latent_mean", torch.zeros(shape))
        self.register_buffer("latent_std", torch.ones(shape))

    def set_stats(self, actions: Tensor, proprio: Tensor | None = None, min_std: float = 1e-3) -> None:
        """Fit the statistics on ``actions [..., A]`` (and ``proprio [..., P]``)."""
        a = actions.reshape(-1, actions.shape[-1]).float()
        self.action_mean.copy_(a.mean(0))
        self.action_std.copy_(a.std(0).clamp(min=min_std))
        if proprio is not None and self.proprio_mean.numel():
            p = proprio.reshape(-1, proprio.shape[-1]).float()
            self.proprio_mean.copy_(p.mean(0))
            self.proprio_std.copy_(p.std(0).clamp(min=min_std))

    def set_latent_stats(self, z: Tensor, latent_std_floor: float = 0.1) -> None:
        """Fit the latent statistics on pooled latents ``z [M, N, D]`` of the training frames."""
        if not self.latent_mean.numel():
            return
        if tuple(z.shape[1:]) != tuple(self.latent_mean.shape):
            raise ValueError(
                f"latents of shape {tuple(z.shape)}; expected [M, *{tuple(self.latent_mean.shape)}]"
            )
        z = z.float()
        std = z.std(0)
        self.latent_mean.copy_(z.mean(0))
        self.latent_std.copy_(std.clamp(min=float(latent_std_floor * std.median().clamp(min=1e-8))))

    def latent(self, z: Tensor) -> Tensor:
        """Standardise pooled latents ``[..., N, D]`` (identity before :meth:`set_latent_stats`)."""
        if not self.latent_mean.numel():
            return z
        return (z - self.latent_mean.to(z.dtype)) / self.latent_std.to(z.dtype)

    def actions(self, a: Tensor) -> Tensor:
        return (a - self.action_mean) / self.action_std

    def proprio(self, p: Tensor) -> Tensor:
        return (p - self.proprio_mean) / self.proprio_std


# -- the world model -------------------------------------------------------------------------------
