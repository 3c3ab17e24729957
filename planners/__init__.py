"""Pure, batched planners over ``(rollout_fn, cost_fn)``: CEM (default), MPPI and gradient descent.

Pick one with Hydra (``planner=cem|mppi|gd``)::

    planner = hydra.utils.instantiate(cfg.planner, action_dim=env.action_space.shape[0])
    result = planner.plan(rollout_fn, cost_fn, z0, init_mean=shift_plan(prev.mean))


The functional forms are ``planners.cem.cem``, ``planners.mppi.mppi`` and ``planners.gd.gd`` (not
re-exported here: a package attribute named like a submodule would hide it from Hydra's ``_target_``).
"""

from planners.base import Planner, PlanResult, shift_plan
from planners.cem import CEMPlanner
from planners.gd import GDPlanner
from planners.mppi import MPPIPlanner

__all__ = ["CEMPlanner", "GDPlanner", "MPPIPlanner", "PlanResult", "Planner", "shift_plan"]
