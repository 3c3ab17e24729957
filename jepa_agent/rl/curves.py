"""Learning curves: success on held-out goals during training, ``curve.csv``, steps to a target, one plot.

* :func:`evaluate_success`: a policy (anything with SB3's ``predict``) on ``episodes`` goals of a VecEnv,
  episode ``i`` reset with seed ``first_seed + i`` (``VecEnv.seed`` before each batch of ``num_envs``
  episodes): success at any step and at the end, each with its 95% Wilson interval, as
  ``jepa_agent.evaluation`` reports the planner's.
* :class:`EvalCurveCallback`: an SB3 callback that evaluates at the start, every ``every`` training
  steps and at the end, appends a row to ``curve.csv`` (flushed: an interrupted run keeps its curve), logs
  the numbers to SB3's logger (``eval/...``), and can stop training after ``max_seconds`` (the run is then
  "cut short").
* :class:`TqdmCallback`: a tqdm bar over training steps on stderr (SB3's own bar needs ``rich``).
* :func:`steps_to_target` and :func:`plot_curves`: every run's curve in one figure.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from jepa_agent.evaluation import success_rates

CURVE_CSV = "curve.csv"
RUN_JSON = "run.json"
CURVE_FIELDS = (
    "steps",  # training steps so far (imagined ones when training in imagination)
    "env_steps",  # real env steps behind them (imagination: the recorded dataset's transitions)
    "seconds",  # wall time since training started, evaluations included
    "success_rate", "success_ci_low", "success_ci_high",  # success at any step of the episode
    "success_rate_end", "success_end_ci_low", "success_end_ci_high",  # success at its last step
    "final_distance_mean",  # the task's info["distance"] at the end (empty when the env has none)
    "train_success",  # success of the last 100 training episodes (imagined success in imagination)
    "episodes",  # evaluation episodes
)  # fmt: skip


def evaluate_success(
    policy: Any, venv: VecEnv, episodes: int, first_seed: int, deterministic: bool = True
) -> dict[str, Any]:
    """Run ``episodes`` episodes of ``policy`` on ``venv`` (seeds ``first_seed + i``), batched over its envs.

    Args:
        policy: an SB3 model or policy, or any ``predict(obs, state, episode_start, deterministic)``.
        venv: a VecEnv whose infos carry ``is_success`` (the task's own success).
        episodes: how many.
        first_seed: episode ``i`` is reset with seed ``first_seed + i`` (held-out goals).
        deterministic: the policy's mean action.

    Returns:
        ``episodes``, ``success_rate`` / ``success_ci95`` (any step), ``success_rate_end`` /
        ``success_end_ci95`` (the last step), ``final_distance_mean`` (``info["distance"]``, or None).
    """
    n = venv.num_envs
    hits, ends, distances = [], [], []
    for start in range(0, episodes, n):
        k = min(n, episodes - start)  # the last batch may use fewer envs; the others run unrecorded
        venv.seed(first_seed + start)  # env i's next reset: first_seed + start + i
        obs = venv.reset()
        active = np.arange(n) < k
        hit = np.zeros(n, bool)
        state, episode_start = None, np.ones(n, bool)
        while active.any():
            actions, state = policy.predict(obs, state, episode_start, deterministic)
            obs, _, dones, infos = venv.step(actions)
            episode_start = dones.copy()
            for i in np.flatnonzero(active):
                success = bool(infos[i].get("is_success", False))
                hit[i] |= success
                if dones[i]:
                    active[i] = False
                    ends.append(success)
                    distances.append(float(infos[i].get("distance", math.nan)))
        hits.extend(hit[:k].tolist())
    finite = [d for d in distances if math.isfinite(d)]
    return {
        **success_rates(hits, ends),
        "final_distance_mean": float(np.mean(finite)) if finite else None,
    }


def curve_row(steps: int, env_steps: int, seconds: float, result: dict, train_success: float | None) -> dict:
    """One ``curve.csv`` row from an :func:`evaluate_success` result."""
    (lo, hi), (elo, ehi) = result["success_ci95"], result["success_end_ci95"]
    return {
        "steps": steps, "env_steps": env_steps, "seconds": round(seconds, 2),
        "success_rate": result["success_rate"], "success_ci_low": lo, "success_ci_high": hi,
        "success_rate_end": result["success_rate_end"], "success_end_ci_low": elo, "success_end_ci_high": ehi,
        "final_distance_mean": result["final_distance_mean"], "train_success": train_success,
        "episodes": result["episodes"],
    }  # fmt: skip


def read_curve(run_dir: str | os.PathLike) -> list[dict[str, float | None]]:
    """``run_dir/curve.csv`` as rows of floats (empty cells: None)."""
    path = Path(run_dir) / CURVE_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected a run dir written by scripts/rl.py")
    with open(path, newline="") as f:
        return [
            {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def steps_to_target(rows: Sequence[dict], target: float, key: str = "success_rate") -> int | None:
    """The first evaluation's ``steps`` whose ``key`` reaches ``target``; None when none does."""
    for row in rows:
        value = row.get(key)
        if value is not None and value >= target:
            return int(row["steps"])
    return None


class TqdmCallback(BaseCallback):
    """A tqdm bar over the training steps of ``learn()`` (stderr); ``note()`` sets its postfix."""

    def __init__(self, desc: str = "train") -> None:
        super().__init__()
        self.desc, self.bar = desc, None

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        total = int(self.locals.get("total_timesteps", 0)) - self.model.num_timesteps
        self.bar = tqdm(total=max(total, 0), desc=self.desc, unit="step", file=sys.stderr, dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


class EvalCurveCallback(BaseCallback):
    """Evaluate on held-out goals every ``every`` training steps; write ``curve.csv`` (module docstring).

    Args:
        evaluate: ``() -> evaluate_success(...)`` result for the current policy.
        every: training steps between evaluations (one also runs at the start and at the end).
        out_dir: where ``curve.csv`` is written (replaced at the start of training).
        env_steps: ``steps -> real env steps`` (identity for real training).
        max_seconds: stop training once this much wall time has passed (None: never); ``cut_short`` says
            whether it did.
        on_row: called with each new row (e.g. to show the success in a progress bar).
    """

    def __init__(
        self,
        evaluate: Callable[[], dict[str, Any]],
        every: int,
        out_dir: str | os.PathLike,
        env_steps: Callable[[int], int] = lambda steps: steps,
        max_seconds: float | None = None,
        on_row: Callable[[dict], None] | None = None,
    ) -> None:
        super().__init__()
        self.evaluate, self.every, self.env_steps = evaluate, int(every), env_steps
        self.path = Path(out_dir) / CURVE_CSV
        self.max_seconds, self.on_row = max_seconds, on_row
        self.rows: list[dict] = []
        self.cut_short, self.eval_seconds, self.train_seconds = False, 0.0, 0.0
        self._next, self._t0 = 0, 0.0

    def _train_success(self) -> float | None:
        buffer = getattr(self.model, "ep_success_buffer", None)
        return float(np.mean(buffer)) if buffer else None

    def _record(self) -> None:
        t = time.perf_counter()
        result = self.evaluate()
        self.eval_seconds += time.perf_counter() - t
        steps = self.model.num_timesteps
        row = curve_row(steps, self.env_steps(steps), time.perf_counter() - self._t0, result,
                        self._train_success())  # fmt: skip
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CURVE_FIELDS).writerow(row)
        for key in ("success_rate", "success_rate_end", "final_distance_mean"):
            if row[key] is not None:
                self.logger.record(f"eval/{key}", row[key])
        if self.on_row is not None:
            self.on_row(row)
        while self._next <= steps:
            self._next += self.every

    def _on_training_start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            csv.DictWriter(f, CURVE_FIELDS).writeheader()
        self._t0 = time.perf_counter()
        self._record()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._record()
        if self.max_seconds is not None and time.perf_counter() - self._t0 > self.max_seconds:
            self.cut_short = True
            return False
        return True

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1]["steps"] != self.model.num_timesteps:
            self._record()
        self.train_seconds = time.perf_counter() - self._t0 - self.eval_seconds


