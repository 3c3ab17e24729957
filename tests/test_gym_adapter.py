"""Any Gymnasium env as a task (envs/gym_adapter.py): our own tasks, envs defined here (an MJCF string and a
plain numpy env), Gymnasium's Pusher-v5, the scripts end to end, and every bad input.

The envs below are registered at import, so ``env.id=tests.test_gym_adapter:JepaTestSlider-v0`` makes one
in a script's subprocess (Gymnasium imports the module named before the colon).
"""

import json
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env

import envs
from envs.gym_adapter import GoalEnvError, GoalImageEnv, make_goal_env
from envs.gym_check import check_goal_env
from tests.conftest import REPO, script_env

os.environ.setdefault("MUJOCO_GL", "egl")
import mujoco  # noqa: E402

SLIDER_XML = """
<mujoco model="slider">
  <option timestep="0.01"/>
  <visual><quality shadowsize="0" offsamples="0"/></visual>
  <worldbody>
    <light pos="0 0 1"/>
    <camera name="top" pos="0 0 0.9" xyaxes="1 0 0 0 1 0"/>
    <geom type="plane" size="0.4 0.4 0.01" rgba="0.2 0.3 0.4 1"/>
    <geom type="box" pos="0.2 0.2 0.005" size="0.05 0.05 0.005" rgba="0.9 0.9 0.2 1" contype="0"/>
    <body name="ball" pos="0 0 0.03">
      <joint name="x" type="slide" axis="1 0 0" range="-0.3 0.3" limited="true" damping="1"/>
      <joint name="y" type="slide" axis="0 1 0" range="-0.3 0.3" limited="true" damping="1"/>
      <geom type="sphere" size="0.04" rgba="1 0.2 0.2 1" mass="0.1" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor joint="x" ctrlrange="-1 1"/>
    <motor joint="y" ctrlrange="-1 1"/>
  </actuator>
</mujoco>
"""
SLIDER_ID = "JepaTestSlider-v0"  # no namespace: "module:Namespace/Id" is not a valid Gymnasium id
SLIDER = f"tests.test_gym_adapter:{SLIDER_ID}"  # the id a script's subprocess can make


class SliderEnv(gym.Env):
    """A ball pushed by two motors on a plane: a plain ``gym.Env`` holding a MuJoCo model from a string
    (no state methods, no success, no goal: the adapter brings them)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = None) -> None:
        self.model = mujoco.MjModel.from_xml_string(SLIDER_XML)
        self.data = mujoco.MjData(self.model)
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self._renderer = None

    def _obs(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.np_random.uniform(-0.2, 0.2, 2)
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {}

    def step(self, action):
        self.data.ctrl[:] = np.clip(action, -1.0, 1.0)
        mujoco.mj_step(self.model, self.data, nstep=5)
        return self._obs(), 0.0, False, False, {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, 64, 64)
        self._renderer.update_scene(self.data, camera="top")
        return self._renderer.render().copy()

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


class DotEnv(gym.Env):
    """No MuJoCo at all: a dot moved by the action, drawn with numpy (state: the observation)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, render_mode: str | None = "rgb_array") -> None:
        self.render_mode = render_mode
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float64)
        self.pos = np.zeros(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-0.5, 0.5, 2)
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = np.clip(self.pos + 0.1 * np.asarray(action), -1.0, 1.0)
        return self.pos.copy(), 0.0, False, False, {}

    def render(self):
        img = np.full((48, 48, 3), 40, np.uint8)
        r, c = ((self.pos + 1.0) / 2.0 * 43).astype(int)
        img[r : r + 5, c : c + 5] = 255
        return img


class SettableDotEnv(DotEnv):
    """The dot with the library's state protocol: ``get_state()`` / ``set_state(state)``."""

    def get_state(self) -> np.ndarray:
        return self.pos.copy()

    def set_state(self, state) -> None:
        self.pos = np.asarray(state, dtype=np.float64).copy()


if SLIDER_ID not in gym.registry:
    gym.register(id=SLIDER_ID, entry_point="tests.test_gym_adapter:SliderEnv")

SLIDER_OK = {"success_slice": [0, 2], "success_threshold": 0.02}  # ball xy within 2 cm of the goal's


# --------------------------------------------------------------------------------------------- helpers
def run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=600,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stderr[-3000:]}"
    return proc


