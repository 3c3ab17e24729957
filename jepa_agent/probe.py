"""Frozen evaluation: an attentive probe on frozen encoder features regresses the task state.

Single frames of episodes are encoded once by the frozen encoder (``encode_images``: the frame
repeated to fill one tubelet) and the patch tokens cached; an :class:`AttentiveProbe` (a learned
query cross-attending to the tokens, then a linear head) is trained on the train episodes and
scored by R^2 on held-out episodes (``split="val"``).

Targets (reach): the joint angles as ``(sin q_i, cos q_i)`` (angles wrap, so sin/cos is a continuous
target) and the end-effector ``xy`` (forward kinematics of the joint angles). The same probe budget
is spent on a randomly initialised encoder of the same size, reported beside the pretrained one.

Tokens are standardised per feature dimension before the probe (MAE's BatchNorm-without-affine),
so that encoders whose features differ in scale are probed alike. Beside the attentive probe, a
ridge regression on the *mean-pooled* tokens measures how much pose is in a single compact vector
(the world model pools frozen tokens into such a latent); note that a random-init ViT keeps each
token close to ``LN(patch projection + position)``, which an attentive probe decodes well.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jepa_agent.models.vit import VideoViT, pixels_to_images
from jepa_agent.training.schedules import warmup_cosine
from jepa_agent.utils import check_int


@dataclass
class ProbeConfig:
    """Probe size and training budget.

    Attributes:
        num_heads: cross-attention heads.
        num_queries: learned queries (their outputs are concatenated before the linear head).
        epochs: passes over the cached train features.
        batch_size: probe mini-batch.
        lr: peak AdamW lr (5% warm-up, cosine to 0).
        weight_decay: AdamW weight decay.
        mlp_ratio: 0 (default): the pooled queries go straight to the linear head, as the issue's
            "cross-attention, then linear"; > 0: V-JEPA's ``AttentivePooler`` block, a residual MLP
            of this width ratio after the cross-attention (a stronger probe).
        ridge_grid: the ridge regression (``r2_pooled``) reads the tokens average-pooled to a
            ``g x g`` grid and concatenated: 1 (default) is the mean token; the world model's grid
            pooling (``world_model.grid_size``, 4 for the compact model) makes it the planning latent.
        seed: probe init and batch order.
    """

    num_heads: int = 4
    num_queries: int = 1
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    mlp_ratio: float = 0.0
    ridge_grid: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_heads", "num_queries", "epochs", "batch_size", "ridge_grid"):
            check_int(f"probe.{key}", getattr(self, key), 1)
        if not self.lr > 0:
            raise ValueError(f"probe.lr={self.lr!r}; expected > 0")
        if self.weight_decay < 0 or self.mlp_ratio < 0:
            raise ValueError(
                f"probe.weight_decay={self.weight_decay!r}, probe.mlp_ratio={self.mlp_ratio!r}; "
                "expected both >= 0"
            )


class AttentiveProbe(nn.Module):
    """Learned queries cross-attend to frozen tokens ``[B, N, D]``; a linear head maps them to ``[B, K]``.

    Tokens are first standardised per feature dimension with statistics of the train features
    (``feat_mean``/``feat_std``, set by :func:`train_probe`): a BatchNorm without affine, as MAE's
    linear probe, so that encoders whose features differ only in scale or offset are probed alike.
    With ``mlp_ratio > 0`` the queries are updated as in V-JEPA's ``AttentivePooler``:
    ``q = q + attn(q, tokens)``, then ``q = q + mlp(norm(q))``.
    """

    def __init__(
        self, dim: int, out_dim: int, num_heads: int = 4, num_queries: int = 1, mlp_ratio: float = 0.0
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"probe num_heads={num_heads} does not divide the feature dim {dim}")
        if mlp_ratio < 0:
            raise ValueError(f"probe mlp_ratio={mlp_ratio}; expected 0 (no MLP) or a positive ratio")
        self.query = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp = (
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            if hidden
            else None
        )
        self.head = nn.Sequential(nn.LayerNorm(dim * num_queries), nn.Linear(dim * num_queries, out_dim))
        # feature and target standardisation (set by train_probe); forward predicts standardised targets
        self.register_buffer("feat_mean", torch.zeros(dim))
        self.register_buffer("feat_std", torch.ones(dim))
        self.register_buffer("y_mean", torch.zeros(out_dim))
        self.register_buffer("y_std", torch.ones(out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm((tokens - self.feat_mean) / self.feat_std)  # [B, N, D]
        q = self.query.expand(tokens.shape[0], -1, -1)  # [B, Q, D]
        pooled, _ = self.attn(q, kv, kv, need_weights=False)  # [B, Q, D]
        if self.mlp is not None:  # V-JEPA AttentivePooler: residual cross-attention, then residual MLP
            pooled = q + pooled
            pooled = pooled + self.mlp(pooled)
        return self.head(pooled.flatten(1))  # [B, K]


# --------------------------------------------------------------------------------------- targets


def joint_sincos(qpos: np.ndarray) -> np.ndarray:
    """Joint angles ``[M, n]`` -> ``[M, 2n]`` as ``(sin q_0, cos q_0, sin q_1, cos q_1, ...)``."""
    return np.stack([np.sin(qpos), np.cos(qpos)], axis=-1).reshape(len(qpos), -1)


def _task_function(env_name: str, name: str) -> Callable[..., Any] | None:
    """Function ``name`` of the module that defines ``env_name``'s env (e.g. ``envs.reach``), or None."""
    import importlib

    import gymnasium as gym

    import envs

    entry = gym.spec(envs.resolve_env_id(env_name)).entry_point  # e.g. "envs.reach:ReachEnv"
    module = importlib.import_module(entry.split(":")[0]) if isinstance(entry, str) else None
    return getattr(module, name, None)


