"""Triton kernels behind the fused LoRA / multi-adapter / DoRA paths (launch them via :mod:`triton_lora`).

Conventions shared by every kernel: matrices are addressed through explicit strides, so one kernel serves
the forward and the backward (a transposed operand is the same tensor with its strides swapped); the
adapter of row ``m`` is ``IDX[m]`` when ``GATHER`` (``-1``: base model only, the low-rank term is 0) and 0
otherwise; accumulation is fp32. LoRA dropout is a counter-based mask ``tl.rand(seed, m * mask_ld + k) >=
p`` over the logical ``(M, K)`` input, so the backward regenerates the forward's mask instead of storing it.

``UPCAST`` casts ``tl.dot`` operands to fp32: Triton's CPU interpreter stores bf16 as raw uint16 and its
``tl.dot`` then multiplies integers, so the launcher sets it only when interpreting bf16. Elementwise math
is done in fp32 for the same reason (the interpreter has no bf16 scalar constants).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _dropout(values, seed, p, offsets):
    """Inverted dropout in fp32: ``values / (1 - p)`` where ``rand(seed, offsets) >= p``, else 0."""
    keep = tl.rand(seed, offsets) >= p
    return tl.where(keep, values.to(tl.float32) / (1.0 - p), 0.0)


@triton.jit
def down_kernel(
    X, A, S, IDX, OUT, seed, p, M, K, R,
    sxm, sxk, sa0, sar, sak, som, sor,
    BM: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
    GATHER: tl.constexpr, DROPOUT: tl.constexpr, SCALED: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``OUT[m, r] = S[a(m)] * sum_k dropout(X)[m, k] * A[a(m), r, k]`` (the LoRA down-projection)."""
    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rr = pid_r * BR + tl.arange(0, BR)
    m_ok = rm < M
    r_ok = rr < R
    rm64 = rm.to(tl.int64)
    if GATHER:
        adapter = tl.load(IDX + rm, mask=m_ok, other=-1)
        row_ok = m_ok & (adapter >= 0)
        a_off = tl.maximum(adapter, 0).to(tl.int64) * sa0
    else:
        row_ok = m_ok
    acc = tl.zeros((BM, BR), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        x = tl.load(
            X + rm64[:, None] * sxm + rk[None, :] * sxk, mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        if DROPOUT:
            x = _dropout(x, seed, p, rm[:, None] * K + rk[None, :]).to(X.dtype.element_ty)
        if GATHER:
            a = tl.load(
                A + a_off[:, None, None] + rr[None, :, None] * sar + rk[None, None, :] * sak,
                mask=row_ok[:, None, None] & r_ok[None, :, None] & k_ok[None, None, :],
                other=0.0,
            )
            acc += tl.sum(x.to(tl.float32)[:, None, :] * a.to(tl.float32), axis=2)
        else:
            a = tl.load(
                A + rr[None, :] * sar + rk[:, None] * sak, mask=r_ok[None, :] & k_ok[:, None], other=0.0
            )
            acc += _dot(x, a, UPCAST, IEEE)
    if SCALED:
        if GATHER:
            scale = tl.load(S + tl.maximum(adapter, 0), mask=row_ok, other=0.0)
            acc = acc * scale[:, None]
        else:
            acc = acc * tl.load(S)
    out = OUT + rm64[:, None] * som + rr[None, :] * sor
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=m_ok[:, None] & r_ok[None, :])


@triton.jit
def gemm_lowrank_kernel(
    X, W, BIAS, T, U, S, IDX, COL, OUT, seed, p, M, N, K, R, mask_ld,
    sxm, sxk, swn, swk, stm, str_, su0, sun, sur, som, son,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
    GATHER: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_COL: tl.constexpr, DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``OUT = COL * (X Wᵀ + dropout'(S[a] · T U[a]ᵀ)) + BIAS``: a GEMM whose epilogue adds the low-rank term.

    Forward: ``X=x, W=W, T=x_d Aᵀ, U=B``. Backward of ``x``: ``X=dy, W=Wᵀ, T=dT, U=Aᵀ`` with the dropout
    mask (``DROPOUT``) applied to the low-rank term only. ``COL`` is DoRA's per-column ``m / ||W'||``.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = 8 * num_n  # grouped launch order: 8 row-tiles share each W tile while it is in L2
    first_m = (pid // group) * 8
    group_m = tl.minimum(num_m - first_m, 8)
    pid_m = first_m + (pid % group) % group_m
    pid_n = (pid % group) // group_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    m_ok = rm < M
    n_ok = rn < N
    rm64 = rm.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        x = tl.load(
            X + rm64[:, None] * sxm + rk[None, :] * sxk, mask=m_ok[:, None] & k_ok[None, :], other=0.0
        )
        w = tl.load(W + rn[None, :] * swn + rk[:, None] * swk, mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        acc += _dot(x, w, UPCAST, IEEE)
    low = tl.zeros((BM, BN), dtype=tl.float32)
    if GATHER:
        # Rows of one tile may name different adapters: a rank-1 update per r with gathered U rows (BGMV).
        adapter = tl.load(IDX + rm, mask=m_ok, other=-1)
        row_ok = m_ok & (adapter >= 0)
        u_off = tl.maximum(adapter, 0).to(tl.int64) * su0
        for r in range(0, R):
            t = tl.load(T + rm64 * stm + r * str_, mask=row_ok, other=0.0).to(tl.float32)
            u = tl.load(
                U + u_off[:, None] + rn[None, :] * sun + r * sur,
                mask=row_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
            low += t[:, None] * u.to(tl.float32)
        low = low * tl.load(S + tl.maximum(adapter, 0), mask=row_ok, other=0.0)[:, None]
    else:
        for r0 in range(0, R, BR):
            rr = r0 + tl.arange(0, BR)
            r_ok = rr < R
            t = tl.load(
                T + rm64[:, None] * stm + rr[None, :] * str_, mask=m_ok[:, None] & r_ok[None, :], other=0.0
            )
            u = tl.load(
                U + rr[:, None] * sur + rn[None, :] * sun, mask=r_ok[:, None] & n_ok[None, :], other=0.0
            )
            low += _dot(t, u, UPCAST, IEEE)
        low = low * tl.load(S)
    if DROPOUT:
        low = _dropout(low, seed, p, rm[:, None] * mask_ld + rn[None, :])
    acc += low
    if HAS_COL:
        acc = acc * tl.load(COL + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out = OUT + rm64[:, None] * som + rn[None, :] * son
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def segment_outer_kernel(
    P, Q, PERM, SEG, S, OUT, seed, p, NI, NJ, mask_ld,
    spm, spi, sqm, sqj, so0, soi, soj,
    BI: tl.constexpr, BJ: tl.constexpr, BM: tl.constexpr,
    HAS_PERM: tl.constexpr, DROPOUT: tl.constexpr, SCALED: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``OUT[a] = S[a] · Σ_{m in segment a} P[m]ᵀ dropout(Q[m])``: per-adapter weight gradients (SGMV-style).

    Rows are visited in ``PERM`` order (rows sorted by adapter); ``SEG[a]:SEG[a+1]`` is adapter ``a``'s run.
    ``dB[a] = s_a · dyᵀ T`` over its rows, ``dA[a] = dTᵀ x_d``; rows of the base model (-1) are in no segment.
    """
    a = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_j = tl.program_id(2)
    ri = pid_i * BI + tl.arange(0, BI)
    rj = pid_j * BJ + tl.arange(0, BJ)
    i_ok = ri < NI
    j_ok = rj < NJ
    start = tl.load(SEG + a)
    end = tl.load(SEG + a + 1)
    acc = tl.zeros((BI, BJ), dtype=tl.float32)
    for m0 in range(start, end, BM):
        rs = m0 + tl.arange(0, BM)
        ok = rs < end
        rows = tl.load(PERM + rs, mask=ok, other=0) if HAS_PERM else rs
        rows64 = rows.to(tl.int64)
        pt = tl.load(
            P + rows64[None, :] * spm + ri[:, None] * spi, mask=ok[None, :] & i_ok[:, None], other=0.0
        )
        q = tl.load(
            Q + rows64[:, None] * sqm + rj[None, :] * sqj, mask=ok[:, None] & j_ok[None, :], other=0.0
        )
        if DROPOUT:
            q = _dropout(q, seed, p, rows[:, None] * mask_ld + rj[None, :]).to(Q.dtype.element_ty)
        acc += _dot(pt, q, UPCAST, IEEE)
    if SCALED:
        acc = acc * tl.load(S + a)
    out = OUT + a.to(tl.int64) * so0 + ri[:, None] * soi + rj[None, :] * soj
    tl.store(out, acc.to(OUT.dtype.element_ty), mask=i_ok[:, None] & j_ok[None, :])


@triton.jit
def dora_norm_kernel(
    W, A, B, OUT, scale, N, K, R,
    swn, swk, sar, sak, sbn, sbr,
    BN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr,
    UPCAST: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """``OUT[n] = ||W[n, :] + scale · (B A)[n, :]||₂`` in one pass over ``W``; ``B A`` is never stored."""
    pid = tl.program_id(0)
    rn = pid * BN + tl.arange(0, BN)
    rr = tl.arange(0, BR)
    n_ok = rn < N
    r_ok = rr < R
    rn64 = rn.to(tl.int64)
    b = tl.load(B + rn64[:, None] * sbn + rr[None, :] * sbr, mask=n_ok[:, None] & r_ok[None, :], other=0.0)
    acc = tl.zeros((BN,), dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        a = tl.load(A + rr[:, None] * sar + rk[None, :] * sak, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(
            W + rn64[:, None] * swn + rk[None, :] * swk, mask=n_ok[:, None] & k_ok[None, :], other=0.0
        )
        v = w.to(tl.float32) + scale * _dot(b, a, UPCAST, IEEE)
        acc += tl.sum(v * v, axis=1)
    tl.store(OUT + rn, tl.sqrt(acc).to(OUT.dtype.element_ty), mask=n_ok)


@triton.jit
def dropout_mask_kernel(OUT, seed, p, M, K, BM: tl.constexpr, BK: tl.constexpr):
    """The scaled keep-mask (``0`` or ``1/(1-p)``) the kernels above apply for ``seed``; for tests and oracles."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.program_id(1) * BK + tl.arange(0, BK)
    ok = (rm[:, None] < M) & (rk[None, :] < K)
    ones = tl.full((BM, BK), 1.0, tl.float32)
    mask = _dropout(ones, seed, p, rm[:, None] * K + rk[None, :])
    tl.store(OUT + rm.to(tl.int64)[:, None] * K + rk[None, :], mask, mask=ok)
