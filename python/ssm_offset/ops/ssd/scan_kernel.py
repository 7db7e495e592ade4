"""Mamba-2 (SSD) chunk-scan output kernel, Triton: the last stage of the CUDA forward (see kernel.py), with the
State offset, the y offset and the z gate folded in, so y is written once.

Within chunk c of Q steps, with cs_t = Σ_{chunk start ≤ r ≤ t} Δ_r a (the within-chunk cumsum of Δ·A) and
S_{c-1} the state entering the chunk:

    s_t = exp(cs_t) C_t·S_{c-1} + Σ_{k≤t in chunk} (C_t·B_k) exp(cs_t − cs_k) Δ_k x_k + D x_t + C_t·h' + y' + r_t
    out_t = s_t ⊙ silu(z_t)                                    (s_t when there is no z)

r_t is an optional extra term added before the gate (the restart of later documents from the initial state).
C_t·S and C_t·h' are two products of the same C tile, so the offset costs one more tile product, no pass
over y. One program computes a BLOCK_L × BLOCK_P tile of one (batch, chunk, head).

With document boundaries (seq_idx), C_t·B_k arrives zeroed across documents and S_{c-1} holds the document of
the chunk's previous position; the inter-chunk term is kept only where t continues that document.

The backward of the gate needs s, which the forward does not keep: BWD mode recomputes s and writes
dy_pre = dout ⊙ silu(z) (fp32) and dz = dout ⊙ s ⊙ σ(z)(1 + z(1 − σ(z))) instead of out.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


def _prune(configs, named_args, **kwargs):
    """Drop configs whose tiles overhang the chunk or the head dimension (masked work, same answer); keep the
    smallest if none fits."""
    q, p = named_args["chunk_size"], max(16, triton.next_power_of_2(named_args["P"]))
    fit = [c for c in configs if c.kwargs["BLOCK_L"] <= q and c.kwargs["BLOCK_K"] <= q and c.kwargs["BLOCK_P"] <= p]
    return fit or [min(configs, key=lambda c: c.kwargs["BLOCK_L"] * c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_K"])]


def _config(block_l, block_p, block_k, warps, stages):
    return triton.Config(dict(BLOCK_L=block_l, BLOCK_P=block_p, BLOCK_K=block_k), num_warps=warps, num_stages=stages)


# Tiles over (positions in the chunk, head dimension, source positions). The first ones are meant for the
# Mamba-2 shape (chunk 256, P 64, N 128, bf16); untuned guesses to be narrowed on the GPU. The last is the
# smallest, which `kernel.limit_autotuning` always keeps.
CONFIGS = [
    _config(128, 64, 64, 4, 3),
    _config(64, 64, 64, 4, 3),
    _config(128, 64, 32, 4, 4),
    _config(64, 64, 32, 4, 4),
    _config(128, 64, 64, 8, 2),
    _config(64, 128, 32, 4, 3),
    _config(128, 32, 64, 4, 3),
    _config(64, 32, 32, 2, 4),
    _config(64, 16, 32, 2, 3),
    _config(16, 16, 16, 2, 2),
]


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    # fp32 inputs: full fp32 products (tl.dot would use tf32), so fp32 results hold fp32 tolerances
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


@triton.autotune(configs=CONFIGS, key=["chunk_size", "P", "N"], prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _chunk_scan_kernel(
    cb_ptr, x_ptr, dt_ptr, cs_ptr, seq_ptr, c_ptr, st_ptr, d_ptr, off_ptr, yoff_ptr, add_ptr, z_ptr, dout_ptr,
    out_ptr, dz_ptr,
    L, H, P, N, chunk_size, nchunks, heads_per_group,
    s_b, s_l, s_h,  # x, add, z, dout, out, dz: one contiguous (batch, L, H, P) layout
    s_cbb, s_cbc, s_cbg, s_cbm,  # C·B (batch, nchunks, G, Q, Q), last dim contiguous
    s_db, s_dh, s_dc,  # dt and cs (batch, H, nchunks, Q), last dim contiguous
    s_seqb,
    s_cb, s_cl, s_cg,  # C (batch, L, G, N)
    s_stb, s_stc, s_sth, s_stp,  # states (batch, nchunks, H, P, N)
    s_dd,  # D: (H,) or (H, P)
    s_ob, s_oh, s_op,  # h' (H, P, N) shared (s_ob = 0) or (batch, H, P, N)
    s_yob, s_yoh,  # y' (H, P) shared (s_yob = 0) or (batch, H, P)
    HAS_SEQ: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, HAS_OFF: tl.constexpr,
    HAS_YOFF: tl.constexpr, HAS_ADD: tl.constexpr, HAS_Z: tl.constexpr, BWD: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_N: tl.constexpr, N_TILES: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n_ptiles = tl.cdiv(P, BLOCK_P)
    pid_l = tl.program_id(0) // n_ptiles
    pid_p = tl.program_id(0) % n_ptiles
    b = tl.program_id(1) // nchunks
    c = tl.program_id(1) % nchunks
    h = tl.program_id(2)
    g = h // heads_per_group
    b64 = b.to(tl.int64)
    t0 = c * chunk_size  # first position of the chunk
    q_len = tl.minimum(chunk_size, L - t0)
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # positions t within the chunk
    cols = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    rmask = rows < q_len
    pmask = cols < P

    dcs = b64 * s_db + h * s_dh + c * s_dc
    cs_t = tl.load(cs_ptr + dcs + rows, mask=rmask, other=0.0).to(tl.float32)
    reach = tl.exp(cs_t)
    if HAS_SEQ:
        seq_base = seq_ptr + b64 * s_seqb + t0
        doc_t = tl.load(seq_base + rows, mask=rmask, other=-1)
        # the state entering chunk 0 (the initial state) belongs to the first document, numbered 0
        doc_in = tl.load(seq_base - 1, mask=c > 0, other=0)
        reach = tl.where(doc_t == doc_in, reach, 0.0)

    # C_t·S_{c-1} and C_t·h' share each C tile; the (N, P) tiles are read transposed from (P, N) storage. The
    # N tiles are unrolled (one for N ≤ 128): a runtime loop would be software-pipelined, holding num_stages
    # copies of the three tiles in shared memory for a loop that mostly runs once
    c_base = c_ptr + b64 * s_cb + t0.to(tl.int64) * s_cl + g * s_cg
    st_base = st_ptr + b64 * s_stb + c.to(tl.int64) * s_stc + h * s_sth
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=tl.float32)
    acc_off = tl.zeros((BLOCK_L, BLOCK_P), dtype=tl.float32)
    for i in tl.static_range(N_TILES):
        ns = i * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = ns < N
        ct = tl.load(c_base + rows[:, None] * s_cl + ns[None, :], mask=rmask[:, None] & nmask[None, :], other=0.0)
        npmask = nmask[:, None] & pmask[None, :]
        st = tl.load(st_base + cols[None, :] * s_stp + ns[:, None], mask=npmask, other=0.0)
        acc = _dot(ct, st.to(ct.dtype), acc, IEEE)
        if HAS_OFF:
            o = tl.load(off_ptr + b64 * s_ob + h * s_oh + cols[None, :] * s_op + ns[:, None], mask=npmask, other=0.0)
            acc_off = _dot(ct, o.to(ct.dtype), acc_off, IEEE)
    acc = acc * reach[:, None]
    if HAS_OFF:
        acc += acc_off

    # intra-chunk: Σ_k (C_t·B_k) exp(cs_t − cs_k) Δ_k x_k over k ≤ t; the exponent is masked, not clamped,
    # so that positive a (growing states) stays exact and masked pairs give exp(−inf) = 0
    x_base = x_ptr + b64 * s_b + t0.to(tl.int64) * s_l + h * s_h
    cb_base = cb_ptr + b64 * s_cbb + c.to(tl.int64) * s_cbc + g * s_cbg
    k_end = tl.minimum((pid_l + 1) * BLOCK_L, q_len)
    for k0 in range(0, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < q_len
        cb = tl.load(cb_base + rows[:, None] * s_cbm + ks[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        cs_k = tl.load(cs_ptr + dcs + ks, mask=kmask, other=0.0).to(tl.float32)
        dt_k = tl.load(dt_ptr + dcs + ks, mask=kmask, other=0.0).to(tl.float32)
        causal = (rows[:, None] >= ks[None, :]) & kmask[None, :]
        w = cb.to(tl.float32) * tl.exp(tl.where(causal, cs_t[:, None] - cs_k[None, :], float("-inf"))) * dt_k[None, :]
        xk = tl.load(x_base + ks[:, None] * s_l + cols[None, :], mask=kmask[:, None] & pmask[None, :], other=0.0)
        acc = _dot(w.to(xk.dtype), xk, acc, IEEE)

    mask = rmask[:, None] & pmask[None, :]
    offs = b64 * s_b + (t0 + rows[:, None]).to(tl.int64) * s_l + h * s_h + cols[None, :]
    if HAS_D:
        if D_PER_P:
            dd = tl.load(d_ptr + h * s_dd + cols, mask=pmask, other=0.0).to(tl.float32)
        else:
            dd = tl.load(d_ptr + h * s_dd).to(tl.float32)
        xt = tl.load(x_base + rows[:, None] * s_l + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += xt * dd
    if HAS_YOFF:
        acc += tl.load(yoff_ptr + b64 * s_yob + h * s_yoh + cols, mask=pmask, other=0.0).to(tl.float32)[None, :]
    if HAS_ADD:
        acc += tl.load(add_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        sig = tl.sigmoid(zz)
        if BWD:
            do = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dz_ptr + offs, (do * acc * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask)
            tl.store(out_ptr + offs, (do * zz * sig).to(out_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(out_ptr + offs, (acc * zz * sig).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def chunk_scan(cb, x, dt, dA_cumsum, C, states, D=None, z=None, state_offset=None, y_offset=None, extra=None,
               seq_idx=None, dout=None):
    """out (batch, L, H, P) in x's dtype; with dout (needs z), (dy_pre fp32, dz) instead.

    cb (batch, nchunks, G, Q, Q) C_t·B_k per chunk (zero across documents); x, z, dout, extra (batch, L, H, P);
    dt, dA_cumsum (batch, H, nchunks, Q) the discretized Δ and the within-chunk cumsum of Δ·A; C (batch, L, G, N);
    states (batch, nchunks, H, P, N) the state entering each chunk; D (H,) or (H, P); state_offset (H, P, N) or
    (batch, H, P, N); y_offset (H, P) or (batch, H, P); seq_idx (batch, L) int32 documents, the first one 0.
    """
    batch, length, nheads, headdim = x.shape
    _, nchunks, groups, q, _ = cb.shape
    nstate = C.shape[-1]
    expect = {
        "cb": (cb, (batch, nchunks, groups, q, q)), "dt": (dt, (batch, nheads, nchunks, q)),
        "dA_cumsum": (dA_cumsum, (batch, nheads, nchunks, q)), "C": (C, (batch, length, groups, nstate)),
        "states": (states, (batch, nchunks, nheads, headdim, nstate)),
    }
    for name, (t, shape) in expect.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"chunk_scan: {name} has shape {tuple(t.shape)}, expected {shape}")
    if nheads % groups or nchunks != triton.cdiv(length, q) or q < 16 or q & (q - 1):
        raise ValueError(f"chunk_scan: {nheads} heads, {groups} groups, chunk {q}, {nchunks} chunks for length "
                         f"{length}: need groups dividing heads, a power-of-two chunk ≥ 16, ceil(L / chunk) chunks")
    if dout is not None and z is None:
        raise ValueError("chunk_scan: the backward mode (dout) is the z gate's and needs z")
    for name, t in (("z", z), ("dout", dout), ("extra", extra)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"chunk_scan: {name} has shape {tuple(t.shape)}, expected {tuple(x.shape)}")
    x, C, states = x.contiguous(), C.contiguous(), states.contiguous()
    cb, dt, dA_cumsum = cb.contiguous(), dt.contiguous(), dA_cumsum.contiguous()
    z, dout, extra = (None if t is None else t.contiguous() for t in (z, dout, extra))
    off = None if state_offset is None else state_offset.contiguous()
    yoff = None if y_offset is None else y_offset.contiguous()
    D = None if D is None else D.contiguous()
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    if dout is None:
        out, dz = torch.empty_like(x), None
    else:
        # dy_pre in fp32: the offset, y-offset and restart gradients are sums of it over batch × L, which
        # half-precision terms would miss by ~sqrt(batch L) ulps
        out, dz = torch.empty_like(x, dtype=torch.float32), torch.empty_like(z)

    def grid(meta):
        return (triton.cdiv(q, meta["BLOCK_L"]) * triton.cdiv(headdim, meta["BLOCK_P"]), batch * nchunks, nheads)

    dummy = x
    block_n = min(128, max(16, triton.next_power_of_2(nstate)))
    _chunk_scan_kernel[grid](
        cb, x, dt, dA_cumsum, dummy if seq is None else seq, C, states, dummy if D is None else D,
        dummy if off is None else off, dummy if yoff is None else yoff, dummy if extra is None else extra,
        dummy if z is None else z, dummy if dout is None else dout, out, dummy if dz is None else dz,
        length, nheads, headdim, nstate, q, nchunks, nheads // groups,
        x.stride(0), x.stride(1), x.stride(2),
        cb.stride(0), cb.stride(1), cb.stride(2), cb.stride(3),
        dt.stride(0), dt.stride(1), dt.stride(2),
        0 if seq is None else seq.stride(0),
        C.stride(0), C.stride(1), C.stride(2),
        states.stride(0), states.stride(1), states.stride(2), states.stride(3),
        0 if D is None else D.stride(0),
        0 if off is None or off.dim() == 3 else off.stride(0),
        0 if off is None else off.stride(-3), 0 if off is None else off.stride(-2),
        0 if yoff is None or yoff.dim() == 2 else yoff.stride(0), 0 if yoff is None else yoff.stride(-2),
        HAS_SEQ=seq is not None, HAS_D=D is not None, D_PER_P=D is not None and D.dim() == 2,
        HAS_OFF=off is not None, HAS_YOFF=yoff is not None, HAS_ADD=extra is not None, HAS_Z=z is not None,
        BWD=dout is not None, IEEE=x.dtype == torch.float32,
        BLOCK_N=block_n, N_TILES=triton.cdiv(nstate, block_n),
    )
    return out if dout is None else (out, dz)
