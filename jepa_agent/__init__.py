"""jepa-agent: planning with V-JEPA world models.

Modules follow LeCun's autonomous-agent blueprint: perception (``models.vit``), world model
(``world_model``), cost (``costs``), actor (``planners`` + ``agent``), short-term memory (the agent's
latent history) and configurator (``configs/`` + ``config``).
"""

__version__ = "0.1.0"
