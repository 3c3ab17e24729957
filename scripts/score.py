"""A cheap planning-quality score: greedy MPC with PERFECT dynamics on a grid of arm poses.

    python scripts/score.py checkpoint=checkpoints/reach env=reach
    python scripts/score.py checkpoint=checkpoints/reach_distracting env=reach_distracting scenes=3
    python scripts/score.py checkpoint=checkpoints/reach cost.latent_weight=0   # score a variant of the cost

Renders the arm on a ``shoulder_steps x elbow_steps`` grid of joint angles (in ``scenes`` scenes of the
env), encodes every image with the world model's frozen encoder, and for each cost space it offers
(``pixels``, ``latent``, ``metric_head``: the temporal-distance head alone, ``metric``: the label-free cost
as ``plan.py`` plans with it, i.e. the temporal-distance head, its latent term and the displacement head
when trained, with plan.py's ``cost.*`` settings; ``readout``: the labelled baseline) runs an idealised MPC
from random starts to random grid goals (``jepa_agent/scoring.py``): each replan finds the cheapest pose
within ``window`` and moves one action towards it (``execute=action``; ``jump``: all the way), and a pair
succeeds by the task's own rule (``success=task``: the end effector within its threshold of the goal's;
``pose``: on the goal's grid pose). Takes well under 3 minutes on 2 CPU cores. Ends with one JSON line:
``"score"`` (the success of the space ``plan.py`` would use, ``cost.space=auto``) and ``"spaces"`` (every
space's success). ``pairs_out=FILE`` also writes every pair's record (start, goal and end poses, moves,
the end effector's final distance, success; per scene and space) as JSON lines, to see where a space's
misses end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from jepa_agent.config import hydra_main
from jepa_agent.scoring import SCORED_COST_KEYS, planning_score
from jepa_agent.utils import atomic_write_text, check_int, cli_errors, emit_json_line, set_threads
from jepa_agent.world_model import WorldModel


@hydra_main("score")
@cli_errors
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    for key, least in (("shoulder_steps", 2), ("elbow_steps", 2), ("goals", 1), ("scenes", 1)):
        check_int(key, cfg[key], least)
    check_int("replans", cfg.replans, 1)
    poses = cfg.shoulder_steps * cfg.elbow_steps
    if cfg.goals > poses:
        raise ValueError(f"goals={cfg.goals}; expected at most the grid's {poses} poses")
    if cfg.window is None and "max_delta" not in cfg.env:  # torque control: no servo step to scale by
        raise ValueError(
            f"window=null needs env.max_delta, which env={cfg.env.name} has not (its actions are torques); "
            "pass window=RAD, the joint angle reachable per replan (e.g. window=0.5)"
        )
    window = 5 * float(cfg.env.max_delta) if cfg.window is None else float(cfg.window)
    if not window > 0:
        raise ValueError(f"window={cfg.window!r}; expected > 0 (rad reachable per replan)")
    pairs_out = cfg.get("pairs_out")
    if pairs_out is not None:  # checked before the grid is rendered and scored, not after
        path = Path(str(pairs_out))
        parent = next(p for p in path.absolute().parents if p.exists())  # the nearest one that exists
        if path.is_dir() or not parent.is_dir():
            raise ValueError(f"pairs_out={pairs_out!r}: expected a file path (in a directory)")
    set_threads(cfg.threads)
    cost = OmegaConf.to_container(cfg.cost, resolve=True)
    model = WorldModel.from_checkpoint(cfg.checkpoint, device=cfg.device)
    space = model.resolve_cost_space(str(cfg.cost.space))
    pairs: list[dict] | None = None if pairs_out is None else []
    wrap = 0 in (cfg.env.get("continuous_joints") or [])  # the env config: is the shoulder continuous?
    spaces = planning_score(model, cfg.env.name, cfg.shoulder_steps, cfg.elbow_steps, cfg.goals, window,
                            cfg.scenes, wrap, cfg.seed, str(cfg.execute), cfg.step, str(cfg.success),
                            int(cfg.replans), cost, pairs)  # fmt: skip
    if pairs_out is not None:
        atomic_write_text(pairs_out, "".join(json.dumps(row) + "\n" for row in pairs))
    scored = {k: cost[k] for k in SCORED_COST_KEYS}  # as scored: null latent_weight -> the model's default
    scored["latent_weight"] = model.resolve_latent_weight(
        cost["latent_weight"], cost["displacement_weight"], space
    )
    emit_json_line({"score": spaces[space], "space": space, "spaces": spaces,
                    "state_labels": model.state_labels,
                    "goals": int(cfg.goals) * int(cfg.scenes), "grid": [cfg.shoulder_steps, cfg.elbow_steps],
                    "scenes": int(cfg.scenes), "window": window, "execute": str(cfg.execute),
                    "success": str(cfg.success), "cost": scored,
                    "checkpoint": str(cfg.checkpoint), "pairs_out": pairs_out,
                    "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip


if __name__ == "__main__":
    main()