def json_line(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_task(env: gym.Env, size: int = 64, proprio: int | None = None) -> None:
    """The library's protocol, as collect, plan and the RL bridge use it."""
    obs, info = env.reset(seed=3)
    assert obs["pixels"].dtype == np.uint8 and obs["pixels"].shape == (size, size, 3)
    assert obs["proprio"].dtype == np.float32 and env.observation_space.contains(obs)
    if proprio is not None:
        assert obs["proprio"].shape == (proprio,)
    assert isinstance(info["is_success"], bool) and "distance" in info
    u = env.unwrapped
    assert u.render_goal().shape == (size, size, 3) and u.render_goal(size=32).shape == (32, 32, 3)
    assert u.goal_state().dtype == np.float64 and u.get_state().dtype == np.float64
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert isinstance(info["is_success"], bool) and env.observation_space.contains(obs)


# ------------------------------------------------------------------------------------------- our tasks
@pytest.mark.parametrize("name", ["reach", "push"])
def test_our_tasks_pass_through(name):
    """Reach and Push through the adapter: their own goal image, success and proprio, unchanged."""
    raw = envs.make_env(name)
    env = envs.make_env("gym", id=envs.ENV_IDS[name])
    assert isinstance(env.unwrapped, GoalImageEnv) and env.unwrapped.goal_source == "env"
    assert env.spec.id == envs.ENV_IDS[name] and env.spec.max_episode_steps == 50
    assert_task(env, proprio=raw.observation_space["proprio"].shape[0])
    (a, ia), (b, ib) = raw.reset(seed=7), env.reset(seed=7)
    assert np.array_equal(a["pixels"], b["pixels"]) and np.array_equal(a["proprio"], b["proprio"])
    assert np.array_equal(raw.unwrapped.render_goal(), env.unwrapped.render_goal())
    assert np.array_equal(raw.unwrapped.goal_state(), env.unwrapped.goal_state())
    assert ia["is_success"] == ib["is_success"] and ia["distance"] == ib["distance"]
    assert check_goal_env(env, episodes=1)["ok"]
    raw.close()
    env.close()


# ----------------------------------------------------------------------------------------- MJCF string
def test_mjcf_env_rollout_goal():
    """The MJCF-string env: rendered by the adapter's own mujoco.Renderer (the model's camera), a rollout
    goal whose state, set and drawn, is its image, success at the goal and not at the start."""
    env = make_goal_env(SliderEnv(), **SLIDER_OK)
    u = env.unwrapped
    assert u.render_source == "mujoco" and u.goal_source == "rollout" and u.success_rule == "distance"
    assert_task(env, proprio=0)
    obs, info = env.reset(seed=1)
    start = u.get_state()
    assert not np.allclose(start, u.goal_state()) and not info["is_success"]
    u.set_state(u.goal_state())
    assert np.abs(u.render().astype(int) - u.render_goal()).mean() < 1.0
    report = check_goal_env(env, episodes=2)
    assert report["ok"], report["failures"]
    assert report["checks"]["goal_replay"] == "ok" and report["success_at_goal"] == 1.0
    assert report["step_ms"] < 50
    env.close()


def test_mjcf_env_state_goal_and_proprio():
    """goal=state: a start of another seed (or the given state), drawn by setting it; proprio slices the
    observation; the episode is cut by the adapter's TimeLimit."""
    env = make_goal_env(SLIDER_ID, goal="state", proprio=[0, 2], max_episode_steps=3, **SLIDER_OK)
    obs, info = env.reset(seed=0)
    assert np.array_equal(obs["proprio"], env.unwrapped.get_state()[:2].astype(np.float32))
    sampled = env.unwrapped.goal_state()
    env.reset(seed=0)
    assert np.array_equal(sampled, env.unwrapped.goal_state())  # the goal is a function of the seed
    steps = 0
    while True:
        steps += 1
        if any(env.step(np.zeros(2, np.float32))[2:4]):
            break
    assert steps == 3
    fixed = make_goal_env(SLIDER_ID, goal="state", goal_state=[0.1, -0.1, 0.0, 0.0], **SLIDER_OK)
    fixed.reset(seed=0)
    assert np.array_equal(fixed.unwrapped.goal_state(), [0.1, -0.1, 0.0, 0.0])
    env.close()
    fixed.close()


def test_non_mujoco_env_renders_with_env_render():
    """A numpy env: frames from env.render() resized, rollout goals by a second reset (no snapshot), the
    observation as the state; with set_state, state goals too."""
    env = make_goal_env(DotEnv(), goal_steps=10, success_slice=[0, 2], success_threshold=0.05)
    assert env.unwrapped.render_source == "env"
    assert_task(env)
    report = check_goal_env(env, episodes=2)
    assert report["ok"], report["failures"]
    settable = make_goal_env(SettableDotEnv(), goal="state", success_slice=[0, 2], success_threshold=0.05)
    assert check_goal_env(settable, episodes=2)["ok"]


def test_goal_from_an_image_file(tmp_path):
    """goal=file:<png>: the image as the goal, no goal state, so no success (unless given)."""
    from PIL import Image

    path = tmp_path / "goal.png"
    Image.fromarray(np.full((80, 80, 3), 120, np.uint8)).save(path)
    env = make_goal_env(SliderEnv(), goal=f"file:{path}", check=False)
    _, info = env.reset(seed=0)
    assert env.unwrapped.render_goal().shape == (64, 64, 3) and env.unwrapped.goal_state().size == 0
    assert info["is_success"] is False and np.isnan(info["distance"])
    given = make_goal_env(SliderEnv(), goal=f"file:{path}", goal_state=[0.0] * 4, check=False, **SLIDER_OK)
    assert given.reset(seed=0)[1]["distance"] > 0
    with pytest.raises(GoalEnvError, match="needs goal_state"):
        make_goal_env(SliderEnv(), goal=f"file:{path}", success="distance", success_slice=[0, 2])


# -------------------------------------------------------------------------------------------- Pusher-v5
@pytest.mark.filterwarnings("ignore:.*(normalized space|infinity):UserWarning")  # Pusher's own spaces
def test_pusher_v5_as_a_task():
    """Gymnasium's Pusher: rendered by the adapter (Gymnasium's view, ~40x faster than its renderer),
    the object's goal position from another start, success on the object's xy."""
    env = make_goal_env("Pusher-v5", goal="state", success_slice=[7, 9], proprio=[0, 14])
    assert env.unwrapped.render_source == "mujoco" and env.spec.id == "Pusher-v5"
    assert_task(env, proprio=14)
    check_env(env.unwrapped)  # Gymnasium's own checker, its render check included (it makes env.spec again)
    report = check_goal_env(env, episodes=2)
    assert report["ok"] and report["success_at_reset"] == 0.0 and report["success_at_goal"] == 1.0
    # random-action rollout goals rarely move the object: success on it would be trivial, and is refused
    with pytest.raises(GoalEnvError, match="trivial_goals"):
        make_goal_env("Pusher-v5", goal="rollout", success_slice=[7, 9])
    env.close()


# ---------------------------------------------------------------------------------- check_goal_env faults
class BlackSlider(SliderEnv):
    def render(self):
        return np.zeros((64, 64, 3), np.uint8)


class GreySlider(SliderEnv):
    def render(self):
        return np.full((64, 64, 3), 128, np.uint8)


class UnseededSlider(SliderEnv):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.data.qpos[:] = np.random.uniform(-0.2, 0.2, 2)  # ignores the seed
        mujoco.mj_forward(self.model, self.data)
        return self._obs(), {}


class UnboundedSlider(SliderEnv):
    def __init__(self, render_mode=None):
        super().__init__(render_mode)
        self.action_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)


