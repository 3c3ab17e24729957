"""Can a displacement head read, from an encoder's frozen latents, the actions between two frames?

    python scripts/bench_displacement.py --checkpoint CKPT --episodes EPISODES_DIR [--inputs pair,diff]

A diagnostic for the label-free cost: fits a fresh :class:`~jepa_agent.models.latent.DisplacementHead`
per ``--inputs`` variant on the checkpoint's encoded training episodes (the summed env-unit actions from a
frame to a goal frame up to 20 steps later or 4 earlier, capped at 2, as ``train.displacement`` trains it),
with the encoder and the world model frozen, then scores it on held-out episodes (the val split):
``val_ratio`` is its mean squared error over the targets' variance (1.0 = predicting the mean), and
``small_mse`` its error on goals less than half a step away against ``small_zero_mse``, the error of
reading 0 there (what the cost needs near the goal). Reads frames and actions only. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from jepa_agent.data import EpisodeDataset
from jepa_agent.models.latent import DisplacementHead
from jepa_agent.training.latent_cache import ActionSums, encode_episodes
from jepa_agent.training.train_world_model import DisplacementTrainConfig
from jepa_agent.world_model import WorldModel


class _Episodes:
    """The first ``n`` episodes of a dataset, as :func:`encode_episodes` reads them."""

    def __init__(self, data: EpisodeDataset, n: int) -> None:
        self.data, self.num_episodes = data, min(n, len(data.records))

    def episode(self, i: int) -> dict:
        return self.data.episode(i)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--episodes", required=True, help="recorded episodes (collect.py) of the model's env")
    p.add_argument("--inputs", default="pair,diff", help="comma-separated DisplacementHead inputs variants")
    p.add_argument("--train-episodes", type=int, default=600)
    p.add_argument("--val-episodes", type=int, default=150)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument(
        "--hidden", type=int, default=192, help="the head's width (world_model.displacement.hidden)"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    variants = [v for v in args.inputs.split(",") if v]
    bad = [v for v in variants if v not in DisplacementHead.INPUTS]
    if bad or not variants:
        raise SystemExit(
            f"bench_displacement.py: error: --inputs={args.inputs!r}; expected a comma-separated list of "
            f"{list(DisplacementHead.INPUTS)}"
        )
    if min(args.train_episodes, args.val_episodes, args.steps) < 1:
        raise SystemExit(
            "bench_displacement.py: error: --train-episodes, --val-episodes and --steps must be >= 1"
        )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    caches = {}
    for split, n in (("train", args.train_episodes), ("val", args.val_episodes)):
        data = EpisodeDataset(
            args.episodes, window=1, split=split, val_fraction=args.val_fraction,
            expect_env_id=model.meta.get("env_id"), expect_image_size=model.image_size,
        )  # fmt: skip
        lat = encode_episodes(model, _Episodes(data, n), progress=False)  # frozen encoder, no grad
        with torch.no_grad():
            lat.z = model.normalizer.latent(lat.z)
        caches[split] = lat
    encode_s = time.perf_counter() - t0
    train, val = caches["train"], caches["val"]
    mean, std = model.normalizer.action_mean, model.normalizer.action_std
    targets = DisplacementTrainConfig()
    sums_tr, sums_va = ActionSums.from_latents(train, mean, std), ActionSums.from_latents(val, mean, std)
    first_tr, first_va = train.window_starts(1), val.window_starts(1)
    goal_va, want = sums_va.sample(first_va, 1, targets, torch.Generator().manual_seed(args.seed + 1))
    want = want[:, 0]  # [W, A]
    small = want.abs().amax(-1) < 0.5
    out = {}
    for inputs in variants:
        torch.manual_seed(args.seed)
        head = DisplacementHead(train.z[0].numel(), want.shape[-1], args.hidden, inputs)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
        gen = torch.Generator().manual_seed(args.seed)
        for _ in range(args.steps):
            first = first_tr[torch.randint(len(first_tr), (256,), generator=gen)]
            goal, sums = sums_tr.sample(first, 1, targets, gen)
            loss = F.mse_loss(head(train.z[first], train.z[goal]), sums[:, 0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = head(val.z[first_va], val.z[goal_va])
        out[inputs] = {
            "train_loss": round(float(loss), 4),
            "val_ratio": round(float(F.mse_loss(pred, want) / want.var(0).mean()), 4),
            "small_mse": round(float(F.mse_loss(pred[small], want[small])), 4) if small.any() else None,
            "small_zero_mse": round(float(want[small].square().mean()), 4) if small.any() else None,
        }
    print(json.dumps({"checkpoint": args.checkpoint, "state_labels": model.state_labels,
                      "train_episodes": len(train.starts), "val_episodes": len(val.starts),
                      "val_pairs": len(first_va), "steps": args.steps, "inputs": out,
                      "encode_seconds": round(encode_s, 1),
                      "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
