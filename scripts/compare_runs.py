"""Compare two plan.py runs goal by goal: which ended nearer, and by what the env says missed.

    python scripts/compare_runs.py RUN_A RUN_B [--policy jepa] [--above yaw_error=0.349]

``RUN_A`` and ``RUN_B`` are plan.py run dirs (or their ``episodes.jsonl``). Episodes are paired by their
goal (``index`` and ``seed``); only goals both runs finished are compared. Prints one JSON line: per run
plan.py's summary of those episodes (success rates with 95% CIs, the mean final distance and closest
approach) and the median final distance; how many goals run B ended nearer; the median of each number in
the episodes' ``final_info`` (the env's own error terms at the last step, e.g. push's ``pusher_distance``,
``block_distance``, ``yaw_error``); and with ``--above KEY=VALUE`` how many episodes of each run ended
with ``final_info[KEY] > VALUE`` (null for a run whose episodes do not have it: plan.py records
``final_info`` since the twenty-fourth session).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from jepa_agent.evaluation import EpisodeResult, summarize
from jepa_agent.utils import emit_json_line

RESULT_FIELDS = [f.name for f in fields(EpisodeResult)]


def episodes_file(run: str) -> Path:
    path = Path(run)
    path = path / "episodes.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(
            f"error: {run}: no plan.py run here (expected a run dir with episodes.jsonl, or the file)"
        )
    return path


def load(run: str, policy: str) -> dict[tuple[int, int], EpisodeResult]:
    path = episodes_file(run)
    rows: dict[tuple[int, int], EpisodeResult] = {}
    policies = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            policies.add(row["policy"])
            if row["policy"] == policy:
                result = EpisodeResult(**{k: row[k] for k in RESULT_FIELDS if k in row})
                rows[(int(row["index"]), int(result.seed))] = result
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SystemExit(f"error: {path}:{n}: not a plan.py episode line ({e})") from None
    if not rows:
        raise SystemExit(
            f"error: {path}: no episode of policy {policy!r}; it has {sorted(policies) or 'none'} (--policy)"
        )
    return rows


def threshold(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not key or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r}; expected KEY=NUMBER, e.g. yaw_error=0.349")
    return key, number


def summary(results: list[EpisodeResult]) -> dict[str, Any]:
    """plan.py's own summary of these episodes (success rates with CIs, mean distances), plus the median."""
    return {
        **summarize(results),
        "final_distance_median": float(np.median([r.final_distance for r in results])),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a", help="the first plan.py run dir (or its episodes.jsonl)")
    p.add_argument("run_b", help="the second")
    p.add_argument(
        "--policy", default="jepa", help="the policy's episodes to compare (jepa, oracle, random...)"
    )
    p.add_argument("--above", type=threshold, action="append", default=[], metavar="KEY=VALUE",
                   help="count the episodes whose final_info[KEY] exceeds VALUE (repeatable)")  # fmt: skip
    args = p.parse_args(argv)
    a, b = load(args.run_a, args.policy), load(args.run_b, args.policy)
    goals = sorted(set(a) & set(b))
    if not goals:
        raise SystemExit(f"error: the two runs share no goal (index, seed); {len(a)} and {len(b)} episodes")
    ra, rb = [a[g] for g in goals], [b[g] for g in goals]
    out: dict[str, Any] = {"policy": args.policy, "goals": len(goals), "a": summary(ra), "b": summary(rb)}
    out["b_nearer"] = int(sum(y.final_distance < x.final_distance for x, y in zip(ra, rb, strict=True)))
    for name, rows in (("a", ra), ("b", rb)):
        infos = [r.final_info for r in rows]
        keys = sorted(set().union(*infos))
        out[name]["final_info_median"] = {k: float(np.median([i[k] for i in infos if k in i])) for k in keys}
        for key, value in args.above:  # null for a run whose episodes lack the key (older plan.py runs)
            count = sum(i.get(key, -math.inf) > value for i in infos)
            out[name][f"{key}_above_{value:g}"] = int(count) if key in keys else None
    for key, value in args.above:
        if key not in out["a"]["final_info_median"] and key not in out["b"]["final_info_median"]:
            raise SystemExit(
                f"error: --above {key}={value:g}: neither run's episodes have final_info[{key!r}]; run B's "
                f"have {sorted(out['b']['final_info_median']) or 'none'}"
            )
    emit_json_line(out)


if __name__ == "__main__":
    main(sys.argv[1:])
