"""True-state baselines: planners given the real state and a perfect model of the task.

The "oracle" of the evaluation protocol plans with the same planner and budget as the JEPA agent, but in
the true state, with a perfect model and a true-state cost, reduced over the imagined steps as the world
model's cost is (``cost.reduction``, ``cost.discount``, ``cost.action_weight``: the same
:class:`~jepa_agent.costs.CostConfig`). It shows what planning with a perfect model reaches on the budget.

* Reach (:class:`ReachKinematics`): the arm's known kinematics (servo targets ``q + a * max_delta``,
  clipped to the joint ranges; the servos track them within ~1% per step); cost: the end-effector distance.
* Torque reach (:class:`ReachSimulator`): the simulator itself, as the arm coasts between steps (the
  kinematic model holds only for the position servos); cost: the end-effector distance.
* Push (:class:`PushSimulator`): the simulator itself. Each candidate action sequence is rolled out in
  MuJoCo from the env's current state, exactly as the env steps (``mujoco.rollout``, one batched call per
  env step); cost: the way still to go (:class:`PushStateCost`), as the plain pose error is myopic.

:func:`oracle_model` picks the one for an env (:data:`ORACLES`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import torch
from mujoco import rollout as mj_rollout
from torch import Tensor

from envs.push import PushEnv
from envs.push_expert import PUSHER_RADIUS, T_CORNERS
from envs.reach import LINK_LENGTHS, ReachEnv
from jepa_agent.costs import Cost, CostConfig, check_reduction, reduce_steps, with_action_terms
from jepa_agent.utils import check_int


class ReachKinematics:
    """Batched kinematic model of ``JepaAgent/Reach-v0`` (a ``PlanningModel``); state: joint angles."""

    def __init__(self, max_delta: float, joint_low: np.ndarray, joint_high: np.ndarray, device="cpu") -> None:
        self.max_delta = float(max_delta)
        self.device = torch.device(device)
        self.low = torch.as_tensor(joint_low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(joint_high, dtype=torch.float32, device=self.device)
        self.action_dim = int(self.low.numel())

    @classmethod
    def from_env(cls, env, device="cpu") -> ReachKinematics:
        u = env.unwrapped
        return cls(u.max_delta, u.joint_low, u.joint_high, device=device)

    def encode(self, obs: dict[str, np.ndarray]) -> Tensor:
        """The true state of an observation: its joint angles (first half of proprio)."""
        proprio = torch.as_tensor(obs["proprio"], dtype=torch.float32, device=self.device)
        return proprio[: self.action_dim]

    def encode_goal(self, goal: dict[str, np.ndarray]) -> Tensor:
        """The goal's end-effector ``xy`` (the last two entries of the env's goal state)."""
        return torch.as_tensor(goal["state"][-2:], dtype=torch.float32, device=self.device)

    def context(self, states: list[Tensor], actions: list[Tensor]) -> Tensor:
        """The true state is Markov: only the latest joint angles matter."""
        return states[-1]

    def cost(self, goal_ee: Tensor, **options: Any) -> Cost:
        """True end-effector distance (metres) to ``goal_ee``, reduced over the steps like the world
        model's cost, plus the same action terms: ``options`` are :class:`CostConfig`'s fields (checked
        there). ``space`` and ``metric`` choose how a *world model* compares latents; the oracle always
        measures the true distance."""
        c = CostConfig(**options)
        cost = EndEffectorCost(goal_ee, reduction=c.reduction, discount=c.discount, device=self.device)
        return with_action_terms(cost, c.action_weight, c.smooth_weight)

    def rollout(self, q0: Tensor, actions: Tensor) -> Tensor:
        """Joint angles after each action: ``q0 [n]``, ``actions [S, H, n]`` -> ``[S, H, n]``."""
        q = q0.expand(actions.shape[0], -1)
        out = []
        for t in range(actions.shape[1]):  # H is small (the horizon); batched over samples
            q = torch.minimum(torch.maximum(q + actions[:, t] * self.max_delta, self.low), self.high)
            out.append(q)
        return torch.stack(out, dim=1)


def forward_kinematics_torch(q: Tensor) -> Tensor:
    """End-effector ``xy`` for joint angles ``q [..., 2]`` -> ``[..., 2]`` (torch twin of envs.reach)."""
    l1, l2 = LINK_LENGTHS
    q1, q12 = q[..., 0], q[..., 0] + q[..., 1]
    return torch.stack(
        [l1 * torch.cos(q1) + l2 * torch.cos(q12), l1 * torch.sin(q1) + l2 * torch.sin(q12)], -1
    )


class EndEffectorCost(Cost):
    """True-state cost: end-effector distance (m) to the goal per imagined step, reduced over the steps
    (``reduction="all"``: the discounted mean, so arriving early and staying scores best; ``"final"``: the
    last step only)."""

    def __init__(self, goal_ee: np.ndarray | Tensor, reduction: str = CostConfig.reduction,
                 discount: float = CostConfig.discount, device="cpu") -> None:  # fmt: skip
        check_reduction(reduction)
        self.goal_ee = torch.as_tensor(goal_ee, dtype=torch.float32, device=device)  # [2]
        self.reduction, self.discount = reduction, float(discount)

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred [S, H, 2]`` joint angles -> cost ``[S]``."""
        dist = (forward_kinematics_torch(pred) - self.goal_ee).norm(dim=-1)  # [S, H]
        return reduce_steps(dist, self.reduction, self.discount)


