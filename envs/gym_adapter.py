"""Any Gymnasium env that renders RGB as a task: :func:`make_goal_env` (checked by ``envs/gym_check.py``).

What the library's scripts need from a task (``envs/reach.py`` is the reference): Dict observations
``{"pixels": uint8 [S, S, 3], "proprio": float32 [P]}``, a bounded ``Box`` action space,
``info["is_success"]`` and ``info["distance"]`` at every reset and step, and on ``env.unwrapped`` the goal
as an image (``render_goal(size=None)``) and as a state (``goal_state()``), and the simulator state
(``get_state()``). :class:`GoalImageEnv` gives any env all of that. It *holds* the env (composition, not
a ``gym.Wrapper``), so it is the ``unwrapped`` env the library talks to; :func:`make_goal_env` adds
``OrderEnforcing`` and ``TimeLimit`` around it, as ``gymnasium.make`` would.

* **Pixels** at the model's size (``render=``). ``auto``: the observation's own ``"pixels"`` if it has
  them (``obs``), else for a MuJoCo env (``env.unwrapped.model`` / ``.data``) a ``mujoco.Renderer`` of
  the adapter's own (``mujoco``): Gymnasium's view (the env's ``camera_id``, or its free camera and
  ``default_camera_config``), no shadows, no anti-aliasing: ~1.5 ms a 64 px frame of Pusher instead of
  ~40 ms, and none of the black frames Gymnasium's renderer gives once another env closes
  (``shared/MACHINE-NOTES.md``); else ``env.render()`` (``render_mode="rgb_array"``), centre-cropped and
  resized with PIL (``env``).
* **State**: a MuJoCo env's ``(qpos, qvel)``, set with ``MujocoEnv.set_state`` (or written, then
  ``mj_forward``) and snapshot exactly with ``mj_getState``; else the env's own ``get_state()`` /
  ``set_state(state)``; else the observation vector, which cannot be set.
* **Goal** (``goal=``), an image and the state behind it, made at every reset:

  - ``env``: the env's own ``render_goal`` / ``goal_state`` (what ``auto`` picks when it has them);
  - ``rollout`` (``auto`` otherwise): ``goal_steps`` uniform random actions from the episode's start,
    drawn from the reset seed; the start is then restored (a snapshot of the simulator, not of what the
    env keeps in Python; or for an env whose state cannot be set a second ``reset`` with the seed, which
    needs a deterministic reset: :func:`check_goal_env` checks it and replays the goal's actions);
  - ``state``: ``goal_state`` when given (checked against the model's joint ranges), else the state a
    reset with a seed derived from the episode's starts in (the env's own start distribution); set into
    the env, drawn, and the start restored. Needs a state that can be set;
  - ``file:<path>``: an image file (``jepa_agent.goals.load_goal_image``). It has no state, so no success
    signal, unless ``goal_state`` (the state it shows) is given with a distance rule.
* **Success** (``success=``): ``distance`` is ``||state[a:b] - goal_state[a:b]|| < success_threshold``
  over ``success_slice=[a, b]`` (from Python also any ``(state, goal_state) -> distance``); ``is_success``
  or ``success`` read that key of the env's ``info``; ``auto`` is ``distance`` when a slice is given, else
  whichever of the two keys the env reports, else never; ``none`` is never. An ``info`` key speaks of the
  env's *own* goal: with ``rollout`` or ``state`` goals use ``distance``; :func:`check_goal_env` catches a
  success that is never true at the goal, or always true at the start.
* **Proprio**: ``proprio=[a, b]`` slices the observation vector (a Box observation, or a Dict's
  ``"proprio"`` / ``"observation"`` entry); ``None`` takes a Dict's ``"proprio"`` whole, else none (P = 0).

From the scripts it is ``env=gym`` (``configs/env/gym.yaml``). Gymnasium's Pusher, whose object (state
``qpos[7:9]``) is to be pushed to a goal drawn from its own start distribution::

    python scripts/collect.py env=gym env.id=Pusher-v5 env.goal=state 'env.success_slice=[7,9]' \\
        'env.proprio=[0,14]' episodes=200 out=data/pusher

``env.id`` may be ``"my_package.module:MyEnv-v0"``: the module, imported first, registers the id.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.wrappers import OrderEnforcing, TimeLimit

os.environ.setdefault("MUJOCO_GL", "egl")  # before importing mujoco; respect a user's choice
import mujoco  # noqa: E402
from gymnasium.envs.mujoco import MujocoEnv  # noqa: E402

from jepa_agent.goals import load_goal_image, resize_square  # noqa: E402

GOALS = ("auto", "env", "rollout", "state", "file:<path>")
SUCCESS = ("auto", "distance", "is_success", "success", "none")
RENDERS = ("auto", "obs", "mujoco", "env")
SUCCESS_KEYS = ("is_success", "success")  # info keys an env may report success under, in this order
GOAL_STREAM = (
    0x60A1  # seeds the goal's draws (a state goal's reset seed, rollout actions), apart from the env's
)
CHECK_EPISODES = 2  # episodes make_goal_env(check=True) checks
SLOW_STEP_MS = (
    5.0  # check_goal_env warns above this per step with its frame (shared/DESIGN.md: ~5 ms at 64 px)
)
MUJOCO_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # all that mj_step reads: an exact snapshot

DistanceFn = Callable[[np.ndarray, np.ndarray], float]  # (state, goal_state) -> distance


class GoalEnvError(ValueError):
    """An env or an adapter setting that cannot make a task (one line naming the setting or the fault)."""


# ------------------------------------------------------------------------------------------- helpers
def _check_int(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
        raise GoalEnvError(f"{name}={value!r}: expected an int >= {least}")
    return int(value)


def _check_slice(name: str, value: Sequence[int] | None, size: int | None) -> slice | None:
    """``[a, b]`` -> ``slice(a, b)``, with ``0 <= a < b`` (``b <= size`` when known); None stays None."""
    if value is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    ok = ok and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    if not ok or not 0 <= value[0] < value[1]:
        raise GoalEnvError(f"{name}={value!r}: expected [start, stop] with 0 <= start < stop (ints)")
    if size is not None and value[1] > size:
        raise GoalEnvError(f"{name}={list(value)}: the vector it slices has only {size} entries")
    return slice(int(value[0]), int(value[1]))


def _vector(obs: Any) -> np.ndarray | None:
    """An observation's vector: a Box observation, or a Dict's ``proprio`` / ``observation`` entry."""
    if isinstance(obs, dict):
        obs = next((obs[k] for k in ("proprio", "observation") if k in obs), None)
    return None if obs is None else np.asarray(obs, dtype=np.float64).reshape(-1)


def _vector_space(space: spaces.Space) -> spaces.Box | None:
    """The space of :func:`_vector`'s vector, or None."""
    if isinstance(space, spaces.Dict):
        space = next((space[k] for k in ("proprio", "observation") if k in space.spaces), None)
    return space if isinstance(space, spaces.Box) else None


