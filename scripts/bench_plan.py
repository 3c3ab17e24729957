"""Benchmark one full planner replan through the world model's rollout, as the MPC agent runs it (KV cache,
the cost head's first layer fused into the predictor's head), against the same rollout without the fusion,
without the KV cache, and with the labelled readout cost instead of the default metric cost.

    python scripts/bench_plan.py                                  # random default-size model, CEM 300x30xH5
    python scripts/bench_plan.py --checkpoint runs/wm/checkpoint  # a trained world model
    python scripts/bench_plan.py --threads 1 --replans 9 --world-model grid2
    python scripts/bench_plan.py --checkpoint runs/push_tokens --population 200 --iterations 10
                                                                  # a frame of many tokens: + its attention
                                                                  #   by broadcast products, for the ratio
    python scripts/bench_plan.py --checkpoint A --member B        # + the ensemble of A and B (plan.py's
                                                                  #   'checkpoint=[A,B]'), against A alone
                                                                  #   and against its members run serially

With a model that has a trained anchor head (the distracting reach), the main cost carries the anchor term
as the agent plans with it: each timed replan then also encodes a frame through ``cost.anchor_shift``'s
views and reads the head there (``set_start``), and every variant encodes its frame the same way (the
readout's through one view), so the ratio compares whole replans.

The variants alternate in one process (so machine load hits them alike); prints min/median/max seconds per
replan, the speed-ups, the control rate of the default planning budget
(scripts/plan.py's: the planner's own defaults) in Hz, the torch threads
and the load average, then one JSON line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from jepa_agent.agent import encode_options, planning_rollout
from jepa_agent.config import register_configs
from jepa_agent.ensemble import WorldModelEnsemble
from jepa_agent.models.ac_predictor import Attention
from jepa_agent.utils import emit_json_line, int_at_least, set_threads
from jepa_agent.world_model import StateReadout, WorldModel, build_world_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="world-model checkpoint (default: random init)")
    p.add_argument("--world-model", default="compact", help="configs/world_model/<name> for random init")
    p.add_argument("--encoder", default="vit_micro", help="configs/encoder/<name> for random init")
    p.add_argument("--action-dim", type=int_at_least(1), default=2)
    p.add_argument("--planner", default="cem", choices=["cem", "mppi"], help="planner=<name> (its schema)")
    p.add_argument("--population", type=int_at_least(1), default=300)
    p.add_argument("--iterations", type=int_at_least(1), default=30)
    p.add_argument("--horizon", type=int_at_least(1), default=5)
    p.add_argument(
        "--context",
        type=int_at_least(1),
        default=None,
        help="observed frames of rollout context (default: the checkpoint's train.context, else 1)",
    )
    p.add_argument("--replans", type=int_at_least(5), default=7, help="timed replans per variant (>= 5)")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0: torch default)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unfused and uncached baselines")
    p.add_argument(
        "--member",
        action="append",
        default=[],
        help="another world-model checkpoint (repeatable): also time the ensemble of --checkpoint and these",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the rollout")
    p.add_argument(
        "--cost-space",
        default="metric",
        choices=["metric", "readout", "latent"],
        help="score imagined latents in the temporal-distance space (plan.py's default), by their state "
        "readout (the labelled baseline) or as the latents themselves",
    )
    return p.parse_args(argv)


def stats(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose(
            overrides=[
                "+env=reach",  # the world-model group reads the env's choices (e.g. its displacement head)
                f"+world_model={args.world_model}",
                f"+encoder={args.encoder}",
                f"+planner={args.planner}",
            ]
        )
        # the budget scripts/plan.py plans with by default (its config may override the group's)
        plan_cfg = cfg
        if (CONFIGS / "plan.yaml").exists():
            plan_cfg = compose(config_name="plan", overrides=[f"planner={args.planner}"])
    if args.checkpoint:
        model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
        source = str(args.checkpoint)
    else:
        wm_cfg = OmegaConf.to_container(cfg.world_model, resolve=True)
        wm_cfg["readout"] = {"angles": 2, "wrap": [0], "hidden": 256}  # the reach readout (timing only)
        run_cfg = {
            "encoder": OmegaConf.to_container(cfg.encoder),
            "world_model": wm_cfg,
            "action_dim": args.action_dim,
            "proprio_dim": 0,
        }
        model = build_world_model(run_cfg)
        source = f"random init ({args.world_model}, {args.encoder})"
        model.meta["metric_steps"] = 1  # random weights: its speed is what is measured
        model.meta["displacement_weight"] = 1.0  # (the displacement term too, when the model has the head)
    N, D = model.latent_shape
    A = model.action_dim
    if model.predictor.proprio_dim:
        raise ValueError("bench_plan times latent-only models; this checkpoint uses proprio")
    if args.context is None:
        args.context = model.context_frames
    z_hist = torch.nn.functional.layer_norm(torch.randn(1, args.context, N, D), (D,))
    ctx = model.context(list(z_hist[0]), [torch.zeros(A)] * (args.context - 1))
    goal = torch.nn.functional.layer_norm(torch.randn(N, D), (D,))
    if args.cost_space == "readout" and model.readout is None:
        raise ValueError(f"--cost-space=readout but {source} has no state readout; pass --cost-space=metric")
    # the anchor term (a trained anchor head, metric space) reads the goal image and each replan's frame,
    # encoded as the agent encodes them
    encoding = encode_options(model, {}) if args.cost_space == "metric" else {}
    anchored, shift = bool(encoding), encoding.get("anchor_shift", 0)
    frame = torch.randint(0, 256, (model.image_size, model.image_size, 3), dtype=torch.uint8).numpy()
    if anchored:
        with torch.inference_mode():
            goal = model.encode_goal({"image": frame[::-1].copy()}, anchor_shift=shift)
    cost = model.cost(goal, space=args.cost_space)  # plan.py's cost otherwise (CostConfig's defaults)
    if (
        model.readout is None
    ):  # the labelled baseline's cost, for the ratio: a same-size readout (timing only)
        model.readout = StateReadout(N * D, 2, wrap=[0])
    readout_cost = model.cost(goal, space="readout")
    budget = dict(population=args.population, iterations=args.iterations, horizon=args.horizon)
    elites = cfg.planner.get("elites")
    if elites is not None and elites > args.population:  # keep the elite share for small populations
        budget["elites"] = max(1, args.population // 10)
    bench_planner = instantiate(cfg.planner, action_dim=A, **budget)
    default_planner = instantiate(plan_cfg.planner, action_dim=A)

    costs = {"main": cost, "readout": readout_cost}
    ensemble = serial = ens_ctx = None
    if args.member:
        if not args.checkpoint:
            raise ValueError("--member needs --checkpoint: the ensemble's first member")
        if anchored:
            raise ValueError("--member: ensembles of models with an anchor head are not timed here")
        members = [model] + [WorldModel.from_checkpoint(m, device="cpu") for m in args.member]
        ensemble = WorldModelEnsemble(members)  # members side by side on the threads (as plan.py plans)
        serial = WorldModelEnsemble(members, parallel=False)  # one after the other, for the ratio
        for m, path in zip(members[1:], args.member, strict=True):
            if m.latent_shape != model.latent_shape:
                raise ValueError(f"--member {path}: latents {m.latent_shape}, the first member's {(N, D)}")
        ens_ctx = ensemble.context(
            [(z,) * len(members) for z in z_hist[0]], [torch.zeros(A)] * (args.context - 1)
        )
        costs["ensemble"] = ensemble.cost((goal,) * len(members), space=args.cost_space)
        costs["ensemble_serial"] = serial.cost((goal,) * len(members), space=args.cost_space)

    def replan(planner, use_cache: bool, fuse: bool = True, which: str = "main") -> float:
        if which.startswith("ensemble"):  # every member imagines every sample (MPCAgent over an ensemble)
            ens_rollout = planning_rollout(ensemble if which == "ensemble" else serial, costs[which])
            with torch.inference_mode():
                return planner.plan(
                    lambda c, a: ens_rollout(c, a, use_cache=use_cache), costs[which], ens_ctx
                ).plan_seconds
        if which == "concat":  # the keys concatenated onto the cache each step (the reference)
            model.predictor.preallocate_cache = False
            try:
                return replan(planner, use_cache, fuse, "main")
            finally:
                model.predictor.preallocate_cache = True
        if which == "broadcast":  # every step's attention by broadcast products (the few-query path)
            Attention.bmm_queries = 10**9
            try:
                return replan(planner, use_cache, fuse, "main")
            finally:
                Attention.bmm_queries = gemm_from
        fused_rollout = planning_rollout(model, costs[which])  # what MPCAgent plans with

        def rollout(c, a):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                return (fused_rollout if fuse else model.rollout)(c, a, use_cache=use_cache).float()

        with torch.inference_mode():
            if not anchored:
                return planner.plan(rollout, costs[which], ctx).plan_seconds
            t0 = time.perf_counter()  # the whole replan: encode the frame (views), read the head, plan
            state = model.encode({"pixels": frame}, anchor_shift=shift if which == "main" else 0)
            if which == "main":
                costs[which].set_start(state)
            planner.plan(rollout, costs[which], ctx)
            return time.perf_counter() - t0

    variants = {"kv_cache": (True, True, "main")}  # (use_cache, fuse, cost)
    variants["kv_concat"] = (True, True, "concat")
    gemm_from = Attention.bmm_queries
    if model.predictor.tokens_per_step >= gemm_from:  # a frame of many tokens: its attention by GEMMs
        variants["broadcast_attention"] = (True, True, "broadcast")
    if args.cost_space != "readout":
        variants["readout_cost"] = (True, True, "readout")
    if not args.no_baseline:
        variants |= {"unfused": (True, False, "main"), "no_cache": (False, False, "main")}
    if ensemble is not None:
        variants["ensemble"] = (True, True, "ensemble")
        if ensemble.runner.workers(len(ensemble.members), torch.device("cpu")) > 1:
            variants["ensemble_serial"] = (True, True, "ensemble_serial")
    for use_cache, fuse, which in variants.values():  # warm-up (allocator, kernels)
        replan(instantiate(cfg.planner, action_dim=A, **{**budget, "iterations": 2}), use_cache, fuse, which)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.replans):
        for name, (use_cache, fuse, which) in variants.items():
            times[name].append(replan(bench_planner, use_cache, fuse, which))
    default_budget = {k: getattr(default_planner, k) for k in ("population", "iterations", "horizon")}
    if default_budget == {k: budget[k] for k in default_budget}:
        default_times = times["kv_cache"]
    else:
        default_times = [replan(default_planner, True) for _ in range(args.replans)]
    load = os.getloadavg()
    result = {
        "model": source,
        "cost_space": args.cost_space,
        "latent_tokens": N,
        "latent_dim": D,
        "action_dim": A,
        "predictor": {
            "dim": model.predictor.dim,
            "depth": len(model.predictor.blocks),
            "params": sum(p.numel() for p in model.predictor.parameters()),
        },
        "planner": args.planner,
        **budget,
        "context": args.context,
        "anchor_shift": shift if anchored else None,  # not None: each replan encodes a frame through views
        "replans": args.replans,
        "threads": torch.get_num_threads(),
        "bf16": args.bf16,
        "loadavg_1m": round(load[0], 2),
        **{f"{k}_s": {s: round(v, 4) for s, v in stats(t).items()} for k, t in times.items()},
        "default_budget": default_budget,
        "control_hz": round(1.0 / statistics.median(default_times), 3),
    }
    # > 1: writing keys into preallocated buffers beats concatenating them onto the cache
    result["speedup_kv_buffers"] = round(
        statistics.median(times["kv_concat"]) / statistics.median(times["kv_cache"]), 2
    )
    if "broadcast_attention" in times:  # > 1: batched GEMMs beat broadcast products for many tokens
        result["speedup_gemm_attention"] = round(
            statistics.median(times["broadcast_attention"]) / statistics.median(times["kv_cache"]), 2
        )
    if "readout_cost" in times:  # > 1: the default cost is slower than the labelled readout's
        result["ratio_to_readout_cost"] = round(
            statistics.median(times["kv_cache"]) / statistics.median(times["readout_cost"]), 2
        )
    if "ensemble" in times:  # the ensemble's replan against its first member's alone, same run
        result["ensemble_members"] = [str(args.checkpoint), *args.member]
        result["ratio_ensemble_to_one"] = round(
            statistics.median(times["ensemble"]) / statistics.median(times["kv_cache"]), 2
        )
        if "ensemble_serial" in times:  # > 1: the members side by side are faster than one after the other
            result["speedup_ensemble_vs_serial"] = round(
                statistics.median(times["ensemble_serial"]) / statistics.median(times["ensemble"]), 2
            )
    if "no_cache" in times:
        for base in ("no_cache", "unfused"):
            result[f"speedup_vs_{base}"] = round(
                statistics.median(times[base]) / statistics.median(times["kv_cache"]), 2
            )
    err = sys.stderr
    print(
        f"model: {source}; latent {N}x{D}; predictor dim {result['predictor']['dim']} depth "
        f"{result['predictor']['depth']} ({result['predictor']['params']} params)",
        file=err,
    )
    print(
        f"{args.planner} population {args.population} x {args.iterations} iterations "
        f"x horizon {args.horizon}, context {args.context}; threads {result['threads']}; "
        f"load average {load[0]:.2f}",
        file=err,
    )
    for k, t in times.items():
        s = stats(t)
        print(
            f"  {k:12s} min {s['min']:.3f} s  median {s['median']:.3f} s  max {s['max']:.3f} s "
            f"over {len(t)} replans",
            file=err,
        )
    if "no_cache" in times:
        print(
            f"  speed-up of kv_cache (fused) over no_cache: {result['speedup_vs_no_cache']}x, over unfused: "
            f"{result['speedup_vs_unfused']}x (medians)",
            file=err,
        )
    print(
        f"  default budget {default_budget}: {result['control_hz']} Hz control rate (1 replan per step)",
        file=err,
    )
    emit_json_line(result)
    return result


if __name__ == "__main__":
    main()
