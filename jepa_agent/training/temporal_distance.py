"""The label-free planning space: train a :class:`~jepa_agent.models.latent.TemporalDistanceHead`.

Runs after the predictor, on the same latent cache (:class:`LatentEpisodes`): frames, actions and the
episode boundaries, nothing else. No proprio, no simulator state, no reward: it works on any recorded
episodes. Each step samples a frame ``s`` (half of the time replaced by the predictor's own ``k``-step
imagination of it, ``k`` up to the planning horizon, so the head reads imagined futures as it reads
encoded frames), its successor ``s'`` and a goal ``g`` (a later frame of the same episode at a geometric
offset, or a random frame), and takes one step of :func:`jepa_agent.losses.temporal_distance_loss`
(HILP), with an EMA target head.

Measured on the flat reach (``scripts/score.py``, docs/benchmarks.md): greedy planning with perfect
dynamics reaches 100% of grid goals in this space, against 58% in the latent itself.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from jepa_agent.losses import ema_update, temporal_distance_loss
from jepa_agent.models.latent import TemporalDistanceHead
from jepa_agent.training.latent_cache import LatentEpisodes
from jepa_agent.world_model import WorldModel

__all__ = ["MetricTrainConfig", "imagined_latents", "sample_goals", "train_metric_head"]


STEP_COSTS = ("step", "action")


@dataclass
class MetricTrainConfig:
    """Settings of the temporal-distance stage (``train.metric.*``).

    Attributes:
        steps: optimisation steps (0: skip the stage).
        step_cost: what a transition costs: ``"step"`` (1: the distance counts steps, flat within one
            step of the goal) or ``"action"`` (the norm of the standardised action taken, over sqrt(A):
            the distance measures the least effort, so poses closer than one step still differ).
        batch_size: (state, goal) pairs per step.
        lr: Adam learning rate.
        gamma: discount: distances count steps up to about ``1 / (1 - gamma)``.
        expectile: HILP's expectile ``tau`` (> 0.5: the fewest steps the data shows, not the average).
        ema: target-head update rate.
        random_goals: share of goals drawn from anywhere in the data (the rest: later in the same episode).
        imagined: share of states replaced by the predictor's imagination of them.
        imagine_steps: imagined states are rolled out 1..``imagine_steps`` steps from a true frame.
        predictor_steps: then fine-tune the predictor this many steps with ``predictor_weight *`` the
            squared error of its predictions in the (frozen) head's space added to its own loss: the
            label-free counterpart of the readout term, so imagination is accurate where the cost looks.
        predictor_weight, predictor_lr: that term's weight and the fine-tune's peak learning rate.
    """

    steps: int = 6000
    step_cost: str = "action"
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.98
    expectile: float = 0.9
    ema: float = 0.005
    random_goals: float = 0.3
    imagined: float = 0.5
    imagine_steps: int = 5
    predictor_steps: int = 1500
    predictor_weight: float = 20.0
    predictor_lr: float = 3e-4

    def __post_init__(self) -> None:
        if int(self.steps) < 0 or int(self.batch_size) < 1 or int(self.imagine_steps) < 1:
            raise ValueError(
                f"train.metric.steps={self.steps}, batch_size={self.batch_size}, imagine_steps="
                f"{self.imagine_steps}; expected steps >= 0 and the others >= 1"
            )
        for key in ("gamma", "expectile", "ema"):
            if not 0.0 < float(getattr(self, key)) < 1.0:
                raise ValueError(f"train.metric.{key}={getattr(self, key)}; expected a number in (0, 1)")
        for key in ("random_goals", "imagined"):
            if not 0.0 <= float(getattr(self, key)) <= 1.0:
                raise ValueError(f"train.metric.{key}={getattr(self, key)}; expected a fraction in [0, 1]")
        if self.step_cost not in STEP_COSTS:
            raise ValueError(f"train.metric.step_cost={self.step_cost!r}; expected one of {list(STEP_COSTS)}")
        if not self.lr > 0 or not self.predictor_lr > 0:
            raise ValueError(
                f"train.metric.lr={self.lr}, predictor_lr={self.predictor_lr}; expected both > 0"
            )
        if int(self.predictor_steps) < 0 or not self.predictor_weight >= 0:
            raise ValueError(
                f"train.metric.predictor_steps={self.predictor_steps}, predictor_weight="
                f"{self.predictor_weight}; expected both >= 0"
            )


def _episode_index(data: LatentEpisodes) -> tuple[Tensor, Tensor]:
    """Per frame: its position in its episode and the global index of its episode's last frame."""
    starts = torch.tensor(data.starts)
    lengths = torch.tensor(data.lengths)
    ep = torch.repeat_interleave(torch.arange(len(starts)), lengths)
    return torch.arange(int(lengths.sum())) - starts[ep], (starts + lengths - 1)[ep]


