"""How far an embedding lies from the authentic data a model was trained on: Mahalanobis distance.

The statistics are fitted after training (`spectrashield fit-ood`) on authentic training clips,
the threshold on authentic validation clips, and stored beside the weights in the bundle
(`ood.safetensors`, checksummed in its manifest). A model answering far outside that region is
guessing, whatever its score says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OOD_KEYS = ("mean", "precision", "threshold")


@dataclass(frozen=True)
class OODStats:
    mean: np.ndarray  # (E,) float64
    precision: np.ndarray  # (E, E) float64, inverse of a shrunk covariance
    threshold: float  # distances above this are out of distribution

    def distance(self, embedding: np.ndarray) -> float:
        d = np.asarray(embedding, np.float64).reshape(-1) - self.mean
        if d.shape != self.mean.shape:
            raise ValueError(f"embedding has {d.size} values, the statistics {self.mean.size}")
        return float(np.sqrt(max(float(d @ self.precision @ d), 0.0)))

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
        mean = tensors["mean"].double().numpy()
        precision = tensors["precision"].double().numpy()
        if mean.ndim != 1 or precision.shape != (mean.size, mean.size) or tensors["threshold"].numel() != 1:
            raise ValueError(f"shapes do not fit: mean {tuple(mean.shape)}, precision {tuple(precision.shape)}")
        return cls(mean, precision, float(tensors["threshold"].reshape(())))
