"""The planning space's distance as a goal-reaching reward, scored on held-out episodes.

    python scripts/reward_quality.py checkpoint=/path/to/world_model env=reach
    python scripts/reward_quality.py checkpoint=CKPT episodes=DIR spaces=[metric,latent]

Records ``num_episodes`` held-out episodes with the env's data policy (seeds disjoint from training and
from ``plan.py``'s goals) unless ``episodes=`` names a directory of them, samples HER-style hindsight
pairs (a frame and a later frame of its episode, some from other episodes), and scores each cost space's
distance, beside pixel L2: the AUROC of ``-distance`` for the task's own success rule between the two
recorded states, and Spearman's rho with the task's true goal distance (``jepa_agent/rl/reward_quality.py``).
Ends with one JSON line.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

import envs
from jepa_agent.collect import collect
from jepa_agent.config import hydra_main
from jepa_agent.data.episodes import EpisodeDataset
from jepa_agent.rl.reward_quality import hindsight_pairs, reward_quality
from jepa_agent.rl.space import PlanningSpace
from jepa_agent.utils import check_int, cli_errors, emit_json_line, set_threads
from jepa_agent.world_model import WorldModel


@hydra_main("reward_quality")
@cli_errors
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    check_int("num_episodes", cfg.num_episodes, 1)
    check_int("pairs_per_episode", cfg.pairs_per_episode, 1)
    spaces = list(cfg.spaces)
    if not spaces:
        raise ValueError("spaces=[]; expected at least one cost space (auto | metric | readout | latent)")
    weight = cfg.latent_weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
        raise ValueError(f"latent_weight={weight!r}; expected a number >= 0 (0: the head's distance alone)")
    weight = float(weight)
    set_threads(cfg.threads)
    model = WorldModel.from_checkpoint(cfg.checkpoint, device=cfg.device)
    env = envs.make_env_from_config(cfg.env)
    success_fn = getattr(env.unwrapped, "hindsight_success", None)
    if not callable(success_fn):
        raise ValueError(
            f"env={cfg.env.name}: its env has no hindsight_success(states, goal_states) method, the task's "
            "success rule between two recorded states that this score needs (our tasks have one)"
        )
    if cfg.episodes is None:
        root = Path(cfg.out) / "heldout"
        kwargs = envs.env_kwargs_from_config(cfg.env)
        collect(root, int(cfg.num_episodes), env=cfg.env.name, env_kwargs=kwargs, policy=str(cfg.policy),
                seed=int(cfg.collect_seed), progress=False)  # fmt: skip
    else:
        root = Path(cfg.episodes)
    data = EpisodeDataset(root, window=1, expect_env_id=cfg.env.id, expect_image_size=model.image_size)
    episodes = [data.episode(i) for i in range(data.num_episodes)]
    frames = np.concatenate([e["frames"] for e in episodes])
    pairs = hindsight_pairs([e["state"] for e in episodes], success_fn, int(cfg.pairs_per_episode),
                            float(cfg.offset_p), float(cfg.other_episodes), int(cfg.seed))  # fmt: skip
    named = {}
    for space in spaces:
        resolved = model.resolve_cost_space(str(space))
        named[resolved] = PlanningSpace(model, space=resolved)
        if resolved == "metric" and weight > 0:  # + the latents' term, as rl.py latent_weight=W
            named[f"metric+latent_{weight:g}"] = PlanningSpace(model, space=resolved, latent_weight=weight)
    scores = reward_quality(named, frames, pairs)
    emit_json_line({"scores": scores, "space": model.resolve_cost_space("auto"),
                    "state_labels": model.state_labels, "pairs": len(pairs.success),
                    "success_pairs": int(pairs.success.sum()), "episodes": data.num_episodes,
                    "episodes_dir": str(root), "checkpoint": str(cfg.checkpoint),
                    "offset_p": float(cfg.offset_p), "other_episodes": float(cfg.other_episodes),
                    "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip


if __name__ == "__main__":
    main()
