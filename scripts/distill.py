"""Distil goal reaching into a small MLP policy on the world model's planning-space features.

    python scripts/distill.py checkpoint=CKPT episodes=DIR                       # hindsight, label-free
    python scripts/distill.py checkpoint=CKPT episodes=DIR cache=/tmp/feats      # latent: 99% on reach
    python scripts/distill.py checkpoint=CKPT episodes=DIR dagger_rounds=2       # + DAgger from CEM

Encodes every frame of the recorded episodes once (``cache=`` keeps the features for the next run),
trains :class:`~jepa_agent.rl.distill.DistilledPolicy` on hindsight pairs of the training split (a frame,
a later frame of its episode as the goal, the recorded action as the target), optionally adds DAgger
rounds labelled by the CEM planner, saves it (``distilled_policy.safetensors`` + ``.json``), and runs it
on ``plan.py``'s held-out goals (reset seeds ``EVAL_SEED_OFFSET + 10000 * seed + i``) through the encoder
(``GoalImagePolicy``: the time per decision includes the frame's encoding). Then times ``cem_decisions``
decisions of the planner (``PlannerPolicy`` from the ``planner`` / ``agent`` / ``cost`` groups: ``plan.py``'s
CEM by default) on the same goals. Ends with one JSON line: success at any step / at the end with 95% CIs,
both medians of the time per decision and their ratio (``speedup_vs_cem``: the policy is also asked for its
decision on each observation the planner decided on, right after it, so the two are timed under the same
load; ``speedup_vs_cem_unpaired`` divides by the evaluation's own median instead).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import envs
from jepa_agent.config import hydra_main
from jepa_agent.evaluation import EVAL_SEED_OFFSET, success_rates
from jepa_agent.planning import load_planning_model
from jepa_agent.rl.distill import (
    DAGGER_SEED_OFFSET,
    DistillConfig,
    GoalImagePolicy,
    HindsightData,
    check_distill_config,
    dagger_labels,
    run_goal_episodes,
    train_distilled,
)
from jepa_agent.rl.goal_image import GoalImageObservation
from jepa_agent.rl.planner_policy import PlannerPolicy
from jepa_agent.rl.space import ENCODER_PATHS, PlanningSpace
from jepa_agent.rl.student import StudentEncoder, episode_frames, train_student
from jepa_agent.utils import (
    check_int,
    cli_errors,
    emit_json_line,
    resolve_device,
    seed_everything,
    set_threads,
)

log = logging.getLogger("distill")
POLICY_ENCODERS = (*ENCODER_PATHS, "student")


def encoded(space: PlanningSpace, cfg: DictConfig, split: str) -> HindsightData | None:
    """The split's features (from ``cache`` when it holds them for this checkpoint, space and data)."""
    if split == "val" and not cfg.val_fraction > 0:
        return None
    ckpt = space.model.meta.get("checkpoint")
    weights = Path(str(ckpt)) / "model.safetensors"
    # a model retrained at the same path must not reuse the features of the one before it
    stamp = f"{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights.is_file() else None
    meta = {"checkpoint": ckpt, "weights": stamp, "space": space.name, "split": split,
            "episodes": str(Path(cfg.episodes).resolve()),
            "val_fraction": float(cfg.val_fraction)}  # fmt: skip
    path = None if cfg.cache is None else Path(cfg.cache) / f"{split}.safetensors"
    data = None if path is None else HindsightData.load(path, meta)
    if data is None:
        t0 = time.perf_counter()
        data = HindsightData.from_episodes(
            space, cfg.episodes, split, float(cfg.val_fraction), bool(cfg.progress)
        )
        log.info("encoded %d %s frames in %.0f s", data.num_frames, split, time.perf_counter() - t0)
        if path is not None:
            data.save(path, meta)
    return data


def fit_student(
    space: PlanningSpace, cfg: DictConfig, train: HindsightData, val: HindsightData | None
) -> tuple[StudentEncoder, dict]:
    """A :class:`StudentEncoder` fitted to the features of the training split's frames (label-free)."""
    progress, share = bool(cfg.progress), float(cfg.val_fraction)
    frames = episode_frames(cfg.episodes, "train", share, progress)
    val_frames = None if val is None else episode_frames(cfg.episodes, "val", share, progress)
    if len(frames) != train.num_frames or (val is not None and len(val_frames) != val.num_frames):
        raise RuntimeError(
            f"{cfg.episodes}: the frames do not line up with the encoded features; clear cache={cfg.cache}"
        )
    pooler = space.model.pooler
    tokens = space.name == "latent" and getattr(pooler, "mode", None) == "grid"  # a grid of tokens
    grid = int(pooler.grid_size) if tokens else 4
    student = StudentEncoder(space.dim, space.model.image_size, int(cfg.student_width), grid, tokens)
    with tqdm(desc="student", total=int(cfg.student_steps), file=sys.stderr, disable=not progress) as b:
        fit = train_student(
            student, frames, train.features, val_frames, None if val is None else val.features,
            steps=int(cfg.student_steps), seed=int(cfg.seed),
            progress=lambda s, loss: b.update(100) or b.set_postfix(loss=f"{loss:.4f}"),
        )  # fmt: skip
    student.meta.update(checkpoint=str(cfg.checkpoint), space=space.name, episodes=str(cfg.episodes), **fit)
    log.info("student encoder: %.0f s, held-out error %.3f of the features' variance",
             fit["seconds"], fit.get("val_ratio", float("nan")))  # fmt: skip
    return student, {"width": int(cfg.student_width), "steps": int(cfg.student_steps),
                     "parameters": sum(p.numel() for p in student.parameters()),
                     **{k: round(v, 4) for k, v in fit.items()}}  # fmt: skip


