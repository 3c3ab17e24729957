"""A distilled goal-conditioned policy: the planner's job at policy speed, learnt from frames and actions.

:class:`DistilledPolicy` is a small MLP from (observation features, goal features) in a planning space
(:class:`~jepa_agent.rl.space.PlanningSpace`: the planning cost's space, or ``latent``, the latents
themselves, which hold more of the pose than a 32-dim metric head) to an action in the env's action box
(tanh, scaled to the box). It answers SB3's ``predict`` on
:class:`~jepa_agent.rl.goal_env.LatentGoalEnv`'s Dict observations, batched, and is saved as safetensors
+ a JSON config (no pickle). :class:`GoalImagePolicy` puts the encoder in front of it, so that it takes
the same pixel observations (``pixels`` + ``goal_pixels``) as :class:`~jepa_agent.rl.PlannerPolicy`.

**Training is label-free** (frames and actions only): hindsight inverse dynamics / GCSL on recorded
episodes. Every frame is encoded once (:meth:`HindsightData.from_episodes`); each training step draws a
batch of pairs in torch: a frame ``t`` and the goal frame ``t + k`` of the same episode, ``1 <= k <= k_max``
(geometric, near goals most, or uniform), whose target is

* ``first``: the action taken at ``t``;
* ``mean``: the mean of the actions ``t .. t+k-1``, normalised: rescaled to cover the ``k`` steps'
  displacement in one step, capped by the box (``sum / max(1, |sum|_inf)`` for a ``[-1, 1]`` box), i.e.
  the recorded actions' net direction at the speed the goal allows.

Optionally a share of each batch are "stay" pairs (``stay_fraction``: goal = the frame itself, target = no
motion), a prior for delta-action tasks rather than a recorded label.

:func:`dagger_labels` adds DAgger from the planner (optional, ~0.25 s per label): the current policy
drives the real env and the planner labels every visited observation for the episode's goal.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from jepa_agent.checkpoint import load_module_weights, read_module_config, save_module_files
from jepa_agent.rl.goal_image import GOAL_KEY
from jepa_agent.rl.imagination import LatentStarts
from jepa_agent.rl.space import FastFeatures, PlanningSpace, check_image_size
from jepa_agent.rl.student import StudentEncoder, StudentFeatures
from jepa_agent.utils import atomic_path

TARGETS = ("first", "mean")
GOAL_SAMPLING = ("geometric", "uniform")
WEIGHTS_FILE = "distilled_policy.safetensors"
CONFIG_FILE = "distilled_policy.json"
KIND = "distilled_policy"
DAGGER_SEED_OFFSET = (
    3_000_000  # DAgger's rollouts: disjoint from collection (0, ...) and evaluation (1e6, ...)
)


# -- data -------------------------------------------------------------------------------------------------
@dataclass
class HindsightData:
    """Recorded episodes as planning-space features and actions, episodes concatenated.

    Attributes:
        features: ``[F, dim]`` float32 features of every frame (``PlanningSpace.features``).
        actions: ``[F, A]`` env-unit actions; row ``t`` is the action taken after frame ``t`` (the last row
            of each episode is padding).
        starts / lengths: each episode's first row and number of frames.
        action_low / action_high: the action box (``[A]``).
    """

    features: Tensor
    actions: Tensor
    starts: list[int]
    lengths: list[int]
    action_low: np.ndarray
    action_high: np.ndarray
    _left: Tensor | None = field(default=None, init=False, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.features.shape[0])

    def frames_left(self) -> Tensor:
        """``[F]`` int64: how many frames of its episode follow each row (computed once)."""
        if self._left is None:
            self._left = torch.cat([torch.arange(n - 1, -1, -1) for n in self.lengths])
        return self._left

    @classmethod
    def from_starts(cls, starts: LatentStarts, space: PlanningSpace, batch_size: int = 1024) -> HindsightData:
        """Pre-encoded latents (:class:`LatentStarts`) projected into ``space`` (batched)."""
        feats = []
        with torch.inference_mode():
            for i in range(0, starts.z.shape[0], batch_size):
                z = starts.z[i : i + batch_size].to(space.model.device)  # [b, N, D]
                feats.append(space.project_latents(z).float().cpu())  # [b, F]
        return cls(torch.cat(feats).clone(), starts.actions.clone(), list(starts.starts),
                   list(starts.lengths), starts.action_low, starts.action_high)  # fmt: skip

    @classmethod
    def from_episodes(
        cls,
        space: PlanningSpace,
        episodes: str | os.PathLike,
        split: str | None = None,
        val_fraction: float = 0.1,
        progress: bool = False,
    ) -> HindsightData:
        """Encode every frame of an episodes directory once, episode by episode (no latents kept).

        Raises:
            DataError: a missing or empty directory, or an empty split (naming the directory).
            ValueError: episodes of another env, image size or action size than the model's (naming both).
        """
        from tqdm.auto import tqdm

        from jepa_agent.data import EpisodeDataset

        data = EpisodeDataset(episodes, window=1, split=split, val_fraction=val_fraction, cache=False)
        meta, model = data.meta, space.model
        box = meta.get("action_space") or {}
        a_dim = int(np.prod(box["shape"])) if "shape" in box else None
        model.check_compatible(env_id=meta.get("env_id"), image_size=meta.get("image_size"), action_dim=a_dim)
        feats, acts, lengths = [], [], []
        for i in tqdm(range(data.num_episodes), desc=f"encode {split or 'all'}", disable=not progress):
            ep = data.episode(i)
            frames = np.asarray(ep["frames"])  # [T, H, W, 3]
            check_image_size(model, frames.shape[1:], f"episode {i} of {episodes}")
            action = torch.as_tensor(np.asarray(ep["action"], np.float32))  # [T-1, A]
            feats.append(torch.from_numpy(space.features(frames)))  # [T, F]
            acts.append(torch.cat([action, action.new_zeros(1, action.shape[1])]))  # [T, A]: padded last row
            lengths.append(len(frames))
        dim = acts[0].shape[1]
        low = np.broadcast_to(np.asarray(box.get("low", -1.0), np.float32), (dim,)).copy()
        high = np.broadcast_to(np.asarray(box.get("high", 1.0), np.float32), (dim,)).copy()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        return cls(torch.cat(feats), torch.cat(acts), starts, lengths, low, high)

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> None:
        """Write the data as one safetensors file (``meta``: JSON provenance, checked by :meth:`load`)."""
        tensors = {"features": self.features.contiguous(), "actions": self.actions.contiguous(),
                   "lengths": torch.tensor(self.lengths, dtype=torch.int64),
                   "action_low": torch.from_numpy(self.action_low),
                   "action_high": torch.from_numpy(self.action_high)}  # fmt: skip
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"meta": json.dumps(dict(meta or {}), sort_keys=True)})

    @classmethod
    def load(cls, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> HindsightData | None:
        """The data saved at ``path``, or None when there is none or its ``meta`` differs from ``meta``."""
        from safetensors import safe_open

        if not Path(path).is_file():
            return None
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("meta", "{}"))
        if meta is not None and stored != json.loads(json.dumps(dict(meta), sort_keys=True)):
            return None
        t = load_file(str(path))
        lengths = t["lengths"].tolist()
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int).tolist()
        return cls(
            t["features"], t["actions"], starts, lengths, t["action_low"].numpy(), t["action_high"].numpy()
        )


def sample_pairs(
    data: HindsightData, n: int, k_max: int, goal_sampling: str, p: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``n`` hindsight pairs: frame rows ``t`` ``[n]`` and goal offsets ``k`` ``[n]`` (``t + k`` in the same
    episode, ``1 <= k <= min(k_max, frames left)``; ``geometric``: truncated geometric, ``P(k=1) ~ p``)."""
    left = data.frames_left()  # [F]
    anchors = torch.nonzero(left >= 1).squeeze(1)  # rows with at least one later frame
    t = anchors[torch.randint(len(anchors), (n,), generator=generator)]  # [n]
    m = left[t].clamp(max=k_max).double()  # [n]: the largest offset each row allows
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    if goal_sampling == "uniform":
        k = 1 + torch.floor(u * m)
    else:  # inverse CDF of the geometric law truncated to {1 .. m}
        q = 1.0 - p
        k = 1 + torch.floor(torch.log1p(-u * (1 - q**m)) / math.log(q))
    return t, torch.minimum(k, m).long()


