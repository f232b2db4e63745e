"""How far an embedding lies from the data a model was trained on: Mahalanobis distance.

The statistics are fitted after training (`spectrashield fit-ood`) and stored beside the weights
in the bundle (`ood.safetensors`, checksummed in its manifest). They hold one Gaussian or several
(one per training class); the distance is to the nearest. The visual branch's single Gaussian is
fitted on authentic clips (unlike authentic: the verdict abstains). The audio branch's has one
Gaussian per class, authentic and spoofed: a voice far from both is one the spoof head never
learned either way, and its score is a guess. A model answering far outside that region is
guessing, whatever its score says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OOD_KEYS = ("mean", "precision", "threshold")


@dataclass(frozen=True)
class OODStats:
    mean: np.ndarray  # (E,) float64, or (K, E): one Gaussian per component
    precision: np.ndarray  # (E, E) float64, or (K, E, E): inverses of shrunk covariances
    threshold: float  # distances above this are out of distribution

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, np.float64)
        precision = np.asarray(self.precision, np.float64)
        if mean.ndim == 1:
            mean, precision = mean[None], precision[None]
        if mean.ndim != 2 or precision.shape != (mean.shape[0], mean.shape[1], mean.shape[1]):
            raise ValueError(f"shapes do not fit: mean {tuple(mean.shape)}, precision {tuple(precision.shape)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "precision", precision)

    @property
    def components(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, embedding: np.ndarray) -> float:
        """Mahalanobis distance to the nearest component."""
        x = np.asarray(embedding, np.float64).reshape(-1)
        if x.size != self.mean.shape[1]:
            raise ValueError(f"embedding has {x.size} values, the statistics {self.mean.shape[1]}")
        d = x[None] - self.mean  # (K, E)
        squared = np.einsum("ke,kef,kf->k", d, self.precision, d)
        return float(np.sqrt(max(float(squared.min()), 0.0)))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.from_numpy(self.mean.astype(np.float64)),
            "precision": torch.from_numpy(self.precision.astype(np.float64)),
            "threshold": torch.tensor([self.threshold], dtype=torch.float64),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> OODStats:
        if set(tensors) != set(OOD_KEYS):
            raise ValueError(f"expected keys {sorted(OOD_KEYS)}, got {sorted(tensors)}")
        if tensors["threshold"].numel() != 1:
            raise ValueError(f"threshold must be one value, got {tuple(tensors['threshold'].shape)}")
        mean = tensors["mean"].double().numpy()
        precision = tensors["precision"].double().numpy()
        return cls(mean, precision, float(tensors["threshold"].reshape(())))