@hydra_main("distill")
@cli_errors
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    for key, least in (("eval_episodes", 1), ("cem_decisions", 0), ("dagger_rounds", 0),
                       ("dagger_episodes", 1), ("dagger_steps", 1), ("student_steps", 1),
                       ("student_width", 1)):  # fmt: skip
        check_int(key, cfg[key], least)
    if cfg.policy_encoder not in POLICY_ENCODERS:  # refused before any encoding or training
        raise ValueError(f"policy_encoder={cfg.policy_encoder!r}; expected one of {list(POLICY_ENCODERS)}")
    train_cfg = DistillConfig(**{f.name: cfg[f.name] for f in dataclasses.fields(DistillConfig)})
    check_distill_config(train_cfg)
    set_threads(cfg.threads)
    seed_everything(int(cfg.seed))
    env = GoalImageObservation(envs.make_env_from_config(cfg.env))
    model = load_planning_model(cfg.checkpoint, cfg.env.id, cfg.env.image_size, env.action_space.shape[0],
                                cfg.cost.space, resolve_device(cfg.device))  # fmt: skip
    space = PlanningSpace(model, str(cfg.space), str(cfg.cost.metric))
    train, val = encoded(space, cfg, "train"), encoded(space, cfg, "val")
    bar = lambda: tqdm(desc="train", total=train_cfg.steps, file=sys.stderr, disable=not cfg.progress)  # noqa: E731
    with bar() as b:
        policy, fit = train_distilled(
            train, train_cfg, val, progress=lambda s, loss: b.update(100) or b.set_postfix(loss=f"{loss:.4f}")
        )
    log.info("trained in %.1f s: loss %.4f -> %.4f", fit["seconds"], fit["loss_initial"], fit["loss_final"])
    rounds, labels = [], None
    for r in range(int(cfg.dagger_rounds)):
        first = DAGGER_SEED_OFFSET + 10_000 * int(cfg.seed) + r * int(cfg.dagger_episodes)
        expert = PlannerPolicy.from_config(model, env.action_space, cfg)
        with tqdm(desc=f"dagger {r + 1}", file=sys.stderr, disable=not cfg.progress) as b:
            t_label = time.perf_counter()
            new = dagger_labels(
                policy, expert, env, space, range(first, first + int(cfg.dagger_episodes)), b.update
            )
            t_label = time.perf_counter() - t_label
        labels = new if labels is None else tuple(torch.cat([a, b]) for a, b in zip(labels, new, strict=True))
        step_cfg = dataclasses.replace(train_cfg, steps=int(cfg.dagger_steps), seed=train_cfg.seed + r + 1)
        policy, m = train_distilled(train, step_cfg, val, policy=policy, dagger=labels)
        rounds.append({"labels": len(labels[0]), "label_seconds": round(t_label, 1), **m})
    policy.meta.update(checkpoint=str(cfg.checkpoint), space=space.name, metric=space.metric,
                       env_id=cfg.env.id, image_size=int(cfg.env.image_size),
                       episodes=str(cfg.episodes))  # fmt: skip
    out = policy.save(cfg.out)
    encoder, student_fit = str(cfg.policy_encoder), {}
    if encoder == "student":  # a small CNN fitted to give the same features, for the policy's decisions
        encoder, student_fit = fit_student(space, cfg, train, val)
        encoder.save(out)

    seeds = [EVAL_SEED_OFFSET + 10_000 * int(cfg.seed) + i for i in range(int(cfg.eval_episodes))]
    with tqdm(desc="evaluate", total=len(seeds), file=sys.stderr, disable=not cfg.progress) as b:
        front = GoalImagePolicy(space, policy, encoder=encoder)
        res = run_goal_episodes(front, env, seeds, on_episode=lambda *_: b.update())
    policy_s = float(np.median(res["decision_seconds"]))
    summary = {"policy": "DistilledPolicy", **success_rates(res["reached"], res["ended"]),
               "target": train_cfg.target,
               "decision_seconds_median": policy_s, "decisions": len(res["decision_seconds"]),
               "final_distance_mean": float(np.mean(res["final_distance"])),
               "mlp_seconds_median": float(np.median(front.mlp_seconds)),
               "policy_encoder": front.features.path}  # fmt: skip
    if int(cfg.cem_decisions) > 0:
        planner = PlannerPolicy.from_config(model, env.action_space, cfg)
        timed = run_goal_episodes(planner, env, seeds, max_decisions=int(cfg.cem_decisions), shadow=front)
        cem, paired = np.median(timed["decision_seconds"]), np.median(timed["shadow_seconds"])
        # the ratio: the policy's decision on each observation CEM decided on, right after it (same load)
        summary.update(cem_decision_seconds_median=float(cem), cem_decisions=len(timed["decision_seconds"]),
                       paired_decision_seconds_median=float(paired), speedup_vs_cem=float(cem / paired),
                       speedup_vs_cem_unpaired=float(cem) / policy_s)  # fmt: skip
    emit_json_line({**summary, "train_seconds": round(fit["seconds"], 1),
                    "loss_initial": fit["loss_initial"], "loss_final": fit["loss_final"],
                    "val_loss_initial": fit.get("val_loss_initial"),
                    "val_loss_final": fit.get("val_loss_final"),
                    "train_frames": train.num_frames, "train_episodes": len(train.lengths),
                    "dagger": rounds, "student": student_fit, "space": space.name,
                    "state_labels": model.state_labels,
                    "cost_space": model.resolve_cost_space(str(cfg.cost.space)),
                    "planner": OmegaConf.to_container(cfg.planner, resolve=True),
                    "checkpoint": str(cfg.checkpoint), "seeds": [seeds[0], seeds[-1]],
                    "threads": int(cfg.threads),
                    "out": str(out), "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    env.close()


if __name__ == "__main__":
    main()
