"""Frozen evaluation of a pretrained encoder with an attentive probe (R^2 on held-out episodes).

    python scripts/probe.py checkpoint=outputs/pt/checkpoint data.path=/tmp/eps_reach

Ends with one JSON line: {"r2": {...}, "r2_random_init": {...}, "r2_supervised_reference": {...} or
null, "ee_gain_over_random_init": {"gain", "ci95", "p_not_above"} or null, "ee_rmse": {encoder:
metres}, "r2_pooled": {...}, "checkpoint", "train_frames", ...}. The gain is the end-effector R^2 of
the pretrained encoder minus the random-init one's, with a 95% CI from a paired bootstrap over the
held-out episodes.
``supervised_reference_steps=N`` adds an upper bound: a same-size encoder trained end to end on the
train targets for N steps, then probed like the others.
"""

from __future__ import annotations

import sys

import torch
from omegaconf import DictConfig, OmegaConf

from jepa_agent.checkpoint import CheckpointError
from jepa_agent.config import hydra_main
from jepa_agent.data import EpisodeDataset
from jepa_agent.models.vit import VideoViT, encoder_config, load_encoder
from jepa_agent.probe import (
    ProbeConfig,
    ee_columns,
    load_episode_frames,
    paired_bootstrap_r2_gain,
    probe_encoders,
    probe_targets,
    train_supervised_reference,
)
from jepa_agent.utils import (
    check_int,
    cli_errors,
    emit_json_line,
    resolve_device,
    seed_everything,
    set_threads,
)


def run(cfg: DictConfig) -> dict:
    """Load the encoder and held-out frames, probe (pretrained and random init), return the summary."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise ValueError(
            "checkpoint is required: pass checkpoint=RUN_DIR/checkpoint (from scripts/pretrain.py)"
        )
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ValueError("data.path is required: pass data.path=EPISODES_DIR (from scripts/collect.py)")
    if OmegaConf.is_list(cfg.data.path):
        raise ValueError(
            f"data.path={list(cfg.data.path)}: probe.py reads one directory; a list of them is for "
            "train_world_model.py"
        )
    for key in ("max_train_frames", "max_val_frames"):
        if cfg[key] is not None:
            check_int(key, cfg[key], 1, "or null for all frames")
    probe_cfg = ProbeConfig(**cfg.probe, seed=cfg.seed)  # checked before any slow work
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    encoder = load_encoder(cfg.checkpoint, cfg.which)
    side = min(encoder.grid[-2:])
    if probe_cfg.ridge_grid > side:
        raise ValueError(
            f"probe.ridge_grid={probe_cfg.ridge_grid}; expected 1 .. {side} (this encoder's patch grid)"
        )
    encoders = {"pretrained": encoder}
    if cfg.random_init_baseline:
        torch.manual_seed(cfg.seed)
        encoders["random_init"] = VideoViT(**encoder_config(encoder))  # same size, fresh init
    split = dict(window=1, val_fraction=cfg.data.val_fraction, expect_image_size=encoder.img_size)
    train_ds = EpisodeDataset(cfg.data.path, split="train", **split)
    val_ds = EpisodeDataset(cfg.data.path, split="val", **split)
    train_f, train_s, _ = load_episode_frames(train_ds, cfg.frame_stride, cfg.max_train_frames, cfg.seed)
    val_f, val_s, val_eps = load_episode_frames(val_ds, cfg.frame_stride, cfg.max_val_frames, cfg.seed)
    env = cfg.env.id if cfg.get("env") else train_ds.meta["env_id"]  # env=NAME: configs/env/NAME.yaml
    device = resolve_device(cfg.device)
    sup_info = None
    if cfg.supervised_reference_steps:  # upper bound: same-size encoder trained on the train targets
        sup = VideoViT(**encoder_config(encoder))
        encoders["supervised_reference"], sup_info = train_supervised_reference(
            sup, train_f, probe_targets(train_s, env)[0], int(cfg.supervised_reference_steps),
            device=device, seed=cfg.seed,
        )  # fmt: skip
    res = probe_encoders(encoders, train_f, train_s, val_f, val_s, env, probe_cfg, device, cfg.precision)

    def get(name: str, key: str) -> object:
        return res[name][key] if name in res else None

    gain = None
    val_y, names = probe_targets(val_s, env)
    cols = ee_columns(names)
    if "random_init" in res and cols is not None:
        pre, rnd = res["pretrained"]["val_pred"], res["random_init"]["val_pred"]
        gain = paired_bootstrap_r2_gain(pre, rnd, val_y, val_eps, cols, seed=cfg.seed)

    return {
        "r2": res["pretrained"]["r2"],
        "r2_random_init": get("random_init", "r2"),
        "r2_supervised_reference": get("supervised_reference", "r2"),
        "ee_gain_over_random_init": gain,
        "supervised_reference_training": sup_info,
        "ee_rmse": {name: r["ee_rmse"] for name, r in res.items()},
        "r2_pooled": res["pretrained"]["r2_pooled"],
        "r2_pooled_random_init": get("random_init", "r2_pooled"),
        "r2_knn": res["pretrained"]["r2_knn"],
        "r2_knn_random_init": get("random_init", "r2_knn"),
        "checkpoint": str(cfg.checkpoint),
        "env": env,
        "train_frames": len(train_f),
        "val_frames": len(val_f),
        "train_episodes": train_ds.num_episodes,
        "val_episodes": val_ds.num_episodes,
        "seconds": {k: round(v["seconds"] + v["feature_seconds"], 1) for k, v in res.items()},  # probing
    }


@hydra_main("probe")
@cli_errors
def main(cfg: DictConfig) -> None:
    try:
        summary = run(cfg)
    except (CheckpointError, ValueError, FileNotFoundError) as e:  # DataError is a ValueError
        print(f"probe: error: {e}", file=sys.stderr)
        sys.exit(1)
    emit_json_line(summary)


if __name__ == "__main__":
    main()
