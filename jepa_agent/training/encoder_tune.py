"""Action-conditioned fine-tune of the encoder, before it is frozen for the world model (recipe B).

V-JEPA pretraining learns what is predictable in a clip; in the distracting reach that is the tiled
background, not the thin arm (``research/label_free_cost.md``, the "slow feature" failure). This stage
trains the encoder, from its pretrained weights, on the recorded episodes' frames AND actions (no proprio,
no state, no reward), so that what the actions move is kept:

- **inverse dynamics** (EB-JEPA, PLDM, AC-State): an MLP reads the embeddings of frames ``t`` and ``t+1``
  and regresses the (standardised) action taken between them. Only what the action controls can pay it.
- **action-conditioned prediction** (LeWM, PLDM): a residual MLP rolls the embedding forward with the
  actions, open loop over the clip, and is scored against the encoded frames (no stop-gradient).
- **variance / covariance** anti-collapse (VICReg, as EB-JEPA: ``16 x`` variance hinge, ``8 x``
  off-diagonal covariance), over every frame of the batch.
- **multi-step inverse dynamics** (``displacement_weight``; ACRO's multi-step inverse, and the world
  model's own :class:`~jepa_agent.models.latent.DisplacementHead` target): an MLP reads the embeddings of a
  clip frame and of a goal frame up to ``goal_steps`` later (or ``back_steps`` earlier) in the same episode,
  and regresses the summed env-unit actions between them, capped at ``cap`` per component. One step moves
  the arm by a pixel or less; twenty move it across the frame, so this term still pays where the one-step
  inverse model sees nothing (the distracting reach).
- **pixel reconstruction** (``pixel_weight``; the decoder term of world models such as Dreamer and of the
  PcLast / ACRO ablations): a small transposed-convolution decoder redraws each (shifted) frame from its
  pooled latent, scored as the fraction of the batch's pixel variance it leaves unexplained. The V-JEPA
  objective and the inverse models keep only what is predictable or controlled; on push they dropped the
  T's turn (probe R^2 0.2), which a same-size encoder trained for it reads at 0.95. Redrawing the frame
  needs the T's outline, so this term makes the latent keep more of it, from frames alone (push, weight
  10: the planning latent's linear yaw R^2 0.15 -> 0.49; docs/benchmarks.md).
- **time between frames** (``time_weight``; temporal-distance and "time-contrastive" objectives: TCN,
  HILP's and PcLast's time structure): an MLP reads the embeddings of a clip frame and of a goal frame of
  the same episode (the multi-step inverse term's goal) and regresses the signed frames between them,
  over ``goal_steps``. What changes with time pays it, the pushed block and its turn as well as the
  pusher: the planning space's steps-to-go reads them (docs/benchmarks.md, seventeenth session).
- **a goal critic's TD error** (``critic_weight``; GCIVL's value from pixels, as OGBench's visual tasks train
  their encoder): a :class:`~jepa_agent.models.latent.GoalCritic` on the embeddings counts the fewest steps
  from each clip transition's frame to every frame of the batch (expectile TD,
  :func:`~jepa_agent.losses.goal_critic_loss`, an EMA target, counted in units of ``1 / (1 - gamma)``
  steps), and its error trains the encoder. The time term regresses the steps the recorded episode took;
  this one the fewest the data shows, what the world model's own critic then reads
  (``world_model.metric.kind=critic``).
- **a random shift** of each clip (all its frames alike, replicate padding), as ACRO and DrQ.

The embedding these terms act on is the world model's own frame latent (the pooled, layer-normed patch
grid) through a small projector; the projector, predictor and inverse model are thrown away after the
stage, and the world model then trains on the fine-tuned encoder as usual. Everything is batched: one
encoder call per step for every frame of every clip.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_agent.losses import ema_update, goal_critic_loss
from jepa_agent.models.latent import GoalCritic, LatentPooler
from jepa_agent.models.vit import VideoViT, pixels_to_images
from jepa_agent.training.latent_cache import ActionSums, window_starts
from jepa_agent.training.schedules import warmup_cosine

__all__ = ["ActionTuneHeads", "EncoderTuneConfig", "FrameEpisodes", "action_tune_loss", "tune_encoder"]


@dataclass
class EncoderTuneConfig:
    """Settings of the encoder fine-tune (``train.encoder.*``).

    Attributes:
        steps: optimisation steps (0: the encoder stays as pretrained, frozen).
        batch_size: clips per step.
        window: frames per clip (``window - 1`` actions: predicted open loop, and inverse-modelled).
        lr: encoder learning rate (AdamW; warm-up then cosine to ``lr / 100``).
        head_lr: learning rate of the projector, predictor and inverse model.
        warmup: warm-up steps.
        weight_decay: AdamW weight decay (matrices only).
        proj_dim: width of the projected embedding the losses act on.
        hidden: hidden width of the projector, predictor and inverse model.
        inverse_weight: weight of the inverse-dynamics term.
        prediction_weight: weight of the action-conditioned prediction term.
        variance_weight: weight of the variance hinge (VICReg).
        covariance_weight: weight of the off-diagonal covariance term (VICReg).
        displacement_weight: weight of the multi-step inverse term (0: off, and no goal frames are encoded).
        time_weight: weight of the time term: the signed frames from a clip frame to the goal frame (0: off).
        pixel_weight: weight of the pixel-reconstruction term (0: off, and no decoder is built).
        decoder_width: channels of the pixel decoder's first (4 x 4) grid, halved at each upsampling (at
            least 16); the decoder is thrown away with the stage's other heads.
        critic_weight: weight of the goal critic's TD error (0: off, and no critic is built).
        critic_gamma: the critic's discount (it counts steps up to about ``1 / (1 - gamma)``).
        critic_expectile: the critic's expectile (> 0.5: the fewest steps the data shows).
        critic_ema: the critic's target update rate.
        goal_steps: the goal frame lies up to this many frames after the clip's first frame...
        back_steps: ... or up to this many before it (clamped to the episode).
        cap: the summed actions are rescaled so their largest component is at most this.
        shift: random-shift augmentation in pixels (0: none).
        clip_grad: max gradient norm (0: none).
    """

    steps: int = 0
    batch_size: int = 16
    window: int = 3
    lr: float = 1e-4
    head_lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    proj_dim: int = 64
    hidden: int = 256
    inverse_weight: float = 1.0
    prediction_weight: float = 1.0
    variance_weight: float = 16.0
    covariance_weight: float = 8.0
    displacement_weight: float = 0.0
    time_weight: float = 0.0
    pixel_weight: float = 0.0
    decoder_width: int = 128
    critic_weight: float = 0.0
    critic_gamma: float = 0.98
    critic_expectile: float = 0.9
    critic_ema: float = 0.005
    goal_steps: int = 20
    back_steps: int = 4
    cap: float = 2.0
    shift: int = 3
    clip_grad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("steps", "shift", "warmup", "goal_steps", "back_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"train.encoder.{name}={getattr(self, name)}; expected an integer >= 0")
        for name in ("batch_size", "proj_dim", "hidden", "decoder_width"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.encoder.{name}={getattr(self, name)}; expected a positive integer")
        if int(self.window) < 2:
            raise ValueError(f"train.encoder.window={self.window}; expected >= 2 frames (one action)")
        for name in ("lr", "head_lr", "weight_decay", "inverse_weight", "prediction_weight",
                     "variance_weight", "covariance_weight", "clip_grad", "displacement_weight",
                     "time_weight", "pixel_weight", "critic_weight"):  # fmt: skip
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"train.encoder.{name}={getattr(self, name)}; expected a number >= 0")
        for name in ("critic_gamma", "critic_expectile", "critic_ema"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ValueError(f"train.encoder.{name}={getattr(self, name)}; expected a number in (0, 1)")
        if not (math.isfinite(float(self.cap)) and float(self.cap) > 0):
            raise ValueError(f"train.encoder.cap={self.cap}; expected a number > 0")


class PixelDecoder(nn.Module):
    """Latent ``[M, L]`` -> image ``[M, 3, S, S]`` in [0, 1]: a linear map to a ``4 x 4`` grid of
    ``width`` channels, then stride-2 transposed convolutions (halving the channels, at least 16) up to
    ``S`` pixels. ``S`` must be 4 times a power of two (8 ... 256)."""

    def __init__(self, latent_dim: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        ups = math.log2(image_size / 4) if image_size >= 8 else -1.0
        if ups < 1 or ups != int(ups):
            raise ValueError(
                f"the pixel term decodes square frames of 4 x 2^k pixels (8, 16, ..., 256); these frames are "
                f"{image_size} px: set train.encoder.pixel_weight=0"
            )
        self.width = width
        self.stem = nn.Linear(latent_dim, width * 16)
        layers: list[nn.Module] = []
        c = width
        for i in range(int(ups)):
            last = i == int(ups) - 1
            out = 3 if last else max(c // 2, 16)
            layers.append(nn.ConvTranspose2d(c, out, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.GELU())
            c = out
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.body(self.stem(z).view(-1, self.width, 4, 4)))


class ActionTuneHeads(nn.Module):
    """The stage's throwaway heads: projector (latent -> embedding), residual action-conditioned
    predictor, inverse model ``(e_t, e_{t+1}) -> a_t``, multi-step inverse model
    ``(e_t, e_goal) -> capped sum of the actions between them``, given ``image_size`` a pixel decoder
    (latent -> frame, ``decoder_width`` channels at its first grid) and, given ``critic``, a goal critic on
    the embeddings."""

    def __init__(
        self,
        latent_dim: int,
        action_dim: int,
        proj_dim: int = 64,
        hidden: int = 256,
        image_size: int | None = None,
        critic: bool = False,
        decoder_width: int = 128,
    ) -> None:
        super().__init__()
        self.decoder = PixelDecoder(latent_dim, image_size, decoder_width) if image_size else None
        self.critic = GoalCritic(proj_dim, hidden) if critic else None
        self.projector = nn.Sequential(  # batch-standardised first, as the world model standardises latents
            nn.BatchNorm1d(latent_dim, affine=False), nn.Linear(latent_dim, hidden), nn.GELU(),
            nn.Linear(hidden, proj_dim),
        )  # fmt: skip
        self.predictor = nn.Sequential(
            nn.Linear(proj_dim + action_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, proj_dim),
        )  # fmt: skip
        self.inverse = nn.Sequential(
            nn.Linear(2 * proj_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, action_dim),
        )  # fmt: skip
        self.displacement = nn.Sequential(
            nn.Linear(2 * proj_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, action_dim),
        )  # fmt: skip
        self.time = nn.Sequential(
            nn.Linear(2 * proj_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def rollout(self, e0: Tensor, actions: Tensor) -> Tensor:
        """Open loop from ``e0 [B, P]`` with ``actions [B, K, A]`` -> ``[B, K, P]``."""
        out, e = [], e0
        for k in range(actions.shape[1]):
            e = e + self.predictor(torch.cat([e, actions[:, k]], dim=-1))
            out.append(e)
        return torch.stack(out, dim=1)


def random_shift(x: Tensor, shift: int, gen: torch.Generator | None = None) -> Tensor:
    """Shift each clip ``x [B, T, C, H, W]`` by one random integer offset in ``[-shift, shift]`` pixels
    (the same for all its frames), filling with the border (replicate padding)."""
    if shift <= 0:
        return x
    B, T, C, H, W = x.shape
    pad = F.pad(x.flatten(0, 1), (shift,) * 4, mode="replicate").view(B, T, C, H + 2 * shift, W + 2 * shift)
    off = torch.randint(0, 2 * shift + 1, (2, B), generator=gen).to(x.device)
    rows = (off[0][:, None] + torch.arange(H, device=x.device))[:, None, None, :, None]  # [B, 1, 1, H, 1]
    cols = (off[1][:, None] + torch.arange(W, device=x.device))[:, None, None, None, :]  # [B, 1, 1, 1, W]
    b = torch.arange(B, device=x.device)[:, None, None, None, None]
    t = torch.arange(T, device=x.device)[None, :, None, None, None]
    c = torch.arange(C, device=x.device)[None, None, :, None, None]
    return pad[b, t, c, rows, cols]


def variance_covariance(e: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg's terms on ``e [M, P]``: mean hinge ``relu(1 - std)`` per dimension, and the sum of squared
    off-diagonal covariances over ``P``."""
    e = e - e.mean(0)
    std = torch.sqrt(e.var(0) + eps)
    cov = (e.T @ e) / max(e.shape[0] - 1, 1)
    off = cov - torch.diag_embed(torch.diagonal(cov))
    return F.relu(1.0 - std).mean(), off.square().sum() / e.shape[1]