def imagined_latents(
    model: WorldModel, data: LatentEpisodes, max_steps: int = 5, seed: int = 0, batch: int = 4096
) -> Tensor:
    """Every frame as the predictor imagines it, rolled out ``k ~ U{1..max_steps}`` steps (fewer near its
    episode's start; the first frame stays encoded) from the true frame ``k`` steps before: ``[F, N, D]``.
    """
    pos, _ = _episode_index(data)
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(1, max_steps + 1, (len(pos),), generator=g).minimum(pos)
    out = data.z.clone()
    dev = data.z.device
    with torch.no_grad():  # not inference mode: the result trains the head
        for kk in range(1, max_steps + 1):
            idx = torch.nonzero(k == kk).squeeze(1).to(dev)
            for i in range(0, len(idx), batch):
                b = idx[i : i + batch]
                src = b - kk
                actions = data.actions[src[:, None] + torch.arange(kk, device=dev)]  # [B, kk, A] normalised
                z, _ = model.predictor.imagine(data.z[src].unsqueeze(1), actions)
                out[b] = z[:, -1]
    return out


def sample_goals(
    t: Tensor, last: Tensor, num_frames: int, gamma: float, random_goals: float, gen: torch.Generator
) -> Tensor:
    """Goals for states ``t``: ``t + Geometric(1 - gamma)`` capped at the episode's ``last`` frame, or
    (with probability ``random_goals``) any frame."""
    u = torch.rand(len(t), generator=gen)
    geo = torch.log(torch.rand(len(t), generator=gen).clamp_min(1e-12)) / math.log(gamma)
    g = torch.minimum(t + 1 + geo.long(), last[t])
    return torch.where(u < random_goals, torch.randint(num_frames, (len(t),), generator=gen), g)


def train_metric_head(
    head: TemporalDistanceHead,
    data: LatentEpisodes,
    cfg: MetricTrainConfig,
    imagined: Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``head`` (in place) on the latent cache; returns ``{"metric_loss", "metric_seconds"}``.

    Args:
        head: the temporal-distance head.
        data: the latent cache (``z``, episode ``starts`` / ``lengths``; nothing else is read).
        cfg: the stage's settings.
        imagined: ``[F, N, D]`` the predictor's imagination of every frame (:func:`imagined_latents`);
            None trains on encoded frames only (``cfg.imagined`` is then ignored).
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    dev = data.z.device
    share = cfg.imagined if imagined is not None else 0.0
    imagined = data.z if imagined is None else imagined
    _, last = _episode_index(data)
    last = last.to(dev)
    num = len(last)
    states = torch.nonzero(torch.arange(num, device=dev) < last).squeeze(1).cpu()  # frames with a successor
    if len(states) == 0:
        raise ValueError("the temporal-distance head needs episodes of at least 2 frames")
    step_cost = (
        data.actions.norm(dim=-1) / math.sqrt(data.actions.shape[-1])  # row t: the action after frame t
        if cfg.step_cost == "action"
        else torch.ones(num, device=dev)
    )
    gen = torch.Generator().manual_seed(seed)
    target = copy.deepcopy(head).requires_grad_(False)
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    head.train()
    loss = torch.zeros(())
    for _ in tqdm(range(cfg.steps), desc="temporal distance", disable=not progress, leave=False):
        t = states[torch.randint(len(states), (cfg.batch_size,), generator=gen)]
        g = sample_goals(t, last.cpu(), num, cfg.gamma, cfg.random_goals, gen)
        use_imagined = (torch.rand(cfg.batch_size, generator=gen) < share).to(dev)[:, None, None]
        t, g = t.to(dev), g.to(dev)
        s = torch.where(use_imagined, imagined[t], data.z[t])
        loss = temporal_distance_loss(
            head, target, s, data.z[t + 1], data.z[g], g == t, cfg.gamma, cfg.expectile, step_cost[t]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(target, head, 1.0 - cfg.ema)
    head.eval()
    value = loss.item()
    if not math.isfinite(value):
        from jepa_agent.training.pretrain import NonFiniteLossError

        raise NonFiniteLossError(f"non-finite temporal-distance loss {value}; try a lower train.metric.lr")
    return {"metric_loss": value, "metric_seconds": time.perf_counter() - t0}