def run_label(settings: dict[str, Any]) -> str:
    """A run's name from its ``run.json`` settings, e.g. ``SAC + HER, latent obs, latent reward (sparse)``."""
    algo = str(settings.get("algo", "?")).upper() + (" + HER" if settings.get("her") else "")
    if settings.get("imagination"):
        algo += " in imagination"
    reward = f"{settings.get('reward', '?')} reward ({'sparse' if settings.get('sparse') else 'dense'})"
    label = f"{algo}, {settings.get('observation', '?')} obs, {reward}"
    return label + (" [state labels]" if settings.get("state_labels") else "")


def plot_curves(
    run_dirs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    key: str = "success_rate",
    target: float | None = 0.9,
    title: str | None = None,
) -> list[dict[str, Any]]:
    """Draw every run's ``curve.csv`` (``key`` against training steps, its 95% CI shaded) in one figure.

    Each curve is labelled by its run's settings (``run.json``), its steps to ``target`` ("not reached"
    otherwise), and "cut short" with its steps per second when the run stopped at its time budget
    ("unfinished" when it has no result yet: still running, or killed).

    Returns:
        Per run: ``dir``, ``label``, ``steps`` (the last evaluation's), ``final`` (its ``key``),
        ``steps_to_target``.

    Raises:
        FileNotFoundError: a run dir without ``curve.csv``.
        ValueError: no runs, or an unknown ``key``.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless; before pyplot
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise ValueError("runs=[]; expected at least one run dir written by scripts/rl.py")
    bands = {"success_rate": ("success_ci_low", "success_ci_high"),
             "success_rate_end": ("success_end_ci_low", "success_end_ci_high")}  # fmt: skip
    if key not in bands:
        raise ValueError(f"key={key!r}; expected one of {list(bands)}")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    summary = []
    for run in run_dirs:
        rows = read_curve(run)
        info_path = Path(run) / RUN_JSON
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        label = run_label(info.get("settings", {})) if info else Path(run).name
        result = info.get("result") or {}
        reached = steps_to_target(rows, target, key) if target is not None else None
        if target is not None:
            label += f": {target:.0%} at {reached:,} steps" if reached is not None else ": target not reached"
        if result.get("cut_short"):
            label += f" (cut short, {result.get('steps_per_second', float('nan')):.0f} steps/s)"
        elif info and not result:
            label += " (unfinished)"  # still running, or killed: its curve so far
        x = [r["steps"] for r in rows]
        y = [r[key] for r in rows]
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=label)
        lo, hi = bands[key]
        ax.fill_between(x, [r[lo] for r in rows], [r[hi] for r in rows], color=line.get_color(), alpha=0.12)
        if result.get("cut_short") and x:
            ax.plot(x[-1], y[-1], marker="x", markersize=9, color=line.get_color())
        summary.append({"dir": str(run), "label": label, "steps": int(x[-1]) if x else 0,
                        "final": y[-1] if y else None, "steps_to_target": reached})  # fmt: skip
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("training steps (env steps; imagined steps for runs in imagination)")
    ax.set_ylabel("success " + ("at the last step" if key == "success_rate_end" else "at any step"))
    ax.set_ylim(-0.02, 1.02)
    episodes = {int(r["episodes"]) for run in run_dirs for r in read_curve(run) if r.get("episodes")}
    goals = f"{episodes.pop()} held-out goals" if len(episodes) == 1 else "held-out goals"
    ax.set_title(title or f"Success on {goals} (95% Wilson CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)  # below the axes
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return summary
