"""Data-parallel training (`spectrashield train --ray-address`): each rank trains on its share of every batch of
one shuffled order and the gradients are averaged, so two ranks take exactly local mode's steps."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.train import _step, data_parallel, loader


class Items(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(n, 5, generator=g), torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])


def _train(n: int, epochs: int = 3) -> tuple[dict[str, torch.Tensor], list[list[float]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for epoch in range(epochs):
        for x, y in loader(Items(n), 4, seed=3, epoch=epoch, workers=0, collate=_collate):
            seen.append(x[:, 0].tolist())
            _step(optimizer, nn.functional.mse_loss(model(x).squeeze(1), y), list(model.parameters()), clip=100.0)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, seen


def _rank(rank: int, port: int, n: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        assert data_parallel() == (rank, 2)
        out[rank] = _train(n)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("n", [12, 9])
def test_two_ranks_take_local_modes_steps(n: int) -> None:
    local, local_batches = _train(n)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(_free_port(), n, out), nprocs=2, join=True)
        (w0, b0), (w1, b1) = out[0], out[1]
    for k in local:
        assert torch.equal(w0[k], w1[k])  # both ranks hold the same weights after every step
    assert len(b0) == len(b1) == len(local_batches)  # same number of steps: no rank waits for another
    halves = [a + b for a, b in zip(b0, b1)]
    # The ranks' halves are local mode's batches in local mode's order; an epoch's last batch of one item is
    # that item on each rank (the same mean, so the same step).
    assert halves == [c * 2 if len(c) == 1 else c for c in local_batches]
    for k in local:
        assert torch.allclose(local[k], w0[k], atol=1e-6), k