class GoalSlider(SliderEnv):
    """Its own goal (render_goal / goal_state); ``offset`` draws the goal off its state (swm #222)."""

    offset = 0.0

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        self.goal = np.concatenate([self.np_random.uniform(-0.2, 0.2, 2), np.zeros(2)])
        return obs, info

    def goal_state(self):
        return self.goal.copy()

    def render_goal(self, size=None):
        data = mujoco.MjData(self.model)
        data.qpos[:] = self.goal[:2] + self.offset
        mujoco.mj_forward(self.model, data)
        with mujoco.Renderer(self.model, size or 64, size or 64) as renderer:
            renderer.update_scene(data, camera="top")
            return renderer.render().copy()


class OffsetGoalSlider(GoalSlider):
    offset = 0.1


@pytest.mark.parametrize(
    "env, settings, fault",
    [
        (BlackSlider("rgb_array"), {"render": "env"}, "frames: .* black"),
        (GreySlider("rgb_array"), {"render": "env"}, "frames: .* constant colour"),
        (UnseededSlider(), {}, "deterministic_reset"),
        (UnboundedSlider(), {}, "action_space: .* unbounded"),
        (OffsetGoalSlider(), {}, "goal_matches_state"),
        (SliderEnv(), {"success": "none"}, "success_at_goal: success is never true"),
        (SliderEnv(), {"success_slice": [0, 2], "success_threshold": 10.0}, "trivial_goals"),
    ],
    ids=["black", "constant", "nondeterministic", "unbounded", "goal-mismatch", "never", "always"],
)
def test_check_goal_env_names_each_fault(env, settings, fault):
    adapted = make_goal_env(env, check=False, **{**SLIDER_OK, **settings})
    report = check_goal_env(adapted, episodes=2)
    assert not report["ok"] and any(re.search(fault, f) for f in report["failures"]), report
    with pytest.raises(GoalEnvError, match=f"check_goal_env: .*{fault.split(':')[0]}"):
        make_goal_env(env, **{**SLIDER_OK, **settings})  # check=True refuses it in one line


