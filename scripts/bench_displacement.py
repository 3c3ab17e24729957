"""Can a displacement head read, from an encoder's frozen latents, the actions between two frames?

    python scripts/bench_displacement.py --checkpoint CKPT --episodes EPISODES_DIR [--inputs pair,diff]

A diagnostic for the label-free cost: fits a fresh :class:`~jepa_agent.models.latent.DisplacementHead`
per ``--inputs`` variant on the checkpoint's encoded training episodes (the summed env-unit actions from a
frame to a goal frame up to 20 steps later or 4 earlier, capped at 2, as ``train.displacement`` trains it),
with the encoder and the world model frozen, then scores it on held-out episodes (the val split):
``val_ratio`` is its mean squared error over the targets' variance (1.0 = predicting the mean), and
``small_mse`` its error on goals less than half a step away against ``small_zero_mse``, the error of
reading 0 there (what the cost needs near the goal). Reads frames and actions only. Ends with one JSON line.

``--inputs anchor`` scores the checkpoint's own trained :class:`~jepa_agent.models.latent.AnchorHead` (it
reads the unpooled patch tokens) on the same held-out pairs, without fitting anything.
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
    bad = [v for v in variants if v not in (*DisplacementHead.INPUTS, "anchor")]
    if bad or not variants:
        raise SystemExit(
            f"bench_displacement.py: error: --inputs={args.inputs!r}; expected a comma-separated list of "
            f"{[*DisplacementHead.INPUTS, 'anchor']}"
        )
    if min(args.train_episodes, args.val_episodes, args.steps) < 1:
        raise SystemExit(
            "bench_displacement.py: error: --train-episodes, --val-episodes and --steps must be >= 1"
        )
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
    if "anchor" in variants and not model.anchor_trained:
        raise SystemExit(
            f"bench_displacement.py: error: --inputs anchor: the checkpoint {args.checkpoint!r} has no "
            "trained anchor head (world_model.anchor.hidden > 0 and train.anchor.steps > 0 train one)"
        )
    fitted = [v for v in variants if v != "anchor"]
    caches = {}
    tokens = None
    for split, n in (("train", args.train_episodes), ("val", args.val_episodes)):
        if split == "train" and not fitted:
            continue
        data = EpisodeDataset(
            args.episodes, window=1, split=split, val_fraction=args.val_fraction,
            expect_env_id=model.meta.get("env_id"), expect_image_size=model.image_size,
        )  # fmt: skip
        pooled = split == "train" or "anchor" not in variants
        lat = encode_episodes(model, _Episodes(data, n), pooled=pooled, progress=False)  # frozen, no grad
        with torch.no_grad():
            if not pooled:  # the anchor head reads the patch tokens; the fitted heads the pooled latents
                tokens = lat.z
                lat.z = torch.cat([model.pooler(t) for t in tokens.split(4096)])
            lat.z = model.normalizer.latent(lat.z)
        caches[split] = lat
    encode_s = time.perf_counter() - t0
    train, val = caches.get("train"), caches["val"]
    mean, std = model.normalizer.action_mean, model.normalizer.action_std
    targets = DisplacementTrainConfig()
    sums_va = ActionSums.from_latents(val, mean, std)
    first_va = val.window_starts(1)
    goal_va, want = sums_va.sample(first_va, 1, targets, torch.Generator().manual_seed(args.seed + 1))
    want = want[:, 0]  # [W, A]
    small = want.abs().amax(-1) < 0.5
    out = {}

    def scores(pred: torch.Tensor) -> dict:
        return {
            "val_ratio": round(float(F.mse_loss(pred, want) / want.var(0).mean()), 4),
            "small_mse": round(float(F.mse_loss(pred[small], want[small])), 4) if small.any() else None,
            "small_zero_mse": round(float(want[small].square().mean()), 4) if small.any() else None,
        }

    if "anchor" in variants:
        with torch.no_grad():
            pairs = zip(first_va.split(1024), goal_va.split(1024), strict=True)
            pred = torch.cat([model.anchor(tokens[f], tokens[g]) for f, g in pairs])
        out["anchor"] = {"trained_steps": int(model.meta.get("anchor_steps", 0)), **scores(pred)}
    if fitted:
        sums_tr, first_tr = ActionSums.from_latents(train, mean, std), train.window_starts(1)
    for inputs in fitted:
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
        out[inputs] = {"train_loss": round(float(loss.detach()), 4), **scores(pred)}
    print(json.dumps({"checkpoint": args.checkpoint, "state_labels": model.state_labels,
                      "train_episodes": len(train.starts) if train else 0, "val_episodes": len(val.starts),
                      "val_pairs": len(first_va), "steps": args.steps, "inputs": out,
                      "encode_seconds": round(encode_s, 1),
                      "seconds": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