def _vector_size(space: spaces.Space) -> int | None:
    vector = _vector_space(space)
    return None if vector is None else int(np.prod(vector.shape))


def _has_pixels(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Dict) and "pixels" in space.spaces


def _sample(rng: np.random.Generator, space: spaces.Box) -> np.ndarray:
    """A uniform action in the box (an unbounded side is taken as 1, to sample at all)."""
    low = np.where(np.isfinite(space.low), space.low, -1.0)
    high = np.where(np.isfinite(space.high), space.high, 1.0)
    return rng.uniform(low, high).astype(space.dtype)


def _env_name(env: gym.Env) -> str:
    spec = getattr(env, "spec", None)
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _square(frame: np.ndarray, size: int) -> np.ndarray:
    return frame.copy() if frame.shape == (size, size, 3) else resize_square(frame, size)


# ---------------------------------------------------------------------------------------------- MuJoCo
def mujoco_parts(env: gym.Env) -> tuple[mujoco.MjModel, mujoco.MjData] | None:
    """``(model, data)`` of a MuJoCo env (``env.unwrapped.model`` / ``.data``), else None."""
    model, data = getattr(env.unwrapped, "model", None), getattr(env.unwrapped, "data", None)
    ok = isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData)
    return (model, data) if ok else None


def env_camera(env: gym.Env, model: mujoco.MjModel, camera: str | None) -> str | int | mujoco.MjvCamera:
    """The view to render: the named model camera; else Gymnasium's (a ``MujocoEnv``'s fixed camera, or
    its free camera: the geoms' median at rest, then its ``default_camera_config``); else the model's first
    camera; else a free camera framing the model."""
    if camera is not None:
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise GoalEnvError(f"camera={camera!r} is not in the model; its cameras: {names}")
        return camera
    gym_renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    cam_id = getattr(gym_renderer, "camera_id", None)
    if cam_id is not None and cam_id >= 0:
        return int(cam_id)
    if gym_renderer is None and model.ncam > 0:
        return 0
    cam = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, cam)
    if gym_renderer is not None:  # as gymnasium's MujocoRenderer sets it up (deterministic: at rest)
        rest = mujoco.MjData(model)
        mujoco.mj_forward(model, rest)
        cam.lookat[:], cam.distance = np.median(rest.geom_xpos, axis=0), model.stat.extent
        for key, value in (getattr(gym_renderer, "default_cam_config", None) or {}).items():
            if isinstance(value, np.ndarray):
                getattr(cam, key)[:] = value
            else:
                setattr(cam, key, value)
    return cam


