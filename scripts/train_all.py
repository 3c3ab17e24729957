"""From nothing to a planner in one command: collect -> pretrain -> train world model -> plan.

    python scripts/train_all.py env=reach                        # everything under outputs/train_all/reach
    python scripts/train_all.py env=reach ship=checkpoints/reach # also refresh the shipped checkpoint
    python scripts/train_all.py env=reach_torque world_model.members=2   # plan with an ensemble of two

Each stage runs the repo's own script in a subprocess and reads the JSON line it ends with. Re-running
resumes: collection keeps finished episodes, training stages continue from their last checkpoint.
Ends with one JSON line: per-stage seconds, the checkpoint paths and the planning success rate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from jepa_agent.config import hydra_main
from jepa_agent.utils import cli_errors, emit_json_line

SCRIPTS = Path(__file__).resolve().parent


def run_stage(name: str, script: str, args: list[str]) -> tuple[dict, float]:
    """Run ``scripts/<script>`` with Hydra overrides; return its final JSON line and its wall seconds
    (stderr streams through)."""
    t0 = time.perf_counter()
    cmd = [sys.executable, str(SCRIPTS / script), *args]
    print(f"[train_all] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            stdout, _ = proc.communicate()
        except KeyboardInterrupt:  # let the stage save and exit cleanly (its workers too), then go
            _stop(proc)
            raise
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"train_all.py: stage {name!r} failed (exit {proc.returncode}); command: {' '.join(cmd)}"
        )
    return json.loads(lines[-1]), time.perf_counter() - t0


def _stop(proc: subprocess.Popen) -> None:
    """After Ctrl-C: a stage in our process group got it too; otherwise forward it; kill as a last resort."""
    for forward, timeout in ((False, 2.0), (True, 30.0)):
        if forward and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()


def env_overrides(cfg: DictConfig) -> list[str]:
    """The env of every stage: its group, the command line's ``env.*`` overrides as given (e.g. env=gym's
    ``env.id``), the image size and the seed."""
    given = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    own = [o for o in given if o.lstrip("+~").startswith("env.")]
    return [f"env={cfg.env.name}", *own, f"env.image_size={cfg.env.image_size}", f"seed={cfg.seed}"]


@hydra_main("train_all")
@cli_errors(on_interrupt="finished stages and checkpoints are kept; run the same command again to continue")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    members = cfg.world_model.members
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ValueError(f"world_model.members={members!r}: expected an int >= 1 (world models planned with)")
    if cfg.ship and members > 1:
        raise ValueError(
            f"ship={cfg.ship} copies one world model; world_model.members={members} trains an ensemble: "
            "ship without world_model.members, or plan with the list of checkpoints this run prints"
        )
    env = env_overrides(cfg)
    threads = f"threads={cfg.threads}"
    episodes_dir, encoder_dir, wm_dir = out / "episodes", out / "encoder", out / "world_model"
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    t_all = time.perf_counter()

    # collection resumes by itself: re-running keeps every finished episode
    results["collect"], seconds["collect"] = run_stage(
        "collect",
        "collect.py",
        [
            *env,
            f"episodes={cfg.collect.episodes}",
            f"policy={cfg.collect.policy}",
            f"num_envs={cfg.collect.num_envs}",
            f"out={episodes_dir}",
            *cfg.collect.args,
        ],
    )

    # training stages always pass resume=true: a finished run resumes at its last step and returns at once
    results["pretrain"], seconds["pretrain"] = run_stage(
        "pretrain",
        "pretrain.py",
        [
            f"seed={cfg.seed}",
            threads,
            f"encoder.img_size={cfg.env.image_size}",
            "data=episodes",
            f"data.path={episodes_dir}",
            f"out={encoder_dir}",
            "resume=true",
            *cfg.pretrain.args,
        ],
    )

    results["world_model"], seconds["world_model"] = run_stage(
        "world_model",
        "train_world_model.py",
        [
            *env,
            threads,
            f"data.path={episodes_dir}",
            f"encoder_checkpoint={encoder_dir}",
            f"out={wm_dir}",
            "resume=true",
            *cfg.world_model.args,
        ],
    )

    # more members: the same data, encoder and recipe, the next seeds (an ensemble, jepa_agent.ensemble)
    wm_dirs = [wm_dir]
    for k in range(1, members):
        wm_dirs.append(out / f"world_model_{k}")
        name = f"world_model_{k}"
        results[name], seconds[name] = run_stage(
            name,
            "train_world_model.py",
            [
                *env,
                f"seed={cfg.seed + k}",  # after env's seed=: this one wins
                threads,
                f"data.path={episodes_dir}",
                f"encoder_checkpoint={encoder_dir}",
                f"out={wm_dirs[-1]}",
                "resume=true",
                *cfg.world_model.args,
            ],
        )
    checkpoint = str(wm_dir) if members == 1 else f"[{','.join(map(str, wm_dirs))}]"

    results["plan"], seconds["plan"] = run_stage(
        "plan",
        "plan.py",
        [
            *env,
            threads,
            f"checkpoint={checkpoint}",
            f"episodes={cfg.plan.episodes}",
            f"hydra.run.dir={out / 'plan'}",
            *cfg.plan.args,
        ],
    )

    if cfg.ship:
        ship = Path(cfg.ship)
        tmp = ship.parent / f".{ship.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        # weights + config + meta only: the optimizer state (train_state.pt) is for resuming training
        shutil.copytree(wm_dir / "checkpoint", tmp, ignore=shutil.ignore_patterns("train_state.pt"))
        old = ship.parent / f".{ship.name}.old"  # swap by renames: a kill at any point leaves one intact copy
        shutil.rmtree(old, ignore_errors=True)
        if ship.exists():
            os.replace(ship, old)
        os.replace(tmp, ship)
        shutil.rmtree(old, ignore_errors=True)

    emit_json_line(
        {
            "success_rate": results["plan"].get("success_rate"),
            "success_ci95": results["plan"].get("success_ci95"),
            "random_success_rate": results["plan"].get("random_success_rate"),
            "oracle_success_rate": results["plan"].get("oracle_success_rate"),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "total_seconds": round(time.perf_counter() - t_all, 1),
            "episodes": str(episodes_dir),
            "encoder": str(encoder_dir),
            "world_model": str(wm_dir) if members == 1 else [str(d) for d in wm_dirs],
            "shipped": cfg.ship,
            "out": str(out),
        }
    )


if __name__ == "__main__":
    main()
