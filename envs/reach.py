"""``JepaAgent/Reach-v0``: a planar 2-link arm, seen from above, reaching a goal shown only as an image.

Follows Gymnasium's ``MujocoEnv`` recipe (XML asset, ``reset_model`` drawing from ``self.np_random``,
reward breakdown in ``info``, truncation by ``TimeLimit``) but renders with ``mujoco.Renderer``:
Gymnasium's MuJoCo renderer turns frames black when another env in the process closes.

* Observation: ``{"pixels": uint8 [H, W, 3], "proprio": float32 [4]}`` with proprio = (joint angles,
  joint velocities). The pixels never show the goal.
* Action: ``[-1, 1]^2``, a joint-space displacement: the position servos' targets are set to
  ``qpos + action * max_delta`` (clipped to the joint ranges), so equal actions give equal motions.
  The shoulder turns freely (no joint limit, as in DMC's reacher); the elbow is limited to +-2.6 rad.
* Goal: each reset samples a goal joint configuration (its end effector at least ``min_goal_distance``
  from the start); available as a state (:meth:`ReachEnv.goal_state`) and as an image
  (:meth:`ReachEnv.render_goal`, the scene rendered with the arm at the goal pose).
* Success: ``info["is_success"]`` when the end effector is within ``success_threshold`` (default
  0.01 m = 5% of the arm's 0.2 m reach, like Meta-World reach's 5 cm) of the goal end effector.

``JepaAgent/ReachTorque-v0`` (``control="torque"``) is the same arm driven by joint torques instead of
position servos: the action ``[-1, 1]^2`` is the torque in units of ``max_torque`` (N m), the joints are
damped (``damping``, N m s/rad), and the arm coasts between steps: a one-step full-torque pulse from
rest moves the shoulder 0.04 rad during the step and it glides ~0.2 rad more over the next ~8 steps
(``tests/test_envs.py``). One frame then no longer holds the whole state (the velocity is not in it),
and the goal must be *stopped* at: success at the end of an episode needs the arm at rest there.
The shoulder's top speed under full torque is ~5 rad/s (0.25 rad per step, the position arm's top
speed). Goals, images and success are as for the position arm.

``JepaAgent/ReachDistracting-v0`` (``distracting=True``) is the same task with the visual distractions of
the Distracting Control Suite (Stone et al., 2021), drawn anew at every reset from the env's seeded
RNG: a background of 8 x 8 randomly coloured tiles, the arm's colours jittered per channel, two loose
fingertip-sized decoys of the fingertip's colours lying in the workspace, and the camera shifted by up
to 2 cm. Dynamics, actions, goals and success are unchanged; the goal image shows the same scene.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

os.environ.setdefault("MUJOCO_GL", "egl")  # before importing mujoco; respect a user's choice
import mujoco  # noqa: E402

from envs.base import TopDownEnv  # noqa: E402

ASSET = Path(__file__).parent / "assets" / "reach.xml"
LINK_LENGTHS = (0.1, 0.1)
REACH = sum(LINK_LENGTHS)
# observation-space bounds far beyond what an episode reaches (the shoulder turns freely, so its angle
# is not wrapped: wrapping would make the joint angle jump at +-pi)
MAX_SPEED = 1000.0  # rad/s
MAX_ANGLE = 1000.0  # rad

# JepaAgent/ReachDistracting-v0: what each reset randomises (see the module docstring)
TILES = 8  # background tiles per side, over the floor's +-0.3 m
TILE_COLOUR = (0.05, 0.6)  # per-channel range of a tile's colour (darker than the arm's)
DECOYS = 2  # loose fingertip look-alikes
COLOUR_JITTER = 0.15  # per-channel jitter of the arm's (and the decoys') colours
CAMERA_SHIFT = 0.02  # m, per-episode camera offset in x and y
ARM_GEOMS = ("base", "link1", "link2", "fingertip")

CONTROLS = ("position", "torque")  # what an action sets: servo targets (Reach-v0) | joint torques
MAX_TORQUE = 0.1  # N m per unit action (ReachTorque-v0)
DAMPING = 0.02  # N m s / rad on each joint (ReachTorque-v0): velocity decays with ~0.13 s time constant


def build_model(
    distracting: bool = False,
    control: str = "position",
    max_torque: float = MAX_TORQUE,
    damping: float = DAMPING,
) -> mujoco.MjModel:
    """The reach model; with ``distracting``, plus the background tiles and the decoys (geoms that
    never collide, placed and coloured at each reset); with ``control="torque"``, motors of gear
    ``max_torque`` (control range [-1, 1]) instead of the position servos, and joint ``damping``."""
    if not distracting and control == "position":
        return mujoco.MjModel.from_xml_path(str(ASSET))
    spec = mujoco.MjSpec.from_file(str(ASSET))
    if control == "torque":
        for actuator in spec.actuators:
            actuator.set_to_motor()
            actuator.gear[0] = max_torque
            actuator.ctrlrange = [-1.0, 1.0]
            actuator.ctrllimited = 1
        for joint in ("shoulder", "elbow"):
            spec.joint(joint).damping[0] = damping
    if not distracting:
        return spec.compile()
    half = 0.3
    side = 2 * half / TILES
    for i in range(TILES):
        for j in range(TILES):
            spec.worldbody.add_geom(
                name=f"tile_{i}_{j}",
                type=mujoco.mjtGeom.mjGEOM_BOX,
                size=[side / 2, side / 2, 0.0005],
                pos=[-half + (i + 0.5) * side, -half + (j + 0.5) * side, 0.001],
                contype=0,
                conaffinity=0,
            )
    tip = spec.geom("fingertip")
    for k in range(DECOYS):
        spec.worldbody.add_geom(
            name=f"decoy_{k}", type=mujoco.mjtGeom.mjGEOM_SPHERE, size=list(tip.size), pos=[0, 0, 0.02],
            contype=0, conaffinity=0,
        )  # fmt: skip
    return spec.compile()


def forward_kinematics(qpos: np.ndarray) -> np.ndarray:
    """End-effector ``xy`` of the reach arm for joint angles ``qpos [..., 2]`` -> ``[..., 2]``."""
    qpos = np.asarray(qpos, dtype=np.float64)
    q1, q12 = qpos[..., 0], qpos[..., 0] + qpos[..., 1]
    l1, l2 = LINK_LENGTHS
    return np.stack([l1 * np.cos(q1) + l2 * np.cos(q12), l1 * np.sin(q1) + l2 * np.sin(q12)], axis=-1)


class ReachEnv(TopDownEnv):
    """Planar 2-link reaching from pixels; see the module docstring for the spaces and the goal."""

    def __init__(
        self,
        image_size: int = 64,
        frame_skip: int = 20,
        max_delta: float = 0.25,
        success_threshold: float = 0.05 * REACH,
        min_goal_distance: float = 0.25 * REACH,
        camera: str = "top",
        render_mode: str | None = None,
        render_size: int | None = None,
        distracting: bool = False,
        control: str = "position",
        max_torque: float = MAX_TORQUE,
        damping: float = DAMPING,
    ) -> None:
        self._check_common(image_size, frame_skip, render_mode, render_size)
        if control not in CONTROLS:
            raise ValueError(f"control={control!r}: expected one of {list(CONTROLS)}")
        self.control = control
        if control == "position":  # max_delta means something only to the servos
            if not max_delta > 0:
                raise ValueError(f"max_delta={max_delta!r}: expected a positive joint displacement (rad)")
            self.max_delta = float(max_delta)
        else:
            for name, value in (("max_torque", max_torque), ("damping", damping)):
                if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                    raise ValueError(f"{name}={value!r}: expected a positive number")
            self.max_torque, self.damping = float(max_torque), float(damping)
        self.success_threshold = float(success_threshold)
        self.min_goal_distance = float(min_goal_distance)

        self.distracting = bool(distracting)
        self.model = build_model(self.distracting, control, max_torque, damping)
        self.data = mujoco.MjData(self.model)
        self._goal_data = mujoco.MjData(self.model)  # scratch pose for goal images
        self._setup_rendering(camera, ASSET.name)
        self._fingertip = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, "fingertip")
        limited = self.model.jnt_limited.astype(bool)
        # joint ranges; the shoulder is continuous (unlimited): +-inf, sampled within [-pi, pi)
        self.joint_low = np.where(limited, self.model.jnt_range[:, 0], -np.inf)
        self.joint_high = np.where(limited, self.model.jnt_range[:, 1], np.inf)
        self.sample_low = np.maximum(self.joint_low, -np.pi)
        self.sample_high = np.minimum(self.joint_high, np.pi)
        if self.distracting:
            geom = lambda name: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)  # noqa: E731
            self._tiles = np.array([geom(f"tile_{i}_{j}") for i in range(TILES) for j in range(TILES)])
            self._arm = np.array([geom(name) for name in ARM_GEOMS])
            self._decoys = np.array([geom(f"decoy_{k}") for k in range(DECOYS)])
            self._arm_rgba = self.model.geom_rgba[self._arm].copy()
            self._cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
            self._cam_pos = self.model.cam_pos[self._cam_id].copy()

        n = self.model.nq
        self.action_space = spaces.Box(-1.0, 1.0, shape=(n,), dtype=np.float32)
        self.observation_space = spaces.Dict(
            {
                "pixels": spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8),
                "proprio": spaces.Box(
                    np.concatenate(
                        [np.maximum(self.joint_low - 0.5, -MAX_ANGLE), np.full(n, -MAX_SPEED)]
                    ).astype(np.float32),
                    np.concatenate(
                        [np.minimum(self.joint_high + 0.5, MAX_ANGLE), np.full(n, MAX_SPEED)]
                    ).astype(np.float32),
                    dtype=np.float32,
                ),
            }
        )
        self.goal_qpos = np.zeros(n)
        self.goal_ee = forward_kinematics(self.goal_qpos)

    # ----------------------------------------------------------------------------------- helpers
    def ee_pos(self) -> np.ndarray:
        """Current end-effector ``xy`` (m)."""
        return self.data.site_xpos[self._fingertip, :2].copy()

    def set_state(self, qpos: np.ndarray, qvel: np.ndarray | None = None) -> None:
        """Teleport the arm (servo targets follow; torques are zeroed), e.g. to replay a recorded state."""
        qpos = self._write_state(qpos, qvel)
        self.data.ctrl[:] = qpos if self.control == "position" else 0.0
        mujoco.mj_forward(self.model, self.data)

    def controls(self, qpos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The controls an env step sets for ``action [..., n]`` at joint angles ``qpos [..., n]``: the servo
        targets ``qpos + action * max_delta`` clipped to the joint ranges, or (torque) the action itself, in
        units of the motors' gear. The true-dynamics oracle simulates with it too."""
        if self.control == "position":
            return np.clip(qpos + action * self.max_delta, self.joint_low, self.joint_high)
        return action

    def set_goal(self, goal_qpos: np.ndarray) -> None:
        """Use ``goal_qpos`` (joint angles within the joint ranges) as the goal."""
        goal_qpos = np.asarray(goal_qpos, dtype=np.float64)
        if goal_qpos.shape != (self.model.nq,):
            raise ValueError(f"goal_qpos has shape {goal_qpos.shape}; expected ({self.model.nq},)")
        if np.any(goal_qpos < self.joint_low) or np.any(goal_qpos > self.joint_high):
            raise ValueError(
                f"goal_qpos={goal_qpos.tolist()} is outside the joint ranges "
                f"[{self.joint_low.tolist()}, {self.joint_high.tolist()}]: it would not be reachable"
            )
        self.goal_qpos = goal_qpos.copy()
        self.goal_ee = forward_kinematics(goal_qpos)

    def hindsight_success(self, states: np.ndarray, goal_states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The task's own success rule between recorded states, as if ``goal_states`` were the goal
        (hindsight relabelling): states ``[..., >= n]`` as :meth:`get_state` gives them (joint angles
        first) -> (end-effector distance in m ``[...]``, ``distance <= success_threshold`` ``[...]``)."""
        n = self.model.nq
        a, b = np.asarray(states, dtype=np.float64), np.asarray(goal_states, dtype=np.float64)
        if a.shape[-1] < n or b.shape[-1] < n:
            raise ValueError(f"states of shape {a.shape} and {b.shape}; expected [..., >= {n}] (qpos first)")
        distance = np.linalg.norm(forward_kinematics(a[..., :n]) - forward_kinematics(b[..., :n]), axis=-1)
        return distance, distance <= self.success_threshold

    def goal_state(self) -> np.ndarray:
        """The goal as a state: ``(goal joint angles [n], goal end-effector xy [2])``."""
        return np.concatenate([self.goal_qpos, self.goal_ee])

    def render_goal(self, size: int | None = None) -> np.ndarray:
        """The scene rendered with the arm at the goal pose, uint8 ``[size, size, 3]`` (default obs size)."""
        self._goal_data.qpos[:] = self.goal_qpos
        self._goal_data.qvel[:] = 0.0
        mujoco.mj_forward(self.model, self._goal_data)
        return self._render_data(self._goal_data, size or self.image_size)

    def _randomise_scene(self) -> None:
        """Draw this episode's distractions (``distracting`` only) from the env's seeded RNG."""
        rng, m = self.np_random, self.model
        m.geom_rgba[self._tiles, :3] = rng.uniform(*TILE_COLOUR, size=(len(self._tiles), 3))
        jitter = lambda rgba: np.clip(rgba + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 1)  # noqa: E731
        for k, g in enumerate(self._arm):
            m.geom_rgba[g, :3] = jitter(self._arm_rgba[k, :3])
        tip = self._arm_rgba[ARM_GEOMS.index("fingertip"), :3]
        for g in self._decoys:  # anywhere the fingertip could be: radius in [0.02, 0.2] m
            r, a = np.sqrt(rng.uniform(0.1**2, 1.0)) * REACH, rng.uniform(-np.pi, np.pi)
            m.geom_pos[g, :2] = r * np.cos(a), r * np.sin(a)
            m.geom_rgba[g, :3] = jitter(tip)
        m.cam_pos[self._cam_id, :2] = self._cam_pos[:2] + rng.uniform(-CAMERA_SHIFT, CAMERA_SHIFT, 2)

    def _sample_qpos(self) -> np.ndarray:
        return self.np_random.uniform(self.sample_low, self.sample_high)

    def _get_obs(self) -> dict[str, np.ndarray]:
        proprio = np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float32)
        return {"pixels": self._render_data(self.data, self.image_size), "proprio": proprio}

    def _get_info(self) -> dict[str, Any]:
        ee = self.ee_pos()
        distance = float(np.linalg.norm(ee - self.goal_ee))
        return {
            "is_success": distance <= self.success_threshold,
            "distance": distance,
            "ee_pos": ee,
            "goal_ee": self.goal_ee.copy(),
        }

    # ------------------------------------------------------------------------------ gymnasium api
    def reset_model(self, options: dict[str, Any]) -> None:
        """Sample the start and a goal at least ``min_goal_distance`` away (or take both from options)."""
        qpos = options.get("qpos")
        self.set_state(self._sample_qpos() if qpos is None else qpos)
        if options.get("goal_qpos") is not None:
            self.set_goal(options["goal_qpos"])
            return
        for _ in range(1000):
            goal = self._sample_qpos()
            if np.linalg.norm(forward_kinematics(goal) - self.ee_pos()) >= self.min_goal_distance:
                break
        self.set_goal(goal)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if self.distracting:
            self._randomise_scene()
        mujoco.mj_resetData(self.model, self.data)
        self.reset_model(options or {})
        return self._get_obs(), self._get_info()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action)
        self.data.ctrl[:] = self.controls(self.data.qpos, action)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        obs, info = self._get_obs(), self._get_info()
        reward_dist = -info["distance"]
        reward_ctrl = -0.01 * float(np.square(action).sum())
        info.update(reward_dist=reward_dist, reward_ctrl=reward_ctrl)
        return obs, reward_dist + reward_ctrl, False, False, info