# ------------------------------------------------------------------------------------------ simulators
STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS  # time, qpos, qvel (and activations, none here)


class SimulatorModel:
    """A task's own simulator as a ``PlanningModel``: the true-dynamics oracle, valid for any dynamics.

    Its state is the full MuJoCo physics state of the env (``mj_getState``, ``mjSTATE_FULLPHYSICS``),
    read from the env at :meth:`encode`: ``obs`` must be that env's latest observation (checked on the
    first ``check_dims`` entries of its proprio against ``qpos``). Rollouts copy that state into ``threads``
    scratch ``MjData`` and step every candidate as the env steps (:meth:`controls`, then ``frame_skip``
    physics steps; ``mujoco.rollout``, one batched call per env step). A subclass says how an action
    becomes controls, and what the cost is.

    ``action_chunk`` > 1: each imagined step is that many env steps, its action their env actions
    concatenated (``action_dim`` = ``action_chunk`` x the env's), the pose read at its end: the JEPA
    agent's macro-actions on the same budget (:class:`~jepa_agent.agent.MPCAgent`).
    """

    check_dims = 2

    def __init__(self, env: gym.Env, device: Any = "cpu", threads: int = 1, action_chunk: int = 1) -> None:
        threads = check_int("threads", threads, 1, "threads stepping the candidates")
        u = env.unwrapped
        self.env, self.model = u, u.model
        self.device = torch.device(device)
        self.frame_skip = u.frame_skip
        self.action_chunk = check_int("action_chunk", action_chunk, 1, "env steps per planned step")
        self.env_action_dim = int(u.action_space.shape[0])
        self.action_dim = self.action_chunk * self.env_action_dim
        self._datas = [mujoco.MjData(self.model) for _ in range(threads)]
        self._qpos = slice(1, 1 + self.model.nq)  # after time in an mjSTATE_FULLPHYSICS vector

    @classmethod
    def from_env(
        cls, env: gym.Env, device: Any = "cpu", action_chunk: int = 1, threads: int = 1
    ) -> SimulatorModel:
        return cls(env, device=device, threads=threads, action_chunk=action_chunk)

    def encode(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """The env's full physics state ``[nstate]`` (``obs`` must be its latest observation)."""
        data, n = self.env.data, self.check_dims
        seen = np.asarray(obs["proprio"][:n], np.float64)
        if np.abs(seen - data.qpos[:n]).max() > 1e-4:
            raise ValueError(
                f"the oracle reads its env's simulator, but obs has qpos[:{n}] = {seen.tolist()} and the "
                f"simulator {data.qpos[:n].tolist()}: pass the env's latest observation"
            )
        state = np.empty(mujoco.mj_stateSize(self.model, STATE_SPEC))
        mujoco.mj_getState(self.model, data, state, STATE_SPEC)
        return state

    def context(self, states: list[np.ndarray], actions: list[Tensor]) -> np.ndarray:
        """The simulator state is Markov: only the latest matters."""
        return states[-1]

    def controls(self, qpos: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The controls the env sets for ``action [S, A]`` at joint positions ``qpos [S, nq]``: the env's own
        mapping (its ``controls``), so the rollouts step exactly as the env does."""
        return self.env.controls(qpos, action)

    def rollout(self, state: np.ndarray, actions: Tensor) -> Tensor:
        """Joint positions after each (macro-)action: ``state [nstate]``, ``actions [S, H, action_dim]``
        -> ``[S, H, nq]``, simulated."""
        S, H = actions.shape[:2]
        k = self.action_chunk
        a = actions.detach().to("cpu", torch.float64).numpy().reshape(S, H * k, self.env_action_dim)
        states = np.repeat(np.asarray(state, np.float64)[None], S, axis=0)  # [S, nstate]
        poses = np.empty((S, H, self.model.nq))
        for t in range(H * k):  # H x chunk env steps (a few dozen); batched over samples
            ctrl = self.controls(states[:, self._qpos], np.clip(a[:, t], -1.0, 1.0))
            out, _ = mj_rollout.rollout(self.model, self._datas, states, ctrl[:, None], nstep=self.frame_skip)
            states = out[:, -1]  # [S, nstate]
            if (t + 1) % k == 0:
                poses[:, t // k] = states[:, self._qpos]
        return torch.as_tensor(poses, dtype=torch.float32, device=self.device)


class ReachSimulator(SimulatorModel):
    """True-dynamics model of the torque-driven reach (``JepaAgent/ReachTorque-v0``): the env's simulator
    (the arm coasts, so :class:`ReachKinematics` does not hold); cost: the end-effector distance, as for
    the position arm. Valid for the position arm as well, only slower than its kinematics."""

    def __init__(self, env: gym.Env, device: Any = "cpu", threads: int = 1, action_chunk: int = 1) -> None:
        if not isinstance(env.unwrapped, ReachEnv):
            raise ValueError(
                f"ReachSimulator needs a JepaAgent/Reach env; got {type(env.unwrapped).__name__}"
            )
        super().__init__(env, device, threads, action_chunk)

    encode_goal = ReachKinematics.encode_goal  # the goal's end-effector xy, and its distance as the cost
    cost = ReachKinematics.cost


class PushSimulator(SimulatorModel):
    """True-state model of ``JepaAgent/Push-v0``: the env's own simulator (observations hold no block pose,
    so the oracle looks at the simulator). Actions step as the env steps them: servo target
    ``pusher xy + a * max_delta`` clipped to the pusher's range. Its rollouts give the poses ``(pusher x, y,
    block x, y, yaw)``; cost: :class:`PushStateCost`."""

    def __init__(self, env: gym.Env, device: Any = "cpu", threads: int = 1, action_chunk: int = 1) -> None:
        u = env.unwrapped
        if not isinstance(u, PushEnv):
            raise ValueError(f"PushSimulator needs JepaAgent/Push-v0; got {type(u).__name__}")
        super().__init__(env, device, threads, action_chunk)
        self.pos_scale, self.yaw_scale = u.success_threshold, u.yaw_threshold

    def encode_goal(self, goal: dict[str, np.ndarray]) -> Tensor:
        """The goal state ``(pusher x, y, block x, y, yaw)`` ``[5]``."""
        return torch.as_tensor(goal["state"], dtype=torch.float32, device=self.device)

    def cost(self, goal_state: Tensor, **options: Any) -> Cost:
        """:class:`PushStateCost` towards ``goal_state``, reduced over the steps like the world model's cost,
        plus the same action terms: ``options`` are :class:`CostConfig`'s fields (checked there)."""
        c = CostConfig(**options)
        cost = PushStateCost(goal_state, self.pos_scale, self.yaw_scale, c.reduction, c.discount, self.device)
        return with_action_terms(cost, c.action_weight, c.smooth_weight)