def ee_positions(env_name: str, qpos: np.ndarray) -> np.ndarray:
    """End-effector ``xy`` ``[M, 2]`` for joint angles ``[M, n]``: the env's forward kinematics.

    Uses ``envs.<task>.forward_kinematics`` when the task module has it, otherwise sets each state
    in the env and reads ``env.unwrapped.ee_pos()``.
    """
    import envs

    fk: Callable[[np.ndarray], np.ndarray] | None = _task_function(env_name, "forward_kinematics")
    if fk is not None:
        return np.asarray(fk(qpos), dtype=np.float64)
    env = envs.make_env(env_name)
    try:
        out = []
        for q in qpos:
            env.unwrapped.set_state(q)
            out.append(np.asarray(env.unwrapped.ee_pos())[:2])
        return np.stack(out)
    finally:
        env.close()


def probe_targets(states: np.ndarray, env_name: str = "reach") -> tuple[np.ndarray, list[str]]:
    """Probe targets from sim states ``[M, S]`` (qpos then qvel, ``S = 2n``) and names.

    A task whose module defines ``probe_targets(states) -> (targets, names)`` gives its own (push: the
    pusher's and the block's xy and the block's yaw as sin/cos, ``envs.push.probe_targets``). An arm
    (reach): joint angles as sin/cos and the end effector's xy, ``[M, 2n + 2]``.
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] % 2:
        raise ValueError(f"states of shape {states.shape}; expected [M, 2n] (qpos, qvel)")
    own = _task_function(env_name, "probe_targets")
    if own is not None:
        return own(states)
    n = states.shape[1] // 2
    qpos = states[:, :n]
    names = [f"q{i}_{f}" for i in range(n) for f in ("sin", "cos")] + ["ee_x", "ee_y"]
    return np.concatenate([joint_sincos(qpos), ee_positions(env_name, qpos)], axis=1), names


def r2_scores(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficient of determination per column: ``1 - SS_res / SS_tot`` -> ``[K]``."""
    ss_res = ((target - pred) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0)
    return 1.0 - ss_res / np.maximum(ss_tot, 1e-12)


