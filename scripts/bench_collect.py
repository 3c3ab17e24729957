"""Collection throughput at 64x64 (step + render + H.264 encode + npz), 1 vs 2 parallel envs.

    python scripts/bench_collect.py                 # 3 rounds x {2 envs, 1 env}, 64 episodes each
    python scripts/bench_collect.py --env push --policy push   # the push task with its data policy
    python scripts/bench_collect.py --env push --policy push --antialias 4  # + 2 envs rendering with AA

Each round collects into a fresh temporary directory; the two settings alternate within a round so
machine load hits both alike (with ``--antialias N``, a third setting: 2 envs rendering with N multisamples,
and its ratio to 2 envs without). Prints min/median/max frames/s per setting and the load average, then
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
    p.add_argument("--antialias", type=int_at_least(0), default=0,
                   help="also time 2 envs rendering with this many multisamples (push; 0: not)")  # fmt: skip
    args = p.parse_args(argv)
    settings = {"num_envs_2": (2, 0), "num_envs_1": (1, 0)}  # name: (envs, antialias)
    if args.antialias:
        settings[f"num_envs_2_antialias_{args.antialias}"] = (2, args.antialias)
    fps: dict[str, list[float]] = {name: [] for name in settings}
    moved: list[float] = []  # fraction of steps that moved an object (envs with one)
    for _ in range(args.rounds):
        for name, (n, aa) in settings.items():
            env_kwargs = {"image_size": args.image_size, **({"antialias": aa} if aa else {})}
            with tempfile.TemporaryDirectory() as d:
                res = collect(
                    os.path.join(d, "ds"),
                    args.episodes,
                    env=args.env,
                    env_kwargs=env_kwargs,
                    policy=args.policy,
                    num_envs=n,
                    progress=False,
                )
            fps[name].append(res["frames_per_s"])
            if res["object_moved_fraction"] is not None and not aa:
                moved.append(res["object_moved_fraction"])
    load = os.getloadavg()
    summary = {
        n: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v} for n, v in fps.items()
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
            # frames/s rendering with anti-aliasing over without, 2 envs each, medians of this run's rounds
            "antialias_ratio": (
                summary[f"num_envs_2_antialias_{args.antialias}"]["median"] / summary["num_envs_2"]["median"]
                if args.antialias
                else None
            ),
            "episodes": args.episodes,
            "image_size": args.image_size,
            "load_avg": load,
        }
    )


if __name__ == "__main__":
    main()