def way_round(a: Tensor, b: Tensor, centre: Tensor, radius: float) -> Tensor:
    """Length (m) of the way from ``a`` to ``b`` (``[..., 2]``) keeping ``radius`` from ``centre``: straight
    when the segment stays that far, else in to the circle, along its arc, and out -> ``[...]``."""
    ra, rb = a - centre, b - centre
    seg = rb - ra
    t = (-(ra * seg).sum(-1) / (seg * seg).sum(-1).clamp(min=1e-12)).clamp(0, 1)
    blocked = (ra + t[..., None] * seg).norm(dim=-1) < radius  # the segment's closest point is too close
    turn = torch.atan2(rb[..., 1], rb[..., 0]) - torch.atan2(ra[..., 1], ra[..., 0])
    turn = (torch.remainder(turn + torch.pi, 2 * torch.pi) - torch.pi).abs()
    arc = radius * turn + (ra.norm(dim=-1) - radius).abs() + (rb.norm(dim=-1) - radius).abs()
    return torch.where(blocked, arc, seg.norm(dim=-1))


def push_point(centre: Tensor, yaw: Tensor, u: Tensor) -> Tensor:
    """Where the pusher stands to push the T at ``(centre [..., 2], yaw [...])`` along ``u [..., 2]``
    (unit): behind its centre of mass by the T's extent along ``-u`` plus the pusher's radius."""
    corners = torch.as_tensor(T_CORNERS, dtype=centre.dtype, device=centre.device)  # [8, 2] block frame
    c, s = torch.cos(yaw)[..., None], torch.sin(yaw)[..., None]
    wx, wy = c * corners[:, 0] - s * corners[:, 1], s * corners[:, 0] + c * corners[:, 1]  # [..., 8]
    extent = (-(wx * u[..., :1] + wy * u[..., 1:])).amax(-1)  # [...]: the T's reach along -u
    return centre - u * (extent + PUSHER_RADIUS)[..., None]


