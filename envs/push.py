"""``JepaAgent/Push-v0``: a point pusher moves a T-shaped block to a pose shown only as an image.

The MuJoCo analogue of Push-T (DINO-WM, LeWM), planar and seen from above. Follows Gymnasium's
``MujocoEnv`` recipe like ``envs/reach.py`` and renders the same way (``mujoco.Renderer``, no shadows,
no anti-aliasing).

* Scene: walls with inner faces at +-0.21 m; a pusher (sphere, radius 12.5 mm) on two position-servoed
  slide joints (range +-0.2 m, force capped at 15 N); a T block (bar 15 x 4 cm, stem 4 x 11 cm, 0.208 kg)
  on slide x, slide y and hinge z joints, its joint damping set to ``mass / tau`` and ``Izz / tau`` with
  ``tau = 10 ms``: the block stops within a few milliseconds once the pusher lets go, so each frame holds
  (nearly) the whole state. Contact ``solref`` 2.5 ms at a 1.25 ms timestep keeps penetration under 2 mm,
  impacts included.
* Observation: ``{"pixels": uint8 [H, W, 3], "proprio": float32 [4]}`` with proprio = (pusher xy,
  pusher velocity). The pixels never show the goal.
* Action: ``[-1, 1]^2``, the pusher's servo target moved to ``pusher xy + action * max_delta`` (default
  25 mm per step, clipped to the pusher's range).
* State: :meth:`PushEnv.get_state` is ``(qpos [5], qvel [5])`` with ``qpos = (pusher x, y, block x, y,
  yaw)``; the goal state (:meth:`PushEnv.goal_state`) is a ``qpos`` ``[5]``, its image
  :meth:`PushEnv.render_goal` the scene rendered at that pose.
* Goals (``goal=``): ``"offset"`` (default, the DINO-WM / stable-worldmodel protocol): the state reached
  by the scripted expert (``envs.push_expert``) after ``goal_steps`` (25) steps from the start, simulated in
  a scratch copy of the simulation; a rollout whose block moved less than 1 cm and turned less than 5 degrees
  is redrawn. ``"random"`` (harder): an independent random pose, the block at least 5 cm or 30 degrees away.
* Success: ``info["is_success"]`` when ``||(pusher - goal pusher, block - goal block)|| <
  success_threshold`` (default 0.0168 m = 4% of the 0.42 m arena) and the block's yaw is within
  ``yaw_threshold`` (default pi/9) of the goal's: Push-T's rule as DINO-WM evaluates it, scaled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.push_expert import (
    PUSHER_RADIUS,
    PUSHER_RANGE,
    WALL,
    ScriptedPusher,
    distance_to_t,
    t_corners,
    wrap_angle,
)

os.environ.setdefault("MUJOCO_GL", "egl")  # before importing mujoco; respect a user's choice
import mujoco  # noqa: E402

from envs.base import TopDownEnv  # noqa: E402

ASSET = Path(__file__).parent / "assets" / "push.xml"
SETTLE_TIME = 0.01  # s: the block's velocity decays with this time constant once released
MAX_SPEED = 100.0  # m/s, observation-space bound far beyond any episode
SUCCESS_THRESHOLD = 0.04 * 2 * WALL  # m: 4% of the arena, like Push-T's 20 units in ~500
YAW_THRESHOLD = np.pi / 9
GOAL_MODES = ("offset", "random")
START_PUSHER = 0.18  # pusher starts uniform in +-START_PUSHER (m)
START_BLOCK = 0.10  # block starts with its centre of mass uniform in +-START_BLOCK (m)
MIN_OFFSET_MOVE, MIN_OFFSET_TURN = 0.01, np.radians(5)  # an "offset" goal moves the block at least this
MIN_RANDOM_MOVE, MIN_RANDOM_TURN = 0.05, np.radians(30)  # a "random" goal is at least this far
MOVE_DISTANCE, MOVE_ANGLE = 0.001, np.radians(1)  # a step "moves the block" beyond either
POSE_TOLERANCE = 0.003  # m a valid pose may overstep a bound by (contacts and joint limits give ~1-2 mm)


def probe_targets(states: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """What a probe of a push encoder regresses (``jepa_agent.probe.probe_targets``), from states ``[M, 10]``
    (qpos, qvel): the pusher's and the block's xy and the block's yaw as sin and cos -> ``[M, 6]``, names."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[1] != 10:
        raise ValueError(f"push states of shape {states.shape}; expected [M, 10] (qpos [5], qvel [5])")
    yaw = states[:, 4:5]
    names = ["pusher_x", "pusher_y", "block_x", "block_y", "yaw_sin", "yaw_cos"]
    return np.concatenate([states[:, :4], np.sin(yaw), np.cos(yaw)], axis=1), names


