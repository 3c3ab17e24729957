"""Pure, batched planners over ``(rollout_fn, cost_fn)``: CEM (default), MPPI, gradient descent."""
