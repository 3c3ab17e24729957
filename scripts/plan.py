"""Reach goals shown only as images by planning in a JEPA world model's latent space.

    python scripts/plan.py env=reach goal=image                 # the shipped checkpoint, 20 held-out goals
    python scripts/plan.py env=push goal=state                  # the true-state oracle alone (no model)
    python scripts/plan.py goal=path/to/goal.png episodes=3     # any image as the goal
    python scripts/plan.py planner=mppi episodes=100 checkpoint=outputs/train_all/.../world_model
    python scripts/plan.py ... seed=1 record=data/planner_eps   # also keep the agent's episodes as a dataset
    python scripts/plan.py env=push checkpoint=C dynamics=simulator  # the model's cost on true futures

Writes to the run dir: an mp4 per recorded episode (observation | goal), episodes.jsonl (a line per
episode as it ends, kept if the run is interrupted; ``final_info`` holds the env's numbers at the last step,
e.g. push's pusher, block and yaw errors), results.json, the planner's cost per iteration
(cost_per_iteration.png) and an energy landscape (energy_landscape.png); ends with one JSON line.
With ``record=DIR`` the main policy's episodes are also written to DIR as an episode dataset (collect.py's
format): the states the planner visits, to train the world model on beside the scripted data.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

import envs
from jepa_agent.checkpoint import RENDER_SETTINGS
from jepa_agent.collect import EpisodeRecorder
from jepa_agent.config import hydra_main
from jepa_agent.evaluation import EVAL_SEED_OFFSET, EpisodeResult, RandomPolicy, ZeroPolicy, evaluate
from jepa_agent.goals import goal_kind, load_goal_image
from jepa_agent.oracle import ORACLES, SimulatorImagination, oracle_model
from jepa_agent.planning import build_agent, load_planning_model, write_plan_report
from jepa_agent.utils import (
    atomic_write_json,
    check_int,
    cli_errors,
    emit_json_line,
    resolve_device,
    seed_everything,
    set_threads,
    strict_json,
)

DYNAMICS = ("model", "simulator")  # dynamics=: what imagines the candidates' futures
BASELINES = ("oracle", "random", "zero")  # baselines=: true (all), false (none) or a list of these


def baseline_names(value: Any) -> tuple[str, ...]:
    """``baselines=``: ``true`` (every baseline), ``false`` (none) or a list of names from
    :data:`BASELINES` (e.g. ``'baselines=[random,zero]'`` skips the slow oracle); refused in one line."""
    if isinstance(value, bool):
        return BASELINES if value else ()
    names = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) and n in BASELINES for n in names):
        return tuple(n for n in BASELINES if n in names)
    raise ValueError(
        f"baselines={names!r}; expected true, false or a list of {', '.join(BASELINES)} "
        "(e.g. 'baselines=[random,zero]')"
    )


def check_counts(cfg: DictConfig) -> None:
    """Refuse nonsensical counts up front (before any env or model is built), naming the key."""
    counts = (
        ("episodes", 1, "held-out goals to run"),
        ("videos", 0, "episodes recorded per policy"),
        ("energy_grid", 0, "energy-landscape resolution; 0 skips the plot"),
    )
    for key, least, what in counts:
        check_int(key, cfg[key], least, what)
    if cfg.dynamics not in DYNAMICS:
        raise ValueError(f"dynamics={cfg.dynamics!r}; expected one of {list(DYNAMICS)}")
    baseline_names(cfg.baselines)
    # the state oracle's macro-actions (goal=state); with a checkpoint, the model's own action_chunk rules
    check_int("env.action_chunk", cfg.env.action_chunk, 1, "env steps per planned step")
    w = cfg.disagreement
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
        raise ValueError(
            f"disagreement={w!r}: expected a number >= 0 (the weight of an ensemble's cost spread)"
        )


def build_oracle(env: Any, cfg: DictConfig, action_chunk: int) -> Any:
    """The true-state baseline: the env's oracle model (``jepa_agent.oracle.ORACLES``) under the run's
    planner, agent and cost settings, stepping ``action_chunk`` env steps per planned step: the JEPA
    agent's budget. A simulator oracle steps its candidates on the run's threads (``threads``)."""
    model = oracle_model(env, action_chunk=action_chunk, threads=torch.get_num_threads())
    return build_agent(model, cfg.planner, cfg.agent, cfg.cost, env.action_space)


@hydra_main("plan")
@cli_errors(
    on_interrupt="the episodes finished so far are in the run dir's episodes.jsonl (outputs/plan/<time>)"
)
def main(cfg: DictConfig) -> None:
    check_counts(cfg)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    env = envs.make_env_from_config(cfg.env)
    action_dim = env.action_space.shape[0]

    baselines = baseline_names(cfg.baselines)
    kind = goal_kind(str(cfg.goal))
    goal_image = load_goal_image(cfg.goal, cfg.env.image_size) if kind == "file" else None
    policies = {}
    supervision: dict = {"state_labels": None, "cost_space": "oracle"}  # goal=state: the simulator's own
    if kind == "state":
        policies["oracle"] = build_oracle(env, cfg, int(cfg.env.action_chunk))  # a world model's, below
    else:
        checkpoint = cfg.checkpoint
        checkpoint = OmegaConf.to_container(checkpoint) if OmegaConf.is_list(checkpoint) else str(checkpoint)
        if isinstance(checkpoint, str) and float(cfg.disagreement) != 1.0:
            raise ValueError(
                f"disagreement={cfg.disagreement} weighs an ensemble's spread; checkpoint={checkpoint} is "
                "one model: pass a list, 'checkpoint=[A,B]'"
            )
        model = load_planning_model(
            checkpoint,
            cfg.env.id,
            cfg.env.image_size,
            action_dim,
            cfg.cost.space,
            device,
            disagreement=float(cfg.disagreement),
            render={k: cfg.env.get(k, default) for k, default in RENDER_SETTINGS.items()},
        )
        imagination = model if cfg.dynamics == "model" else SimulatorImagination(model, env)
        policies["jepa"] = build_agent(imagination, cfg.planner, cfg.agent, cfg.cost, env.action_space)
        # what the headline was trained with: recorded states (a readout or proprio input) or not
        supervision = {
            "state_labels": model.state_labels,
            "cost_space": model.resolve_cost_space(cfg.cost.space),
            "metric_kind": model.metric_kind,  # the metric head: distance | critic (null: none trained)
            "memory": policies["jepa"].memory.capacity,  # frames of context (the model's train.context)
            "dynamics": str(cfg.dynamics),  # simulator: the cost on true futures (a diagnostic)
            # cost.latent_weight as planned (null: the model's default; null outside the metric space)
            "latent_weight": model.resolve_latent_weight(
                cfg.cost.latent_weight, cfg.cost.displacement_weight, cfg.cost.space
            ),
        }
        has_oracle = type(env.unwrapped) in ORACLES  # env=gym: any env, with no true-state model
        if "oracle" in baselines and kind == "image" and has_oracle:  # a user image has no true goal state
            policies["oracle"] = build_oracle(env, cfg, model.action_chunk)  # the same macro-actions
    if kind != "file":
        if "random" in baselines:
            policies["random"] = RandomPolicy(env.action_space, seed=cfg.seed)
        if "zero" in baselines:
            policies["zero"] = ZeroPolicy(env.action_space)

    seeds = [EVAL_SEED_OFFSET + 10_000 * int(cfg.seed) + i for i in range(int(cfg.episodes))]
    main_name = next(iter(policies))
    recorder = None
    if cfg.record is not None:  # the main policy's episodes, kept as a dataset (on-policy training data)
        collection = {
            "policy": f"plan.py:{main_name}",
            "checkpoint": None if kind == "state" else checkpoint,
            "goal": str(cfg.goal),
            "seed": int(cfg.seed),
            **{k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("planner", "agent", "cost")},
        }
        recorder = EpisodeRecorder(env, cfg.record, envs.env_kwargs_from_config(cfg.env), collection)
    bar = tqdm(total=len(seeds) * len(policies), desc="episodes", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    with open(out / "episodes.jsonl", "w") as log:  # one line per finished episode: kept if interrupted

        def log_episode(name: str, i: int, result: EpisodeResult) -> None:
            log.write(json.dumps(strict_json({"policy": name, "index": i, **asdict(result)})) + "\n")
            log.flush()

        try:
            for name, policy in policies.items():
                run_env = recorder if recorder is not None and name == main_name else env
                results |= evaluate(
                    run_env,
                    {name: policy},
                    seeds,
                    goal_image=goal_image,
                    video_dir=out,
                    video_policies=(name,),
                    max_videos=int(cfg.videos),
                    progress=lambda name, i: bar.set_postfix_str(name) or bar.update(),
                    on_episode=log_episode,
                )
        finally:
            if recorder is not None:
                recorder.writer.finalize()
                recorder.writer.close()
    bar.close()
    plots = write_plan_report(env, policies, seeds[0], goal_image, out, int(cfg.energy_grid))
    atomic_write_json(
        out / "results.json",
        {
            "config": OmegaConf.to_container(cfg, resolve=True),
            "seeds": seeds,
            **supervision,
            "results": results,
            "plots": plots,
        },
    )
    main_res = results[main_name]
    summary = {
        "policy": main_name,
        "success_rate": None if kind == "file" else main_res["success_rate"],
        "success_ci95": None if kind == "file" else main_res["success_ci95"],
        "success_rate_end": None if kind == "file" else main_res["success_rate_end"],
        "episodes": main_res["episodes"],
        "final_distance_mean": None if kind == "file" else main_res["final_distance_mean"],
        "plan_seconds_median": main_res["plan_seconds_median"],
        "device": str(device),
        **supervision,
    }
    for name in ("random", "zero", "oracle"):
        if name in results and name != main_name:
            for key in ("success_rate", "success_ci95", "success_rate_end"):
                summary[f"{name}_{key}"] = results[name][key]
    if recorder is not None:
        summary["recorded"] = {
            "out": str(cfg.record),
            "episodes": recorder.episodes_written,
            "frames": recorder.frames_written,
        }
    summary["out"] = str(out)
    emit_json_line(summary)
    env.close()


if __name__ == "__main__":
    main()