def summarise_r2(r2: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per-target R^2 plus the groups: ``ee_pos`` (mean of x, y), ``joints`` (mean of sin/cos), ``q<i>``;
    for push ``pusher_pos``, ``block_pos`` and ``yaw``."""
    out = {n: float(v) for n, v in zip(names, r2, strict=True)}
    ee = [out[k] for k in ("ee_x", "ee_y") if k in out]
    if ee:
        out["ee_pos"] = float(np.mean(ee))
    for group, keys in (
        ("pusher_pos", ("pusher_x", "pusher_y")),
        ("block_pos", ("block_x", "block_y")),
        ("yaw", ("yaw_sin", "yaw_cos")),
    ):  # push
        if all(k in out for k in keys):
            out[group] = float(np.mean([out[k] for k in keys]))
    joints = [k for k in names if k.startswith("q")]
    if joints:
        out["joints"] = float(np.mean([out[k] for k in joints]))
        for i in sorted({k.split("_")[0] for k in joints}):
            out[i] = float(np.mean([out[f"{i}_sin"], out[f"{i}_cos"]]))
    return out


# ------------------------------------------------------------------------------------ features


def load_episode_frames(
    dataset: Any, frame_stride: int = 1, max_frames: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Single frames and their sim states from an ``EpisodeDataset`` (every ``frame_stride``-th step).

    Returns:
        frames uint8 ``[M, H, W, 3]``, states float64 ``[M, S]`` and each frame's episode (its index
        in ``dataset``) int64 ``[M]``; at most ``max_frames`` (a seeded random subset, kept in episode
        order).
    """
    if frame_stride < 1:
        raise ValueError(f"frame_stride={frame_stride}; expected >= 1")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames={max_frames}; expected >= 1 or None (all frames)")
    frames, states, episodes = [], [], []
    for i in range(dataset.num_episodes):
        ep = dataset.episode(i)
        frames.append(ep["frames"][::frame_stride])
        states.append(np.asarray(ep["state"], dtype=np.float64)[::frame_stride])
        episodes.append(np.full(len(frames[-1]), i, dtype=np.int64))
    f, st, e = np.concatenate(frames), np.concatenate(states), np.concatenate(episodes)
    if max_frames is not None and len(f) > max_frames:
        keep = np.sort(np.random.default_rng(seed).choice(len(f), size=max_frames, replace=False))
        f, st, e = f[keep], st[keep], e[keep]
    return f, st, e


@torch.no_grad()
def extract_features(
    encoder: VideoViT,
    frames: np.ndarray | torch.Tensor,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> torch.Tensor:
    """Frozen patch tokens of single frames: uint8 ``[M, H, W, 3]`` -> float16 ``[M, N, D]`` (CPU cache)."""
    frames = torch.as_tensor(frames)
    if frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames of shape {tuple(frames.shape)}; expected uint8 [M, H, W, 3]")
    encoder = encoder.to(device).eval()
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    out = []
    for i in range(0, len(frames), batch_size):
        x = pixels_to_images(frames[i : i + batch_size], device)  # [b, 3, H, W]
        with autocast:
            out.append(encoder.encode_images(x).to("cpu", torch.float16))  # [b, N, D]
    return torch.cat(out)


# --------------------------------------------------------------------------------------- training


def train_probe(
    feats: torch.Tensor, y: np.ndarray, cfg: ProbeConfig, device: torch.device | str = "cpu"
) -> tuple[AttentiveProbe, dict[str, float]]:
    """Fit an :class:`AttentiveProbe` on cached features ``[M, N, D]`` to standardised targets ``[M, K]``.

    Returns the probe (forward gives standardised targets; :func:`predict` un-standardises) and
    ``{"train_loss", "seconds"}``.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    yt = torch.as_tensor(y, dtype=torch.float32)
    probe = AttentiveProbe(feats.shape[-1], yt.shape[1], cfg.num_heads, cfg.num_queries, cfg.mlp_ratio)
    probe = probe.to(device)
    flat = feats.reshape(-1, feats.shape[-1])  # [M*N, D]
    mean = torch.stack([c.float().sum(0) for c in flat.split(65536)]).sum(0) / len(
        flat
    )  # chunked: fp16 cache
    sq = torch.stack([((c.float() - mean) ** 2).sum(0) for c in flat.split(65536)]).sum(0)
    probe.feat_mean.copy_(mean)
    probe.feat_std.copy_((sq / max(len(flat) - 1, 1)).sqrt().clamp_min(1e-6))
    probe.y_mean.copy_(yt.mean(0))
    probe.y_std.copy_(yt.std(0).clamp_min(1e-6))
    yn = (yt - yt.mean(0)) / yt.std(0).clamp_min(1e-6)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(feats) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, total // 20)
    t0, step, loss = time.perf_counter(), 0, torch.tensor(float("nan"))
    probe.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(feats), generator=g)
        for i in range(0, len(feats), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, cfg.lr, 0.0)
            pred = probe(feats[idx].to(device, torch.float32))
            loss = F.mse_loss(pred, yn[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return probe.eval(), {"train_loss": float(loss.detach()), "seconds": time.perf_counter() - t0}


def train_supervised_reference(
    encoder: VideoViT,
    frames: np.ndarray,
    y: np.ndarray,
    steps: int,
    batch_size: int = 64,
    lr: float = 5e-4,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[VideoViT, dict[str, float]]:
    """Upper-bound reference: train ``encoder`` end to end with an attentive head to regress ``y``.

    The encoder (a fresh one of the size under test) and an :class:`AttentiveProbe` head are trained
    together on the *train* frames ``[M, H, W, 3]`` for ``steps`` AdamW steps; the head is then
    discarded and the encoder returned frozen, to be probed from scratch like every other encoder.
    It shows what the probe reads from features that do carry the targets, so "pretrained vs
    random-init" can be read against what this architecture can hold.

    Returns:
        the frozen encoder and ``{"first_loss", "final_loss", "seconds"}`` (losses: mean of the first /
        last 10% of steps).
    """
    if steps < 1:
        raise ValueError(f"supervised reference steps={steps}; expected >= 1")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    yt = torch.as_tensor(y, dtype=torch.float32)
    yn = (yt - yt.mean(0)) / yt.std(0).clamp_min(1e-6)
    x_all = torch.as_tensor(frames)
    encoder = encoder.to(device).train()
    head = AttentiveProbe(encoder.embed_dim, yt.shape[1]).to(device)
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr, weight_decay=0.01)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = warmup_cosine(step, steps, max(1, steps // 20), lr, 0.0)
        x = pixels_to_images(x_all[idx], device)  # [b, 3, H, W]
        loss = F.mse_loss(head(encoder.encode_images(x)), yn[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    k = max(1, steps // 10)
    info = {
        "first_loss": float(np.mean(losses[:k])),
        "final_loss": float(np.mean(losses[-k:])),
        "seconds": time.perf_counter() - t0,
    }
    return encoder.eval().requires_grad_(False), info


def paired_bootstrap_r2_gain(
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    target: np.ndarray,
    groups: np.ndarray,
    cols: list[int],
    num_samples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much encoder A's probe beats B's: R^2(A) - R^2(B) with a 95% CI from a paired bootstrap.

    Held-out *episodes* (``groups`` [M], one id per frame) are resampled with replacement, since the
    frames of one episode are not independent; both probes are scored on the same resample. The R^2
    is the mean over the target columns ``cols`` (e.g. ee_x and ee_y).

    Returns:
        ``{"gain", "ci95": [lo, hi], "p_not_above"}``: the gain on all held-out frames, the 2.5/97.5%
        bootstrap quantiles, and the fraction of resamples where A does not beat B.
    """
    if not (len(pred_a) == len(pred_b) == len(target) == len(groups)):
        raise ValueError(
            f"predictions {len(pred_a)}/{len(pred_b)}, targets {len(target)} and groups {len(groups)} "
            "must have one row per frame"
        )
    _, gid = np.unique(groups, return_inverse=True)
    n_groups = int(gid.max()) + 1
    y = target[:, cols]  # [M, C]
    counts = np.random.default_rng(seed).multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), num_samples)
    w = np.vstack([np.ones(n_groups), counts])[:, gid].astype(np.float64)  # [1 + S, M]: row 0 = all frames
    w_sum = w.sum(1, keepdims=True)  # [1 + S, 1]

    def r2(pred: np.ndarray) -> np.ndarray:
        res = w @ ((y - pred[:, cols]) ** 2)  # [1 + S, C]
        mean = (w @ y) / w_sum  # [1 + S, C]
        tot = w @ (y**2) - w_sum * mean**2
        return (1.0 - res / np.maximum(tot, 1e-12)).mean(1)  # [1 + S]

    gain = r2(pred_a) - r2(pred_b)
    lo, hi = np.quantile(gain[1:], [0.025, 0.975])
    return {
        "gain": float(gain[0]),
        "ci95": [float(lo), float(hi)],
        "p_not_above": float((gain[1:] <= 0).mean()),
    }