class PushStateCost(Cost):
    """True-state cost for push: an estimate of the way still to go, per imagined step, reduced over the
    steps like the world model's cost.

    The success rule read as a distance (pusher and block error, yaw error) is myopic: a planner of a few
    steps moves the pusher onto its goal and leaves the block where it is (measured: 0 of 3 goals). So
    the cost counts, in metres over the success threshold, the block's distance to its goal plus
    ``travel_weight`` x the pusher's way still to go: to the push point behind the block (opposite its
    goal) and, after the push, from the goal's push point to the goal's pusher, both round the block (an
    arc of ``radius`` when the straight way passes closer to its centre); as the block arrives (within
    2 thresholds) this blends into the pusher's way round to its own goal. ``yaw_weight`` x the yaw error
    over its threshold is added. Measured: 4 of 10 offset goals reached with plan.py's budget (CEM 200 x 10,
    horizon 5). The weights were picked on 8 goals with CEM 100 x 5 (4-5 reached; ``yaw_weight=1``: 3-4,
    ``yaw_weight=1, travel_weight=1``: 1).
    """

    def __init__(self, goal_state: np.ndarray | Tensor, pos_scale: float, yaw_scale: float,
                 reduction: str = CostConfig.reduction, discount: float = CostConfig.discount,
                 device: Any = "cpu", travel_weight: float = 0.5, yaw_weight: float = 2.0,
                 radius: float = 0.08) -> None:  # fmt: skip
        check_reduction(reduction)
        self.goal = torch.as_tensor(goal_state, dtype=torch.float32, device=device)  # [5]
        self.pos_scale, self.yaw_scale = float(pos_scale), float(yaw_scale)
        self.reduction, self.discount = reduction, float(discount)
        self.travel_weight, self.yaw_weight, self.radius = float(travel_weight), float(yaw_weight), radius

    def __call__(self, pred: Tensor, actions: Tensor) -> Tensor:
        """``pred [S, H, 5]`` poses (pusher xy, block xy, yaw) -> cost ``[S]``."""
        pusher, block, yaw = pred[..., :2], pred[..., 2:4], pred[..., 4]
        goal_pusher, goal_block = self.goal[:2].expand_as(pusher), self.goal[2:4].expand_as(block)
        to_goal = goal_block - block
        distance = to_goal.norm(dim=-1)  # [S, H]
        u = to_goal / distance[..., None].clamp(min=1e-6)
        before = way_round(pusher, push_point(block, yaw, u), block, self.radius)
        after = way_round(push_point(goal_block, self.goal[4].expand_as(yaw), u), goal_pusher, goal_block,
                          self.radius)  # fmt: skip
        far = (distance / (2 * self.pos_scale)).clamp(max=1.0)  # 1 from 2 thresholds away, 0 at the goal
        travel = far * (before + after) + (1 - far) * way_round(pusher, goal_pusher, block, self.radius)
        yaw_error = (torch.remainder(yaw - self.goal[4] + torch.pi, 2 * torch.pi) - torch.pi).abs()
        d = (
            distance + self.travel_weight * travel
        ) / self.pos_scale + self.yaw_weight * yaw_error / self.yaw_scale
        return reduce_steps(d, self.reduction, self.discount)


