"""V-JEPA pretraining of the video encoder.

    python scripts/pretrain.py data.path=/tmp/eps_reach                       # episodes (collect.py)
    python scripts/pretrain.py data=videos data.path=~/videos encoder=vit_tiny  # any mp4 folder
    python scripts/pretrain.py data.path=DIR out=runs/pt resume=true            # continue a run
    torchrun --nproc_per_node=2 scripts/pretrain.py data.path=DIR out=runs/pt   # DDP (gloo / nccl)

Ends with one JSON line: {"checkpoint", "steps", "final_loss", "clips_per_s", "skipped_files", ...}.
"""

from __future__ import annotations

import sys
import warnings

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from jepa_agent.checkpoint import CheckpointError
from jepa_agent.config import hydra_main
from jepa_agent.masks import specs_from_config
from jepa_agent.models.predictor import MaskedPredictor
from jepa_agent.models.vit import build_encoder, encoder_config
from jepa_agent.training.distributed import dist_info, shutdown_distributed
from jepa_agent.training.pretrain import (
    CollapseWarning,
    NonFiniteLossError,
    PretrainConfig,
    build_pretrain_dataset,
    pretrain,
)
from jepa_agent.utils import RESUME_HINT, cli_errors, emit_json_line, seed_everything, set_threads


def run(cfg: DictConfig) -> dict:
    """Build data, encoder, predictor and masks from ``cfg``; train; return the JSON summary."""
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ValueError(f"data.path is required: pass data.path=DIR (a {cfg.data.kind} directory)")
    if OmegaConf.is_list(cfg.data.path):
        raise ValueError(
            f"data.path={list(cfg.data.path)}: pretrain.py reads one directory; a list of them is for "
            "train_world_model.py"
        )
    if cfg.logger not in ("csv", "tensorboard"):
        raise ValueError(f"logger={cfg.logger!r}; expected 'csv' or 'tensorboard'")
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    enc_kw = {k: v for k, v in OmegaConf.to_container(cfg.encoder, resolve=True).items() if k != "name"}
    encoder = build_encoder(cfg.encoder.name, **enc_kw)
    specs = specs_from_config(OmegaConf.to_container(cfg.masks, resolve=True))
    pred_kw = {"pos_embed": encoder.pos_embed_kind, **cfg.predictor}  # positions as the encoder's by default
    predictor = MaskedPredictor(encoder.grid, encoder.embed_dim, num_mask_tokens=len(specs), **pred_kw)
    dataset = build_pretrain_dataset(
        cfg.data.kind, cfg.data.path, clip_len=encoder.num_frames, frame_stride=cfg.data.frame_stride,
        image_size=encoder.img_size, val_fraction=cfg.data.val_fraction,
    )  # fmt: skip
    train = OmegaConf.to_container(cfg.train, resolve=True)
    train_cfg = PretrainConfig(**{**train, "betas": tuple(train["betas"]), "ema": tuple(train["ema"])},
                               seed=cfg.seed, device=cfg.device)  # fmt: skip
    out = cfg.out if cfg.out is not None else HydraConfig.get().runtime.output_dir
    run_config = OmegaConf.to_container(cfg, resolve=True)
    run_config["encoder"] = {"name": cfg.encoder.name, **encoder_config(encoder)}
    result = pretrain(
        dataset, encoder, predictor, specs, train_cfg, out, run_config=run_config, resume=cfg.resume,
        tensorboard=cfg.logger == "tensorboard", progress=cfg.progress,
    )  # fmt: skip
    return {**result.summary(), "out": str(out)}


@hydra_main("pretrain")
@cli_errors(on_interrupt=RESUME_HINT)
def main(cfg: DictConfig) -> None:
    warnings.simplefilter("always", CollapseWarning)
    try:
        summary = run(cfg)
    except (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"pretrain: error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown_distributed()
    if dist_info()[0] == 0:
        emit_json_line(summary)


if __name__ == "__main__":
    main()
