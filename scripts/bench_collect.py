"""Collection throughput at 64x64 (step + render + H.264 encode + npz), 1 vs 2 parallel envs.

    python scripts/bench_collect.py                 # 3 rounds x {2 envs, 1 env}, 64 episodes each
    python scripts/bench_collect.py --env push --policy push   # the push task with its data policy

Each round collects into a fresh temporary directory; the two settings alternate within a round so
machine load hits both alike. Prints min/median/max frames/s per setting and the load average, then
one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from jepa_agent.collect import collect
from jepa_agent.utils import emit_json_line, int_at_least


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int_at_least(1), default=64)
    p.add_argument("--rounds", type=int_at_least(1), default=3)
    p.add_argument("--env", default="reach")
    p.add_argument("--policy", default="random")
    p.add_argument("--image-size", type=int_at_least(8), default=64)
    args = p.parse_args(argv)
    fps: dict[int, list[float]] = {2: [], 1: []}
    moved: list[float] = []  # fraction of steps that moved an object (envs with one)
    for _ in range(args.rounds):
        for n in fps:
            with tempfile.TemporaryDirectory() as d:
                res = collect(
                    os.path.join(d, "ds"),
                    args.episodes,
                    env=args.env,
                    env_kwargs={"image_size": args.image_size},
                    policy=args.policy,
                    num_envs=n,
                    progress=False,
                )
            fps[n].append(res["frames_per_s"])
            if res["object_moved_fraction"] is not None:
                moved.append(res["object_moved_fraction"])
    load = os.getloadavg()
    summary = {
        f"num_envs_{n}": {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for n, v in fps.items()
    }
    for n, s in summary.items():
        print(
            f"{n}: median {s['median']:.0f} frames/s (min {s['min']:.0f}, max {s['max']:.0f})",
            file=sys.stderr,
        )
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", file=sys.stderr)
    if moved:
        print(f"object moved in {statistics.mean(moved):.1%} of the steps", file=sys.stderr)
    emit_json_line(
        {
            **summary,
            "env": args.env,
            "policy": args.policy,
            "object_moved_fraction": statistics.mean(moved) if moved else None,
            "episodes": args.episodes,
            "image_size": args.image_size,
            "load_avg": load,
        }
    )


if __name__ == "__main__":
    main()
