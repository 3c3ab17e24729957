"""The RL bridge: the world model and the planner at stable-baselines3's extension points.

* :class:`LatentGoalEnv`: a pixel task as a goal env in the planning space (HER-ready ``compute_reward``).
* :class:`VecLatentEncode`: the same observations and rewards over a VecEnv, one encoder call per step.
* :class:`WorldModelVecEnv`: the same observations and rewards in imagination: the world model as a VecEnv,
  started from encoded recorded episodes (:class:`LatentStarts`), one predictor call per step.
* :class:`JepaFeaturesExtractor`: the encoder as an SB3 features extractor (PPO, fine-tuning).
* :class:`GoalImageObservation`: the goal image as an observation entry (``goal_pixels``).
* :class:`PlannerPolicy`: the MPC agent behind SB3's ``predict`` (``evaluate_policy``).
* :class:`PlanningSpace`: the planning cost's space as numpy features, distance and reward.
* :class:`StateGoalEnv`: the task's true state and goal as a goal env (the labelled baseline).
* :func:`train_rl` (:class:`RLConfig`): one arm of the RL comparison, trained and evaluated on held-out goals
  (``scripts/rl.py``); :func:`plot_curves` draws the arms' curves in one figure; :func:`save_policy` /
  :func:`load_policy` keep a policy as safetensors + JSON (no pickle).
* :class:`DistilledPolicy` (:func:`train_distilled`): a goal-conditioned policy learnt by hindsight inverse
  dynamics on recorded episodes (``scripts/distill.py``); :class:`GoalImagePolicy` puts the encoder in front.
"""

from jepa_agent.rl.curves import evaluate_success, plot_curves
from jepa_agent.rl.distill import DistilledPolicy, GoalImagePolicy, train_distilled
from jepa_agent.rl.extractor import JepaFeaturesExtractor
from jepa_agent.rl.goal_env import LatentGoalEnv
from jepa_agent.rl.goal_image import GOAL_KEY, GoalImageObservation
from jepa_agent.rl.imagination import LatentStarts, WorldModelVecEnv
from jepa_agent.rl.planner_policy import PlannerPolicy
from jepa_agent.rl.policy_io import load_policy, save_policy
from jepa_agent.rl.reward_quality import calibrate_epsilon
from jepa_agent.rl.space import PlanningSpace, planning_projection
from jepa_agent.rl.state_env import StateGoalEnv
from jepa_agent.rl.train import RLConfig, VecTaskReward, train_rl
from jepa_agent.rl.vec_encode import VecLatentEncode

__all__ = [
    "DistilledPolicy",
    "GoalImagePolicy",
    "GOAL_KEY",
    "GoalImageObservation",
    "JepaFeaturesExtractor",
    "LatentGoalEnv",
    "LatentStarts",
    "PlannerPolicy",
    "PlanningSpace",
    "RLConfig",
    "StateGoalEnv",
    "VecLatentEncode",
    "VecTaskReward",
    "WorldModelVecEnv",
    "calibrate_epsilon",
    "evaluate_success",
    "train_distilled",
    "load_policy",
    "planning_projection",
    "plot_curves",
    "save_policy",
    "train_rl",
]