def action_tune_loss(
    encoder: VideoViT,
    pooler: LatentPooler,
    heads: ActionTuneHeads,
    clips: Tensor,
    actions: Tensor,
    cfg: EncoderTuneConfig,
    gen: torch.Generator | None = None,
    goals: Tensor | None = None,
    sums: Tensor | None = None,
    offsets: Tensor | None = None,
    target_critic: GoalCritic | None = None,
    frame_idx: Tensor | None = None,
    goal_idx: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The stage's loss on ``clips`` (float ``[B, T, 3, H, W]`` in [0, 1]) and standardised
    ``actions [B, T-1, A]``; returns ``(loss, parts)``. With ``goals [B, 3, H, W]`` (a frame of each clip's
    episode) and ``sums [B, T, A]`` (the capped env-unit actions from each clip frame to it), the multi-step
    inverse term is added; the goal frame gets its clip's shift. With ``offsets [B, T]`` (the signed frames
    from each clip frame to the goal, over ``cfg.goal_steps``) the time term is added. With
    ``cfg.critic_weight > 0``, ``target_critic`` (the EMA copy of ``heads.critic``) and the frames' global
    indices in the data (``frame_idx [B, T]``, ``goal_idx [B]``: equal indices are the same frame), the
    critic's TD term is added over every (clip transition, batch frame) pair."""
    B, T = clips.shape[:2]
    if goals is not None:
        clips = torch.cat([clips, goals[:, None]], dim=1)
    x = random_shift(clips, cfg.shift, gen)
    z = pooler(encoder.encode_images(x.flatten(0, 1))).flatten(1)  # [B*T(+1), N*D]
    e = heads.projector(z).view(B, x.shape[1], -1)  # [B, T(+1), P]
    if goals is not None:
        if sums is None:
            raise ValueError("goal frames need the summed actions to them (sums)")
        e, e_goal = e[:, :T], e[:, T:]
    parts = {
        "inverse": F.mse_loss(heads.inverse(torch.cat([e[:, :-1], e[:, 1:]], dim=-1)), actions),
        "prediction": F.mse_loss(heads.rollout(e[:, 0], actions), e[:, 1:]),
    }
    parts["variance"], parts["covariance"] = variance_covariance(e.flatten(0, 1))
    loss = (
        cfg.inverse_weight * parts["inverse"] + cfg.prediction_weight * parts["prediction"]
        + cfg.variance_weight * parts["variance"] + cfg.covariance_weight * parts["covariance"]
    )  # fmt: skip
    if cfg.pixel_weight > 0:
        if heads.decoder is None:
            raise ValueError("train.encoder.pixel_weight > 0 needs heads built with image_size")
        target = x.flatten(0, 1)  # every frame the encoder saw, shifted as it saw it
        err = F.mse_loss(heads.decoder(z), target)
        parts["pixel"] = err / target.var(0).mean().clamp_min(1e-6)  # share of the batch's variance left
        loss = loss + cfg.pixel_weight * parts["pixel"]
    if goals is not None:
        pairs = torch.cat([e, e_goal.expand(-1, T, -1)], dim=-1)  # [B, T, 2P]
        if cfg.displacement_weight > 0:
            parts["displacement"] = F.mse_loss(heads.displacement(pairs), sums)
            loss = loss + cfg.displacement_weight * parts["displacement"]
        if cfg.time_weight > 0:
            if offsets is None:
                raise ValueError("the time term needs the frames from each clip frame to the goal (offsets)")
            parts["time"] = F.mse_loss(heads.time(pairs).squeeze(-1), offsets)
            loss = loss + cfg.time_weight * parts["time"]
    if cfg.critic_weight > 0:
        if heads.critic is None or target_critic is None or frame_idx is None:
            raise ValueError("the critic term needs heads built with critic=True, its target and frame_idx")
        # every clip transition (s, s') against every frame of the batch as the goal: B(T-1) x G pairs for
        # one MLP call, where a goal from another episode is a random goal (never reached)
        goal_e = e.flatten(0, 1) if goals is None else torch.cat([e.flatten(0, 1), e_goal.flatten(0, 1)])
        gidx = frame_idx.flatten() if goal_idx is None else torch.cat([frame_idx.flatten(), goal_idx])
        s_idx = frame_idx[:, :-1].reshape(-1, 1)
        # in units of the critic's horizon 1 / (1 - gamma), so the term is on the others' scale (< 1)
        parts["critic"] = (1.0 - cfg.critic_gamma) ** 2 * goal_critic_loss(
            heads.critic, target_critic, e[:, :-1].reshape(-1, 1, 1, e.shape[-1]),
            e[:, 1:].reshape(-1, 1, 1, e.shape[-1]), goal_e[None, :, None], gidx[None] == s_idx,
            gidx[None] == s_idx + 1, cfg.critic_gamma, cfg.critic_expectile,
        )  # fmt: skip
        loss = loss + cfg.critic_weight * parts["critic"]
    return loss, parts


