"""Typed configs: plan.yaml composes with every planner and world-model option and plans a step with each;
a wrong key or type is refused at compose time in one line naming it; the Python API's defaults are the
scripts' (one source of defaults)."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf

from jepa_agent.agent import MPCAgent
from jepa_agent.config import compose_config
from jepa_agent.costs import CostConfig
from jepa_agent.models.latent import GoalCritic
from jepa_agent.planning import build_agent
from jepa_agent.world_model import WorldModel, build_world_model
from planners import CEMPlanner, GDPlanner, MPPIPlanner
from tests.conftest import REPO

PLANNERS = {"cem": CEMPlanner, "mppi": MPPIPlanner, "gd": GDPlanner}
WORLD_MODELS = sorted(p.stem for p in (REPO / "configs" / "world_model").glob("*.yaml"))
SMALL_BUDGET = {"cem": ["planner.population=8", "planner.elites=2", "planner.iterations=2"],
                "mppi": ["planner.population=8", "planner.elites=2", "planner.iterations=2"],
                "gd": ["planner.restarts=2", "planner.iterations=2"]}  # fmt: skip


def tiny_world_model(world_model: str) -> WorldModel:
    """A random-init world model built from the composed ``world_model=`` option (tiny sizes)."""
    cfg = compose_config(
        "train_world_model",
        [f"world_model={world_model}", "world_model.predictor.dim=16", "world_model.predictor.num_heads=2",
         "world_model.predictor.depth=1", "world_model.attentive_heads=2", "world_model.readout.hidden=8"],
    )  # fmt: skip
    enc = {"name": "vit_micro", "img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}
    run = {"encoder": enc, "world_model": OmegaConf.to_container(cfg.world_model, resolve=True),
           "action_dim": 2, "proprio_dim": 4, "env_id": "JepaAgent/Reach-v0"}  # fmt: skip
    return build_world_model(run)


@pytest.mark.parametrize("planner", sorted(PLANNERS))
@pytest.mark.parametrize("world_model", WORLD_MODELS)
def test_plan_yaml_composes_with_every_planner_and_world_model(planner, world_model):
    assert {"compact", "patch", "attentive", "grid2", "mean"} <= set(WORLD_MODELS)
    cfg = compose_config("plan", [f"planner={planner}", *SMALL_BUDGET[planner]])
    params = set(inspect.signature(PLANNERS[planner].__init__).parameters) - {"self", "action_dim"}
    assert set(cfg.planner) - {"_target_"} == params  # exactly its own keys: none leak from another planner
    model = tiny_world_model(world_model)
    space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    agent = build_agent(model, cfg.planner, cfg.agent, cfg.cost, space)
    assert isinstance(agent.planner, PLANNERS[planner]) and agent.horizon == agent.planner.horizon
    rng = np.random.default_rng(0)
    obs = {"pixels": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "proprio": np.zeros(4)}
    agent.reset({"image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)})
    action = agent.act(obs)
    assert action.shape == (2,) and np.isfinite(action).all() and np.abs(action).max() <= 1


def test_api_defaults_are_the_scripts_defaults():
    """``MPCAgent(model, CEMPlanner(action_dim=A))`` is what plan.py builds from its config."""
    cfg = compose_config("plan")
    planner = CEMPlanner(action_dim=2)
    assert {k: cfg.planner[k] for k in cfg.planner if k != "_target_"} == {
        k: getattr(planner, k) for k in cfg.planner if k != "_target_"
    }
    assert OmegaConf.to_container(cfg.cost) == dataclasses.asdict(CostConfig())
    agent = MPCAgent(object(), planner)  # type: ignore[arg-type]  (nothing is planned here)
    script = build_agent(object(), cfg.planner, cfg.agent, cfg.cost, gym.spaces.Box(-1.0, 1.0, (2,)))
    for key in ("horizon", "execute_steps", "warm_start", "action_low", "action_high"):
        assert getattr(agent, key) == getattr(script, key), key
    assert agent.memory.capacity == script.memory.capacity
    assert agent.cost_options == {}  # the model's own cost defaults, which are CostConfig's (below)
    assert script.cost_options == dataclasses.asdict(CostConfig())
    # the world model's own cost defaults are CostConfig's too
    defaults = {k: p.default for k, p in inspect.signature(WorldModel.cost).parameters.items() if k != "goal"}
    defaults.pop("self")
    assert defaults == dataclasses.asdict(CostConfig())


@pytest.mark.parametrize(
    "override, names",
    [
        ("planner.populaton=100", ["planner.populaton", "population"]),
        ("planner.population=many", ["planner.population", "many", "Integer"]),
        ("agent.memory=1.5", ["agent.memory", "1.5"]),
        ("cost.discount=soon", ["cost.discount", "soon"]),
        ("env.image_size=big", ["env.image_size", "big"]),
        ("planner=beam", ["planner/beam", "cem, gd, mppi"]),
        ("cost.reduction=mean", ["cost.reduction='mean'", "final"]),
        ("cost.latent_weight=much", ["cost.latent_weight", "much"]),
        ("cost.latent_weight=-1", ["cost.latent_weight=-1", "null"]),
        ("env.action_chunk=0", ["env.action_chunk=0", ">= 1"]),
        ("env.action_chunk=two", ["env.action_chunk", "two"]),
        ("dynamics=sim", ["dynamics='sim'", "simulator"]),
    ],
)
def test_a_wrong_key_or_type_is_one_clear_line(override, names, run_env, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "plan.py"), override, "episodes=1", "baselines=false",
         "videos=0", "energy_grid=0", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, env=run_env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if "error" in x]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for name in names:
        assert name in lines[0], lines[0]


def test_world_model_group_is_typed():
    with pytest.raises(Exception, match="predictor.dmi"):
        compose_config("train_world_model", ["world_model.predictor.dmi=3"])
    with pytest.raises(Exception, match="grid_size"):
        compose_config("train_world_model", ["world_model.grid_size=large"])


def test_world_model_training_defaults_are_the_scripts_defaults():
    """``WorldModelTrainConfig()`` (the Python API) trains as ``train_world_model.py`` does by default."""
    from jepa_agent.training.train_world_model import WorldModelTrainConfig

    script = OmegaConf.to_container(compose_config("train_world_model").train, resolve=True)
    api = dataclasses.asdict(WorldModelTrainConfig())
    api["betas"] = list(api["betas"])
    assert {k: api[k] for k in script} == script
    assert set(api) - set(script) == {"seed", "device"}  # top-level keys of the script's config


def test_an_envs_recipe_sets_its_training_defaults_and_the_command_line_wins():
    """``env=push`` trains with ``configs/recipe/push.yaml`` (the encoder's time, pixel and multi-step inverse
    terms, macro-step displacement goals), the goal critic and 4 tokens per frame; other envs have no recipe
    and train with the plain defaults; an override on the command line beats the recipe."""
    plain = OmegaConf.to_container(compose_config("train_world_model").train, resolve=True)
    push = compose_config("train_world_model", ["env=push"])
    assert push.train.encoder.steps == 1500 and push.train.encoder.time_weight == 1.0
    assert push.train.encoder.pixel_weight == 10.0 and push.train.displacement.goal_steps == 5
    assert push.train.encoder.displacement_weight == 1.0 and push.train.encoder.cap == 10.0
    assert push.world_model.frame_tokens == 4 and push.world_model.metric.kind == "critic"
    assert push.train.steps == plain["steps"] and push.train.metric == plain["metric"]  # the rest: defaults
    for env in ("reach", "reach_distracting", "reach_torque", "gym"):
        cfg = compose_config("train_world_model", [f"env={env}"])
        assert cfg.world_model.frame_tokens == 1 and cfg.world_model.metric.kind == "distance"
        assert OmegaConf.to_container(cfg.train.encoder) == plain["encoder"], env
        assert cfg.train.displacement.goal_steps == plain["displacement"]["goal_steps"], env
    mine = compose_config(
        "train_world_model", ["env=push", "train.encoder.steps=0", "world_model.frame_tokens=1"]
    )
    assert mine.train.encoder.steps == 0 and mine.world_model.frame_tokens == 1


def test_the_push_recipes_world_model_fits_the_shipping_bar():
    """What ``train_all env=push`` trains (pretrain's default encoder, the recipe's world model: 4 tokens
    per frame, the goal critic at the recipe's width, the displacement head, macro-actions of 5) holds
    under the 10 MB every shipped checkpoint is held to (tests/test_shipped_checkpoint.py): its weights
    in float32, with 100 kB left for config.yaml and meta.json."""
    cfg = compose_config("train_world_model", ["env=push"])
    encoder = OmegaConf.to_container(compose_config("pretrain").encoder, resolve=True)
    world_model = OmegaConf.to_container(cfg.world_model, resolve=True)
    run = {"encoder": encoder, "world_model": world_model, "action_dim": 2, "proprio_dim": 4,
           "env_id": cfg.env.id, "action_chunk": cfg.action_chunk}  # fmt: skip
    model = build_world_model(run)
    assert isinstance(model.metric, GoalCritic) and model.metric.hidden == cfg.world_model.metric.hidden
    assert model.displacement is not None and model.action_chunk == 5
    weight_bytes = lambda m: sum(t.numel() * t.element_size() for t in m.state_dict().values())  # noqa: E731
    assert weight_bytes(model) <= 10_000_000 - 100_000, f"{weight_bytes(model) / 1e6:.2f} MB of weights"
    run["world_model"]["metric"]["hidden"] = 256  # the width before the recipe set it: over the bar
    assert weight_bytes(build_world_model(run)) > 10_000_000


@pytest.mark.parametrize("policy", ["noisy", "torque", "push"])
def test_collect_policy_blocks_are_the_policies_defaults(policy):
    """``collect.py policy=P`` collects as ``make_policy(P)`` does by default: its block holds them."""
    from jepa_agent.collect import POLICIES

    block = OmegaConf.to_container(compose_config("collect")[policy], resolve=True)
    params = inspect.signature(POLICIES[policy].__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k in block}
    assert set(block) == set(defaults), sorted(set(block) ^ set(defaults))
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == block


def test_collect_script_defaults_are_the_functions():
    """``collect.py``'s top-level settings that ``collect()`` also takes default to the same values."""
    from jepa_agent.collect import collect

    cfg = OmegaConf.to_container(compose_config("collect"), resolve=True)
    params = inspect.signature(collect).parameters
    for key in ("branches", "branch_at", "seed", "num_envs", "mp_context", "progress"):
        default = params[key].default
        assert cfg[key] == (list(default) if isinstance(default, tuple) else default), key


@pytest.mark.parametrize(
    "env, policy",
    [("reach", "noisy"), ("reach_distracting", "noisy"), ("reach_torque", "torque"), ("push", "push")],
)
def test_train_all_collects_with_the_envs_own_data_policy(env, policy):
    """``train_all.py env=push`` collects pushes, not the reach's joint targets (``env.data_policy``)."""
    import envs

    cfg = compose_config("train_all", [f"env={env}"])
    assert cfg.collect.policy == policy
    assert "data_policy" not in envs.env_kwargs_from_config(
        cfg.env
    )  # describes the task, not an env argument


def test_the_distracting_reach_collects_with_wider_joint_targets_and_the_command_line_wins():
    """``collect.py env=reach_distracting`` (and so its ``train_all``) draws the noisy policy's joint
    targets within 3 rad (``env.data_target_span``): its data sweeps the elbow from one fold to the other;
    every other env keeps the policy's 1.5; ``noisy.target_span=`` on the command line beats the env's."""
    import envs

    spans = {
        env: compose_config("collect", [f"env={env}", "policy=noisy"]).noisy.target_span
        for env in ("reach", "reach_distracting", "reach_torque", "push", "gym")
    }
    assert spans == {"reach": 1.5, "reach_distracting": 3.0, "reach_torque": 1.5, "push": 1.5, "gym": 1.5}
    mine = compose_config("collect", ["env=reach_distracting", "noisy.target_span=1.5"])
    assert mine.noisy.target_span == 1.5
    cfg = compose_config("train_all", ["env=reach_distracting"]).env
    assert "data_target_span" not in envs.env_kwargs_from_config(cfg)  # the data's, not an env argument
