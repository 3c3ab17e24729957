"""What our MuJoCo tasks share: one model seen by a fixed top-down camera, rendered headless.

:class:`TopDownEnv` holds the argument checks every task makes (image size, frame skip, render mode), the
cached ``mujoco.Renderer`` per image size (a renderer per env, never Gymnasium's shared one: see
MACHINE-NOTES), the control period, action validation, ``render`` and ``close``. The tasks
(``envs/reach.py``, ``envs/push.py``) add their model, spaces, goals and reward.
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")  # before importing mujoco; respect a user's choice
import mujoco  # noqa: E402


class TopDownEnv(gym.Env):
    """Base of the pixel tasks: call :meth:`_check_common` first in ``__init__``, then, once ``self.model``
    exists, :meth:`_setup_rendering`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    model: mujoco.MjModel
    data: mujoco.MjData

    def _check_common(
        self, image_size: int, frame_skip: int, render_mode: str | None, render_size: int | None
    ) -> None:
        """Validate and store the arguments every task takes (one clear error per bad value)."""
        if not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 512:
            raise ValueError(f"image_size={image_size!r}: expected an int in [8, 512]")
        if not isinstance(frame_skip, (int, np.integer)) or frame_skip < 1:
            raise ValueError(f"frame_skip={frame_skip!r}: expected an int >= 1")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected one of {self.metadata['render_modes']}")
        self.image_size = int(image_size)
        self.frame_skip = int(frame_skip)
        self.render_mode = render_mode
        self.render_size = int(render_size or image_size)

    def _setup_rendering(self, camera: str, asset_name: str) -> None:
        """Check the camera exists in ``self.model``; renderers are made on first use, one per size."""
        self._camera = camera
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"camera={camera!r} is not in {asset_name}; expected 'top'")
        self._renderers: dict[int, mujoco.Renderer] = {}
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}

    @property
    def dt(self) -> float:
        """Seconds of simulated time per env step."""
        return self.model.opt.timestep * self.frame_skip

    def _render_data(self, data: mujoco.MjData, size: int) -> np.ndarray:
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = self._renderers[size] = mujoco.Renderer(self.model, size, size)
        renderer.update_scene(data, camera=self._camera)
        return renderer.render().copy()  # uint8 [size, size, 3]

    def render_poses(self, qpos: np.ndarray) -> np.ndarray:
        """Observation frames of the scene at poses ``qpos [M, nq]`` -> uint8 ``[M, S, S, 3]`` (S: the
        observation size), rendered in a scratch copy of the simulation (the env's own state is untouched):
        what the env would show at each pose."""
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.ndim != 2 or qpos.shape[1] != self.model.nq:
            raise ValueError(f"qpos has shape {qpos.shape}; expected [M, {self.model.nq}]")
        scratch = getattr(self, "_pose_data", None)
        if scratch is None:
            scratch = self._pose_data = mujoco.MjData(self.model)
        frames = np.empty((len(qpos), self.image_size, self.image_size, 3), np.uint8)
        for i, q in enumerate(qpos):  # one render per pose: the renderer takes one scene at a time
            scratch.qpos[:] = q
            scratch.qvel[:] = 0.0
            mujoco.mj_forward(self.model, scratch)
            frames[i] = self._render_data(scratch, self.image_size)
        return frames

    def get_state(self) -> np.ndarray:
        """Full simulator state ``(qpos, qvel)`` as float64 ``[nq + nv]``."""
        return np.concatenate([self.data.qpos, self.data.qvel]).astype(np.float64)

    def _write_state(self, qpos: np.ndarray, qvel: np.ndarray | None) -> np.ndarray:
        """Write ``qpos`` (checked against ``nq``) and ``qvel`` (0 when None) into ``self.data``; returns
        ``qpos`` as float64. The task then sets its servo targets and calls ``mj_forward``."""
        qpos = np.asarray(qpos, dtype=np.float64)
        if qpos.shape != (self.model.nq,):
            raise ValueError(f"qpos has shape {qpos.shape}; expected ({self.model.nq},)")
        self.data.qpos[:] = qpos
        self.data.qvel[:] = 0.0 if qvel is None else np.asarray(qvel, dtype=np.float64)
        return qpos

    def _checked_action(self, action: np.ndarray) -> np.ndarray:
        """``action`` as float64 in the action space's shape, finite (else one clear error), clipped to
        [-1, 1]."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action has shape {action.shape}; expected {self.action_space.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action={action.tolist()} is not finite")
        return np.clip(action, -1.0, 1.0)

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._render_data(self.data, self.render_size)
        return None

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
