"""The JEPA maths, each a small named function: EMA target, layer-normed targets, masked L1, collapse stats.

Follows V-JEPA (``app/vjepa/train.py``): the target encoder is an exponential moving average of the
context encoder, run under ``no_grad`` on all tokens; its outputs are layer-normed over the feature
dimension; the loss is the L1 distance between predictions and targets on the masked (target)
tokens only, averaged over the mask kinds. The world model's losses follow V-JEPA 2-AC: one-step
teacher forcing and a k-step rollout through the action-conditioned predictor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from jepa_agent.models.vit import gather_tokens

if TYPE_CHECKING:
    from torch import Tensor

    from jepa_agent.models.ac_predictor import ACPredictor


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target = momentum * target + (1 - momentum) * online`` for every parameter.

    Raises:
        ValueError: momentum outside [0, 1] or modules with different parameter lists.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum}; expected a value in [0, 1]")
    t_params = [p for p in target.parameters()]
    o_params = [p.detach() for p in online.parameters()]
    if len(t_params) != len(o_params) or any(
        a.shape != b.shape for a, b in zip(t_params, o_params, strict=True)
    ):
        raise ValueError("ema_update: target and online modules have different parameters")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, o_params, alpha=1.0 - momentum)


def layer_norm_targets(x: torch.Tensor) -> torch.Tensor:
    """``F.layer_norm`` over the feature (last) dimension, no affine: ``[..., D] -> [..., D]``."""
    return F.layer_norm(x, (x.shape[-1],))


@torch.no_grad()
def target_features(target_encoder: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """Layer-normed EMA-encoder features of all tokens, no gradient: ``[B, 3, T, H, W] -> [B, N, D]``."""
    return layer_norm_targets(target_encoder(clips))


def jepa_l1_loss(pred: torch.Tensor, target: torch.Tensor, tgt_idx: torch.Tensor) -> torch.Tensor:
    """Mean L1 between predictions at the target tokens and the targets there.

    Args:
        pred: predictor outputs at the target positions ``[B, Kt, D]``.
        target: target features of all tokens ``[B, N, D]`` (only ``tgt_idx`` tokens are read).
        tgt_idx: Long ``[B, Kt]`` target token indices.
    """
    tgt = gather_tokens(target, tgt_idx)  # [B, Kt, D]
    if pred.shape != tgt.shape:
        raise ValueError(f"predictions {tuple(pred.shape)} do not match targets {tuple(tgt.shape)}")
    return (pred - tgt.to(pred.dtype)).abs().mean()


def masked_l1_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 over masked tokens only (dense predictions): pred/target ``[B, N, D]``, mask bool ``[B, N]``."""
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"shapes pred {tuple(pred.shape)}, target {tuple(target.shape)}, mask {tuple(mask.shape)}"
        )
    m = mask.to(pred.dtype).unsqueeze(-1)  # [B, N, 1]
    denom = m.sum() * pred.shape[-1]
    if denom == 0:
        raise ValueError("masked_l1_loss: the mask selects no token")
    return ((pred - target).abs() * m).sum() / denom


def mean_over_masks(losses: Iterable[torch.Tensor]) -> torch.Tensor:
    """Average the per-mask-kind losses (V-JEPA: ``loss = sum(loss_k) / len(masks)``)."""
    losses = list(losses)
    if not losses:
        raise ValueError("no losses to average")
    return torch.stack(losses).mean()


@torch.no_grad()
def feature_std(x: torch.Tensor) -> float:
    """Mean over feature dims of the std across samples/tokens: ``[..., D]`` -> float (0 = collapsed)."""
    x = x.reshape(-1, x.shape[-1]).float()  # [M, D]
    return float(x.std(dim=0).mean())


@torch.no_grad()
def content_std(x: torch.Tensor) -> float:
    """Mean std across clips at a fixed token position: ``[B, N, D]`` -> float (needs ``B >= 2``).

    Unlike :func:`feature_std`, position-only features (same for every clip) score 0 here: it tracks
    how much the features depend on the clip's content.
    """
    if x.dim() != 3 or x.shape[0] < 2:
        raise ValueError(f"features of shape {tuple(x.shape)}; expected [B >= 2, N, D]")
    return float(x.float().std(dim=0).mean())