class MujocoView:
    """A ``mujoco.Renderer`` of ``size`` px, made on first use, without shadows and anti-aliasing (the
    model's own settings are left as they were)."""

    def __init__(self, model: mujoco.MjModel, size: int, camera: str | int | mujoco.MjvCamera) -> None:
        self.model, self.size, self.camera = model, size, camera
        self._renderer: mujoco.Renderer | None = None

    def render(self, data: mujoco.MjData) -> np.ndarray:
        if self._renderer is None:
            quality = self.model.vis.quality
            offsamples, quality.offsamples = quality.offsamples, 0  # read when the GL context is made
            try:
                self._renderer = mujoco.Renderer(self.model, self.size, self.size)
            finally:
                quality.offsamples = offsamples
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._renderer.update_scene(data, camera=self.camera)
        return self._renderer.render().copy()  # uint8 [size, size, 3]

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


# ------------------------------------------------------------------------------------- state access
class MujocoState:
    """``(qpos, qvel)`` of a MuJoCo env; exact snapshots with ``mj_getState`` / ``mj_setState``."""

    settable = True

    def __init__(self, env: gym.Env, model: mujoco.MjModel, data: mujoco.MjData) -> None:
        self.env, self.model, self.data = env.unwrapped, model, data
        self.size = model.nq + model.nv
        scalar = np.isin(model.jnt_type, (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE))
        self._limited = np.flatnonzero(model.jnt_limited.astype(bool) & scalar)  # joints with a range

    def get(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def set(self, state: np.ndarray) -> None:
        qpos, qvel = state[: self.model.nq], state[self.model.nq :]
        if isinstance(self.env, MujocoEnv):
            self.env.set_state(qpos, qvel)  # Gymnasium's own (it also clears act)
        else:
            self.data.qpos[:], self.data.qvel[:] = qpos, qvel
            mujoco.mj_forward(self.model, self.data)

    def snapshot(self) -> np.ndarray:
        out = np.empty(mujoco.mj_stateSize(self.model, MUJOCO_STATE))
        mujoco.mj_getState(self.model, self.data, out, MUJOCO_STATE)
        return out

    def restore(self, snap: np.ndarray) -> None:
        mujoco.mj_setState(self.model, self.data, snap, MUJOCO_STATE)
        mujoco.mj_forward(self.model, self.data)

    def out_of_bounds(self, state: np.ndarray) -> str | None:
        """The first joint of ``state`` outside its range, or None."""
        for j in self._limited:
            adr, (low, high) = self.model.jnt_qposadr[j], self.model.jnt_range[j]
            if not low <= state[adr] <= high:
                name = self.model.joint(int(j)).name or f"#{j}"
                at = f"qpos[{adr}]={state[adr]:.4g}"
                return f"joint {name!r} at {at} is outside its range [{low:.4g}, {high:.4g}]"
        return None


class MethodState:
    """The env's own ``get_state()`` and, when it has it, ``set_state(state)``."""

    size = None

    def __init__(self, env: gym.Env) -> None:
        self.env = env.unwrapped
        self.settable = callable(getattr(self.env, "set_state", None))

    def get(self) -> np.ndarray:
        return np.asarray(self.env.get_state(), dtype=np.float64).reshape(-1)

    def set(self, state: np.ndarray) -> None:
        self.env.set_state(state)

    snapshot, restore = get, set

    def out_of_bounds(self, state: np.ndarray) -> str | None:
        return None


class ObservationState:
    """No access to a simulator: the state is the latest observation vector (empty if it has none)."""

    settable = False

    def __init__(self, size: int | None) -> None:
        self.size = size or 0
        self.latest = np.zeros(self.size)

    def get(self) -> np.ndarray:
        return self.latest.copy()

    def out_of_bounds(self, state: np.ndarray) -> str | None:
        return None


def state_access(env: gym.Env) -> MujocoState | MethodState | ObservationState:
    """How ``env``'s state is read (and set, and snapshot): MuJoCo, the env's methods, or its observation."""
    parts = mujoco_parts(env)
    if parts is not None:
        return MujocoState(env, *parts)
    if callable(getattr(env.unwrapped, "get_state", None)):
        return MethodState(env)
    return ObservationState(_vector_size(env.observation_space))


# --------------------------------------------------------------------------------------------- adapter
class GoalImageEnv(gym.Env):
    """A Gymnasium env as a goal-image task (see the module docstring); made by :func:`make_goal_env`.

    Args:
        env: the env to adapt, without a ``TimeLimit`` (a goal rollout's steps must not count).
        env_id: its name in datasets and checkpoints (default: its spec's id, else its class name).
        image_size: observation and goal pixels are ``image_size x image_size x 3``.
        goal: ``auto`` | ``env`` | ``rollout`` | ``state`` | ``file:<path>``.
        goal_steps: random steps from the start to a ``rollout`` goal.
        goal_state: the ``state`` goal (None: sampled), or the state a ``file:`` goal shows.
        success: ``auto`` | ``distance`` | ``is_success`` | ``success`` | ``none`` | a distance function.
        success_slice: ``[a, b]``: a distance rule compares ``state[a:b]`` with ``goal_state[a:b]``.
        success_threshold: success is ``distance < success_threshold``.
        proprio: ``[a, b]`` of the observation vector, or None (a Dict's ``proprio``, else none).
        render: ``auto`` | ``obs`` | ``mujoco`` | ``env``.
        camera: a model camera to render (None: the env's own view).

    Raises:
        GoalEnvError: a setting of the wrong type or value, or one the env cannot serve (one line each).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env: gym.Env,
        *,
        env_id: str | None = None,
        image_size: int = 64,
        goal: str = "auto",
        goal_steps: int = 25,
        goal_state: Sequence[float] | None = None,
        success: str | DistanceFn = "auto",
        success_slice: Sequence[int] | None = None,
        success_threshold: float = 0.05,
        proprio: Sequence[int] | None = None,
        render: str = "auto",
        camera: str | None = None,
    ) -> None:
        self.env, self.env_id = env, env_id or _env_name(env)
        self.image_size = _check_int("image_size", image_size, 8)
        self.goal_steps = _check_int("goal_steps", goal_steps, 1)
        number = isinstance(success_threshold, (int, float)) and not isinstance(success_threshold, bool)
        if not number or not success_threshold > 0:
            raise GoalEnvError(f"success_threshold={success_threshold!r}: expected a number > 0")
        self.success_threshold = float(success_threshold)
        if not isinstance(env.action_space, spaces.Box):
            raise GoalEnvError(f"{self.env_id} has action space {env.action_space}; expected a Box")
        self.action_space = env.action_space
        self._mujoco, self._state = mujoco_parts(env), state_access(env)
        self.render_source = self._resolve_render(render)
        self._view = None
        if self.render_source == "mujoco" or camera is not None:
            if self._mujoco is None:
                raise GoalEnvError(f"camera={camera!r} needs a MuJoCo env; {self.env_id} is not one")
            model = self._mujoco[0]
            self._view = MujocoView(model, self.image_size, env_camera(env, model, camera))

        vector = _vector_space(env.observation_space)
        self._proprio = _check_slice("proprio", proprio, None if vector is None else _vector_size(vector))
        if self._proprio is not None and vector is None:
            raise GoalEnvError(
                f"proprio={proprio!r}: {self.env_id} observes {env.observation_space}, no vector"
            )
        bounds = np.zeros((2, 0))  # [low, high] of proprio: none by default
        if self._proprio is not None:
            bounds = np.stack([vector.low.reshape(-1), vector.high.reshape(-1)])[:, self._proprio]
        elif isinstance(env.observation_space, spaces.Dict) and "proprio" in env.observation_space.spaces:
            p = env.observation_space["proprio"]
            bounds = np.stack([p.low.reshape(-1), p.high.reshape(-1)])
        s = self.image_size
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Box(0, 255, shape=(s, s, 3), dtype=np.uint8),
                "proprio": spaces.Box(*bounds.astype(np.float32), dtype=np.float32),
            }
        )

        self.goal_source, self._goal_file = self._resolve_goal(goal)
        self._given_goal = None if goal_state is None else self._checked_goal_state(goal_state)
        if self._given_goal is not None and self.goal_source not in ("state", "file"):
            raise GoalEnvError(f"goal_state is given with goal={goal!r}; it is for goal=state or file:<path>")
        self._success_slice = _check_slice("success_slice", success_slice, self._state.size or None)
        self.success_rule = self._resolve_success(success)

        fps = (getattr(env.unwrapped, "metadata", None) or {}).get("render_fps") or 20
        self.metadata = {**self.metadata, "render_fps": int(fps)}
        self.render_mode = "rgb_array"
        self.spec = EnvSpec(id=self.env_id, entry_point="envs.gym_adapter:make_goal_env")
        self.goal_actions: list[np.ndarray] = []  # the last rollout goal's (check_goal_env replays them)
        self._goal_image: np.ndarray | None = None
        self._goal = np.zeros(0)
        self._pixels = np.zeros((s, s, 3), np.uint8)

    # ------------------------------------------------------------------------------ settings checks
    def _resolve_render(self, render: str) -> str:
        if render not in RENDERS:
            raise GoalEnvError(f"render={render!r}: expected one of {list(RENDERS)}")
        pixels = _has_pixels(self.env.observation_space)
        if render == "auto":
            render = "obs" if pixels else "mujoco" if self._mujoco else "env"
        if render == "obs" and not pixels:
            raise GoalEnvError(f"render='obs' but {self.env_id} observes {self.env.observation_space}")
        if render == "mujoco" and self._mujoco is None:
            raise GoalEnvError(
                f"render='mujoco' needs a MuJoCo env (env.unwrapped.model / .data); {self.env_id} is not one"
            )
        mode = getattr(self.env, "render_mode", None)
        if render == "env" and mode != "rgb_array":
            modes = (getattr(self.env.unwrapped, "metadata", None) or {}).get("render_modes", [])
            raise GoalEnvError(
                f"{self.env_id} does not render RGB frames: its render_mode is {mode!r} (render_modes "
                f"{list(modes)}); the adapter needs an env made with render_mode='rgb_array'"
            )
        return render

    def _resolve_goal(self, goal: str) -> tuple[str, np.ndarray | None]:
        u = self.env.unwrapped
        own = callable(getattr(u, "render_goal", None)) and callable(getattr(u, "goal_state", None))
        if isinstance(goal, str) and goal == "auto":
            goal = "env" if own else "rollout"
        if isinstance(goal, str) and goal.startswith("file:"):
            return "file", load_goal_image(goal[len("file:") :], self.image_size)
        if goal not in GOALS:
            raise GoalEnvError(f"goal={goal!r}: expected one of {list(GOALS)}")
        if goal == "env" and not own:
            raise GoalEnvError(f"goal='env' but {self.env_id} has no render_goal() and goal_state()")
        if goal == "state" and not self._state.settable:
            raise GoalEnvError(
                "goal='state' needs an env whose state can be set: a MuJoCo env (env.unwrapped.model / "
                f".data) or one with get_state() and set_state(state); {self.env_id} has neither: use "
                "goal=rollout or goal=file:<png>"
            )
        if (
            goal == "state"
            and self.render_source == "obs"
            and getattr(self.env, "render_mode", None) != "rgb_array"
        ):
            raise GoalEnvError(
                "goal='state' draws the goal state with env.render(): make the env with "
                "render_mode='rgb_array'"
            )
        return goal, None

    def _checked_goal_state(self, goal_state: Sequence[float]) -> np.ndarray:
        try:
            state = np.asarray(goal_state, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise GoalEnvError(f"goal_state={goal_state!r}: expected a list of numbers") from e
        if self._state.size and state.shape != (self._state.size,):
            raise GoalEnvError(
                f"goal_state has {state.size} entries; {self.env_id}'s state has {self._state.size}"
            )
        if not np.all(np.isfinite(state)):
            raise GoalEnvError(f"goal_state={state.tolist()} is not finite")
        problem = self._state.out_of_bounds(state)
        if problem is not None:
            raise GoalEnvError(f"goal_state is outside {self.env_id}'s bounds: {problem}")
        return state

    def _resolve_success(self, success: str | DistanceFn) -> str | DistanceFn:
        if callable(success):
            return success
        if success not in SUCCESS:
            raise GoalEnvError(f"success={success!r}: expected one of {list(SUCCESS)} or a distance function")
        if success == "auto" and self._success_slice is not None:
            success = "distance"
        if success == "distance" and self._success_slice is None:
            raise GoalEnvError(
                "success='distance' needs success_slice=[start, stop] (the state entries compared)"
            )
        if success == "distance" and self.goal_source == "file" and self._given_goal is None:
            raise GoalEnvError(
                "success='distance' with a file goal needs goal_state (the state the image shows)"
            )
        return success

    # ------------------------------------------------------------------------------------- Gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset the env with ``seed`` (None: a seed drawn from this env's generator) and make the goal."""
        super().reset(seed=seed)
        start_seed = int(self.np_random.integers(2**31 - 1)) if seed is None else int(seed)
        goal_rng = np.random.default_rng([start_seed, GOAL_STREAM])
        if self.goal_source == "state" and self._given_goal is None:  # a start of the env's own distribution
            self.env.reset(seed=int(goal_rng.integers(2**31 - 1)), options=options)
            self._goal = self._state.get()
        obs, info = self.env.reset(seed=start_seed, options=options)
        observation = self._observe(obs)
        if self.goal_source == "rollout":
            again = self._rollout_goal(goal_rng, start_seed, options)
            if again is not None:  # the start was made again by a second reset
                obs, info = again
                observation = self._observe(obs)
        elif self.goal_source == "state":
            if self._given_goal is not None:
                self._goal = self._given_goal
            self._goal_image = self._draw_state(self._goal)
        elif self.goal_source == "file":
            self._goal_image = self._goal_file
            self._goal = np.zeros(0) if self._given_goal is None else self._given_goal
        return observation, self._info(info, step=False)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        observation = self._observe(obs)  # first: it updates an observation state, which success reads
        return observation, float(reward), bool(terminated), bool(truncated), self._info(info, step=True)

    def render(self) -> np.ndarray:
        """The current frame, uint8 ``[S, S, 3]`` (drawn anew when the env can draw its state)."""
        frame = self._draw()
        return self._pixels.copy() if frame is None else frame

    def close(self) -> None:
        if self._view is not None:
            self._view.close()
        self.env.close()

    # ----------------------------------------------------------------------- the library's protocol
    def get_state(self) -> np.ndarray:
        """The env's state, float64 ``[N]`` (the module docstring says which state)."""
        return self._state.get()

    def set_state(self, state: np.ndarray) -> None:
        """Teleport the env to ``state`` (as :meth:`get_state` returns it)."""
        if not self._state.settable:
            raise GoalEnvError(f"{self.env_id}'s state cannot be set (not a MuJoCo env, no set_state)")
        self._state.set(np.asarray(state, dtype=np.float64))

    @property
    def can_set_state(self) -> bool:
        return self._state.settable

    def goal_state(self) -> np.ndarray:
        """The goal as a state, float64 (empty for a file goal without ``goal_state``)."""
        if self.goal_source == "env":
            return np.asarray(self.env.unwrapped.goal_state(), dtype=np.float64)
        return self._goal.copy()

    def render_goal(self, size: int | None = None) -> np.ndarray:
        """The goal image, uint8 ``[size, size, 3]`` (default: the observation size)."""
        size = size or self.image_size
        if self.goal_source == "env":
            return _square(np.asarray(self.env.unwrapped.render_goal(size=size)), size)
        if self._goal_image is None:
            raise GoalEnvError("render_goal() before reset(): the goal is made at each reset")
        return _square(self._goal_image, size)

    def distance(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        """The success rule's distance between two states (NaN for a rule without one)."""
        if callable(self.success_rule):
            return float(self.success_rule(state, goal_state))
        if self._success_slice is None or goal_state.size == 0:
            return float("nan")
        return float(np.linalg.norm(state[self._success_slice] - goal_state[self._success_slice]))

    # ------------------------------------------------------------------------------------ internals
    def _observe(self, obs: Any) -> dict[str, np.ndarray]:
        """The library's observation of the env's ``obs`` (and the latest frame, and state vector)."""
        vector = _vector(obs)
        if isinstance(self._state, ObservationState):
            self._state.latest = np.zeros(0) if vector is None else vector
        self._pixels = (
            _square(np.asarray(obs["pixels"]), self.image_size)
            if self.render_source == "obs"
            else self._draw()
        )
        if self._proprio is not None:
            proprio = vector[self._proprio]
        elif isinstance(obs, dict) and "proprio" in obs:
            proprio = np.asarray(obs["proprio"]).reshape(-1)
        else:
            proprio = np.zeros(0)
        return {"pixels": self._pixels.copy(), "proprio": proprio.astype(np.float32)}

    def _draw(self) -> np.ndarray | None:
        """A frame of the current state: the MuJoCo view, else ``env.render()``; None when the env has
        neither (pixels from its observation, no RGB rendering)."""
        if self.render_source == "mujoco":
            return self._view.render(self._mujoco[1])
        if getattr(self.env, "render_mode", None) != "rgb_array":
            return None
        frame = self.env.render()
        if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            raise GoalEnvError(
                f"{self.env_id}.render() returned {type(frame).__name__} {getattr(frame, 'shape', '')}; "
                "expected an RGB array (render_mode='rgb_array')"
            )
        return _square(np.asarray(frame[..., :3], dtype=np.uint8), self.image_size)

    def _draw_state(self, state: np.ndarray) -> np.ndarray:
        """The frame of ``state``; the env's own state is restored after."""
        snap = self._state.snapshot()
        try:
            self._state.set(state)
            return self._draw()
        finally:
            self._state.restore(snap)

    def _rollout_goal(
        self, rng: np.random.Generator, start_seed: int, options: dict[str, Any] | None
    ) -> tuple[Any, dict[str, Any]] | None:
        """Random steps from the start to the goal, then the start again: restored from a snapshot
        (returns None), or made by a second reset (returns its ``(obs, info)``)."""
        snap = self._state.snapshot() if self._state.settable else None
        pixels, latest = self._pixels, getattr(self._state, "latest", None)
        self.goal_actions = []
        for _ in range(self.goal_steps):
            self.goal_actions.append(_sample(rng, self.action_space))
            obs, _, terminated, truncated, _ = self.env.step(self.goal_actions[-1])
            if terminated or truncated:
                break
        self._observe(obs)
        self._goal, self._goal_image = self._state.get(), self._pixels
        if snap is None:
            return self.env.reset(seed=start_seed, options=options)
        self._state.restore(snap)
        self._pixels = pixels
        if latest is not None:
            self._state.latest = latest
        return None

    def _info(self, info: dict[str, Any], step: bool) -> dict[str, Any]:
        """The env's ``info`` plus ``is_success`` (bool) and ``distance`` (float; NaN when unknown)."""
        info, rule = dict(info), self.success_rule
        if callable(rule) or rule == "distance":
            distance = self.distance(self._state.get(), self.goal_state())
            success = distance < self.success_threshold
        else:
            own = info.get("distance")
            distance = float(own) if isinstance(own, (int, float, np.number)) else float("nan")
            keys = SUCCESS_KEYS if rule == "auto" else () if rule == "none" else (rule,)
            key = next((k for k in keys if k in info), None)
            if key is None and step and rule in SUCCESS_KEYS:
                raise GoalEnvError(f"success={rule!r} but {self.env_id}'s step info has only {sorted(info)}")
            success = bool(info[key]) if key is not None else False
        info["is_success"], info["distance"] = bool(success), float(distance)
        return info


# --------------------------------------------------------------------------------------------- factory
def _make_inner(env: str | gym.Env, render: str, make_kwargs: dict[str, Any] | None) -> tuple[gym.Env, str]:
    """The env to adapt and its id: made from an id without its ``TimeLimit``, or an instance with any
    outer ``TimeLimit`` taken off (the adapter counts its own steps; goal rollouts must not)."""
    if isinstance(env, gym.Env):
        if make_kwargs:
            raise GoalEnvError("make_kwargs are gymnasium.make arguments: pass an env id, not an instance")
        while isinstance(env, TimeLimit):
            env = env.env
        return env, _env_name(env)
    if not isinstance(env, str) or not env:
        raise GoalEnvError(f"env={env!r}: expected a Gymnasium env id (e.g. 'Pusher-v5') or an env instance")
    kwargs = dict(make_kwargs or {})
    if render != "mujoco":
        kwargs.setdefault("render_mode", "rgb_array")  # unused where the adapter renders by itself
    module, _, name = env.rpartition(":")  # "pkg.module:MyEnv-v0": the module registers the id
    try:
        if module:
            importlib.import_module(module)
        spec = dataclasses.replace(gym.spec(name), max_episode_steps=None)
        return gym.make(spec, **kwargs), env
    except (gym.error.Error, ImportError, TypeError) as e:
        raise GoalEnvError(f"env.id={env!r} cannot be made: {type(e).__name__}: {e}") from e


def make_goal_env(
    env: str | gym.Env,
    *,
    image_size: int = 64,
    goal: str = "auto",
    goal_steps: int = 25,
    goal_state: Sequence[float] | None = None,
    success: str | DistanceFn = "auto",
    success_slice: Sequence[int] | None = None,
    success_threshold: float = 0.05,
    proprio: Sequence[int] | None = None,
    render: str = "auto",
    camera: str | None = None,
    max_episode_steps: int = 50,
    check: bool = True,
    make_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = "rgb_array",
) -> gym.Env:
    """Any Gymnasium env as a goal-image task: a :class:`GoalImageEnv` in ``OrderEnforcing`` + ``TimeLimit``.

    Args:
        env: a registered id (``"Pusher-v5"``, ``"my_package.module:MyEnv-v0"``) or an env instance.
        max_episode_steps: the episode budget.
        check: run :func:`check_goal_env` on :data:`CHECK_EPISODES` episodes; refuse an env that fails.
        make_kwargs: ``gymnasium.make`` arguments (e.g. ``default_camera_config``) for an env id.
        render_mode: ``"rgb_array"`` (or None): the task always renders RGB (``gymnasium.make(env.spec,
            render_mode=...)`` passes it).
        The others: as :class:`GoalImageEnv`.

    Raises:
        GoalEnvError: a bad setting, an env that cannot be made or served, or (``check``) one that fails
            :func:`check_goal_env`: one line naming the fault.
    """
    if render_mode not in (None, "rgb_array"):
        raise GoalEnvError(f"render_mode={render_mode!r}: the task renders 'rgb_array' frames only")
    if not isinstance(check, bool):
        raise GoalEnvError(f"check={check!r}: expected true or false")
    if make_kwargs is not None and not isinstance(make_kwargs, dict):
        raise GoalEnvError(f"make_kwargs={make_kwargs!r}: expected a mapping of gymnasium.make arguments")
    steps = _check_int("max_episode_steps", max_episode_steps, 1)
    inner, env_id = _make_inner(env, render, make_kwargs)
    settings = dict(
        image_size=image_size, goal=goal, goal_steps=goal_steps, goal_state=goal_state, success=success,
        success_slice=success_slice, success_threshold=success_threshold, proprio=proprio, render=render,
        camera=camera,
    )  # fmt: skip
    adapter = GoalImageEnv(inner, env_id=env_id, **settings)
    if isinstance(env, str):  # gymnasium.make(env.spec) makes it again
        adapter.spec = dataclasses.replace(
            adapter.spec, kwargs={"env": env, **settings, "make_kwargs": make_kwargs}
        )
    wrapped = TimeLimit(OrderEnforcing(adapter), max_episode_steps=steps)
    if check:
        from envs.gym_check import check_goal_env  # the checks import this module

        report = check_goal_env(wrapped, episodes=CHECK_EPISODES)
        if not report["ok"]:
            wrapped.close()
            raise GoalEnvError(f"check_goal_env: {env_id}: {'; '.join(report['failures'])}")
    return wrapped


__all__ = [
    "GoalEnvError",
    "GoalImageEnv",
    "MujocoView",
    "env_camera",
    "make_goal_env",
    "mujoco_parts",
    "state_access",
]
