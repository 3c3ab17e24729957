"""The latent cache for world-model training: every frame encoded once by the frozen encoder.

:func:`encode_episodes` turns episodes into :class:`LatentEpisodes` (latents, normalised actions and
proprio, readout targets, window bookkeeping); :func:`fit_normalizer` and :func:`fit_delta_scale` set
the statistics the predictor trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from jepa_agent.models.latent import capped_action_sums
from jepa_agent.models.vit import pixels_to_images
from jepa_agent.world_model import WorldModel


class EpisodeSource(Protocol):
    """What training reads episodes from (``jepa_agent.data.EpisodeDataset`` fits)."""

    @property
    def num_episodes(self) -> int: ...

    def episode(self, i: int) -> dict[str, Any]: ...


def window_starts(starts: list[int], lengths: list[int], window: int) -> Tensor:
    """Global frame indices where a window of ``window`` frames fits inside one episode (episodes given by
    their first global frame and length)."""
    out = [torch.arange(s, s + n - window + 1) for s, n in zip(starts, lengths, strict=True) if n >= window]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@dataclass
class LatentEpisodes:
    """Every frame's latent, concatenated over episodes, with window bookkeeping.

    ``z`` is ``[F, N, D]`` pooled latents (or ``[F, Hp*Wp, D]`` patch tokens when the pooling is
    learned), ``actions [F, A]`` normalised (row ``t`` = action after frame ``t``; the last row of each
    episode is padding), ``proprio [F, P]`` normalised, ``starts`` / ``lengths`` per episode, and
    ``targets [F, R]`` the state-readout targets (models with a readout).
    """

    z: Tensor
    actions: Tensor
    proprio: Tensor | None
    starts: list[int]
    lengths: list[int]
    targets: Tensor | None = None

    def window_starts(self, window: int) -> Tensor:
        """Global frame indices where a window of ``window`` frames fits inside one episode."""
        return window_starts(self.starts, self.lengths, window)

    def windows(self, first: Tensor, window: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """``first [B]`` -> ``z [B, T, N, D]``, ``actions [B, T-1, A]``, ``proprio [B, T, P] | None``."""
        idx = first[:, None] + torch.arange(window, device=first.device)  # [B, T]
        p = None if self.proprio is None else self.proprio[idx]
        return self.z[idx], self.actions[idx[:, :-1]], p

    def select(self, episodes: list[int]) -> LatentEpisodes:
        """A cache of only ``episodes`` (positions in :attr:`starts`), in that order, re-indexed."""
        if not episodes:
            raise ValueError("no episodes selected")
        idx = torch.cat([torch.arange(self.starts[e], self.starts[e] + self.lengths[e]) for e in episodes])
        idx = idx.to(self.z.device)
        lengths = [self.lengths[e] for e in episodes]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return LatentEpisodes(self.z[idx], self.actions[idx], pick(self.proprio), starts, lengths,
                              pick(self.targets))  # fmt: skip

    def strided(self, chunk: int) -> LatentEpisodes:
        """The cache as a model of macro-actions sees it (``action_chunk``): every episode split into
        ``chunk`` episodes of every ``chunk``-th frame (offsets 0 .. chunk - 1), each frame's action the
        ``chunk`` env actions after it, concatenated (``[F', chunk * A]``; the last row of each episode is
        padding). ``chunk=1`` returns the cache itself."""
        if chunk == 1:
            return self
        device = self.z.device
        F, A = self.actions.shape
        idx, starts, lengths = [], [], []
        total = 0
        for s, n in zip(self.starts, self.lengths, strict=True):
            for o in range(min(chunk, n)):
                rows = torch.arange(s + o, s + n, chunk)
                idx.append(rows)
                starts.append(total)
                lengths.append(len(rows))
                total += len(rows)
        idx = torch.cat(idx).to(device)  # [F']
        steps = (idx[:, None] + torch.arange(chunk, device=device)).clamp(max=F - 1)  # [F', chunk]
        actions = self.actions[steps].reshape(len(idx), chunk * A)
        last = torch.tensor(starts, device=device) + torch.tensor(lengths, device=device) - 1
        actions[last] = 0.0  # padding: no macro-action after an episode's last frame
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return LatentEpisodes(self.z[idx], actions, pick(self.proprio), starts, lengths, pick(self.targets))

    def target_windows(self, first: Tensor, window: int) -> Tensor | None:
        """``first [B]`` -> readout targets ``[B, T, R]`` (None without a readout)."""
        if self.targets is None:
            return None
        return self.targets[first[:, None] + torch.arange(window, device=first.device)]


def normalize_env_actions(model: WorldModel, action: Tensor) -> Tensor:
    """Env actions ``[..., A]`` normalised with ``model``'s statistics. A model of macro-actions
    (``action_chunk`` > 1) holds the env action's statistics once per env step, so the first ``A`` serve."""
    reps = [1] * (action.dim() - 1) + [model.action_chunk]
    return model.normalizer.actions(action.repeat(*reps))[..., : model.env_action_dim]


def encode_episodes(
    model: WorldModel,
    source: EpisodeSource,
    batch_size: int = 128,
    pooled: bool = True,
    progress: bool = True,
) -> LatentEpisodes:
    """Encode every frame of every episode once with the frozen encoder (batched).

    Args:
        model: the world model (its encoder, pooler and normalizer are used).
        source: episodes with ``frames`` uint8 ``[T, H, W, 3]``, ``action [T-1, A]`` (+ ``proprio [T, P]``).
        batch_size: frames per encoder call.
        pooled: store pooled latents (False: raw patch tokens, for a learned pooler).
        progress: tqdm bar over episodes (stderr).
    """
    from tqdm.auto import tqdm

    device = model.device
    zs, acts, props, targets, starts, lengths = [], [], [], [], [], []
    total = 0
    use_p = model.predictor.proprio_dim > 0
    A = model.env_action_dim  # per env step, whatever the model's action_chunk
    for i in tqdm(range(source.num_episodes), desc="encode frames", disable=not progress, leave=False):
        ep = source.episode(i)
        frames = np.asarray(ep["frames"])
        T = frames.shape[0]
        action = torch.as_tensor(np.asarray(ep["action"]), dtype=torch.float32, device=device)
        if action.shape != (T - 1, A):
            raise ValueError(
                f"episode {i}: action shape {tuple(action.shape)} for {T} frames; expected "
                f"({T - 1}, {A}) (the world model's env action_dim)"
            )
        out = []
        with torch.inference_mode():
            for j in range(0, T, batch_size):
                x = pixels_to_images(frames[j : j + batch_size], device)  # [b, 3, H, W]
                tokens = model.encoder.encode_images(x)  # [b, Hp*Wp, D]
                out.append((model.pooler(tokens) if pooled else tokens).float().cpu())
        zs.append(torch.cat(out))  # [T, N, D]; outside inference mode: a normal tensor
        with torch.no_grad():
            acts.append(torch.cat([normalize_env_actions(model, action), action.new_zeros(1, A)]))  # [T, A]
            if use_p or model.readout is not None:
                prop = torch.as_tensor(np.asarray(ep["proprio"]), dtype=torch.float32, device=device)
                if use_p:
                    props.append(model.normalizer.proprio(prop))
                if model.readout is not None:
                    targets.append(model.readout.targets(prop))
        starts.append(total)
        lengths.append(T)
        total += T
    if not zs:
        raise ValueError("no episodes to encode")
    return LatentEpisodes(
        torch.cat(zs).to(device), torch.cat(acts).to(device), torch.cat(props).to(device) if use_p else None,
        starts, lengths, torch.cat(targets).to(device) if targets else None,
    )  # fmt: skip


@torch.no_grad()
def fit_delta_scale(model: WorldModel, data: LatentEpisodes, max_pairs: int = 20000) -> float:
    """Set the predictor's residual scale to the std of frame-to-frame latent changes; returns it."""
    pairs = data.window_starts(2)[:max_pairs].to(data.z.device)
    z0, z1 = data.z[pairs], data.z[pairs + 1]
    if model.pooler.learned:
        z0, z1 = model.pooler(z0), model.pooler(z1)
    scale = float((z1 - z0).std().clamp(min=1e-6))
    model.predictor.set_delta_scale(scale)
    return scale


def fit_normalizer(model: WorldModel, source: EpisodeSource) -> None:
    """Set the action (and proprio) statistics from every episode of ``source`` (a model of macro-actions,
    ``action_chunk`` > 1, gets the env action's statistics repeated for each of its env steps)."""
    acts, props = [], []
    for i in range(source.num_episodes):
        ep = source.episode(i)
        acts.append(torch.as_tensor(np.asarray(ep["action"]), dtype=torch.float32))
        if model.predictor.proprio_dim:
            props.append(torch.as_tensor(np.asarray(ep["proprio"]), dtype=torch.float32))
    actions = torch.cat(acts).repeat(1, model.action_chunk)  # [M, chunk * A]
    model.normalizer.set_stats(actions, torch.cat(props) if props else None)


# -- the displacement head's targets ------------------------------------------------------------------
class ActionSums:
    """Cumulative env-unit actions of recorded episodes, for the displacement head's targets.

    ``cum[f]`` is the sum of the actions taken before frame ``f`` in its episode, so the actions that lead
    from frame ``i`` to frame ``j`` of one episode sum to ``cum[j] - cum[i]`` (negative when ``j < i``).
    Reads actions only (no proprio, no state). Used by the world model's displacement term
    (:meth:`from_latents`) and by the encoder fine-tune's multi-step inverse term.

    Args:
        raw: env-unit actions ``[F, A]``, row ``t`` the action after frame ``t`` of the concatenated
            episodes (the last row of each episode is padding, ignored).
        starts, lengths: each episode's first frame and length.
    """

    def __init__(self, raw: Tensor, starts: list[int], lengths: list[int]) -> None:
        first = torch.tensor(starts, device=raw.device)
        n = torch.tensor(lengths, device=raw.device)
        self.first = torch.repeat_interleave(first, n)  # [F]: each frame's episode start
        self.last = self.first + torch.repeat_interleave(n, n) - 1  # [F]: ... and end
        raw = torch.where((torch.arange(len(raw), device=raw.device) == self.last)[:, None], 0.0, raw)
        before = raw.cumsum(0) - raw  # [F]: actions before each frame, over all the episodes
        self.cum = before - before[self.first]

    @classmethod
    def from_latents(cls, data: LatentEpisodes, action_mean: Tensor, action_std: Tensor) -> ActionSums:
        """From a latent cache, whose actions are normalised (``action_mean`` / ``action_std`` undo it)."""
        raw = data.actions * action_std.to(data.actions) + action_mean.to(data.actions)  # env units
        return cls(raw, data.starts, data.lengths)

    def sample(self, first: Tensor, window: int, cfg: Any, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Windows starting at ``first [B]`` -> a goal frame per window ``[B]`` (``-cfg.back_steps ..
        cfg.goal_steps`` frames from its start, inside the episode) and the sums ``[B, T, A]`` from each of
        the window's frames to it, capped at ``cfg.cap``."""
        off = torch.randint(-int(cfg.back_steps), int(cfg.goal_steps) + 1, (len(first),), generator=gen)
        goal = torch.minimum(torch.maximum(first + off.to(first.device), self.first[first]), self.last[first])
        frames = first[:, None] + torch.arange(window, device=first.device)  # [B, T]
        return goal, capped_action_sums(self.cum[goal][:, None] - self.cum[frames], float(cfg.cap))
