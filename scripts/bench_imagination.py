"""How far a world model's H-step imagination lands from the true future, by the size of the actions.

    python scripts/bench_imagination.py --checkpoint CKPT --episodes EPISODES_DIR

On held-out recorded episodes (the world model's own val split: the last ``--val-fraction`` by index),
every window of ``H + 1`` frames is imagined from its first frame with its recorded actions, and
compared with the encoded true frames, in the latent space and in every space the model's cost can plan
in (the metric head, the state readout). Per band of mean action size (env units): the median norm of
the true H-step displacement, of the imagined one, and of the error between them. An imagination that
plans the last centimetre has errors well below the displacement of the smallest actions (the labelled
readout's are ~0.4x of it, docs/benchmarks.md). For a model with a trained displacement head, the
``displacement`` entry is in actions: what the head reads from the first frame to the true end frame
("true"), and from the imagined end frame to the true one ("error": 0 for a perfect imagination).
Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from jepa_agent.data import EpisodeDataset
from jepa_agent.training.latent_cache import encode_episodes
from jepa_agent.world_model import WorldModel

BANDS = ((0.0, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.0), (1.0, 1.5))


class _Episodes:
    """The first ``n`` episodes of a dataset, as :func:`encode_episodes` reads them."""

    def __init__(self, data: EpisodeDataset, n: int) -> None:
        self.data, self.num_episodes = data, min(n, len(data.records))

    def episode(self, i: int) -> dict:
        return self.data.episode(i)


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", required=True, help="recorded episodes (collect.py) of the model's env")
    p.add_argument("--max-episodes", type=int, default=60, help="held-out episodes encoded")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.max_episodes < 1 or args.horizon < 1:
        raise SystemExit("bench_imagination.py: error: --max-episodes and --horizon must be >= 1")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    data = EpisodeDataset(
        args.episodes, window=1, split="val", val_fraction=args.val_fraction,
        expect_env_id=model.meta.get("env_id"), expect_image_size=model.image_size,
    )  # fmt: skip
    lat = encode_episodes(model, _Episodes(data, args.max_episodes), progress=False)
    lat.z = model.normalizer.latent(lat.z)
    C, H = model.context_frames, args.horizon
    first = lat.window_starts(C + H)
    if len(first) == 0:
        raise SystemExit(f"bench_imagination.py: error: no held-out episode has {C + H} frames")
    z, a, _ = lat.windows(first, C + H)  # [W, C + H, N, D], normalised actions [W, C + H - 1, A]
    imag, _ = model.predictor.imagine(z[:, :C], a[:, C - 1 :], actions_ctx=a[:, : C - 1] if C > 1 else None)
    raw = a[:, C - 1 :] * model.normalizer.action_std + model.normalizer.action_mean  # env units
    size = raw.norm(dim=-1).mean(1).numpy()  # [W] mean action size over the imagined steps
    now, true, pred = z[:, C - 1], z[:, -1], imag[:, -1]
    spaces = {"latent": lambda x: x.flatten(-2)}
    if model.metric_trained:
        spaces["metric"] = model.metric
    if model.readout is not None:
        spaces["readout"] = model.readout
    norms: dict[str, tuple] = {}
    for name, f in spaces.items():
        f_now, f_true, f_pred = f(now), f(true), f(pred)
        norms[name] = (
            (f_true - f_now).norm(dim=-1),
            (f_pred - f_now).norm(dim=-1),
            (f_pred - f_true).norm(dim=-1),
        )
    if (
        model.displacement_trained
    ):  # in actions: what the head reads from the start / imagined end to the true end
        d = model.displacement
        norms["displacement"] = (d(now, true).norm(dim=-1), (d(now, true) - d(pred, true)).norm(dim=-1),
                                 d(pred, true).norm(dim=-1))  # fmt: skip
    out: dict[str, dict] = {}
    for name, (moved, imagined, error) in norms.items():
        moved, imagined, error = moved.numpy(), imagined.numpy(), error.numpy()
        rows = {}
        for lo, hi in BANDS:
            k = (size >= lo) & (size < hi)
            if k.any():
                rows[f"{lo}-{hi}"] = {"windows": int(k.sum()), "true": round(float(np.median(moved[k])), 4),
                                      "imagined": round(float(np.median(imagined[k])), 4),
                                      "error": round(float(np.median(error[k])), 4)}  # fmt: skip
        small = size < 0.4
        out[name] = {"by_action_size": rows,
                     "error_over_true_small_actions": round(
                         float(np.median(error[small]) / max(np.median(moved[small]), 1e-12)), 3)
                     if small.any() else None}  # fmt: skip
    print(json.dumps({"checkpoint": args.checkpoint, "state_labels": model.state_labels, "horizon": H,
                      "context": C, "windows": len(first), "spaces": out,
                      "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