def test_check_goal_env_passes_a_correct_own_goal_and_our_raw_envs():
    assert check_goal_env(make_goal_env(GoalSlider(), check=False), episodes=2)["ok"]
    raw = check_goal_env(envs.make_env("reach"), episodes=1)
    assert raw["ok"] and raw["checks"]["goal_matches_state"].startswith("skipped")
    assert "protocol" in check_goal_env(gym.make("Pusher-v5"), episodes=1)["checks"]


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_one_clear_error(tmp_path):
    with pytest.raises(GoalEnvError, match="render_mode is None"):
        make_goal_env(DotEnv(render_mode=None))  # no RGB rendering: an error naming render_mode
    with pytest.raises(GoalEnvError, match="render_mode"):
        make_goal_env(SliderEnv(render_mode=None), render="env")
    with pytest.raises(GoalEnvError, match="goal='state' needs an env whose state can be set"):
        make_goal_env(DotEnv(), goal="state")
    with pytest.raises(GoalEnvError, match="outside .* bounds: joint 'x' at qpos\\[0\\]=0.5"):
        make_goal_env(SliderEnv(), goal="state", goal_state=[0.5, 0.0, 0.0, 0.0], **SLIDER_OK)
    with pytest.raises(GoalEnvError, match="goal_state has 2 entries; .* has 4"):
        make_goal_env(SliderEnv(), goal="state", goal_state=[0.1, 0.0], **SLIDER_OK)
    bad_settings = [
        ({"goal_steps": "ten"}, "goal_steps='ten': expected an int"),
        ({"image_size": 64.0}, "image_size=64.0: expected an int"),
        ({"success_slice": [2, 1]}, "success_slice=\\[2, 1\\]"),
        ({"success_slice": [0, 9]}, "success_slice=\\[0, 9\\]: the vector it slices has only 4"),
        ({"proprio": [0, 5]}, "proprio=\\[0, 5\\]: the vector it slices has only 4"),
        ({"success_threshold": "1"}, "success_threshold='1'"),
        ({"goal": "dataset"}, "goal='dataset': expected one of"),
        ({"render": "opengl"}, "render='opengl': expected one of"),
        ({"success": "reward"}, "success='reward': expected one of"),
        ({"success": "distance"}, "success='distance' needs success_slice"),
        ({"camera": "side"}, "camera='side' is not in the model; its cameras: \\['top'\\]"),
        ({"goal": "env"}, "goal='env' but .* has no render_goal"),
        ({"check": "yes"}, "check='yes'"),
    ]
    for settings, message in bad_settings:
        with pytest.raises(GoalEnvError, match=message):
            make_goal_env(SliderEnv(), **settings)
    with pytest.raises(GoalEnvError, match="env.id='NoSuchEnv-v0' cannot be made"):
        make_goal_env("NoSuchEnv-v0")
    with pytest.raises(ValueError, match="pass env.id=<a Gymnasium env id>"):
        envs.make_env("gym")


