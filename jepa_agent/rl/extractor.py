"""``JepaFeaturesExtractor``: the world model's frozen encoder as an SB3 features extractor.

For policies that see pixels: PPO / A2C (on-policy, where the extractor runs once per collected frame
and once per minibatch), or fine-tuning the encoder (``trainable=True``). For SAC on a frozen encoder use
:class:`~jepa_agent.rl.goal_env.LatentGoalEnv` instead: encoding in the env runs the ViT once per step,
while SAC runs its extractor on five batches per update, in three copies.

SB3 hands the extractor image observations as float ``[B, 3, S, S]`` in [0, 1]: ``VecTransposeImage``
makes uint8 ``[S, S, 3]`` images channel-first and ``preprocess_obs`` divides by 255
(``normalize_images=True``, SB3's default). Those are exactly the encoder's inputs. Each image key
becomes features of the chosen space (``latent``: the world model's latent state, flattened; ``auto`` /
``metric`` / ``readout``: the planning cost's head on it); every other key is flattened, and all are
concatenated.

Three SB3 behaviours are met here:

* **Freezing**: the pretrained modules do not require gradients unless ``trainable``.
* **Eval mode**: ``policy.train()`` / ``set_training_mode(True)`` reach every submodule; ``train()`` is
  overridden to keep the pretrained modules in eval mode whatever SB3 asks.
* **Orthogonal init** (PPO / A2C ``ortho_init=True``, the default): ``ActorCriticPolicy._build`` runs
  ``features_extractor.apply(init_weights)``, which would overwrite every ``nn.Linear`` / ``nn.Conv2d``
  of the encoder; ``apply`` is overridden to skip the pretrained modules.

Reloading: ``features_extractor_kwargs`` holds only the checkpoint path and plain options (picklable),
so ``PPO.load`` rebuilds the extractor from the checkpoint (which must still exist there) and then loads
the saved weights over it (fine-tuned ones included). SB3's zip files are pickles: load only your own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import gymnasium as gym
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from jepa_agent.rl.space import planning_projection
from jepa_agent.world_model import WorldModel

PRETRAINED = "pretrained"  # the submodule that holds the world model's parts


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, spaces.Box) and len(space.shape) == 3


class JepaFeaturesExtractor(BaseFeaturesExtractor):
    """A world model's encoder (+ pooler, normaliser, cost head) on SB3's image observations.

    Args:
        observation_space: what SB3 passes: a Dict (``MultiInputPolicy``) or one image Box
            (``CnnPolicy``); image entries channel-first ``[3, S, S]``, ``S`` the model's image size.
        checkpoint: path of a world-model checkpoint (``WorldModel.from_checkpoint``).
        space: ``latent`` (default: the latent state, ``N * D`` features per image) or a cost space
            (``auto`` | ``metric`` | ``readout``: the planning cost's head on the latent).
        keys: the Dict entries to use, in order (None: all); 3-D entries are encoded, others flattened.
        trainable: fine-tune the encoder, pooler and head with the policy's loss (they stay in eval
            mode all the same: no dropout or batch statistics).

    Raises:
        ValueError: images of another size or layout than the model's, an unknown key, or a cost space the
            model lacks. ``CheckpointError``: the checkpoint cannot be read.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        checkpoint: str | os.PathLike,
        space: str = "latent",
        keys: Sequence[str] | None = None,
        trainable: bool = False,
    ) -> None:
        model = WorldModel.from_checkpoint(checkpoint, device="cpu")  # the policy moves it with .to()
        entries = self._entries(observation_space, keys)
        size = model.image_size
        for key, sub in entries.items():
            if _is_image(sub) and tuple(sub.shape) != (3, size, size):
                raise ValueError(
                    f"observation {key!r} has shape {tuple(sub.shape)} but the world model "
                    f"{str(checkpoint)!r} takes channel-first [3, {size}, {size}] images (SB3 transposes "
                    f"[{size}, {size}, 3] uint8 images with VecTransposeImage); make the env with "
                    f"image_size={size}"
                )
        resolved, project = planning_projection(model, space) if space != "latent" else ("latent", None)
        parts = {"encoder": model.encoder, "pooler": model.pooler, "normalizer": model.normalizer}
        if project is not None:
            parts["head"] = project
        pretrained = nn.ModuleDict(parts)
        with torch.no_grad():
            probe = self._encode(pretrained, torch.zeros(1, 3, size, size))  # [1, F]
        image_dim = int(probe.shape[1])
        dims = {
            k: image_dim if _is_image(s) else int(torch.Size(s.shape).numel()) for k, s in entries.items()
        }
        super().__init__(observation_space, features_dim=sum(dims.values()))
        self.space, self.image_dim = resolved, image_dim
        self.keys = list(entries)
        self._image_keys = {k for k, s in entries.items() if _is_image(s)}
        self._dict = isinstance(observation_space, spaces.Dict)
        self.checkpoint, self.trainable = str(checkpoint), bool(trainable)
        setattr(self, PRETRAINED, pretrained)
        pretrained.requires_grad_(self.trainable)
        pretrained.eval()

    @staticmethod
    def _entries(observation_space: gym.Space, keys: Sequence[str] | None) -> dict[str, gym.Space]:
        if isinstance(observation_space, spaces.Dict):
            available = list(observation_space.spaces)
            unknown = [k for k in (keys or ()) if k not in available]
            if unknown:
                raise ValueError(f"keys {unknown} are not observations; expected some of {available}")
            return {k: observation_space[k] for k in (keys or available)}
        if isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3:
            return {"image": observation_space}
        raise ValueError(
            f"observation space {observation_space}; expected a Dict (MultiInputPolicy) or an image Box "
            "(CnnPolicy)"
        )

    @staticmethod
    def _encode(parts: nn.ModuleDict, images: Tensor) -> Tensor:
        """Images ``[B, 3, S, S]`` in [0, 1] -> features ``[B, F]``: the modules ``encode_pixels`` runs
        (encoder, pooler, latent normaliser), then the cost head when there is one."""
        tokens = parts["encoder"].encode_images(images)  # [B, P, D_enc] patch tokens
        z = parts["normalizer"].latent(parts["pooler"](tokens))  # [B, N, D] latent state
        if "head" in parts:
            return parts["head"](z)  # [B, F]
        return z.reshape(z.shape[0], -1)  # [B, N * D]

    def forward(self, observations: dict[str, Tensor] | Tensor) -> Tensor:
        """Observations (SB3-preprocessed, batch ``B``) -> features ``[B, features_dim]``."""
        obs = observations if self._dict else {"image": observations}
        parts: nn.ModuleDict = getattr(self, PRETRAINED)
        out = []
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            for key in self.keys:
                x = obs[key]
                if key in self._image_keys:
                    if x.numel() and float(x.max()) > 1.0 + 1e-6:
                        raise ValueError(
                            f"observation {key!r} reaches the extractor with values up to "
                            f"{float(x.max()):g}; expected [0, 1] images: keep SB3's normalize_images=True"
                        )
                    out.append(self._encode(parts, x.float()))
                else:
                    out.append(x.float().reshape(x.shape[0], -1))
        return torch.cat(out, dim=1)

    def train(self, mode: bool = True) -> JepaFeaturesExtractor:
        """Set the mode of the extractor's own layers; the pretrained modules always stay in eval mode."""
        super().train(mode)
        getattr(self, PRETRAINED).eval()
        return self

    def apply(self, fn: Callable[[nn.Module], None]) -> JepaFeaturesExtractor:
        """``fn`` on this module and its own layers, never on the pretrained modules (see the module
        docstring: SB3's orthogonal init reaches an extractor through ``apply``)."""
        for name, child in self.named_children():
            if name != PRETRAINED:
                child.apply(fn)
        fn(self)
        return self
