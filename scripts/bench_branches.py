"""Does a world model imagine what other actions would do from the same state?

    python scripts/bench_branches.py --checkpoint CKPT --data BRANCHED_EPISODES [--horizon 5]

The data come from ``collect.py branches=K``: groups of episodes that share a recorded state and then
continue it with different actions (a trunk and ``K`` branches). For each held-out branch and its trunk,
from their shared frame, the model imagines both action sequences; the difference between the two
imagined futures is compared, at each imagined step, with the difference between the two recorded futures
(the frames encoded):

- ``cos``: the cosine between the imagined and the true difference (1: the model moves the latent the way
  the other actions move it; 0: an unrelated direction);
- ``ratio``: the imagined difference's norm over the true one's (0: the model ignores the change of actions);
- ``span`` (latent only): the share of the true difference's squared norm inside the span of the directions
  imagined latents can move in at all (:meth:`~jepa_agent.models.ac_predictor.ACPredictor.motion_basis`,
  at most the predictor's width + 1 of them, the same for every state): the most of it any training of
  that predictor could follow. ``cos`` cannot exceed its square root;
- ``error`` (latent only): the branch's own imagined future against its recorded one, the squared error over
  that of copying the shared frame (below 1: better than predicting no change);
- ``displacement_*`` (models with a trained displacement head): the same cosine and ratio for what that head
  reads from each future back to the shared frame (summed actions). It is trained on predicted latents too,
  so it may read the actions' effect from imagined latents that are far from the true ones.

Both in the latent space the predictor is trained in (``latent_*``) and in the features of it that the
cost reads (``head_*``: the metric head's or goal critic's first layer, for models with one). A model that
plans by comparing imagined futures needs these near 1 at every step of its horizon: a planner ranks
candidates by exactly these differences. Medians over pairs; one JSON line. Frames and actions only: the
recorded states are not read, except by the labelled diagnostic below.

``--probe-state`` (a labelled diagnostic, off by default): which parts of the state does imagination carry?
A ridge probe is fitted on encoded frames of the training groups (the first ``1 - held_out``; up to
``--probe-episodes`` episodes, every other frame) to read the recorded state (``jepa_agent.probe.
probe_targets``: push's pusher xy, block xy and yaw as sin/cos; an arm's joints and end effector). Then,
pooled over pairs, per part and imagined step:

- ``probe_<part>_diff_explained`` (imagined): ``1 - sum |d_read - d_true|^2 / sum |d_true|^2``, where
  ``d_true`` is the recorded state difference between branch and trunk and ``d_read`` the probe's reading of
  the two imagined futures' difference (1: imagination moves that part as the other actions do; 0: no
  better than imagining no difference; negative: worse);
- ``probe_<part>_diff_explained_encoded``: the same read from the two encoded recorded frames, the probe's
  own ceiling;
- ``probe_<part>_error_over_copy``: the branch's own state read from its imagined future, squared error over
  that of the shared frame's state (below 1: the part moves in imagination as it moved), and ``_encoded``.
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

from jepa_agent.data import DataError, EpisodeDataset  # noqa: E402
from jepa_agent.probe import RidgeProbe, probe_targets  # noqa: E402
from jepa_agent.world_model import WorldModel  # noqa: E402


def fail(msg: str) -> None:
    sys.exit(f"bench_branches.py: error: {msg}")


def branch_pairs(ds: EpisodeDataset, held_out: float) -> list[tuple[int, int]]:
    """``(trunk, branch)`` episode positions of the last ``held_out`` share of the groups (all: 1)."""
    K = int((ds.meta.get("collection") or {}).get("branches", 0) or 0)
    if K < 1:
        fail(f"{ds.root} was not collected with branches (collect.py branches=K, K >= 1)")
    n_groups = ds.num_episodes // (K + 1)
    first = n_groups - max(1, int(round(held_out * n_groups)))
    pairs = []
    for g in range(first, n_groups):
        for b in range(1, K + 1):
            pairs.append((g * (K + 1), g * (K + 1) + b))
    return pairs


def _sq(x: np.ndarray) -> np.ndarray:
    return np.square(x).sum(-1)


def probe_parts(names: list[str]) -> dict[str, list[int]]:
    """Probe target columns grouped by part: ``pusher_x, pusher_y`` -> ``pusher``, ``yaw_sin, yaw_cos`` ->
    ``yaw``, ``q0_sin, q0_cos`` -> ``q0``, ``ee_x, ee_y`` -> ``ee``."""
    parts: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        parts.setdefault(n.rsplit("_", 1)[0], []).append(i)
    return parts


def fit_state_probe(
    model: WorldModel, ds: EpisodeDataset, episodes: list[int], env_id: str
) -> tuple[RidgeProbe, list[str]]:
    """A ridge probe from the model's latent (flattened) to ``probe_targets`` of the recorded state, fitted on
    every other frame of ``episodes``."""
    feats, ys, names = [], [], []
    for i in episodes:
        ep = ds.episode(i)
        feats.append(model.encode_pixels(ep["frames"][::2]).flatten(1))
        y, names = probe_targets(ep["state"][::2], env_id)
        ys.append(y)
    return RidgeProbe.fit(torch.cat(feats), np.concatenate(ys)), names


def cosine_and_ratio(imagined: torch.Tensor, true: torch.Tensor) -> tuple[float, float]:
    """Differences ``[F]``: their cosine and norm ratio (imagined over true)."""
    cos = torch.nn.functional.cosine_similarity(imagined, true, dim=0)
    return float(cos), float(imagined.norm() / true.norm().clamp_min(1e-12))


def probe_summary(sums: dict[str, np.ndarray], parts: dict[str, list[int]], H: int) -> dict[str, float]:
    """The ``--probe-state`` figures from the pooled squared norms (empty without the probe)."""
    out: dict[str, float] = {}
    for part in parts:
        true, copy = np.maximum(sums[f"diff_true_{part}"], 1e-12), np.maximum(sums[f"copy_{part}"], 1e-12)
        for h in range(H):
            name = f"probe_{part}"
            out[f"{name}_diff_explained_h{h + 1}"] = float(1 - sums[f"diff_err_{part}"][h] / true[h])
            out[f"{name}_diff_explained_encoded_h{h + 1}"] = float(
                1 - sums[f"diff_err_encoded_{part}"][h] / true[h]
            )
            out[f"{name}_error_over_copy_h{h + 1}"] = float(sums[f"err_{part}"][h] / copy[h])
            out[f"{name}_error_over_copy_encoded_h{h + 1}"] = float(sums[f"err_encoded_{part}"][h] / copy[h])
    return out


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a world model (train_world_model.py)")
    p.add_argument("--data", required=True, help="episodes collected with branches (collect.py branches=K)")
    p.add_argument("--horizon", type=int, default=5, help="imagined steps (the model's macro-actions)")
    p.add_argument("--held-out", type=float, default=0.1,
                   help="the last share of the groups (0.1: training's val split; 1: all)")  # fmt: skip
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--probe-state",
        action="store_true",
        help="a labelled diagnostic: which parts of the recorded state imagination carries",
    )
    p.add_argument("--probe-episodes", type=int, default=300,
                   help="training episodes the state probe is fitted on (--probe-state)")  # fmt: skip
    args = p.parse_args()
    if args.horizon < 1 or not 0 < args.held_out <= 1:
        fail(f"--horizon must be >= 1 and --held-out in (0, 1]; got {args.horizon}, {args.held_out}")
    if args.probe_episodes < 1:
        fail(f"--probe-episodes must be >= 1; got {args.probe_episodes}")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    try:
        model = WorldModel.from_checkpoint(args.checkpoint, device="cpu")
        ds = EpisodeDataset(args.data, window=1, expect_image_size=model.image_size)
    except (DataError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if ds.meta.get("env_id") != model.meta.get("env_id"):
        fail(f"{args.data} holds {ds.meta.get('env_id')!r} episodes; {args.checkpoint} is a model of "
             f"{model.meta.get('env_id')!r}")  # fmt: skip
    head = model.metric if model.metric_trained else None
    head_layer = None if head is None else head.input_layer  # what the cost reads of a frame
    chunk, H = model.action_chunk, args.horizon
    span = H * chunk  # env steps imagined
    basis = model.predictor.motion_basis()  # [D', k] over one token; imagined motion stays in its span
    names = [f"{s}_{m}_h{h}" for s in ("latent", "head") for m in ("cos", "ratio") for h in range(1, H + 1)]
    names += [f"latent_{m}_h{h}" for m in ("span", "error") for h in range(1, H + 1)]
    names += [f"displacement_{m}_h{h}" for m in ("cos", "ratio") for h in range(1, H + 1)]
    displacement = model.displacement if model.displacement_trained else None
    rows: dict[str, list[float]] = {k: [] for k in names}
    short, same = 0, 0
    pairs_used = branch_pairs(ds, args.held_out)
    env_id = str(ds.meta.get("env_id"))
    probe, parts = None, {}
    sums: dict[str, np.ndarray] = {}  # pooled squared norms for the probe's figures, per key and step
    if args.probe_state:
        train = list(range(min(pairs_used)[0]))[: args.probe_episodes]  # the groups before the held-out ones
        if not train:
            fail("--probe-state needs training groups before the held-out ones: lower --held-out")
        try:
            probe, probe_names = fit_state_probe(model, ds, train, env_id)
        except (KeyError, ValueError) as e:
            fail(f"--probe-state: {e}")
        parts = probe_parts(probe_names)
        keys = ("diff_err", "diff_err_encoded", "diff_true", "err", "err_encoded", "copy")
        sums = {f"{k}_{part}": np.zeros(H) for k in keys for part in parts}
    trunk_cache: tuple[int, torch.Tensor] | None = None  # (trunk, its encoded frames); its branches follow
    for trunk_i, branch_i in pairs_used:
        trunk, branch = ds.episode(trunk_i), ds.episode(branch_i)
        t_b = int(branch["branch_step"])
        if int(branch["branch_of"]) != trunk["episode_index"]:
            fail(f"episode {branch['episode_index']} branches off {int(branch['branch_of'])}, not "
                 f"{trunk['episode_index']}: the episodes are not in collect.py's groups")  # fmt: skip
        if len(branch["action"]) < span or len(trunk["action"]) < t_b + span:
            short += 1
            continue
        if not np.array_equal(trunk["frames"][t_b], branch["frames"][0]):
            fail(f"episode {branch['episode_index']} does not start from the frame of its trunk "
                 f"({trunk['episode_index']}) at step {t_b}: the env did not replay exactly")  # fmt: skip
        if trunk_cache is None or trunk_cache[0] != trunk_i:
            trunk_cache = (trunk_i, model.encode_pixels(trunk["frames"]))  # [T, N, D]
        z_trunk = trunk_cache[1][t_b : t_b + span + 1 : chunk]  # [H + 1, N, D]
        z_branch = model.encode_pixels(branch["frames"][: span + 1 : chunk])
        actions = np.stack([trunk["action"][t_b : t_b + span], branch["action"][:span]])
        actions = torch.as_tensor(actions, dtype=torch.float32).reshape(2, H, -1)  # macro-actions
        imagined = model.rollout(model.context([z_branch[0]], []), actions)  # [2, H, N, D]
        if displacement is not None:  # the summed actions it reads from each future back to the shared frame
            back = displacement(torch.cat([imagined.flatten(0, 1), z_branch[1:], z_trunk[1:]]), z_branch[0])
            back_imag, back_branch, back_trunk = (
                back[: 2 * H].view(2, H, -1),
                back[2 * H : 3 * H],
                back[3 * H :],
            )
        if probe is not None:
            y_b, _ = probe_targets(branch["state"][: span + 1 : chunk], env_id)
            y_t, _ = probe_targets(trunk["state"][t_b : t_b + span + 1 : chunk], env_id)
            read_imag = probe(imagined.flatten(2)).numpy()  # [2, H, K]: trunk, branch
            read_b, read_t = probe(z_branch.flatten(1)).numpy(), probe(z_trunk.flatten(1)).numpy()
            for part, cols in parts.items():
                d_true = (y_b[1:] - y_t[1:])[:, cols]  # [H, c]
                d_read = (read_imag[1] - read_imag[0])[:, cols]
                d_enc = (read_b[1:] - read_t[1:])[:, cols]
                sums[f"diff_true_{part}"] += _sq(d_true)
                sums[f"diff_err_{part}"] += _sq(d_read - d_true)
                sums[f"diff_err_encoded_{part}"] += _sq(d_enc - d_true)
                sums[f"err_{part}"] += _sq(read_imag[1][:, cols] - y_b[1:, cols])
                sums[f"err_encoded_{part}"] += _sq(read_b[1:, cols] - y_b[1:, cols])
                sums[f"copy_{part}"] += _sq(y_b[:1, cols] - y_b[1:, cols])
        for h in range(H):
            copy_error = (z_branch[h + 1] - z_branch[0]).square().sum().clamp_min(1e-12)
            rows[f"latent_error_h{h + 1}"].append(
                float((imagined[1, h] - z_branch[h + 1]).square().sum() / copy_error)
            )
            d_imag = imagined[1, h].flatten() - imagined[0, h].flatten()
            d_true = z_branch[h + 1].flatten() - z_trunk[h + 1].flatten()
            if not bool(d_true.any()):  # the two futures look the same (e.g. both pushed into a wall)
                same += 1
                continue
            c, r = cosine_and_ratio(d_imag, d_true)
            rows[f"latent_cos_h{h + 1}"].append(c)
            rows[f"latent_ratio_h{h + 1}"].append(r)
            tokens = d_true.view(-1, basis.shape[0])  # [N, D]: the basis spans each token's motion
            inside = (tokens @ basis).square().sum() / d_true.square().sum()
            rows[f"latent_span_h{h + 1}"].append(float(inside))
            if head_layer is not None:
                w = head_layer.weight  # a difference of linear features: the bias cancels
                c, r = cosine_and_ratio(w @ d_imag, w @ d_true)
                rows[f"head_cos_h{h + 1}"].append(c)
                rows[f"head_ratio_h{h + 1}"].append(r)
            if displacement is not None:
                c, r = cosine_and_ratio(back_imag[1, h] - back_imag[0, h], back_branch[h] - back_trunk[h])
                rows[f"displacement_cos_h{h + 1}"].append(c)
                rows[f"displacement_ratio_h{h + 1}"].append(r)
    pairs = len(rows["latent_cos_h1"])
    if pairs == 0:
        fail(f"no branch of {args.data} has {span} env steps after its branch step (and its trunk as many); "
             f"lower --horizon")  # fmt: skip
    summary = {
        "checkpoint": args.checkpoint,
        "data": args.data,
        "pairs": pairs,
        "skipped_short": short,
        "skipped_same_frames": same,  # (pair, step)s whose two recorded frames are identical: no direction
        "horizon": H,
        "head": None if head is None else type(head).__name__,
        **{f"median_{k}": float(np.median(v)) for k, v in rows.items() if v},
        **probe_summary(sums, parts, H),
        "seconds": time.perf_counter() - t0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
