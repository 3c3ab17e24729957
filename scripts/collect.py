"""Record episodes of an env with a scripted policy into an episode dataset.

    python scripts/collect.py env=reach episodes=64 policy=noisy num_envs=2 out=data/reach_noisy
    python scripts/collect.py env=reach env.image_size=96 episodes=8 out=data/reach96
    python scripts/collect.py env=push policy=push episodes=1000 out=data/push

Writes one mp4 + one npz per episode and a meta.json (see ``jepa_agent.data.episodes``). Re-running
the same command resumes. Shows a progress bar on stderr and ends with one JSON line on stdout:
``{"episodes": N, "frames": F, "frames_per_s": ..., "out": DIR, ...}``.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from jepa_agent.config import hydra_main
from jepa_agent.utils import cli_errors  # torch-free

# the rest of jepa_agent is imported inside main(): collection workers start from a process that
# imports this file, and keeping torch out of it saves ~2 s of start-up.


@hydra_main("collect")
@cli_errors(on_interrupt="finished episodes are kept; run the same command again to continue")
def main(cfg: DictConfig) -> None:
    import envs
    from jepa_agent.collect import collect, policy_settings
    from jepa_agent.data import DataError
    from jepa_agent.utils import emit_json_line

    env_kwargs = envs.env_kwargs_from_config(cfg.env)
    policy_kwargs = policy_settings(cfg, cfg.policy)
    try:
        metrics = collect(
            out_dir=cfg.out,
            num_episodes=cfg.episodes,
            env=cfg.env.name,
            env_kwargs=env_kwargs,
            policy=cfg.policy,
            policy_kwargs=policy_kwargs,
            seed=cfg.seed,
            num_envs=cfg.num_envs,
            video=OmegaConf.to_container(cfg.video, resolve=True),
            mp_context=cfg.mp_context,
            progress=cfg.progress,
            branches=cfg.branches,
            branch_at=OmegaConf.to_container(cfg.branch_at, resolve=True)
            if OmegaConf.is_list(cfg.branch_at)
            else cfg.branch_at,
        )
    except (DataError, ValueError) as e:
        sys.exit(f"collect: error: {e}")
    emit_json_line(metrics)


if __name__ == "__main__":
    main()