def check_pose(qpos: Any, name: str) -> np.ndarray:
    """``qpos`` as float64 ``[5]`` if it is a pose the env can be in; else ValueError naming ``name``.

    A pose is (pusher x, y, block x, y, yaw): the pusher within its range, the whole T inside the walls,
    and the two not overlapping, each up to ``POSE_TOLERANCE`` (what contacts and joint limits allow).
    """
    q = np.asarray(qpos, dtype=np.float64)
    if q.shape != (5,):
        raise ValueError(f"{name} has shape {q.shape}; expected (5,) = (pusher x, y, block x, y, yaw)")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name}={q.tolist()} is not finite")
    if np.any(np.abs(q[:2]) > PUSHER_RANGE + POSE_TOLERANCE):
        raise ValueError(f"{name}: pusher at {q[:2].tolist()} is outside its range +-{PUSHER_RANGE} m")
    corners = t_corners(q[2:])
    if np.any(np.abs(corners) > WALL + POSE_TOLERANCE):
        raise ValueError(
            f"{name}: block pose {q[2:].tolist()} puts the T outside the walls at +-{WALL} m "
            f"(farthest corner at {np.abs(corners).max():.3f} m)"
        )
    if distance_to_t(q[:2], q[2:]) < PUSHER_RADIUS - POSE_TOLERANCE:
        raise ValueError(f"{name}: the pusher at {q[:2].tolist()} overlaps the block at {q[2:].tolist()}")
    return q


