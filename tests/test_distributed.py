"""Distributed training: DistributedDataParallel and FSDP2 (``fully_shard``) with gloo on 2 CPU processes.

A small language model (Embedding -> 2-layer tritonlstm.LSTM -> Linear; under DDP also with a tritonlstm.GRU) in
float64 takes a few SGD steps; each
rank sees its half of every global batch. The oracle is the same model trained in one process on the whole
(concatenated) batch: data-parallel training averages the ranks' gradients, which equals the gradient of the
mean loss over the whole batch. The reference backend runs on any CPU, so no interpreter is needed.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tritonlstm
from tests.helpers import assert_close

WORLD = 2
VOCAB, EMBED, HIDDEN, T, GLOBAL_BATCH, STEPS, LR = 11, 6, 10, 7, 8, 4, 0.5

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")


class TinyLM(nn.Module):
    def __init__(self, cell: str = "lstm"):
        super().__init__()
        self.cell = cell
        self.embed = nn.Embedding(VOCAB, EMBED)
        rnn = {"lstm": tritonlstm.LSTM, "gru": tritonlstm.GRU}[cell]
        setattr(self, cell, rnn(EMBED, HIDDEN, num_layers=2, batch_first=True, backend="reference"))
        self.head = nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):
        y, _ = getattr(self, self.cell)(self.embed(tokens))
        return self.head(y)


def _model(cell: str = "lstm") -> TinyLM:
    torch.manual_seed(0)  # every rank and the oracle start from the same weights
    return TinyLM(cell).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (STEPS, GLOBAL_BATCH, T + 1), generator=g)
    return [(s[:, :-1], s[:, 1:]) for s in tokens]


def _train(model: nn.Module, rank: int | None = None) -> None:
    """SGD on every global batch, or on this rank's contiguous share of it."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for x, y in _batches():
        if rank is not None:
            share = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
            x, y = x[share], y[share]
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    """One rank: DDP training, then FSDP2 training, each from the same initial weights; saves full parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        results = {}
        ddp = DistributedDataParallel(_model())
        _train(ddp, rank)
        results["ddp"] = {k: v.detach().clone() for k, v in ddp.module.named_parameters()}
        ddp_gru = DistributedDataParallel(_model("gru"))
        _train(ddp_gru, rank)
        results["ddp-gru"] = {k: v.detach().clone() for k, v in ddp_gru.module.named_parameters()}

        model = _model()
        mesh = init_device_mesh("cpu", (WORLD,))
        fully_shard(model.lstm, mesh=mesh)
        fully_shard(model, mesh=mesh)
        _train(model, rank)
        results["fsdp"] = {k: v.full_tensor().detach().clone() for k, v in model.named_parameters()}
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """Both ranks' final parameters, per mode (one spawn of 2 processes for both modes)."""
    out = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _single_process(cell: str) -> dict:
    """The oracle: one process, the whole batch, same initial weights."""
    model = _model(cell)
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    _train(model)
    trained = {k: v.detach().clone() for k, v in model.named_parameters()}
    moved = min((trained[k] - initial[k]).abs().max().item() for k in trained)
    assert moved > 1e-4, "the oracle's training must change every parameter (else the comparison proves nothing)"
    return trained


@pytest.mark.parametrize("mode", ["ddp", "fsdp", "ddp-gru"])
def test_data_parallel_matches_single_process(ranks, mode):
    cell = "gru" if mode.endswith("gru") else "lstm"
    expected_names = {
        f"{cell}.{p}_l{k}" for k in range(2) for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    } | {"embed.weight", "head.weight", "head.bias"}
    for r in range(WORLD):
        assert set(ranks[r][mode]) == expected_names, f"rank {r}: {sorted(ranks[r][mode])}"
    for name, expected in _single_process(cell).items():
        assert torch.equal(ranks[0][mode][name], ranks[1][mode][name]), f"{mode}: {name} differs between ranks"
        assert_close(ranks[0][mode][name], expected, torch.float64, f"{mode} {name}")
