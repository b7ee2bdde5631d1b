"""``seeded``: reproducible draws inside, every outside random state untouched (CUDA included)."""

from __future__ import annotations

import torch

from verticals.core.seeding import seeded


def test_seeded_block_is_reproducible_and_restores_the_cpu_generator() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    with seeded(7):
        first = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(7):
        assert torch.equal(torch.rand(4), first)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(4), first)  # the same stream torch.manual_seed gives on the CPU


def test_seeded_never_seeds_the_gpus(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    torch.manual_seed(5)  # what fork_rng + manual_seed did: it seeds every CUDA device too
    assert calls == [5]
    with seeded(9):
        torch.rand(1)
    assert calls == [5]
