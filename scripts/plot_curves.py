"""Every scripts/rl.py run's learning curve in one figure: success on held-out goals against training steps.

    python scripts/plot_curves.py runs=[outputs/rl/sac_her_latent,outputs/rl/sac_pixels] out=curves.png
    python scripts/plot_curves.py runs=[...] key=success_rate_end target=0.8

Each curve is labelled by its run's settings (run.json), shaded by its 95% Wilson interval, and says its
steps to ``target`` ("target not reached" otherwise; "cut short" with its steps per second when the run
stopped at its time budget). Ends with one JSON line.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from jepa_agent.config import hydra_main
from jepa_agent.utils import cli_errors, emit_json_line


@hydra_main("plot_curves")
@cli_errors
def main(cfg: DictConfig) -> None:
    from jepa_agent.rl.curves import plot_curves

    if OmegaConf.is_missing(cfg, "runs"):
        raise ValueError("runs is required: pass runs=[DIR1,DIR2,...] (run dirs of scripts/rl.py)")
    runs = [cfg.runs] if isinstance(cfg.runs, str) else list(cfg.runs)
    target = None if cfg.target is None else float(cfg.target)
    if target is not None and not 0 < target <= 1:
        raise ValueError(f"target={cfg.target!r}; expected a success rate in (0, 1], or null")
    arms = plot_curves(runs, cfg.out, key=str(cfg.key), target=target, title=cfg.title)
    emit_json_line({"out": str(cfg.out), "runs": len(arms), "arms": arms})


if __name__ == "__main__":
    main()