class FrameEpisodes:
    """Every training episode's frames (uint8, host memory) and standardised actions, read once; it also
    serves as the episode source the latent cache is then encoded from (so frames are decoded once)."""

    def __init__(self, source: Any, normalize_actions: Any) -> None:
        self.episodes: list[dict[str, Any]] = [source.episode(i) for i in range(source.num_episodes)]
        lengths = [int(np.asarray(ep["frames"]).shape[0]) for ep in self.episodes]
        frames = np.concatenate([np.asarray(ep["frames"]) for ep in self.episodes])  # [F, H, W, 3]
        self.starts = np.cumsum([0, *lengths[:-1]]).tolist()
        for ep, s, n in zip(self.episodes, self.starts, lengths, strict=True):
            ep["frames"] = frames[s : s + n]  # a view: the frames are held once, not twice
        self.frames = torch.from_numpy(frames)
        with torch.no_grad():
            acts = [
                torch.cat(
                    [
                        normalize_actions(torch.as_tensor(np.asarray(ep["action"]), dtype=torch.float32)),
                        torch.zeros(1, np.asarray(ep["action"]).shape[-1]),
                    ]
                )  # fmt: skip
                for ep in self.episodes
            ]
        self.actions = torch.cat(acts)  # row t: the action after frame t (last row of an episode: padding)
        self.lengths = lengths
        raw = torch.cat(
            [
                torch.cat([torch.as_tensor(np.asarray(ep["action"]), dtype=torch.float32),
                           torch.zeros(1, np.asarray(ep["action"]).shape[-1])])
                for ep in self.episodes
            ]
        )  # fmt: skip
        self.sums = ActionSums(raw, self.starts, lengths)  # env units: the multi-step inverse term's targets

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def episode(self, i: int) -> dict[str, Any]:
        return self.episodes[i]

    def clip_starts(self, window: int) -> Tensor:
        """Global frame indices where a clip of ``window`` frames fits inside one episode."""
        return window_starts(self.starts, self.lengths, window)