def test_config_typing_and_cli_errors(tmp_path):
    """env=gym is typed: a wrong type is one line naming the key, at compose time and from a script."""
    from jepa_agent.config import compose_config, config_error_line

    cfg = compose_config("collect", ["env=gym", f"env.id={SLIDER}", "env.success_slice=[0,2]"])
    kwargs = envs.env_kwargs_from_config(cfg.env)
    assert kwargs["id"] == SLIDER and kwargs["success_slice"] == [0, 2] and "data_policy" not in kwargs
    assert cfg.policy == "random" and cfg.env.data_policy == "random"
    with pytest.raises(Exception) as e:
        compose_config("collect", ["env=gym", "env.goal_steps=ten"])
    assert config_error_line(e.value).startswith("env.goal_steps:")
    proc = run("collect.py", "env=gym", f"env.id={SLIDER}", "env.success_slice=abc", "episodes=1", ok=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and "env.success_slice" in lines[0], proc.stderr
    proc = run("collect.py", "env=gym", f"env.id={SLIDER}", f"out={tmp_path / 'eps'}", "episodes=1", ok=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("collect: error: check_goal_env: ") and "success_at_goal" in lines[-1]


# ------------------------------------------------------------------------------------------ end to end
TINY_PRETRAIN = [
    "encoder.embed_dim=32", "encoder.depth=1", "encoder.num_heads=2", "predictor.embed_dim=16",
    "predictor.depth=1", "predictor.num_heads=2", "train.steps=2", "train.batch_size=2", "train.warmup=0",
    "progress=false",
]  # fmt: skip
TINY_WORLD_MODEL = [
    "world_model.predictor.dim=16", "world_model.predictor.depth=1", "world_model.predictor.num_heads=2",
    "train.steps=2", "train.batch_size=4", "train.warmup=0", "train.eval_windows=4", "train.eval_horizon=2",
    "train.metric.steps=10", "progress=false",
]  # fmt: skip
TINY_PLAN = [
    "planner.population=8", "planner.elites=2", "planner.iterations=1", "planner.horizon=2",
    "energy_grid=3", "videos=1",
]  # fmt: skip


@pytest.mark.slow  # ~21 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_mjcf_env_end_to_end_through_the_scripts(tmp_path):
    """The MJCF-string env, from config only: collect (2 workers, P=0) -> pretrain -> world model -> plan."""
    env = ["env=gym", f"env.id={SLIDER}", "env.success_slice=[0,2]", "env.max_episode_steps=8"]
    eps, enc, wm = tmp_path / "eps", tmp_path / "enc", tmp_path / "wm"
    collected = json_line(run("collect.py", *env, "episodes=4", "num_envs=2", f"out={eps}", "progress=false"))
    assert collected["episodes"] == 4 and collected["env_id"] == SLIDER
    run("pretrain.py", "data=episodes", f"data.path={eps}", f"out={enc}", *TINY_PRETRAIN,
        f"hydra.run.dir={tmp_path / 'pt'}")  # fmt: skip
    run("train_world_model.py", *env, f"data.path={eps}", f"encoder_checkpoint={enc}", f"out={wm}",
        *TINY_WORLD_MODEL, f"hydra.run.dir={tmp_path / 'wm_run'}")  # fmt: skip
    out = tmp_path / "plan"
    res = json_line(
        run("plan.py", *env, f"checkpoint={wm}", "episodes=2", *TINY_PLAN, f"hydra.run.dir={out}")
    )
    assert res["episodes"] == 2 and 0.0 <= res["success_rate"] <= 1.0
    assert res["random_success_rate"] is not None and "oracle_success_rate" not in res  # no oracle for it
    assert (out / "jepa_episode_000.mp4").exists()


@pytest.mark.slow  # ~22 s on the 2-core VM; CI runs it (.ci/run: -m slow)
def test_pusher_v5_end_to_end_through_train_all(tmp_path):
    """Gymnasium's Pusher-v5 from nothing to a plan with train_all.py: the env settings reach every stage."""
    out = tmp_path / "ta"
    args = [
        "env=gym", "env.id=Pusher-v5", "env.goal=state", "env.success_slice=[7,9]", "env.proprio=[0,14]",
        "env.max_episode_steps=8", f"out={out}", "collect.episodes=4", "collect.num_envs=1",
        f"pretrain.args=[{','.join(repr(a) for a in TINY_PRETRAIN)}]",
        f"world_model.args=[{','.join(repr(a) for a in TINY_WORLD_MODEL)}]",
        "plan.episodes=1", f"plan.args=[{','.join(repr(a) for a in TINY_PLAN)},'baselines=false']",
    ]  # fmt: skip
    res = json_line(run("train_all.py", *args))
    assert set(res["seconds"]) == {"collect", "pretrain", "world_model", "plan"}
    assert 0.0 <= res["success_rate"] <= 1.0
    meta = json.loads((out / "episodes" / "meta.json").read_text())
    assert (
        meta["env_id"] == "Pusher-v5" and meta["proprio_dim"] == 14 and meta["action_space"]["shape"] == [7]
    )
