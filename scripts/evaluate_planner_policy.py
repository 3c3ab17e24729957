"""``plan.py``'s agent run by stable-baselines3's own ``evaluate_policy``, through :class:`PlannerPolicy`.

    python scripts/evaluate_planner_policy.py checkpoint=CKPT episodes=100
    python scripts/plan.py checkpoint=CKPT episodes=100 baselines=false   # the same goals, plan.py's loop

Takes ``plan.py``'s config (``configs/plan.yaml``: checkpoint, env, planner, agent, cost, episodes, seed),
builds the agent the same way (``PlannerPolicy.from_config``) and runs it on the same held-out goals (reset
seeds ``EVAL_SEED_OFFSET + 10000 * seed + i``, fed to a one-env ``DummyVecEnv`` in order), counting
success at any step and at the end from ``info["is_success"]``. Ends with one JSON line whose
``success_rate`` and ``success_ci95`` compare with ``plan.py``'s.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv
from tqdm import tqdm

import envs
from jepa_agent.config import hydra_main
from jepa_agent.evaluation import EVAL_SEED_OFFSET, success_rates
from jepa_agent.planning import load_planning_model
from jepa_agent.rl import GoalImageObservation, PlannerPolicy
from jepa_agent.utils import (
    check_int,
    cli_errors,
    emit_json_line,
    resolve_device,
    seed_everything,
    set_threads,
)


class SeededResets(gym.Wrapper):
    """Resets with ``seeds[0]``, ``seeds[1]``, ... in turn, whatever seed the caller passes (a VecEnv's
    auto-reset passes none), so an SB3 evaluation runs exactly these goals in this order."""

    def __init__(self, env: gym.Env, seeds: list[int]) -> None:
        super().__init__(env)
        self.seeds, self.resets = list(seeds), 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        seed = self.seeds[self.resets % len(self.seeds)]
        self.resets += 1
        return self.env.reset(seed=seed, options=options)


@hydra_main("plan")
@cli_errors
def main(cfg: DictConfig) -> None:
    t0 = time.perf_counter()
    check_int("episodes", cfg.episodes, 1)
    if str(cfg.goal) != "image":
        raise ValueError(
            f"goal={cfg.goal!r}; this script runs the world model towards goal images: goal=image"
        )
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    seeds = [EVAL_SEED_OFFSET + 10_000 * int(cfg.seed) + i for i in range(int(cfg.episodes))]
    env = envs.make_env_from_config(cfg.env)
    model = load_planning_model(cfg.checkpoint, cfg.env.id, cfg.env.image_size, env.action_space.shape[0],
                                cfg.cost.space, resolve_device(cfg.device))  # fmt: skip
    policy = PlannerPolicy.from_config(model, env.action_space, cfg)
    vec = DummyVecEnv([lambda: GoalImageObservation(SeededResets(env, seeds))])
    reached, ended = [], []
    any_step = [False]
    bar = tqdm(total=len(seeds), desc="episodes", file=sys.stderr)

    def on_step(local: dict[str, Any], _: dict[str, Any]) -> None:
        info = local["info"]
        any_step[0] |= bool(info.get("is_success", False))
        if local["done"]:
            reached.append(any_step[0])
            ended.append(bool(info.get("is_success", False)))
            any_step[0] = False
            bar.update()

    rewards, lengths = evaluate_policy(policy, vec, n_eval_episodes=len(seeds), deterministic=True,
                                       callback=on_step, return_episode_rewards=True)  # fmt: skip
    bar.close()
    emit_json_line({"policy": "PlannerPolicy (SB3 evaluate_policy)", **success_rates(reached, ended),
                    "mean_reward": float(np.mean(rewards)), "mean_length": float(np.mean(lengths)),
                    "state_labels": model.state_labels,
                    "cost_space": model.resolve_cost_space(cfg.cost.space),
                    "checkpoint": str(cfg.checkpoint), "seeds": [seeds[0], seeds[-1]],
                    "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip


if __name__ == "__main__":
    main()
