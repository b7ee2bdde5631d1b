"""Bad calls fail with errors that name the shapes, before any kernel launch."""

from __future__ import annotations

import pytest
import torch

from verticals.kernels import dora_linear, lora_linear, multi_lora_linear


def test_shape_mismatches_name_the_shapes(use_triton) -> None:
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match=r"`x` \(4, 7\) must be \(\.\.\., in_features=8\).*\(6, 8\)"):
        lora_linear(torch.randn(4, 7), w, None, torch.randn(2, 8), torch.randn(6, 2), 1.0)
    with pytest.raises(
        ValueError, match=r"rank mismatch: `lora_a` \(2, 8\) has rank 2 but `lora_b` \(6, 3\)"
    ):
        lora_linear(x, w, None, torch.randn(2, 8), torch.randn(6, 3), 1.0)
    with pytest.raises(ValueError, match=r"`lora_b` \(5, 2\) must be \(out_features=6, r\)"):
        lora_linear(x, w, None, torch.randn(2, 8), torch.randn(5, 2), 1.0)
    with pytest.raises(ValueError, match=r"`bias` \(5,\) must be \(6,\)"):
        lora_linear(x, w, torch.randn(5), torch.randn(2, 8), torch.randn(6, 2), 1.0)
    with pytest.raises(TypeError, match="share one dtype"):
        lora_linear(x.half(), w, None, torch.randn(2, 8), torch.randn(6, 2), 1.0)
    with pytest.raises(ValueError, match=r"`magnitude` \(5,\) must be \(6,\)"):
        dora_linear(x, w, None, torch.randn(2, 8), torch.randn(6, 2), 1.0, torch.ones(5))
    with pytest.raises(ValueError, match=r"`dropout` must be in \[0, 1\)"):
        lora_linear(x, w, None, torch.randn(2, 8), torch.randn(6, 2), 1.0, dropout=1.0)


def test_multi_adapter_errors(use_triton) -> None:
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    a, b, s = torch.randn(3, 2, 8), torch.randn(3, 6, 2), torch.ones(3)
    with pytest.raises(IndexError, match=r"values in \[-1, 3\] but only \[-1, 2\] are valid for 3 stacked"):
        multi_lora_linear(x, w, None, a, b, s, torch.tensor([0, 1, 3, -1]))
    with pytest.raises(IndexError, match=r"values in \[-2, 1\]"):
        multi_lora_linear(x, w, None, a, b, s, torch.tensor([0, 1, -2, -1]))
    with pytest.raises(ValueError, match=r"`adapter_index` \(3,\) must be \(4,\)"):
        multi_lora_linear(x, w, None, a, b, s, torch.tensor([0, 1, 2]))
    with pytest.raises(
        ValueError, match=r"rank mismatch: stacked `lora_a` \(3, 2, 8\) and `lora_b` \(3, 6, 4\)"
    ):
        multi_lora_linear(x, w, None, a, torch.randn(3, 6, 4), s, torch.tensor([0, 1, 2, -1]))
    with pytest.raises(ValueError, match=r"`scalings` \(2,\) must be \(3,\)"):
        multi_lora_linear(x, w, None, a, b, [1.0, 2.0], torch.tensor([0, 1, 2, -1]))
