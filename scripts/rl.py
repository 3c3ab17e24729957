"""Train one arm of the RL comparison (SB3 on latent, pixel or true-state goals) and measure it.

    python scripts/rl.py algo=sac observation=latent her=true              # SAC + HER on latent goals
    python scripts/rl.py algo=sac observation=pixels sparse=false          # SAC on pixels (SB3's CNN)
    python scripts/rl.py algo=sac observation=state her=true               # SAC + HER on the true state
    python scripts/rl.py her=true imagination=true episodes=DIR steps=50000 # SAC in the world model only
    python scripts/plot_curves.py runs=[RUN1,RUN2,RUN3] out=curves.png     # every arm in one figure

Evaluates every ``eval_every`` steps on ``eval_episodes`` held-out goals (success at any step and at the
end, 95% Wilson CIs). Writes to the run dir: curve.csv (one row per evaluation, kept if interrupted),
SB3's progress.csv (and TensorBoard events when ``tensorboard`` is installed), run.json, and the policy
as policy.safetensors + policy.json (``jepa_agent.rl.load_policy`` rebuilds it without pickle; SB3's own
model.zip, a pickle, only with save_zip=true). Ends with one JSON line. The library side is
``jepa_agent.rl.train`` (``RLConfig``, ``train_rl``).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

import envs
from jepa_agent.config import hydra_main
from jepa_agent.utils import cli_errors, emit_json_line, seed_everything, set_threads

log = logging.getLogger(__name__)
SCRIPT_KEYS = ("env", "out", "progress", "threads")  # the rest of configs/rl.yaml is RLConfig


@hydra_main("rl")
@cli_errors(on_interrupt="the evaluations so far are in the run dir's curve.csv (outputs/rl/<time>)")
def main(cfg: DictConfig) -> None:
    from jepa_agent.rl.train import RLConfig, check_config, train_rl

    values = OmegaConf.to_container(cfg, resolve=True)
    rl_cfg = RLConfig(**{k: v for k, v in values.items() if k not in SCRIPT_KEYS})
    check_config(rl_cfg)
    set_threads(cfg.threads)
    seed_everything(rl_cfg.seed)
    result = train_rl(rl_cfg, cfg.env.name, envs.env_kwargs_from_config(cfg.env), cfg.out, bool(cfg.progress))
    if not result["tensorboard"]:
        log.info("TensorBoard is not installed: SB3's log is CSV only (pip install tensorboard to add it)")
    reached = result["steps_to_target"]
    log.info(
        "success %.2f (95%% CI %.2f-%.2f); %.0f%% %s",
        result["success_rate"],
        *result["success_ci95"],
        100 * result["target_success"],
        f"reached at {reached} steps" if reached else "not reached",
    )
    emit_json_line(result)


if __name__ == "__main__":
    main()