def tune_encoder(
    encoder: VideoViT,
    pooler: LatentPooler,
    data: FrameEpisodes,
    cfg: EncoderTuneConfig,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    heads: ActionTuneHeads | None = None,
) -> dict[str, float]:
    """Fine-tune ``encoder`` in place (then freeze it again); returns the final loss terms and seconds.

    ``heads``: the stage's throwaway heads, built to ``cfg`` when None; pass them to read them afterwards
    (e.g. what the goal critic learnt). They are trained in place.

    Raises:
        ValueError: no episode has ``cfg.window`` frames.
        NonFiniteLossError: the loss became NaN or infinite.
    """
    from tqdm.auto import tqdm

    from jepa_agent.training.pretrain import NonFiniteLossError

    t0 = time.perf_counter()
    first = data.clip_starts(cfg.window)
    if len(first) == 0:
        raise ValueError(
            f"no episode has {cfg.window} frames (train.encoder.window); longest: {max(data.lengths)}"
        )
    if pooler.learned:
        raise ValueError(
            "the encoder fine-tune acts on the fixed pooled latent, but this world model's pooling is "
            "learned (world_model.pooling=attentive): set train.encoder.steps=0"
        )
    size = int(data.frames.shape[1])
    if cfg.pixel_weight > 0 and int(data.frames.shape[2]) != size:
        raise ValueError(
            f"the pixel term decodes square frames; these are {size} x {int(data.frames.shape[2])}: "
            "set train.encoder.pixel_weight=0"
        )
    if heads is None:
        heads = ActionTuneHeads(pooler.num_tokens * pooler.out_dim, data.actions.shape[-1], cfg.proj_dim,
                                cfg.hidden, size if cfg.pixel_weight > 0 else None,
                                critic=cfg.critic_weight > 0, decoder_width=cfg.decoder_width)  # fmt: skip
    elif (heads.critic is not None) != (cfg.critic_weight > 0) or (heads.decoder is not None) != (
        cfg.pixel_weight > 0
    ):
        raise ValueError(
            f"heads with critic={heads.critic is not None}, decoder={heads.decoder is not None} do not match "
            f"train.encoder.critic_weight={cfg.critic_weight}, pixel_weight={cfg.pixel_weight} (a weight > 0 "
            "needs its head, a weight of 0 none)"
        )
    heads = heads.to(device).train()
    target_critic = None if heads.critic is None else copy.deepcopy(heads.critic).requires_grad_(False)
    encoder.to(device).requires_grad_(True).train()
    decay = [p for p in encoder.parameters() if p.ndim > 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "base": cfg.lr},
        {"params": [p for p in encoder.parameters() if p.ndim <= 1], "weight_decay": 0.0, "base": cfg.lr},
        {"params": list(heads.parameters()), "weight_decay": 0.0, "base": cfg.head_lr},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    params: Sequence[Tensor] = [p for g in groups for p in g["params"]]
    gen = torch.Generator().manual_seed(seed + 17)
    offsets = torch.arange(cfg.window)
    parts: dict[str, Tensor] = {}
    value = float("nan")
    try:
        for step in tqdm(range(cfg.steps), desc="encoder fine-tune", disable=not progress, leave=False):
            idx = first[torch.randint(len(first), (cfg.batch_size,), generator=gen)][:, None] + offsets
            clips = pixels_to_images(data.frames[idx.flatten()], device).view(
                cfg.batch_size, cfg.window, 3, *data.frames.shape[1:3]
            )  # [B, T, 3, H, W]
            actions = data.actions[idx[:, :-1]].to(device)  # [B, T-1, A]
            goals = sums = to_goal = goal = None
            if cfg.displacement_weight > 0 or cfg.time_weight > 0 or cfg.critic_weight > 0:
                goal, sums = data.sums.sample(idx[:, 0], cfg.window, cfg, gen)
                goals = pixels_to_images(data.frames[goal], device)  # [B, 3, H, W]
                sums = sums.to(device)
                to_goal = ((goal[:, None] - idx).float() / max(cfg.goal_steps, 1)).to(device)  # [B, T]
            for g in optimizer.param_groups:
                base = g["base"]
                g["lr"] = warmup_cosine(step, cfg.steps, min(cfg.warmup, cfg.steps), base, base / 100)
            loss, parts = action_tune_loss(
                encoder,
                pooler,
                heads,
                clips,
                actions,
                cfg,
                gen,
                goals,
                sums,
                to_goal,
                target_critic,
                idx.to(device),
                None if goal is None else goal.to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad > 0:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            optimizer.step()
            if target_critic is not None:
                ema_update(target_critic, heads.critic, 1.0 - cfg.critic_ema)
            if step % 50 == 0 or step == cfg.steps - 1:  # a host sync only now and then
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteLossError(
                        f"non-finite encoder fine-tune loss {value} at step {step}; "
                        "try a lower train.encoder.lr"
                    )
    finally:
        encoder.requires_grad_(False).eval()
    out = {f"encoder_tune_{k}": float(v.detach()) for k, v in parts.items()}
    return {**out, "encoder_tune_loss": value, "encoder_tune_seconds": time.perf_counter() - t0}
