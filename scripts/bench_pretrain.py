"""Benchmark V-JEPA pretraining steps: throughput, time split, and the gain of dropping masked tokens.

    python scripts/bench_pretrain.py                          # vit_tiny, 64x64, 8 frames, batch 32
    python scripts/bench_pretrain.py --threads 2 --steps 7 --data /tmp/eps_reach
    python scripts/bench_pretrain.py --encoder vit_micro --frames 4 --variants fp32
    python scripts/bench_pretrain.py --device cuda --steps 20 --warmup 5   # on a GPU

Variants (each its own model + optimizer, run in turn step by step so machine load hits all alike):
``fp32`` and ``bf16`` (autocast) with the V-JEPA context encoder on visible tokens only, and
``fp32_all_tokens``: the context encoder on all tokens (then keeping the context outputs), the
baseline for the drop-masked-tokens speed-up; ``fp32_rope`` (opt-in): 3D rotary positions in the encoder
and predictor instead of added sin-cos, to price ``encoder.pos_embed=rope``. A step is split into
data (fetch + collate + masks), forward (target + context encoder + predictor + loss), backward, and
optimizer (clip + AdamW + EMA). On CUDA the device is synchronised at each boundary, so every phase
is charged its own kernels. Prints a table of medians (and min/max step time), the torch threads and
the load average, then one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from jepa_agent.losses import ema_update
from jepa_agent.masks import DEFAULT_MASKS, TubeMaskCollator
from jepa_agent.models.predictor import MaskedPredictor
from jepa_agent.models.vit import build_encoder
from jepa_agent.training.pretrain import (
    ContextPredictor,
    PretrainConfig,
    collate_frames,
    frames_to_clips,
    jepa_step_loss,
    make_optimizer,
)
from jepa_agent.utils import emit_json_line, int_at_least, resolve_device, set_threads

# name -> (precision, context encoder on visible tokens only, positions)
VARIANTS = {
    "fp32": ("fp32", True, "sincos"),
    "bf16": ("bf16", True, "sincos"),
    "fp32_all_tokens": ("fp32", False, "sincos"),
    "fp32_rope": ("fp32", True, "rope"),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="vit_tiny", help="encoder preset (configs/encoder/<name>)")
    p.add_argument("--depth", type=int_at_least(1), default=None, help="override the preset depth")
    p.add_argument("--img-size", type=int_at_least(8), default=64)
    p.add_argument("--frames", type=int_at_least(2), default=8)
    p.add_argument("--batch", type=int_at_least(1), default=32)
    p.add_argument("--predictor-dim", type=int_at_least(1), default=96)
    p.add_argument("--predictor-depth", type=int_at_least(1), default=4)
    p.add_argument("--steps", type=int_at_least(3), default=5, help="timed steps per variant (>= 3)")
    p.add_argument("--warmup", type=int_at_least(0), default=1, help="untimed steps per variant")
    p.add_argument("--variants", default="fp32,bf16,fp32_all_tokens", help=f"comma list of {list(VARIANTS)}")
    p.add_argument("--data", default=None, help="episodes dir (collect.py); default: random in-memory clips")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:i] | auto (default cpu: the CI figure)")
    args = p.parse_args(argv)
    bad = [v.strip() for v in args.variants.split(",") if v.strip() and v.strip() not in VARIANTS]
    if bad or not args.variants.strip(" ,"):
        p.error(f"--variants {args.variants!r}: unknown {bad}; expected a comma list of {list(VARIANTS)}")
    return args


class RandomClips(torch.utils.data.Dataset):
    """In-memory random uint8 clips ``[T, 3, H, W]`` (data time = indexing + collation only)."""

    def __init__(self, n: int, frames: int, size: int) -> None:
        self.x = torch.randint(0, 256, (n, frames, 3, size, size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"frames": self.x[i]}


class Variant:
    """One benchmarked configuration: its own encoder, predictor, EMA target and optimizer."""

    def __init__(
        self,
        args: argparse.Namespace,
        precision: str,
        drop_masked: bool,
        pos_embed: str,
        device: torch.device,
    ) -> None:
        torch.manual_seed(0)
        self.device = device
        kw = {"img_size": args.img_size, "num_frames": args.frames, "pos_embed": pos_embed}
        if args.depth:
            kw["depth"] = args.depth
        self.encoder = build_encoder(args.encoder, **kw)
        self.predictor = MaskedPredictor(
            self.encoder.grid,
            self.encoder.embed_dim,
            embed_dim=args.predictor_dim,
            depth=args.predictor_depth,
            num_mask_tokens=len(DEFAULT_MASKS),
            pos_embed=pos_embed,
        )
        self.target = build_encoder(args.encoder, **kw).requires_grad_(False)
        self.target.load_state_dict(self.encoder.state_dict())
        self.encoder.to(device)
        self.predictor.to(device)
        self.target.to(device)
        self.model = ContextPredictor(self.encoder, self.predictor, drop_masked=drop_masked)
        self.opt = make_optimizer([self.encoder, self.predictor], PretrainConfig(steps=10, warmup=0))
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        self.times: dict[str, list[float]] = {
            k: [] for k in ("data", "forward", "backward", "optimizer", "step")
        }

    def clock(self) -> float:
        """Wall time after the device has finished its queued work (CUDA kernels run asynchronously)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def step(
        self, dataset: torch.utils.data.Dataset, masker: TubeMaskCollator, step: int, batch: int
    ) -> None:
        t0 = self.clock()
        idx = [(step * batch + i) % len(dataset) for i in range(batch)]
        clips = frames_to_clips(collate_frames([dataset[i] for i in idx]), self.device)
        masks = [m.to(self.device) for m in masker(batch, step)]
        t1 = self.clock()
        with self.autocast:
            loss, _ = jepa_step_loss(self.model, self.target, clips, masks)
        t2 = self.clock()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = self.clock()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        ema_update(self.target, self.encoder, 0.996)
        t4 = self.clock()
        for key, dt in zip(self.times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            self.times[key].append(dt)


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)  # --steps >= 3 (a median) and the variant names are checked there
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    set_threads(args.threads)
    if args.data:
        from jepa_agent.data import EpisodeDataset

        dataset = EpisodeDataset(Path(args.data), window=args.frames, expect_image_size=args.img_size)
    else:
        dataset = RandomClips(4 * args.batch, args.frames, args.img_size)
    device = resolve_device(args.device)
    variants = {n: Variant(args, *VARIANTS[n], device) for n in names}
    masker = TubeMaskCollator(next(iter(variants.values())).encoder.grid, DEFAULT_MASKS, seed=0)
    for step in range(args.warmup + args.steps):
        for v in variants.values():  # interleaved: load changes hit every variant alike
            v.step(dataset, masker, step, args.batch)
    rows = {}
    for n, v in variants.items():
        med = {k: statistics.median(t[args.warmup :]) for k, t in v.times.items()}
        steps = v.times["step"][args.warmup :]
        rows[n] = {
            **{f"{k}_s": round(x, 4) for k, x in med.items()},
            "step_min_s": round(min(steps), 4),
            "step_max_s": round(max(steps), 4),
            "clips_per_s": round(args.batch / med["step"], 2),
            "images_per_s": round(args.batch * args.frames / med["step"], 1),
        }
    print(
        f"encoder={args.encoder} depth={variants[names[0]].encoder.depth} img={args.img_size} "
        f"frames={args.frames} batch={args.batch} predictor={args.predictor_dim}x{args.predictor_depth} "
        f"device={device} threads={torch.get_num_threads()} loadavg={os.getloadavg()[0]:.2f} "
        f"steps={args.steps} (medians)"
    )
    cols = [
        "data_s",
        "forward_s",
        "backward_s",
        "optimizer_s",
        "step_s",
        "step_min_s",
        "step_max_s",
        "clips_per_s",
        "images_per_s",
    ]
    print(f"{'variant':<16}" + "".join(f"{c:>13}" for c in cols))
    for n, r in rows.items():
        print(f"{n:<16}" + "".join(f"{r[c]:>13}" for c in cols))
    out = {
        "variants": rows,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "threads": torch.get_num_threads(),
        "loadavg": round(os.getloadavg()[0], 2),
        "encoder": args.encoder,
        "depth": variants[names[0]].encoder.depth,
        "batch": args.batch,
        "frames": args.frames,
        "img_size": args.img_size,
    }
    if "fp32" in rows and "fp32_all_tokens" in rows:
        ratio = round(rows["fp32_all_tokens"]["step_s"] / rows["fp32"]["step_s"], 2)
        out["all_tokens_over_drop_masked_step_ratio"] = ratio
        print(f"drop masked tokens: step time with all tokens / visible tokens only = {ratio}x")
    if "fp32" in rows and "bf16" in rows:
        out["bf16_speedup"] = round(rows["fp32"]["step_s"] / rows["bf16"]["step_s"], 2)
    emit_json_line(out)
    return out


if __name__ == "__main__":
    main()