def hindsight_targets(
    data: HindsightData, t: Tensor, k: Tensor, target: str, cumsum: Tensor | None = None
) -> Tensor:
    """Target actions ``[n, A]`` of pairs (rows ``t``, offsets ``k``): ``first`` or ``mean`` (module doc)."""
    if target == "first":
        return data.actions[t]
    csum = cumsum if cumsum is not None else action_cumsum(data.actions)
    total = (csum[t + k] - csum[t]).float()  # [n, A]: sum of the actions t .. t+k-1
    low, high = torch.from_numpy(data.action_low), torch.from_numpy(data.action_high)
    centre, half = (high + low) / 2, (high - low) / 2
    rel = (total - k[:, None] * centre) / half  # [n, A]: in box units
    scale = rel.abs().amax(dim=1, keepdim=True).clamp(min=1.0)
    return centre + half * rel / scale


def action_cumsum(actions: Tensor) -> Tensor:
    """``[F + 1, A]`` float64 running sums: row ``i`` is the sum of action rows ``0 .. i-1``."""
    return torch.cat([actions.new_zeros(1, actions.shape[1]), actions]).double().cumsum(0)


# -- the policy -----------------------------------------------------------------------------------------
class DistilledPolicy(nn.Module):
    """(observation features, goal features) -> action in the box; SB3's ``predict`` (module docstring).

    Inputs are standardised with the training frames' feature statistics; the MLP sees
    ``[obs, goal, goal - obs]`` (``[B, 3F]``), ``depth`` hidden layers of ``hidden`` units (LayerNorm, GELU).

    Args:
        feature_dim: the planning space's feature size ``F``.
        action_low / action_high: the env's action box (``[A]``).
        hidden / depth: the MLP's width and number of hidden layers.
    """

    def __init__(
        self,
        feature_dim: int,
        action_low: np.ndarray | Sequence[float],
        action_high: np.ndarray | Sequence[float],
        hidden: int = 256,
        depth: int = 3,
    ) -> None:
        super().__init__()
        low = torch.as_tensor(np.asarray(action_low, np.float32)).reshape(-1)
        high = torch.as_tensor(np.asarray(action_high, np.float32)).reshape(-1)
        if low.shape != high.shape or not torch.all(high > low):
            raise ValueError(f"action box low={low.tolist()} high={high.tolist()}; expected low < high")
        self.feature_dim, self.hidden, self.depth = int(feature_dim), int(hidden), int(depth)
        self.register_buffer("feature_mean", torch.zeros(self.feature_dim))
        self.register_buffer("feature_std", torch.ones(self.feature_dim))
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        layers: list[nn.Module] = []
        width = 3 * self.feature_dim
        for _ in range(self.depth):
            layers += [nn.Linear(width, self.hidden), nn.LayerNorm(self.hidden), nn.GELU()]
            width = self.hidden
        layers.append(nn.Linear(width, low.numel()))
        self.net = nn.Sequential(*layers)
        self.meta: dict[str, Any] = {}

    @property
    def action_dim(self) -> int:
        return int(self.action_low.numel())

    def set_statistics(self, features: Tensor) -> None:
        """Standardise inputs with the mean and std of feature rows ``[F_rows, F]``."""
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp(min=1e-6))

    def forward(self, obs: Tensor, goal: Tensor) -> Tensor:
        """Features ``[B, F]`` and goal features ``[B, F]`` -> actions ``[B, A]`` inside the box."""
        o = (obs - self.feature_mean) / self.feature_std
        g = (goal - self.feature_mean) / self.feature_std
        squashed = torch.tanh(self.net(torch.cat([o, g, g - o], dim=-1)))  # [B, A] in (-1, 1)
        return self.action_low + (squashed + 1) * (self.action_high - self.action_low) / 2

    def predict(
        self,
        observation: Mapping[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """SB3's ``predict`` on LatentGoalEnv observations: actions ``[B, A]`` (``[A]`` for one unbatched).

        Args:
            observation: ``observation`` ``[B, F]`` (or ``[F]``) and ``desired_goal`` of the same shape.
            state, episode_start: ignored (the policy has no memory); ``None`` is returned as the state.
            deterministic: ignored (the policy is deterministic).
        """
        if not isinstance(observation, Mapping) or not {"observation", "desired_goal"} <= set(observation):
            keys = sorted(observation) if isinstance(observation, Mapping) else type(observation).__name__
            raise ValueError(
                f"observation has {keys}; DistilledPolicy needs 'observation' and 'desired_goal' "
                "(LatentGoalEnv's), or pixels through GoalImagePolicy"
            )
        obs = np.asarray(observation["observation"], np.float32)
        goal = np.asarray(observation["desired_goal"], np.float32)
        single = obs.ndim == 1
        obs, goal = obs.reshape(-1, obs.shape[-1]), goal.reshape(-1, goal.shape[-1])
        if obs.shape[-1] != self.feature_dim or goal.shape != obs.shape:
            raise ValueError(
                f"observation {list(obs.shape)} and desired_goal {list(goal.shape)}; expected [B, "
                f"{self.feature_dim}] each (the planning-space features it was trained on, no proprio)"
            )
        device = self.action_low.device
        with torch.inference_mode():
            act = self(torch.from_numpy(obs).to(device), torch.from_numpy(goal).to(device))
        out = act.float().cpu().numpy()
        return (out[0] if single else out), None

    def config(self) -> dict[str, Any]:
        """The JSON config that rebuilds this policy (with :attr:`meta`, the caller's provenance)."""
        return {"format": 1, "kind": KIND, "feature_dim": self.feature_dim, "hidden": self.hidden,
                "depth": self.depth, "action_low": self.action_low.tolist(),
                "action_high": self.action_high.tolist(), "meta": self.meta}  # fmt: skip

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``distilled_policy.safetensors`` + ``distilled_policy.json`` atomically; returns the dir."""
        return save_module_files(self, out_dir, WEIGHTS_FILE, CONFIG_FILE, self.config())

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> DistilledPolicy:
        """Rebuild a policy written by :meth:`save` (no pickle), in eval mode.

        Raises:
            FileNotFoundError: a missing config or weights file.
            ValueError: not a distilled policy, or weights that do not fit its config.
        """
        cfg = read_module_config(run_dir, WEIGHTS_FILE, CONFIG_FILE, KIND, "scripts/distill.py")
        policy = cls(cfg["feature_dim"], cfg["action_low"], cfg["action_high"], cfg["hidden"], cfg["depth"])
        load_module_weights(policy, Path(run_dir) / WEIGHTS_FILE)
        policy.meta = dict(cfg.get("meta") or {})
        return policy.to(device).eval()


class GoalImagePolicy:
    """A :class:`DistilledPolicy` behind the encoder: SB3's ``predict`` on ``pixels`` + ``goal_pixels``.

    Takes the observations :class:`~jepa_agent.rl.PlannerPolicy` takes (an env wrapped in
    ``GoalImageObservation``): every call encodes the frames (one encoder call for the batch); a row's
    goal image is encoded when its episode starts or its goal image changes. ``mlp_seconds`` records the
    wall time of the MLP alone in each call (the rest is the encoder).

    ``encoder``: how frames are encoded: ``"eager"`` (the world model's encoder as it is), ``"traced"`` (one
    frozen TorchScript graph, checked against the eager features at its first use;
    :class:`~jepa_agent.rl.space.FastFeatures`), or a :class:`~jepa_agent.rl.student.StudentEncoder`
    trained to give the same features (:class:`~jepa_agent.rl.student.StudentFeatures`).
    """

    def __init__(
        self,
        space: PlanningSpace,
        policy: DistilledPolicy,
        goal_key: str = GOAL_KEY,
        encoder: str | StudentEncoder = "traced",
    ) -> None:
        if space.dim != policy.feature_dim:
            raise ValueError(
                f"the planning space has {space.dim} features ({space.name}) but the policy takes "
                f"{policy.feature_dim}; use the checkpoint and space it was trained with"
            )
        self.space, self.policy, self.goal_key = space, policy, goal_key
        if isinstance(encoder, StudentEncoder):
            if encoder.feature_dim != space.dim:
                raise ValueError(
                    f"the student encoder gives {encoder.feature_dim} features but the planning space has "
                    f"{space.dim} ({space.name}); train the student on this checkpoint and space"
                )
            self.features: FastFeatures | StudentFeatures = StudentFeatures(encoder)
        else:
            self.features = FastFeatures(space, encoder)
        self._goals: list[np.ndarray | None] = []
        self._goal_features: list[np.ndarray | None] = []
        self.mlp_seconds: list[float] = []

    def predict(
        self,
        observation: Mapping[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """Actions ``[n, A]`` (``[A]`` for one unbatched observation): ``pixels`` towards ``goal_pixels``."""
        if not isinstance(observation, Mapping) or not {"pixels", self.goal_key} <= set(observation):
            keys = sorted(observation) if isinstance(observation, Mapping) else type(observation).__name__
            raise ValueError(f"observation has {keys}; GoalImagePolicy needs 'pixels' and {self.goal_key!r}")
        pixels, goals = np.asarray(observation["pixels"]), np.asarray(observation[self.goal_key])
        single = pixels.ndim == 3
        pixels, goals = (pixels[None], goals[None]) if single else (pixels, goals)
        n = len(pixels)
        starts = np.zeros(n, bool) if episode_start is None else np.asarray(episode_start, bool).reshape(-1)
        while len(self._goals) < n:
            self._goals.append(None)
            self._goal_features.append(None)
        stale = [
            i
            for i in range(n)
            if starts[i] or self._goals[i] is None or not np.array_equal(goals[i], self._goals[i])
        ]
        feats = self.features(np.concatenate([pixels, goals[stale]]))  # [n + s, F]: one encoder call
        for j, i in enumerate(stale):
            self._goals[i], self._goal_features[i] = goals[i].copy(), feats[n + j]
        goal_feats = np.stack([self._goal_features[i] for i in range(n)])  # [n, F]
        t0 = time.perf_counter()
        actions, _ = self.policy.predict({"observation": feats[:n], "desired_goal": goal_feats})
        self.mlp_seconds.append(time.perf_counter() - t0)
        return (actions[0] if single else actions), None


# -- training -------------------------------------------------------------------------------------------
@dataclass
class DistillConfig:
    """Hindsight training of a :class:`DistilledPolicy` (``configs/distill.yaml`` has the same keys).

    Attributes:
        target: ``first`` | ``mean`` (module docstring).
        k_max: the farthest goal offset (frames after the observed one).
        goal_sampling: ``geometric`` (near goals most; ``P(k = 1) ~ goal_p``) | ``uniform`` on ``1 .. k_max``.
        goal_p: the geometric law's parameter.
        steps / batch_size / lr / weight_decay: AdamW steps on fresh pairs each step, cosine-decayed lr.
        hidden / depth: the MLP's size.
        stay_fraction: share of each batch that is "stay" pairs: the goal is the observed frame itself and
            the target the box's centre (no motion; right for delta actions such as our tasks', where a
            zero action holds the pose). A prior, not a recorded label; 0 turns it off.
        dagger_fraction: share of each batch drawn from DAgger labels when there are any.
        seed: pairs and initial weights.
    """

    target: str = "mean"
    k_max: int = 20
    goal_sampling: str = "geometric"
    goal_p: float = 0.1
    steps: int = 4000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    depth: int = 3
    stay_fraction: float = 0.0
    dagger_fraction: float = 0.5
    seed: int = 0


def check_distill_config(cfg: DistillConfig) -> None:
    """One clear line for a bad key, naming it and what is expected."""
    for name, least in (("k_max", 1), ("steps", 1), ("batch_size", 1), ("hidden", 1), ("depth", 1)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name}={value!r}; expected an int >= {least}")
    if cfg.target not in TARGETS:
        raise ValueError(f"target={cfg.target!r}; expected one of {list(TARGETS)}")
    if cfg.goal_sampling not in GOAL_SAMPLING:
        raise ValueError(f"goal_sampling={cfg.goal_sampling!r}; expected one of {list(GOAL_SAMPLING)}")
    if not 0 < cfg.goal_p < 1:
        raise ValueError(f"goal_p={cfg.goal_p!r}; expected a number in (0, 1)")
    if not cfg.lr > 0 or cfg.weight_decay < 0:
        raise ValueError(
            f"lr={cfg.lr!r}, weight_decay={cfg.weight_decay!r}; expected lr > 0, weight_decay >= 0"
        )
    shares = {"stay_fraction": cfg.stay_fraction, "dagger_fraction": cfg.dagger_fraction}
    if not all(0 <= v < 1 for v in shares.values()) or sum(shares.values()) >= 1:
        raise ValueError(f"{shares}: expected shares of the batch in [0, 1) that sum to less than 1")


def pair_loss(policy: DistilledPolicy, data: HindsightData, cfg: DistillConfig, n: int, seed: int) -> float:
    """Mean squared action error on ``n`` fixed pairs of ``data`` (in box half-widths)."""
    gen = torch.Generator().manual_seed(seed)
    t, k = sample_pairs(data, n, cfg.k_max, cfg.goal_sampling, cfg.goal_p, gen)
    with torch.inference_mode():
        pred = policy(data.features[t], data.features[t + k])
    return float(box_mse(policy, pred, hindsight_targets(data, t, k, cfg.target)))


def box_mse(policy: DistilledPolicy, pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of actions ``[B, A]`` in units of the box's half-width."""
    half = (policy.action_high - policy.action_low) / 2
    return (((pred - target) / half) ** 2).mean()


def train_distilled(
    data: HindsightData,
    cfg: DistillConfig,
    val: HindsightData | None = None,
    policy: DistilledPolicy | None = None,
    dagger: tuple[Tensor, Tensor, Tensor] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[DistilledPolicy, dict[str, Any]]:
    """Train (or, given ``policy``, keep training) a policy on hindsight pairs of ``data`` (+ DAgger labels).

    Args:
        data: the training episodes' features and actions.
        cfg: the hyper-parameters.
        val: held-out episodes: their loss on 4096 fixed pairs is reported.
        policy: continue from this policy (its statistics are kept); None: a fresh one.
        dagger: planner labels ``(obs features [M, F], goal features [M, F], actions [M, A])``:
            ``dagger_fraction`` of each batch comes from them.
        progress: called as ``progress(step, loss)`` every 100 steps.

    Returns:
        The policy (eval mode) and ``loss_initial`` / ``loss_final`` (training pairs, fixed),
        ``val_loss_initial`` / ``val_loss_final``, ``seconds``, ``steps``.
    """
    check_distill_config(cfg)
    if not (data.frames_left() >= 1).any():
        raise ValueError(
            f"{len(data.lengths)} episodes of one frame each: no (frame, later frame) pair to learn from"
        )
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if policy is None:
        policy = DistilledPolicy(
            data.features.shape[1], data.action_low, data.action_high, cfg.hidden, cfg.depth
        )
        policy.set_statistics(data.features)
    policy = policy.cpu()
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    csum = action_cumsum(data.actions)
    metrics: dict[str, Any] = {"loss_initial": pair_loss(policy, data, cfg, 4096, seed=12345)}
    if val is not None:
        metrics["val_loss_initial"] = pair_loss(policy, val, cfg, 4096, seed=54321)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))
    )
    n_dagger = 0 if dagger is None or len(dagger[0]) == 0 else round(cfg.batch_size * cfg.dagger_fraction)
    n_stay = round(cfg.batch_size * cfg.stay_fraction)
    n_pairs = max(cfg.batch_size - n_dagger - n_stay, 1)
    centre = (policy.action_low + policy.action_high) / 2  # [A]
    policy.train()
    for step in range(cfg.steps):
        t, k = sample_pairs(data, n_pairs, cfg.k_max, cfg.goal_sampling, cfg.goal_p, gen)
        obs, goal = data.features[t], data.features[t + k]  # [b, F] each
        target = hindsight_targets(data, t, k, cfg.target, csum)  # [b, A]
        if n_stay:
            r = torch.randint(data.num_frames, (n_stay,), generator=gen)
            obs, goal = torch.cat([obs, data.features[r]]), torch.cat([goal, data.features[r]])
            target = torch.cat([target, centre.expand(n_stay, -1)])
        if n_dagger:
            j = torch.randint(len(dagger[0]), (n_dagger,), generator=gen)
            obs, goal = torch.cat([obs, dagger[0][j]]), torch.cat([goal, dagger[1][j]])
            target = torch.cat([target, dagger[2][j]])
        loss = box_mse(policy, policy(obs, goal), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None and (step + 1) % 100 == 0:
            progress(step + 1, loss.item())
    policy.eval()
    metrics["loss_final"] = pair_loss(policy, data, cfg, 4096, seed=12345)
    if val is not None:
        metrics["val_loss_final"] = pair_loss(policy, val, cfg, 4096, seed=54321)
    metrics.update(steps=cfg.steps, seconds=time.perf_counter() - t0)
    policy.meta.update(asdict(cfg))
    return policy, metrics


# -- the real env ---------------------------------------------------------------------------------------
def run_goal_episodes(
    policy: Any,
    env: Any,
    seeds: Sequence[int],
    max_decisions: int | None = None,
    on_episode: Callable[[int, bool, bool], None] | None = None,
    shadow: Any | None = None,
) -> dict[str, Any]:
    """Run ``policy`` (``predict`` on ``pixels`` + goal image) on ``env`` (wrapped in
    ``GoalImageObservation``), one episode per reset seed, timing every ``predict`` call.

    Args:
        max_decisions: stop after this many decisions (timing a slow policy on a few of them).
        on_episode: called as ``on_episode(index, reached, ended)`` when an episode ends.
        shadow: another policy asked for its decision on every same observation right after ``policy``
            (timed, not acted on): paired timings under the same load, for a ratio that a busy machine
            does not skew.

    Returns:
        ``reached`` / ``ended`` (bool per finished episode: ``info["is_success"]`` at any step / the
        last), ``final_distance`` (``info["distance"]`` at the end, NaN without one), ``decision_seconds``
        (every ``predict``'s wall time) and ``shadow_seconds`` (the shadow's; empty without one).
    """
    reached, ended, distance, seconds, shadowed = [], [], [], [], []
    budget = math.inf if max_decisions is None else max_decisions
    for i, seed in enumerate(seeds):
        obs, info = env.reset(seed=int(seed))
        start, hit, done = True, bool(info.get("is_success", False)), False
        while not done and len(seconds) < budget:
            t0 = time.perf_counter()
            action, _ = policy.predict(obs, None, np.array([start]), True)
            seconds.append(time.perf_counter() - t0)
            if shadow is not None:
                t0 = time.perf_counter()
                shadow.predict(obs, None, np.array([start]), True)
                shadowed.append(time.perf_counter() - t0)
            obs, _, terminated, truncated, info = env.step(action)
            start, done = False, bool(terminated or truncated)
            hit |= bool(info.get("is_success", False))
        if not done:  # cut short by max_decisions
            break
        reached.append(hit)
        ended.append(bool(info.get("is_success", False)))
        distance.append(float(info.get("distance", math.nan)))
        if on_episode is not None:
            on_episode(i, hit, ended[-1])
    return {"reached": reached, "ended": ended, "final_distance": distance, "decision_seconds": seconds,
            "shadow_seconds": shadowed}  # fmt: skip


def dagger_labels(
    policy: DistilledPolicy,
    expert: Any,
    env: Any,
    space: PlanningSpace,
    seeds: Sequence[int],
    on_label: Callable[[], None] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """DAgger: ``policy`` drives ``env`` (``GoalImageObservation``-wrapped) from each reset seed; the
    ``expert`` (``PlannerPolicy``) labels every visited observation for the episode's goal.

    Returns:
        ``(obs features [M, F], goal features [M, F], expert actions [M, A])``.
    """
    obs_f, goal_f, labels = [], [], []
    for seed in seeds:
        obs, _ = env.reset(seed=int(seed))
        goal = space.features(np.asarray(obs[GOAL_KEY])[None])[0]  # [F]
        start, done = True, False
        while not done:
            feats = space.features(np.asarray(obs["pixels"])[None])[0]  # [F]
            label, _ = expert.predict(
                {k: np.asarray(v)[None] for k, v in obs.items()}, None, np.array([start])
            )
            action, _ = policy.predict({"observation": feats, "desired_goal": goal})
            obs_f.append(feats)
            goal_f.append(goal)
            labels.append(np.asarray(label, np.float32).reshape(-1))
            if on_label is not None:
                on_label()
            obs, _, terminated, truncated, _ = env.step(action)
            start, done = False, bool(terminated or truncated)
    as_t = lambda x: torch.from_numpy(np.stack(x).astype(np.float32))  # noqa: E731
    return as_t(obs_f), as_t(goal_f), as_t(labels)