class PushEnv(TopDownEnv):
    """Planar pushing of a T block from pixels; see the module docstring for the spaces and the goal."""

    def __init__(
        self,
        image_size: int = 64,
        frame_skip: int = 40,
        max_delta: float = 0.025,
        goal: str = "offset",
        goal_steps: int = 25,
        success_threshold: float = SUCCESS_THRESHOLD,
        yaw_threshold: float = YAW_THRESHOLD,
        camera: str = "top",
        render_mode: str | None = None,
        render_size: int | None = None,
        antialias: int = 0,
    ) -> None:
        self._check_common(image_size, frame_skip, render_mode, render_size)
        if (
            not isinstance(antialias, (int, np.integer))
            or isinstance(antialias, bool)
            or not 0 <= antialias <= 16
        ):
            raise ValueError(
                f"antialias={antialias!r}: expected an int in [0, 16] (multisamples per pixel; 0: none)"
            )
        if not 0 < max_delta <= 0.1:
            raise ValueError(f"max_delta={max_delta!r}: expected a servo-target displacement in (0, 0.1] m")
        if goal not in GOAL_MODES:
            raise ValueError(f"goal={goal!r}: expected one of {list(GOAL_MODES)}")
        if not isinstance(goal_steps, (int, np.integer)) or goal_steps < 1:
            raise ValueError(f"goal_steps={goal_steps!r}: expected an int >= 1")
        if not (success_threshold > 0 and yaw_threshold > 0):
            raise ValueError(
                f"success_threshold={success_threshold!r}, yaw_threshold={yaw_threshold!r}: expected both > 0"
            )
        self.max_delta = float(max_delta)
        self.goal_mode = goal
        self.goal_steps = int(goal_steps)
        self.success_threshold = float(success_threshold)
        self.yaw_threshold = float(yaw_threshold)

        self.model = mujoco.MjModel.from_xml_path(str(ASSET))
        # push.xml renders without anti-aliasing (fast); with it, a pusher moved by a fraction of a pixel
        # changes the frame smoothly instead of flipping edge pixels (scripts/bench_smoothness.py)
        self.model.vis.quality.offsamples = int(antialias)
        block = self.model.body("block").id
        dofs = [self.model.joint(j).dofadr[0] for j in ("block_x", "block_y", "block_yaw")]
        mass, izz = self.model.body_mass[block], self.model.body_inertia[block][2]
        self.model.dof_damping[dofs] = [mass / SETTLE_TIME, mass / SETTLE_TIME, izz / SETTLE_TIME]
        self.data = mujoco.MjData(self.model)
        self._goal_data = mujoco.MjData(self.model)  # scratch pose for goal images
        self._sim = mujoco.MjData(self.model)  # scratch simulation for goal rollouts
        self._setup_rendering(camera, ASSET.name)

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        bound = np.array([PUSHER_RANGE + 0.05] * 2 + [MAX_SPEED] * 2, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8),
                "proprio": spaces.Box(-bound, bound, dtype=np.float32),
            }
        )
        self._goal = np.array([0.0, -0.15, 0.0, 0.0, 0.0])

    # ----------------------------------------------------------------------------------- helpers
    def controls(self, qpos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The servo targets an env step sets for ``action [..., 2]`` at ``qpos [..., nq]``: the pusher's
        position moved by ``action * max_delta``, clipped to its range (the oracle simulates with it too)."""
        return np.clip(qpos[..., :2] + action * self.max_delta, -PUSHER_RANGE, PUSHER_RANGE)

    def _apply(self, data: mujoco.MjData, action: np.ndarray) -> None:
        """One env step of ``data``: move the servo target by ``action * max_delta``, then simulate."""
        data.ctrl[:] = self.controls(data.qpos, action)
        mujoco.mj_step(self.model, data, nstep=self.frame_skip)

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> None:
        """Teleport pusher and block (the servo target follows the pusher), e.g. to replay a state."""
        qpos = self._write_state(qpos, qvel)  # state (qpos [5], qvel [5]): get_state() reads it back
        self.data.ctrl[:] = qpos[:2]
        mujoco.mj_forward(self.model, self.data)

    def set_goal(self, goal_state: np.ndarray) -> None:
        """Use ``goal_state`` (pusher x, y, block x, y, yaw) as the goal; it must be a valid pose."""
        goal = check_pose(goal_state, "goal_state")
        goal[4] = wrap_angle(goal[4])
        self._goal = goal

    @staticmethod
    def object_moved(states: np.ndarray) -> np.ndarray:
        """Which steps of an episode moved the block (> 1 mm or > 1 degree): states ``[T, >=5]`` (``qpos``
        first, as :meth:`get_state`) -> bool ``[T - 1]``."""
        q = np.asarray(states, dtype=np.float64)[:, 2:5]
        shift = np.linalg.norm(np.diff(q[:, :2], axis=0), axis=1)
        turn = np.abs(wrap_angle(np.diff(q[:, 2])))
        return (shift > MOVE_DISTANCE) | (turn > MOVE_ANGLE)

    def pose_errors(self, states: np.ndarray, goal_states: np.ndarray) -> dict[str, np.ndarray]:
        """Pusher, block and combined distances (m), yaw error and success of states ``[..., >= 5]`` (qpos
        first) against goal states of that layout: the task's one success rule (``info``, hindsight)."""
        a, b = np.asarray(states, dtype=np.float64), np.asarray(goal_states, dtype=np.float64)
        if a.shape[-1] < 5 or b.shape[-1] < 5:
            raise ValueError(f"states of shape {a.shape} and {b.shape}; expected [..., >= 5] (qpos first)")
        pusher = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)
        block = np.linalg.norm(a[..., 2:4] - b[..., 2:4], axis=-1)
        distance = np.hypot(pusher, block)
        yaw_error = np.abs(wrap_angle(a[..., 4] - b[..., 4]))
        success = (distance < self.success_threshold) & (yaw_error < self.yaw_threshold)
        return {"is_success": success, "distance": distance, "pusher_distance": pusher,
                "block_distance": block, "yaw_error": yaw_error}  # fmt: skip

    def hindsight_success(self, states: np.ndarray, goal_states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The task's own success rule between recorded states, as if ``goal_states`` were the goal
        (hindsight relabelling): states ``[..., >= 5]`` with ``(pusher x, y, block x, y, yaw)`` first, as
        :meth:`get_state` and :meth:`goal_state` give them -> (pusher-and-block distance in m ``[...]``,
        success ``[...]``: that distance and the yaw error within their thresholds, as ``info``)."""
        errors = self.pose_errors(states, goal_states)
        return errors["distance"], errors["is_success"]

    def goal_state(self) -> np.ndarray:
        """The goal as a state: ``(pusher x, y, block x, y, yaw)`` ``[5]``."""
        return self._goal.copy()

    def render_goal(self, size: int | None = None) -> np.ndarray:
        """The scene rendered at the goal pose, uint8 ``[size, size, 3]`` (default obs size)."""
        self._goal_data.qpos[:] = self._goal
        self._goal_data.qvel[:] = 0.0
        mujoco.mj_forward(self.model, self._goal_data)
        return self._render_data(self._goal_data, size or self.image_size)

    def _sample_pose(self) -> np.ndarray:
        """Pusher uniform in +-START_PUSHER, block in +-START_BLOCK with any yaw, not overlapping."""
        rng = self.np_random
        while True:
            q = np.concatenate(
                [rng.uniform(-START_PUSHER, START_PUSHER, 2), rng.uniform(-START_BLOCK, START_BLOCK, 2),
                 [rng.uniform(-np.pi, np.pi)]]
            )  # fmt: skip
            if distance_to_t(q[:2], q[2:]) > PUSHER_RADIUS + 0.005:
                return q

    def _expert_goal(self, start: np.ndarray) -> np.ndarray:
        """The pose the scripted expert reaches in ``goal_steps`` steps from ``start`` (scratch sim)."""
        expert = ScriptedPusher(self.np_random, self.max_delta)
        sim = self._sim
        mujoco.mj_resetData(self.model, sim)
        sim.qpos[:], sim.ctrl[:] = start, start[:2]
        mujoco.mj_forward(self.model, sim)
        for _ in range(self.goal_steps):
            self._apply(sim, expert(sim.qpos))
        return sim.qpos.copy()

    def _sample_goal(self, start: np.ndarray) -> np.ndarray:
        """A goal pose for ``start``, drawn as ``goal_mode`` says (see the module docstring)."""
        if self.goal_mode == "offset":
            for _ in range(20):
                goal = self._expert_goal(start)
                moved = np.linalg.norm(goal[2:4] - start[2:4]) >= MIN_OFFSET_MOVE
                if moved or abs(wrap_angle(goal[4] - start[4])) >= MIN_OFFSET_TURN:
                    break
        else:
            while True:
                goal = self._sample_pose()
                moved = np.linalg.norm(goal[2:4] - start[2:4]) >= MIN_RANDOM_MOVE
                if moved or abs(wrap_angle(goal[4] - start[4])) >= MIN_RANDOM_TURN:
                    break
        goal[4] = wrap_angle(goal[4])
        return goal

    def _get_obs(self) -> dict[str, np.ndarray]:
        proprio = np.concatenate([self.data.qpos[:2], self.data.qvel[:2]]).astype(np.float32)
        return {"pixels": self._render_data(self.data, self.image_size), "proprio": proprio}

    def _get_info(self) -> dict[str, Any]:
        errors = self.pose_errors(self.data.qpos, self._goal)
        return {k: bool(v) if k == "is_success" else float(v) for k, v in errors.items()}

    # ------------------------------------------------------------------------------ gymnasium api
    def reset_model(self, options: dict[str, Any]) -> None:
        """Sample the start and a goal (``goal_mode``), or take either from ``options["qpos"]`` /
        ``options["goal_state"]``."""
        qpos = options.get("qpos")
        start = self._sample_pose() if qpos is None else check_pose(qpos, "qpos")
        self.set_state(start)
        goal = options.get("goal_state")
        self.set_goal(self._sample_goal(start) if goal is None else goal)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        self.reset_model(options or {})
        return self._get_obs(), self._get_info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action)
        self._apply(self.data, action)
        obs, info = self._get_obs(), self._get_info()
        reward_dist = -info["distance"]
        reward_yaw = -info["yaw_error"] * self.success_threshold / self.yaw_threshold  # in metres' worth
        reward_ctrl = -0.01 * float(np.square(action).sum())
        info.update(reward_dist=reward_dist, reward_yaw=reward_yaw, reward_ctrl=reward_ctrl)
        return obs, reward_dist + reward_yaw + reward_ctrl, False, False, info
