"""Launchers and autograd functions for the Triton kernels; importing this module imports Triton.

Block sizes: on a GPU the GEMM kernel is autotuned over a few tile shapes per ``(M, N, K)``; in Triton's CPU
interpreter (``TRITON_INTERPRET=1``, read by ``triton.jit`` when :mod:`_triton_kernels` is first imported)
fixed 32-wide tiles keep the interpreted programs few. Callers validate shapes first (:mod:`checks`).
"""

from __future__ import annotations

import functools

import torch
import triton

from verticals.kernels import _triton_kernels as K

_GEMM_CONFIGS = [
    triton.Config({"BM": bm, "BN": bn, "BK": bk, "BR": 16}, num_warps=w, num_stages=s)
    for bm, bn, bk, w, s in [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 64, 4, 3),
        (32, 64, 64, 4, 3),
        (16, 64, 128, 4, 3),
    ]
]
_gemm_tuned = (
    K.gemm_lowrank_kernel
    if type(K.gemm_lowrank_kernel).__name__ == "InterpretedFunction"
    else triton.autotune(configs=_GEMM_CONFIGS, key=["M", "N", "K", "R", "GATHER"])(K.gemm_lowrank_kernel)
)
_INT31 = 2**31 - 1


def interpreted() -> bool:
    """True when the kernels were compiled for Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return type(K.down_kernel).__name__ == "InterpretedFunction"


def _flags(dtype: torch.dtype) -> dict[str, bool]:
    upcast = interpreted() and dtype == torch.bfloat16
    ieee = not interpreted() and dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return {"UPCAST": upcast, "IEEE": ieee}


@functools.cache
def _ones(device: torch.device) -> torch.Tensor:
    return torch.ones(1, device=device, dtype=torch.float32)


def _check_dropout_range(rows: int, cols: int) -> None:
    if rows * cols > _INT31:
        raise ValueError(
            f"LoRA dropout in the Triton kernels indexes its random stream with int32, but the input has "
            f"{rows} x {cols} = {rows * cols} elements (> 2**31 - 1); split the batch or use dropout 0."
        )


def down(x, a, scalings, index, p: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``(M, R) = scalings[a(m)] · dropout(x) @ a[a(m)]ᵀ``; ``a`` is addressed as ``(adapters, R, K)``."""
    M, Kd = x.shape
    R = a.shape[1]
    out = torch.empty(M, R, device=x.device, dtype=x.dtype)
    if p > 0:
        _check_dropout_range(M, Kd)
    gather = index is not None
    bm, bk = (16, 32) if gather else (32, 32)
    br = 16 if gather else max(16, min(64, triton.next_power_of_2(R)))
    grid = (triton.cdiv(M, bm), triton.cdiv(R, br))
    K.down_kernel[grid](
        x, a, scalings if scalings is not None else _ones(x.device), index if gather else x, out,
        seed, p, M, Kd, R,
        x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2), out.stride(0), out.stride(1),
        BM=bm, BK=bk, BR=br, GATHER=gather, DROPOUT=p > 0, SCALED=scalings is not None, **_flags(x.dtype),
    )  # fmt: skip
    return out


def gemm_lowrank(
    x, w, bias, t, u, scalings, index, *, col=None, p: float = 0.0, seed: int = 0, mask_ld: int = 0
) -> torch.Tensor:
    """``(M, N) = col · (x @ wᵀ + dropout(scalings[a] · t @ u[a]ᵀ)) + bias``; ``w`` as ``(N, K)``, ``u`` as
    ``(adapters, N, R)``: pass transposed views for the backward."""
    M, Kd = x.shape
    N = w.shape[0]
    R = t.shape[1]
    out = torch.empty(M, N, device=x.device, dtype=x.dtype)
    if p > 0:
        _check_dropout_range(M, N)
    gather = index is not None
    dummy = x
    args = (
        x, w, bias if bias is not None else dummy, t, u, scalings, index if gather else dummy,
        col if col is not None else dummy, out, seed, p, M, N, Kd, R, mask_ld,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), t.stride(0), t.stride(1),
        u.stride(0), u.stride(1), u.stride(2), out.stride(0), out.stride(1),
    )  # fmt: skip
    flags = {
        "GATHER": gather, "HAS_BIAS": bias is not None, "HAS_COL": col is not None, "DROPOUT": p > 0,
        **_flags(x.dtype),
    }  # fmt: skip
    if interpreted():
        grid = (triton.cdiv(M, 32) * triton.cdiv(N, 32),)
        K.gemm_lowrank_kernel[grid](*args, BM=32, BN=32, BK=32, BR=16, **flags)
    else:

        def grid(meta):
            return (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)

        _gemm_tuned[grid](*args, **flags)
    return out