def ee_columns(names: list[str]) -> list[int] | None:
    """Indices of the ``ee_x`` and ``ee_y`` targets in ``names``; ``None`` when either is missing."""
    cols = [names.index(k) for k in ("ee_x", "ee_y") if k in names]
    return cols if len(cols) == 2 else None


def ee_rmse(pred: np.ndarray, target: np.ndarray, names: list[str]) -> float | None:
    """Root-mean-square end-effector error in target units (metres for reach); ``None`` without ee_x/ee_y."""
    cols = ee_columns(names)
    if cols is None:
        return None
    return float(np.sqrt(((pred[:, cols] - target[:, cols]) ** 2).sum(1).mean()))


@torch.no_grad()
def predict(probe: AttentiveProbe, feats: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Probe predictions in target units ``[M, K]`` (un-standardised)."""
    dev = next(probe.parameters()).device
    out = [
        probe(feats[i : i + batch_size].to(dev, torch.float32)).cpu()
        for i in range(0, len(feats), batch_size)
    ]
    return (torch.cat(out) * probe.y_std.cpu() + probe.y_mean.cpu()).numpy()


def probe_encoders(
    encoders: dict[str, VideoViT],
    train_frames: np.ndarray,
    train_states: np.ndarray,
    val_frames: np.ndarray,
    val_states: np.ndarray,
    env_name: str,
    cfg: ProbeConfig,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, dict[str, Any]]:
    """Probe every encoder with the same frames, targets and budget: ``{name: evaluate_encoder(...)}``."""
    train_y, names = probe_targets(train_states, env_name)
    val_y, _ = probe_targets(val_states, env_name)
    return {
        name: evaluate_encoder(enc, train_frames, train_y, val_frames, val_y, names, cfg, device, precision)
        for name, enc in encoders.items()
    }


def pool_tokens(f: torch.Tensor, grid: int = 1) -> torch.Tensor:
    """Tokens ``[M, N, D]`` of a square patch grid -> ``[M, D*g*g]``: average-pooled to ``g x g`` cells
    and concatenated, as the world model's grid pooling (``grid=1``: the mean token)."""
    side = math.isqrt(f.shape[1])
    if side * side != f.shape[1] or not 1 <= grid <= side:
        raise ValueError(
            f"probe.ridge_grid={grid}; expected 1 .. {side} for a square grid of {f.shape[1]} patch tokens"
        )
    x = f.float().transpose(1, 2).reshape(len(f), -1, side, side)  # [M, D, s, s]
    return F.adaptive_avg_pool2d(x, grid).flatten(1).double()


def standardised_pooled(
    f_train: torch.Tensor, f_val: torch.Tensor, grid: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pool_tokens` of both sets, standardised per feature with the train set's statistics."""
    x_tr, x_va = pool_tokens(f_train, grid), pool_tokens(f_val, grid)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-8)
    return (x_tr - mean) / std, (x_va - mean) / std


def knn_r2(
    f_train: torch.Tensor,
    y_train: np.ndarray,
    f_val: torch.Tensor,
    y_val: np.ndarray,
    grid: int = 1,
    k: int = 10,
    chunk: int = 512,
) -> np.ndarray:
    """R^2 of k-nearest-neighbour regression in the pooled, standardised latent (Euclidean distance).

    Where the ridge asks whether a target is a *linear* read-out of the latent, this asks whether frames
    that are near in the latent have near targets: what a cost that compares latents by distance sees.
    """
    x_tr, x_va = standardised_pooled(f_train, f_val, grid)
    x_tr, x_va = x_tr.float(), x_va.float()
    y_tr = torch.as_tensor(np.asarray(y_train), dtype=torch.float64)
    k = min(int(k), len(x_tr))
    preds = []
    for i in range(0, len(x_va), chunk):  # [chunk, M] distances at a time
        idx = torch.cdist(x_va[i : i + chunk], x_tr).topk(k, dim=1, largest=False).indices
        preds.append(y_tr[idx].mean(1))
    return r2_scores(torch.cat(preds).numpy(), np.asarray(y_val))


class RidgeProbe:
    """A linear read-out of features ``[M, F]``, fitted by ridge regression on standardised features, with
    the strength chosen on the last 20% of the fitting rows (then refitted on all of them).

    ``RidgeProbe.fit(x, y)`` -> a probe; ``probe(x)`` -> ``[M, K]`` (float64)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, w: torch.Tensor, y_mean: torch.Tensor) -> None:
        self.mean, self.std, self.w, self.y_mean = mean, std, w, y_mean

    @staticmethod
    def _solve(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        ym = y.mean(0)
        eye = torch.eye(x.shape[1], dtype=x.dtype)
        return torch.linalg.solve(x.T @ x + lam * len(x) * eye, x.T @ (y - ym)), ym

    @classmethod
    def fit(
        cls,
        x: torch.Tensor,
        y: np.ndarray | torch.Tensor,
        lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        standardise: bool = True,
    ) -> RidgeProbe:
        x = torch.as_tensor(x, dtype=torch.float64)
        y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) < 5:
            raise ValueError(
                f"ridge probe: features {tuple(x.shape)} and targets {tuple(y.shape)}; expected [M, F] and "
                "[M, K] with the same M >= 5"
            )
        if standardise:
            mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
        else:
            mean, std = torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)
        x = (x - mean) / std
        cut = int(0.8 * len(x))
        scores = []
        for lam in lambdas:
            w, ym = cls._solve(x[:cut], y[:cut], lam)
            scores.append(r2_scores((x[cut:] @ w + ym).numpy(), y[cut:].numpy()).mean())
        w, ym = cls._solve(x, y, lambdas[int(np.argmax(scores))])
        return cls(mean, std, w, ym)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        return ((x - self.mean) / self.std) @ self.w + self.y_mean


def pooled_ridge_r2(
    f_train: torch.Tensor,
    y_train: np.ndarray,
    f_val: torch.Tensor,
    y_val: np.ndarray,
    lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
    grid: int = 1,
) -> np.ndarray:
    """R^2 of a ridge regression on pooled, standardised tokens (a compact one-vector latent).

    ``grid=1`` pools to the mean token; ``grid=g`` average-pools the square patch grid to ``g x g`` cells
    and concatenates them (``g*g*D`` features), as the world model's grid pooling does. The ridge strength
    is chosen on the last 20% of the train frames, then refit on all of them (:class:`RidgeProbe`).
    """
    x_tr, x_va = standardised_pooled(f_train, f_val, grid)
    probe = RidgeProbe.fit(x_tr.double(), y_train, lambdas, standardise=False)
    return r2_scores(probe(x_va).numpy(), np.asarray(y_val))


def evaluate_encoder(
    encoder: VideoViT,
    train_frames: np.ndarray,
    train_y: np.ndarray,
    val_frames: np.ndarray,
    val_y: np.ndarray,
    names: list[str],
    cfg: ProbeConfig,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """Cache frozen features, train the probe on train frames, return R^2 on val frames (+ timings).

    Also reports ``r2_knn``: k-nearest-neighbour regression in the same pooled latent (:func:`knn_r2`,
    what a distance there sees), and ``r2_pooled``: a ridge regression on the mean-pooled tokens
    (:func:`pooled_ridge_r2`, pooled to ``cfg.ridge_grid``),
    the relevant view when the features are pooled into one compact latent (the world model's), and
    ``ee_rmse``: the probe's end-effector error in target units (metres for reach).
    """
    t0 = time.perf_counter()
    f_train = extract_features(encoder, train_frames, device=device, precision=precision)
    f_val = extract_features(encoder, val_frames, device=device, precision=precision)
    t_feat = time.perf_counter() - t0
    probe, info = train_probe(f_train, train_y, cfg, device=device)
    pred = predict(probe, f_val)
    pooled = summarise_r2(pooled_ridge_r2(f_train, train_y, f_val, val_y, grid=cfg.ridge_grid), names)
    knn = summarise_r2(knn_r2(f_train, train_y, f_val, val_y, grid=cfg.ridge_grid), names)
    return {
        "r2": summarise_r2(r2_scores(pred, val_y), names),
        "val_pred": pred,  # [M, K] in target units (for paired comparisons; not JSON)
        "ee_rmse": ee_rmse(pred, val_y, names),
        "r2_pooled": pooled,
        "r2_knn": knn,
        "feature_seconds": t_feat,
        **info,
    }
