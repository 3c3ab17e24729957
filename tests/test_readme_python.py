"""The README's "Use it from Python" block runs as written, on the shipped checkpoint, and plans as
scripts/plan.py does: it reaches at least 4 of its 5 held-out goals."""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest

from tests.conftest import REPO


def readme_python_block() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


@pytest.mark.slow  # ~90 s: five planned episodes; CI runs it (.ci/run: -m slow)
def test_readme_python_snippet_reaches_goals(monkeypatch):
    monkeypatch.chdir(REPO)  # the snippet names checkpoints/reach relative to the repo, as a user would
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_python_block(), "README.md", "exec"), namespace)  # noqa: S102
    namespace["env"].close()
    assert namespace["reached"] >= 4, out.getvalue()
    assert re.search(r"reached \d/5 goals", out.getvalue())
    assert os.getcwd() == str(REPO)


@pytest.mark.slow  # ~40 s; CI runs it (.ci/run: -m slow)
def test_readme_stable_baselines3_block_runs_and_plans(monkeypatch):
    """The README's SB3 block runs as written; the planner under SB3's evaluate_policy earns more env
    reward (minus the distance to the goal) than random actions on the same kind of episodes."""
    import numpy as np
    from stable_baselines3.common.evaluation import evaluate_policy

    blocks = re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    assert len(blocks) >= 2, "README.md has no stable-baselines3 ```python block"
    monkeypatch.chdir(REPO)
    namespace: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["sac"].num_timesteps == 200 and np.isfinite(namespace["mean_reward"])
    vec = namespace["vec"]

    class Random:
        def predict(self, obs, state=None, episode_start=None, deterministic=False):
            return np.stack([vec.action_space.sample() for _ in range(vec.num_envs)]), None

    vec.action_space.seed(0)
    random_reward, _ = evaluate_policy(Random(), vec, n_eval_episodes=2)
    assert namespace["mean_reward"] > random_reward, (namespace["mean_reward"], random_reward)
    vec.close()
    namespace["env"].close()