# ----------------------------------------------------------------- a world model's cost, true futures
class SimulatorImagination:
    """A world model's cost on the true futures: the diagnostic that splits a planning failure between
    the world model's imagination and its cost (``plan.py dynamics=simulator``).

    Every candidate is rolled out in the env's simulator (:class:`SimulatorModel`, in the world model's
    macro-actions), each imagined step's pose is rendered as the env renders it
    (``render_poses``) and encoded by the world model, and the world model's own cost scores those
    latents. Where this plans and the world model does not, imagination is what fails; where this fails
    too, the cost (the planning space) does. Slow: every candidate step is a render and an encoder pass.

    Args:
        world_model: a :class:`~jepa_agent.world_model.WorldModel` (one, not an ensemble): its encoder,
            cost and ``action_chunk`` are used, its predictor is not.
        env: the env the agent acts in (a task with a :data:`SIMULATORS` entry and ``render_poses``).
    """

    def __init__(self, world_model: Any, env: gym.Env) -> None:
        u = env.unwrapped
        make = SIMULATORS.get(type(u))
        if make is None or not hasattr(u, "render_poses"):
            raise ValueError(
                f"dynamics=simulator needs a task whose simulator the library can roll out and render; "
                f"{type(u).__name__} is not one of {[c.__name__ for c in SIMULATORS]}"
            )
        if not hasattr(world_model, "encode_pixels"):
            raise ValueError(
                f"dynamics=simulator encodes rendered futures with one world model; got "
                f"{type(world_model).__name__}: pass one checkpoint"
            )
        self.world_model, self.env = world_model, u
        self.simulator = make(env, device="cpu", action_chunk=world_model.action_chunk)
        self.action_dim, self.action_chunk = world_model.action_dim, world_model.action_chunk
        self.anchor_trained = getattr(world_model, "anchor_trained", False)  # encode as its cost reads
        self._state: np.ndarray | None = None

    def encode(self, obs: dict[str, np.ndarray], **options: Any) -> Any:
        """The world model's encoding of ``obs`` (what its cost reads); the simulator's state is kept."""
        self._state = self.simulator.encode(obs)
        return self.world_model.encode(obs, **options)

    def encode_goal(self, goal: dict[str, np.ndarray], **options: Any) -> Any:
        return self.world_model.encode_goal(goal, **options)

    def context(self, states: list[Any], actions: list[Tensor]) -> np.ndarray:
        """The simulator's state at the latest observation (true dynamics are Markov)."""
        return self._state

    def cost(self, goal: Any, **options: Any) -> Cost:
        return self.world_model.cost(goal, **options)

    def rollout(self, state: np.ndarray, actions: Tensor, project: Any = None) -> Tensor:
        """Simulate ``actions [S, H, action_dim]``, render and encode each step -> latents ``[S, H, N, D]``
        (or ``project`` of each flattened frame, as :meth:`WorldModel.rollout` gives a fused cost)."""
        poses = self.simulator.rollout(state, actions).cpu().numpy()  # [S, H, nq]
        S, H = poses.shape[:2]
        frames = self.env.render_poses(poses.reshape(S * H, -1))  # [S*H, px, px, 3]
        z = self.world_model.encode_pixels(frames).to(actions.device)  # [S*H, N, D]
        z = z.reshape(S, H, *z.shape[1:])
        return z if project is None else project(z.flatten(2))


# ------------------------------------------------------------------------------------------- dispatch
def reach_oracle(
    env: gym.Env, device: Any = "cpu", action_chunk: int = 1, threads: int = 1
) -> ReachKinematics | ReachSimulator:
    """The position arm's kinematics (valid only there: its servos track the target within ~1% per step),
    else the simulator (the torque arm coasts: only the true dynamics predict it). Macro-actions
    (``action_chunk`` > 1) step the simulator, for either arm, on ``threads`` threads."""
    if env.unwrapped.control == "position" and action_chunk == 1:
        return ReachKinematics.from_env(env, device=device)
    return ReachSimulator.from_env(env, device=device, action_chunk=action_chunk, threads=threads)


SIMULATORS: dict[type, Callable[..., SimulatorModel]] = {  # env class -> its simulator as a model
    ReachEnv: ReachSimulator.from_env,
    PushEnv: PushSimulator.from_env,
}
ORACLES: dict[type, Callable[..., Any]] = {  # (env, device, action_chunk, threads) -> planning model
    ReachEnv: reach_oracle,
    PushEnv: PushSimulator.from_env,
}


def oracle_model(env: gym.Env, device: Any = "cpu", action_chunk: int = 1, threads: int = 1) -> Any:
    """The true-state planning model of ``env``'s task (:data:`ORACLES`, by env class), planning
    macro-actions of ``action_chunk`` env steps (a world model's ``action_chunk``, for the same budget).
    A simulator oracle steps its candidates on ``threads`` threads (``mujoco.rollout``'s pool; the
    rollouts are the same on any number: each candidate is its own simulation).

    Raises:
        ValueError: the env has no oracle (names it and the tasks that have one), or ``threads`` is not an
            int >= 1.
    """
    threads = check_int("threads", threads, 1, "threads stepping the simulator oracle's candidates")
    u = env.unwrapped
    make = ORACLES.get(type(u))
    if make is None:
        name = env.spec.id if env.spec is not None else type(u).__name__
        raise ValueError(f"no true-state oracle for {name}; available for {[c.__name__ for c in ORACLES]}")
    return make(env, device=device, action_chunk=action_chunk, threads=threads)
