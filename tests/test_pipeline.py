"""Smoke run of every script, chained through real files: collect -> pretrain -> world model -> plan.

Tiny sizes throughout (seconds per stage); what is checked is that each script runs on the previous
one's output, ends with one JSON line, writes what it promises, and rejects bad input clearly.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, script_env


def run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=script_env(),
        cwd=REPO,
        timeout=600,
    )
    if ok:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc


def json_line(proc: subprocess.CompletedProcess) -> dict:
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    eps, enc, wm = root / "eps", root / "enc", root / "wm"
    collected = json_line(
        run(
            "collect.py",
            "env=reach",
            "episodes=6",
            "policy=noisy",
            "num_envs=1",
            "env.max_episode_steps=12",
            f"out={eps}",
        )
    )
    pretrained = json_line(
        run(
            "pretrain.py",
            "data=episodes",
            f"data.path={eps}",
            f"out={enc}",
            "encoder.embed_dim=32",
            "encoder.depth=1",
            "encoder.num_heads=2",
            "predictor.embed_dim=16",
            "predictor.depth=1",
            "predictor.num_heads=2",
            "train.steps=3",
            "train.batch_size=2",
            "train.warmup=1",
            "progress=false",
            f"hydra.run.dir={root / 'pt_run'}",
        )
    )
    trained = json_line(
        run(
            "train_world_model.py",
            "env=reach",
            f"data.path={eps}",
            f"encoder_checkpoint={enc}",
            f"out={wm}",
            "world_model.predictor.dim=16",
            "world_model.predictor.depth=1",
            "world_model.predictor.num_heads=2",
            "train.steps=5",
            "train.batch_size=4",
            "train.warmup=1",
            "train.eval_windows=8",
            "train.eval_horizon=2",
            "train.metric.steps=30",
            "progress=false",
            f"hydra.run.dir={root / 'wm_run'}",
        )
    )
    return {
        "root": root,
        "eps": eps,
        "enc": enc,
        "wm": wm,
        "collect": collected,
        "pretrain": pretrained,
        "world_model": trained,
    }


TINY_PLAN = [
    "planner.population=16",
    "planner.elites=4",
    "planner.iterations=2",
    "planner.horizon=3",
    "env.max_episode_steps=6",
    "energy_grid=5",
    "videos=1",
]


def test_plan_smoke(pipeline):
    out = pipeline["root"] / "plan"
    res = json_line(
        run(
            "plan.py",
            "env=reach",
            "goal=image",
            f"checkpoint={pipeline['wm']}",
            "episodes=2",
            *TINY_PLAN,
            f"hydra.run.dir={out}",
        )
    )
    assert res["episodes"] == 2 and 0.0 <= res["success_rate"] <= 1.0
    lo, hi = res["success_ci95"]
    assert 0.0 <= lo <= res["success_rate"] <= hi <= 1.0
    for key in ("random_success_rate", "oracle_success_rate", "final_distance_mean", "plan_seconds_median"):
        assert res[key] is not None
    assert (out / "results.json").exists() and (out / "cost_per_iteration.png").exists()
    assert (out / "energy_landscape.png").exists() and (out / "jepa_episode_000.mp4").exists()
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"jepa", "oracle", "random", "zero"}
    assert len(results["results"]["jepa"]["per_episode"]) == 2
    lines = [json.loads(ln) for ln in (out / "episodes.jsonl").read_text().splitlines()]  # as each ended
    assert [(r["policy"], r["index"]) for r in lines] == [
        (p, i) for p in ("jepa", "oracle", "random", "zero") for i in (0, 1)
    ]
    assert lines[0]["seed"] == results["results"]["jepa"]["per_episode"][0]["seed"]


@pytest.mark.slow  # ~22 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_plan_records_the_agents_episodes_to_train_on(pipeline, tmp_path):
    """record=DIR keeps the main policy's episodes as a dataset (the states the planner visits), and the
    world model trains on it beside the scripted data: data.path=[A,B]."""
    rec = tmp_path / "rec"
    args = [f"checkpoint={pipeline['wm']}", "episodes=2", "baselines=false", *TINY_PLAN, f"record={rec}"]
    res = json_line(run("plan.py", *args, f"hydra.run.dir={tmp_path / 'run'}"))
    assert res["recorded"] == {"out": str(rec), "episodes": 2, "frames": 14}
    results = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    seeds = [r["seed"] for r in results["jepa"]["per_episode"]]
    meta = json.loads((rec / "meta.json").read_text())
    assert meta["collection"]["policy"] == "plan.py:jepa" and meta["total_episodes"] == 2
    assert [int(np.load(rec / f"episode_{i:06d}.npz")["seed"]) for i in range(2)] == seeds
    # another goal set into the same directory: refused in one line, nothing lost
    proc = run("plan.py", *args, "seed=1", f"hydra.run.dir={tmp_path / 'run1'}", ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "was collected with" in proc.stderr
    assert json.loads((rec / "meta.json").read_text())["total_episodes"] == 2
    trained = json_line(
        run(
            "train_world_model.py",
            f"data.path=[{pipeline['eps']},{rec}]",
            f"encoder_checkpoint={pipeline['enc']}",
            f"out={tmp_path / 'wm'}",
            "world_model.predictor.dim=16",
            "world_model.predictor.depth=1",
            "world_model.predictor.num_heads=2",
            "train.steps=2",
            "train.batch_size=4",
            "train.warmup=1",
            "train.eval_windows=8",
            "train.eval_horizon=2",
            "train.metric.steps=2",
            "train.metric.datasets=[0]",  # the head learns its distances from the scripted data alone
            "progress=false",
            f"hydra.run.dir={tmp_path / 'wm_run'}",
        )
    )
    assert (trained["train_episodes"], trained["val_episodes"]) == (5 + 1, 1 + 1)  # each keeps its split
    saved = yaml.safe_load((tmp_path / "wm" / "checkpoint" / "config.yaml").read_text())
    assert saved["train"]["metric"]["datasets"] == [0]  # the checkpoint records what the head learnt from
    proc = run(
        "train_world_model.py",
        f"data.path=[{pipeline['eps']},{rec}]",
        f"encoder_checkpoint={pipeline['enc']}",
        "train.metric.datasets=[2]",
        f"hydra.run.dir={tmp_path / 'wm_run3'}",
        ok=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "train.metric.datasets=[2]: data.path holds 2 dataset(s) (positions 0 to 1)" in proc.stderr
    proc = run(
        "train_world_model.py",
        f"data.path=[{rec},{rec}]",
        f"encoder_checkpoint={pipeline['enc']}",
        f"hydra.run.dir={tmp_path / 'wm_run2'}",
        ok=False,
    )
    assert proc.returncode != 0 and "listed twice" in proc.stderr and "Traceback" not in proc.stderr


def test_plan_with_an_ensemble_of_checkpoints(pipeline, tmp_path):
    import torch

    from jepa_agent.world_model import WorldModel, save_world_model

    other = WorldModel.from_checkpoint(pipeline["wm"], device="cpu")
    for p in other.predictor.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    save_world_model(tmp_path / "wm2", other, encoder_name="vit_tiny")
    both = f"checkpoint=[{pipeline['wm']},{tmp_path / 'wm2'}]"
    res = json_line(run("plan.py", both, "episodes=1", "baselines=false", *TINY_PLAN, "disagreement=0.5",
                        f"hydra.run.dir={tmp_path / 'run'}"))  # fmt: skip
    assert res["episodes"] == 1 and res["memory"] == 1 and res["state_labels"] is False
    assert res["latent_weight"] == other.resolve_latent_weight()  # both members: the same default
    assert (tmp_path / "run" / "energy_landscape.png").exists()
    for args, msg in (
        ([f"checkpoint={pipeline['wm']}", "disagreement=0.5"], "weighs an ensemble's spread"),
        ([f"checkpoint=[{pipeline['wm']},{pipeline['wm']}]"], "listed twice"),
    ):
        proc = run("plan.py", *args, *TINY_PLAN, f"hydra.run.dir={tmp_path / 'bad'}", ok=False)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr


def test_plan_with_user_goal_image(pipeline, tmp_path):
    Image.fromarray(np.full((100, 120, 3), 200, np.uint8)).save(tmp_path / "goal.png")
    res = json_line(
        run(
            "plan.py",
            f"goal={tmp_path / 'goal.png'}",
            f"checkpoint={pipeline['wm']}",
            "episodes=1",
            *TINY_PLAN,
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    )
    assert res["episodes"] == 1 and res["success_rate"] is None  # no true goal state behind a user image


def test_plan_state_goal_is_the_oracle(pipeline, tmp_path):
    res = json_line(
        run(
            "plan.py",
            "goal=state",
            "checkpoint=does/not/matter",
            "episodes=1",
            "baselines=false",
            *TINY_PLAN,
            f"hydra.run.dir={tmp_path / 'run'}",
        )
    )
    assert res["policy"] == "oracle"


def test_plan_bad_goal_path(pipeline, tmp_path):
    proc = run(
        "plan.py",
        f"goal={tmp_path / 'missing.png'}",
        f"checkpoint={pipeline['wm']}",
        *TINY_PLAN,
        f"hydra.run.dir={tmp_path / 'run'}",
        ok=False,
    )
    assert proc.returncode != 0
    assert "missing.png" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("arg", "msg"),
    [("episodes=0", "episodes=0; expected an int >= 1"), ("videos=-1", "videos=-1; expected an int >= 0"),
     ("threads=-2", "threads=-2; expected an int >= 0"),
     ("cost.action_weight=-1", "cost.action_weight=-1; expected >= 0"),
     ("disagreement=much", "disagreement='much': expected a number >= 0"),
     ("baselines=[random,sometimes]", "baselines=['random', 'sometimes']; expected true, false or a list of "
      "oracle, random, zero")],
)  # fmt: skip
def test_plan_bad_counts_are_clear_errors(tmp_path, arg, msg):
    proc = run("plan.py", arg, f"hydra.run.dir={tmp_path / 'run'}", ok=False)
    assert proc.returncode != 0 and msg in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_plan_runs_the_baselines_it_is_given(pipeline, tmp_path):
    """``baselines=[zero]``: the listed baselines only (no slow oracle), on the same goals."""
    out = tmp_path / "run"
    args = [f"checkpoint={pipeline['wm']}", "episodes=1", "baselines=[zero]", *TINY_PLAN]
    res = json_line(run("plan.py", *args, f"hydra.run.dir={out}"))
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"jepa", "zero"}
    assert "zero_success_rate" in res and "random_success_rate" not in res
    assert results["zero"]["per_episode"][0]["seed"] == results["jepa"]["per_episode"][0]["seed"]


def test_plan_mismatched_checkpoint_and_env(pipeline, tmp_path):
    proc = run(
        "plan.py",
        "env.image_size=32",
        f"checkpoint={pipeline['wm']}",
        *TINY_PLAN,
        f"hydra.run.dir={tmp_path / 'run'}",
        ok=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "image_size=64" in proc.stderr and "image_size=32" in proc.stderr  # names both


def test_plan_checkpoint_of_wrong_kind(pipeline, tmp_path):
    proc = run(
        "plan.py", f"checkpoint={pipeline['enc']}", *TINY_PLAN, f"hydra.run.dir={tmp_path / 'run'}", ok=False
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "not a world-model checkpoint" in proc.stderr


def test_plan_missing_checkpoint(tmp_path):
    proc = run(
        "plan.py",
        f"checkpoint={tmp_path / 'nothing'}",
        *TINY_PLAN,
        f"hydra.run.dir={tmp_path / 'run'}",
        ok=False,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "nothing" in proc.stderr


@pytest.mark.slow  # ~70 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_train_all_tiny_runs_every_stage_ships_and_resumes(tmp_path):
    """scripts/train_all.py chains the four scripts; a re-run skips what is done; ship= copies the model."""
    out, ship = tmp_path / "ta", tmp_path / "ship" / "reach"
    args = [
        "env=reach",
        f"out={out}",
        f"ship={ship}",
        "collect.episodes=4",
        "collect.num_envs=1",
        'collect.args=["env.max_episode_steps=10"]',
        'pretrain.args=["encoder.embed_dim=32","encoder.depth=1","encoder.num_heads=2","predictor.embed_dim=16",'
        '"predictor.depth=1","predictor.num_heads=2","train.steps=2","train.batch_size=2","train.warmup=0",'
        '"progress=false"]',
        'world_model.args=["world_model.predictor.dim=16","world_model.predictor.depth=1",'
        '"world_model.predictor.num_heads=2","train.steps=2","train.batch_size=4","train.warmup=0",'
        '"train.eval_windows=4","train.eval_horizon=2","train.metric.steps=10",'
        '"progress=false"]',
        "plan.episodes=1",
        f"plan.args=[{','.join(repr(a) for a in TINY_PLAN)},'baselines=false']",
    ]
    first = json_line(run("train_all.py", *args))
    assert set(first["seconds"]) == {"collect", "pretrain", "world_model", "plan"}
    assert 0.0 <= first["success_rate"] <= 1.0 and first["shipped"] == str(ship)
    assert (ship / "model.safetensors").exists() and not (ship / "train_state.pt").exists()
    assert not any(p.name.startswith(".") for p in ship.parent.iterdir())  # no temp or old copy left
    logs = {d: (out / d / "metrics.csv").read_text() for d in ("encoder", "world_model")}
    again = json_line(run("train_all.py", *args))  # everything is done: every stage resumes at its end
    assert again["success_rate"] == first["success_rate"]
    assert {d: (out / d / "metrics.csv").read_text() for d in logs} == logs  # no step was trained again
    assert len(list((out / "episodes").glob("episode_*.npz"))) == 4
    # an ensemble: one more world model (the next seed) on the same data and encoder, planned with both
    no_ship = [a for a in args if not a.startswith("ship=")]
    ens = json_line(run("train_all.py", *no_ship, "world_model.members=2"))
    assert ens["world_model"] == [str(out / "world_model"), str(out / "world_model_1")]
    assert "world_model_1" in ens["seconds"] and (out / "world_model_1" / "checkpoint").is_dir()
    assert (out / "world_model" / "metrics.csv").read_text() == logs["world_model"]  # the first is kept
    results = json.loads((out / "plan" / "results.json").read_text())
    assert results["config"]["checkpoint"] == ens["world_model"]
    proc = run("train_all.py", *args, "world_model.members=2", ok=False)
    assert proc.returncode != 0 and "trains an ensemble" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("script", ["pretrain.py", "probe.py"])
def test_a_list_of_datasets_is_for_the_world_model_only(tmp_path, script):
    extra = ["checkpoint=x"] if script == "probe.py" else []
    proc = run(script, *extra, "data.path=[a,b]", f"hydra.run.dir={tmp_path / 'run'}", ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "reads one directory; a list of them is for train_world_model.py" in proc.stderr