def segment_outer(p_mat, q_mat, perm, segments, scalings, adapters: int, *, p: float = 0.0, seed: int = 0,
                  mask_ld: int = 0) -> torch.Tensor:  # fmt: skip
    """``(adapters, p_mat cols, q_mat cols)``: ``scalings[a] · Σ_{rows of a} p_matᵀ dropout(q_mat)``, rows in ``perm`` order."""
    ni, nj = p_mat.shape[1], q_mat.shape[1]
    out = torch.empty(adapters, ni, nj, device=p_mat.device, dtype=p_mat.dtype)
    bi = max(16, min(64, triton.next_power_of_2(ni)))
    bj = max(16, min(64, triton.next_power_of_2(nj)))
    grid = (adapters, triton.cdiv(ni, bi), triton.cdiv(nj, bj))
    K.segment_outer_kernel[grid](
        p_mat, q_mat, perm if perm is not None else segments, segments,
        scalings if scalings is not None else _ones(p_mat.device), out, seed, p, ni, nj, mask_ld,
        p_mat.stride(0), p_mat.stride(1), q_mat.stride(0), q_mat.stride(1),
        out.stride(0), out.stride(1), out.stride(2),
        BI=bi, BJ=bj, BM=32, HAS_PERM=perm is not None, DROPOUT=p > 0, SCALED=scalings is not None,
        **_flags(p_mat.dtype),
    )  # fmt: skip
    return out


def dora_weight_norm(weight, lora_a, lora_b, scaling: float) -> torch.Tensor:
    """Row norms ``||W + scaling · B A||`` of shape ``(N,)`` in one pass over ``W`` (no gradient, as in DoRA)."""
    N, Kd = weight.shape
    R = lora_a.shape[0]
    out = torch.empty(N, device=weight.device, dtype=weight.dtype)
    br = max(16, triton.next_power_of_2(R))
    bn = 32 if interpreted() else 64
    K.dora_norm_kernel[(triton.cdiv(N, bn),)](
        weight, lora_a, lora_b, out, float(scaling), N, Kd, R,
        weight.stride(0), weight.stride(1), lora_a.stride(0), lora_a.stride(1),
        lora_b.stride(0), lora_b.stride(1),
        BN=bn, BK=32, BR=br, **_flags(weight.dtype),
    )  # fmt: skip
    return out


def dropout_mask(seed: int, p: float, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """The fp32 mask (``0`` or ``1/(1-p)``) that the kernels apply to a ``(rows, cols)`` input for ``seed``."""
    _check_dropout_range(rows, cols)
    out = torch.empty(rows, cols, device=device, dtype=torch.float32)
    K.dropout_mask_kernel[(triton.cdiv(rows, 32), triton.cdiv(cols, 32))](
        out, seed, p, rows, cols, BM=32, BK=32
    )
    return out


def _segments(index: torch.Tensor | None, rows: int, adapters: int, device: torch.device):
    if index is None:
        return None, torch.tensor([0, rows], device=device, dtype=torch.int32)
    perm = torch.argsort(index, stable=True).to(torch.int32)
    counts = torch.bincount(index.long() + 1, minlength=adapters + 1)
    return perm, torch.cumsum(counts, 0).to(torch.int32)  # segments[a] = first sorted row of adapter a


class FusedLoRAFunction(torch.autograd.Function):
    """``y = x Wᵀ + b + s[a] · (dropout(x) A[a]ᵀ) B[a]ᵀ`` for 2-D ``x``; gradients of x, A, B (and W, b if asked).

    ``lora_a``: ``(adapters, R, K)``, ``lora_b``: ``(adapters, N, R)``, ``scalings``: fp32 ``(adapters,)``,
    ``index``: int32 ``(M,)`` with -1 for base-only rows, or ``None`` (every row uses adapter 0).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scalings, index, p, seed):  # type: ignore[override]
        t = down(x, lora_a, None, index, p, seed)
        y = gemm_lowrank(x, weight, bias, t, lora_b, scalings, index)
        ctx.save_for_backward(x, weight, lora_a, lora_b, scalings, index, t)
        ctx.p, ctx.seed, ctx.has_bias = p, seed, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, lora_a, lora_b, scalings, index, t = ctx.saved_tensors
        dy = dy.contiguous()
        M, Kd = x.shape
        adapters = lora_a.shape[0]
        # dT = s[a] · dy B[a]: B read as (adapters, R, N) through its strides.
        b_as_a = lora_b.as_strided((adapters, lora_b.shape[2], lora_b.shape[1]),
                                   (lora_b.stride(0), lora_b.stride(2), lora_b.stride(1)))  # fmt: skip
        dt = down(dy, b_as_a, scalings, index)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            w_t = weight.t()  # (K, N) view: the GEMM reads it as "W" of the backward
            a_t = lora_a.as_strided((adapters, Kd, lora_a.shape[1]),
                                    (lora_a.stride(0), lora_a.stride(2), lora_a.stride(1)))  # fmt: skip
            ones = torch.ones(adapters, device=x.device, dtype=torch.float32)  # dT already carries s[a]
            dx = gemm_lowrank(dy, w_t, None, dt, a_t, ones, index, p=ctx.p, seed=ctx.seed, mask_ld=Kd)
        perm, segments = _segments(index, M, adapters, x.device)
        db_lora = (
            segment_outer(dy, t, perm, segments, scalings, adapters) if ctx.needs_input_grad[4] else None
        )
        da_lora = (
            segment_outer(dt, x, perm, segments, None, adapters, p=ctx.p, seed=ctx.seed, mask_ld=Kd)
            if ctx.needs_input_grad[3]
            else None
        )
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0)
        return dx, dw, db, da_lora, db_lora, None, None, None, None
