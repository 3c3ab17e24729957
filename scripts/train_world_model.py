"""Train the action-conditioned world model on frozen-encoder latents of recorded episodes.

    python scripts/train_world_model.py data.path=/tmp/eps_reach encoder_checkpoint=runs/pt/checkpoint
    python scripts/train_world_model.py ... world_model=grid2 train.steps=5000 out=runs/wm resume=true
    python scripts/train_world_model.py 'data.path=[data/scripted,data/planner]' ...   # several datasets
    python scripts/train_world_model.py data.path=D init=runs/wm world_model.predictor.dim=256  # a new
        # predictor for a trained model: its (tuned) encoder, statistics and heads are kept, not retrained
    torchrun --nproc_per_node=2 scripts/train_world_model.py ...    # DDP (gloo / nccl)

Ends with one JSON line: {"checkpoint", "steps", "final_loss", "val_one_step_l1",
"val_one_step_copy_last_l1", "val_h_step_l1", "val_h_step_copy_last_l1", ...}.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from jepa_agent.checkpoint import load_config
from jepa_agent.config import hydra_main
from jepa_agent.data import DataError, open_episodes
from jepa_agent.data.video_io import VIDEO_EXTENSIONS
from jepa_agent.models.vit import encoder_config, load_encoder
from jepa_agent.training.distributed import dist_info, shutdown_distributed
from jepa_agent.training.train_world_model import WorldModelTrainConfig, train_world_model
from jepa_agent.utils import RESUME_HINT, cli_errors, emit_json_line, seed_everything, set_threads
from jepa_agent.world_model import WorldModel, build_world_model, resolve_checkpoint


def run(cfg: DictConfig) -> dict:
    """Load the encoder and episodes named by ``cfg``, train, return the JSON summary."""
    init = cfg.get("init")
    retrain_cfg = cfg.get("init_retrain") or []
    retrain = check_init_retrain(OmegaConf.to_container(retrain_cfg) if OmegaConf.is_list(retrain_cfg)
                                 else retrain_cfg, init)  # fmt: skip
    if OmegaConf.is_missing(cfg, "data.path"):
        raise ValueError("data.path is required: pass data.path=PATH")
    if init is None and OmegaConf.is_missing(cfg, "encoder_checkpoint"):
        raise ValueError("encoder_checkpoint is required: pass encoder_checkpoint=PATH (or init=WORLD_MODEL)")
    if init is not None and not OmegaConf.is_missing(cfg, "encoder_checkpoint"):
        raise ValueError(
            f"init={init} brings its own encoder; encoder_checkpoint={cfg.encoder_checkpoint} would replace "
            "it: pass one of the two"
        )
    if cfg.data.kind != "episodes" or int(cfg.data.frame_stride) != 1:
        raise ValueError(
            f"world-model training needs data=episodes with data.frame_stride=1; got {cfg.data.kind}, "
            f"stride {cfg.data.frame_stride}"
        )
    paths = cfg.data.path
    paths = OmegaConf.to_container(paths) if OmegaConf.is_list(paths) else str(paths)
    for path in [paths] if isinstance(paths, str) else paths:
        check_has_actions(str(path))
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    base = None
    if init is not None:
        base, enc_path = load_init(str(init), cfg)
        encoder = base.encoder
    else:
        enc_path = resolve_checkpoint(cfg.encoder_checkpoint)
        encoder = load_encoder(enc_path, which=cfg.encoder_which)
    if encoder.img_size != cfg.env.image_size:
        raise ValueError(
            f"encoder {enc_path} takes {encoder.img_size}px images but env.image_size="
            f"{cfg.env.image_size}; use the matching encoder or env.image_size={encoder.img_size}"
        )
    train_cfg = WorldModelTrainConfig(
        **{**OmegaConf.to_container(cfg.train, resolve=True), "seed": cfg.seed, "device": cfg.device}
    )
    train_cfg.betas = tuple(train_cfg.betas)
    if base is not None and train_cfg.encoder.steps > 0:
        tuned = int(base.meta.get("encoder_tune_steps", 0) or 0)
        if train_cfg.encoder.steps != tuned:
            raise ValueError(
                f"init={init}: its encoder is kept as it was trained ({tuned} fine-tuning steps); "
                f"train.encoder.steps={train_cfg.encoder.steps} would tune it again: set "
                "train.encoder.steps=0"
            )
        train_cfg.encoder.steps = 0  # the env's recipe asks for the tuning this encoder already had: keep it
    common = dict(
        val_fraction=cfg.data.val_fraction, expect_env_id=cfg.env.id, expect_image_size=cfg.env.image_size
    )
    train_ds = open_episodes(paths, window=train_cfg.frames, split="train", **common)
    try:
        val_ds = open_episodes(paths, window=1, split="val", **common)
    except DataError as e:
        warnings.warn(f"no held-out episodes, validation skipped: {e}", stacklevel=1)
        val_ds = None
    first = train_ds.episode(0)
    name = str(load_config(enc_path).encoder.get("name", "vit_tiny"))
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config.update(
        encoder={"name": name, **encoder_config(encoder)},
        env_id=cfg.env.id,
        action_dim=int(first["action"].shape[-1]),
        proprio_dim=int(first["proprio"].shape[-1]),
        image_size=encoder.img_size,
        encoder_checkpoint=str(enc_path),
    )
    if base is not None:
        run_config["init"] = str(enc_path)
    model = build_world_model(run_config)
    model.encoder.load_state_dict(encoder.state_dict())
    if base is not None:
        keep_trained_parts(base, model, str(init), retrain)
    out = cfg.out if cfg.out is not None else HydraConfig.get().runtime.output_dir
    result = train_world_model(
        model,
        train_ds,
        val_ds,
        train_cfg,
        out,
        run_config=run_config,
        encoder_name=name,
        resume=cfg.resume,
        tensorboard=cfg.logger == "tensorboard",
        progress=cfg.progress,
        keep_stats=base is not None,
    )
    skipped = len(train_ds.skipped) + (len(val_ds.skipped) if val_ds is not None else 0)
    return {
        **result.summary(),
        "out": str(out),
        "skipped_files": skipped,
        "train_episodes": train_ds.num_episodes,
        "val_episodes": val_ds.num_episodes if val_ds else 0,
    }


def load_init(init: str, cfg: DictConfig) -> tuple[WorldModel, Path]:
    """The trained world model ``init=`` names, checked against the run (env, image size, macro-actions)."""
    path = resolve_checkpoint(init)
    base = WorldModel.from_checkpoint(path, device="cpu", env_id=cfg.env.id, image_size=cfg.env.image_size)
    if base.action_chunk != int(cfg.action_chunk):
        raise ValueError(
            f"init={init} steps macro-actions of {base.action_chunk} env steps, this run action_chunk="
            f"{cfg.action_chunk}; pass action_chunk={base.action_chunk}"
        )
    return base, Path(path)


RETRAINABLE = ("metric", "anchor")  # the heads init= keeps unless init_retrain names them


def check_init_retrain(retrain: Any, init: Any) -> list[str]:
    """``init_retrain``: a list of :data:`RETRAINABLE` heads, only with ``init=``; names the bad value."""
    names = list(retrain) if isinstance(retrain, (list, tuple)) else None
    if names is None or any(not isinstance(n, str) or n not in RETRAINABLE for n in names):
        raise ValueError(
            f"init_retrain={retrain!r}; expected a list of the heads init= should train again rather than "
            f"keep, of {list(RETRAINABLE)} (e.g. init_retrain=[anchor])"
        )
    if names and init is None:
        raise ValueError(
            f"init_retrain={names} retrains heads of a trained model: pass init=WORLD_MODEL with it (without "
            "init= every head is trained anyway)"
        )
    return names


def keep_trained_parts(base: WorldModel, model: WorldModel, init: str, retrain: Sequence[str] = ()) -> None:
    """Give ``model`` the statistics and trained heads of ``base`` (``init=``): the heads' stages are then
    skipped, as on resume, and only the predictor (and the displacement head, trained with it) learns. The
    heads named in ``retrain`` (``init_retrain``) are trained again instead, on this run's settings."""
    parts = ["normalizer"]
    for name, steps in (("metric", "metric_steps"), ("anchor", "anchor_steps")):
        if name in retrain:
            continue
        if getattr(model, name) is not None and getattr(base, name) is not None and base.meta.get(steps):
            parts.append(name)
            model.meta[steps] = base.meta[steps]
    for name in parts:
        state = getattr(base, name).state_dict()
        if name == "normalizer":  # the same pooled latent split into tokens otherwise (world_model.flatten)
            own = getattr(model, name).state_dict()
            resplit = {k for k, v in state.items() if k in own and v.shape != own[k].shape}
            state = {k: v.reshape(own[k].shape) if k in resplit and v.numel() == own[k].numel() else v
                     for k, v in state.items()}  # fmt: skip
        try:
            getattr(model, name).load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise ValueError(
                f"init={init}: its {name} does not fit this run's world_model settings ({first}); pass the "
                f"checkpoint's world_model settings for it"
            ) from None
    model.meta["encoder_tune_steps"] = int(base.meta.get("encoder_tune_steps", 0) or 0)


def check_has_actions(path: str) -> None:
    """A world model learns what actions do: refuse a folder of plain videos (no recorded actions) by name."""
    root = Path(path)
    if root.is_dir() and not (root / "meta.json").exists():
        videos = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS]
        if videos and not any(root.glob("episode_*.npz")):
            raise DataError(
                f"data.path={path}: {len(videos)} video file(s) but no recorded actions; the world model "
                "learns what actions do, so it needs episodes (frames + actions, e.g. from "
                "scripts/collect.py). Plain videos can pretrain the encoder: scripts/pretrain.py data=videos"
            )


@hydra_main("train_world_model")
@cli_errors(on_interrupt=RESUME_HINT)
def main(cfg: DictConfig) -> None:
    if cfg.logger not in ("csv", "tensorboard"):
        raise ValueError(f"logger={cfg.logger!r}; expected 'csv' or 'tensorboard'")
    try:
        summary = run(cfg)
    finally:
        shutdown_distributed()
    if dist_info()[0] == 0:  # one JSON line per job, not per torchrun rank
        emit_json_line(summary)


if __name__ == "__main__":
    main()
