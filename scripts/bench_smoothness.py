"""How smoothly does a push world model's latent follow the pusher's position?

    python scripts/bench_smoothness.py --checkpoint CKPT [--starts 30] [--moves-mm 1 2 4 8]

From each held-out start the pusher is moved twice by the same small step (along x, then along y), the
three poses rendered as the env renders them and encoded. Where a representation is smooth in the
pusher's position, the two equal steps move it in about the same direction (cosine near 1 while the step
is small against the pusher, 12.5 mm in radius); where it is not, a predictor that is smooth in its
actions cannot follow the differences the planner ranks candidates by (``bench_branches.py``). Reported,
per step size (medians over starts and both axes): that cosine for the raw pixels, the latents and the
features of them the cost reads (the metric head's or goal critic's first layer), and the pixels each
step changes. One JSON line. The true state only places the pusher; nothing is trained.

``--antialias N`` renders with N samples per pixel (``env.antialias``) instead of as the model was trained
(push's default: none, for speed): how much smoother the pixels would be. The model's figures are then on
frames it was not trained on; the pixel figures compare across settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from jepa_agent.checkpoint import render_settings  # noqa: E402
from jepa_agent.evaluation import EVAL_SEED_OFFSET  # noqa: E402
from jepa_agent.world_model import WorldModel  # noqa: E402


def consecutive_cosine(x: torch.Tensor) -> float:
    """``x [3, F]`` (three equally spaced poses) -> the cosine between the two steps' differences."""
    a, b = x[1] - x[0], x[2] - x[1]
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a push world model (train_world_model.py env=push)")
    p.add_argument("--starts", type=int, default=30, help="held-out starts (plan.py's evaluation seeds)")
    p.add_argument("--moves-mm", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--antialias", type=int, default=None,
                   help="samples per pixel (env.antialias; default: as the model was trained)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.starts < 1 or not all(m > 0 for m in args.moves_mm) or not 0 <= (args.antialias or 0) <= 16:
        sys.exit(f"bench_smoothness.py: error: --starts must be >= 1, every --moves-mm > 0 and --antialias "
                 f"in [0, 16]; got {args.starts}, {args.moves_mm}, {args.antialias}")  # fmt: skip
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    if model.meta.get("env_id") != "JepaAgent/Push-v0":
        sys.exit(f"bench_smoothness.py: error: {args.checkpoint} is a model of {model.meta.get('env_id')!r}; "
                 "expected a JepaAgent/Push-v0 model")  # fmt: skip
    render = render_settings(args.checkpoint)
    if args.antialias is not None:
        render["antialias"] = args.antialias
    env = envs.make_env("push", image_size=model.image_size, **render)
    u = env.unwrapped
    head = model.metric.input_layer if model.metric_trained else None
    starts = []
    for i in range(args.starts):
        env.reset(seed=EVAL_SEED_OFFSET + i)
        starts.append(u.data.qpos.copy())
    out: dict[str, float] = {}
    for move in args.moves_mm:
        rows: dict[str, list[float]] = {"pixels": [], "latent": [], "head": [], "changed": []}
        for q in starts:
            for axis in (0, 1):
                poses = np.stack([q, q, q])
                for k in (1, 2):
                    poses[k, axis] += k * move / 1000.0
                frames = u.render_poses(poses)  # [3, px, px, 3]
                z = model.encode_pixels(frames).flatten(1)  # [3, N * D]
                rows["pixels"].append(
                    consecutive_cosine(torch.as_tensor(frames, dtype=torch.float32).flatten(1))
                )
                rows["latent"].append(consecutive_cosine(z))
                if head is not None:
                    rows["head"].append(consecutive_cosine(z @ head.weight.T))
                rows["changed"].append(float((frames[1] != frames[0]).any(-1).sum()))
        tag = f"{move:g}mm"
        out[f"cos_pixels_{tag}"] = float(np.median(rows["pixels"]))
        out[f"cos_latent_{tag}"] = float(np.median(rows["latent"]))
        if rows["head"]:
            out[f"cos_head_{tag}"] = float(np.median(rows["head"]))
        out[f"pixels_changed_{tag}"] = float(np.median(rows["changed"]))
    summary = {"checkpoint": args.checkpoint, "starts": len(starts), "antialias": render["antialias"]}
    print(json.dumps({**summary, **out, "seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