@torch.no_grad()
def effective_rank(x: torch.Tensor, max_rows: int = 2048) -> float:
    """Effective rank ``exp(H(s / sum s))`` of ``[..., D]`` features (s: singular values of centred rows).

    1 means every feature vector lies on one line (collapse); the maximum is ``min(M, D)``.
    """
    x = x.reshape(-1, x.shape[-1]).float()  # [M, D]
    if x.shape[0] > max_rows:
        x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# -- world-model losses (V-JEPA 2-AC) -------------------------------------------------------------
LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def _regression(loss: str):
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[loss]


def teacher_forcing_loss(
    predictor: ACPredictor,
    z: Tensor,
    actions: Tensor,
    proprio: Tensor | None = None,
    proprio_weight: float = 1.0,
    loss: str = "l1",
    return_predictions: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """One-step loss (L1 by default, as V-JEPA 2-AC; or ``"mse"``) with ground-truth inputs at every step.

    Args:
        z: ``[B, T, N, D]`` target-encoder latents of a window of ``T`` frames.
        actions: ``[B, T-1, A]`` the actions between consecutive frames.
        proprio: ``[B, T, P]`` or None.
        loss: ``"l1"`` (fits the conditional median: stays at "no change" where changes are uncertain)
            or ``"mse"`` (the conditional mean).
        return_predictions: also return the predicted latents ``[B, T-1, N, D]``.
    """
    fn = _regression(loss)
    p_in = None if proprio is None else proprio[:, :-1]
    z_pred, p_pred = predictor(z[:, :-1], actions, p_in)  # [B, T-1, N, D]
    out = fn(z_pred, z[:, 1:])
    if p_pred is not None:
        out = out + proprio_weight * fn(p_pred, proprio[:, 1:])
    return (out, z_pred) if return_predictions else out


def rollout_loss(
    predictor: ACPredictor,
    z: Tensor,
    actions: Tensor,
    k: int = 2,
    proprio: Tensor | None = None,
    context: int = 1,
    proprio_weight: float = 1.0,
    loss: str = "l1",
    return_predictions: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``k``-step autoregressive loss: from ``context`` true frames, feed predictions back ``k`` times.

    Args:
        z: ``[B, T, N, D]`` latents; needs ``T >= context + k``.
        actions: ``[B, T-1, A]``.
        k: number of imagined steps scored.
        proprio: ``[B, T, P]`` or None.
        context: observed frames before imagination starts.
        loss: ``"l1"`` or ``"mse"``.
        return_predictions: also return the imagined latents ``[B, k, N, D]``.
    """
    fn = _regression(loss)
    T = z.shape[1]
    if k < 1 or context < 1 or context + k > T:
        raise ValueError(
            f"rollout_loss needs 1 <= k and context + k <= T; got k={k}, context={context}, T={T}"
        )
    z_hat, p_hat = predictor.imagine(
        z[:, :context],
        actions[:, context - 1 : context - 1 + k],
        actions_ctx=actions[:, : context - 1] if context > 1 else None,
        proprio_ctx=None if proprio is None else proprio[:, :context],
    )  # [B, k, N, D]
    out = fn(z_hat, z[:, context : context + k])
    if p_hat is not None:
        out = out + proprio_weight * fn(p_hat, proprio[:, context : context + k])
    return (out, z_hat) if return_predictions else out


def _check_td(gamma: float, expectile: float) -> None:
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma={gamma}; expected 0 < gamma < 1")
    if not 0.0 < expectile < 1.0:
        raise ValueError(f"expectile={expectile}; expected 0 < expectile < 1")


def _expectile_td(q: Tensor, v_old: Tensor, v: Tensor, expectile: float) -> Tensor:
    """The expectile regression of the value ``v`` onto the TD target ``q``: errors where ``q`` beats the
    target network's value ``v_old`` weigh ``expectile``, the others ``1 - expectile``."""
    weight = torch.where(q - v_old >= 0, expectile, 1.0 - expectile)
    return (weight * (q - v).square()).mean()


def temporal_distance_loss(
    head: nn.Module,
    target_head: nn.Module,
    s: Tensor,
    s_next: Tensor,
    goal: Tensor,
    reached: Tensor,
    gamma: float = 0.98,
    expectile: float = 0.9,
    step_cost: Tensor | None = None,
) -> Tensor:
    """HILP's temporal-distance value loss (Park et al. 2024, arXiv 2402.15567) on latent frames.

    ``V(s, g) = -||phi(s) - phi(g)||`` (``phi = head``) is fitted by expectile regression to the TD target
    ``q = r + gamma * (1 - reached) * V_target(s', g)`` with ``r = -1`` per step (0 once ``g`` is reached),
    so ``||phi(s) - phi(g)||`` approaches the discounted count of the fewest steps from ``s`` to ``g``:
    ``(1 - gamma^d) / (1 - gamma)``. The expectile (> 0.5) leans the fit towards the best continuation
    the data shows, so a random-action dataset still yields shortest-path distances.

    Args:
        head, target_head: the online ``phi`` (with a ``distance`` method, as
            :class:`~jepa_agent.models.latent.TemporalDistanceHead`) and its EMA copy (no gradient flows
            into the copy).
        s, s_next, goal: latents ``[B, N, D]`` (or ``[B, F]`` already flat for heads that take it).
        reached: ``[B]`` bool, True where the goal is ``s`` itself.
        step_cost: ``[B]`` the cost of the transition ``s -> s'`` (default 1: distances count steps; the
            size of the action taken: distances measure the least effort, finer than one step).
        gamma: discount (the distance saturates at ``1 / (1 - gamma)`` steps).
        expectile: ``tau`` of the expectile regression, in (0, 1).
    """
    _check_td(gamma, expectile)
    with torch.no_grad():
        t_s, t_next, t_g = target_head(s), target_head(s_next), target_head(goal)
        not_done = (~reached).float()
        cost = not_done if step_cost is None else not_done * step_cost
        q = -cost + gamma * not_done * -(t_next - t_g).norm(dim=-1)
        v_old = -(t_s - t_g).norm(dim=-1)
    return _expectile_td(q, v_old, -head.distance(s, goal), expectile)


def goal_critic_loss(
    critic: nn.Module,
    target_critic: nn.Module,
    s: Tensor,
    s_next: Tensor,
    goal: Tensor,
    reached: Tensor,
    next_reached: Tensor,
    gamma: float = 0.98,
    expectile: float = 0.9,
    step_cost: Tensor | None = None,
) -> Tensor:
    """Expectile TD for a goal-conditioned critic ``steps(s, g) >= 0`` (GCIVL's value, Park et al. 2024,
    OGBench; the objective of :func:`temporal_distance_loss` without its symmetric ``phi``).

    ``V(s, g) = -steps(s, g)`` is fitted to ``q = -c + gamma * (1 - reached) * V_target(s', g)``, where the
    step into the goal ends the episode: ``V(s', g) = 0`` when ``s'`` is the goal (``next_reached``). A
    distance head gets that zero for free (``phi(g) - phi(g) = 0``); a critic does not, and without it the
    constant ``1 / (1 - gamma)`` solves the TD equation for every pair. So ``steps`` approaches the
    discounted count of the fewest steps the data shows, ``(1 - gamma^d) / (1 - gamma)``.

    Args:
        critic, target_critic: the online critic (``distance(s, g)`` -> steps) and its EMA copy.
        s, s_next, goal: latents ``[B, N, D]``.
        reached: ``[B]`` bool, True where the goal is ``s`` itself; next_reached: where it is ``s'``.
        step_cost, gamma, expectile: as :func:`temporal_distance_loss`.
    """
    _check_td(gamma, expectile)
    with torch.no_grad():
        not_done = (~reached).float()
        cost = not_done if step_cost is None else not_done * step_cost
        go_on = not_done * (~next_reached).float()
        q = -cost + gamma * go_on * -target_critic.distance(s_next, goal)
        v_old = -target_critic.distance(s, goal)
    return _expectile_td(q, v_old, -critic.distance(s, goal), expectile)
