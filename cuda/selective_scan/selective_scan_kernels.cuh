// Mamba-1 selective scan with a learned initial state, a state offset and a y offset, fused.
//
//   Δ_t = softplus(δ_t + bias)      h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t      h_0 = initial state
//   y_t = Σ_n C_t,n (h_t,n + h'_n) + D u_t + y'                                  out_t = y_t silu(z_t)
//
// Layout: a block of 128 threads owns CPB channels of one batch row (all in one B/C group). Each
// channel is served by LPC consecutive lanes, each lane keeping NPT states in registers, so the
// recurrence runs sequentially in time per thread with no scan primitive at all: batch x channels x
// states usually gives more independent recurrences than the GPU has threads; where it does not, each row
// is split into time segments composed through their end states (ScanParams::nseg). Time is cut into chunks;
// per chunk the block stages u, Δ (softplus applied once per (channel, t)) and B, C (shared by the
// block's channels) in shared memory, runs the recurrence, and writes y with coalesced stores. The
// next chunk's loads are issued into registers before the current chunk's recurrence runs (Staged).
// The offset h' is added in registers where C_t reads the state, so it costs one add per state.
//
// Backward: the op saves only its inputs, so the kernel first replays the recurrence to store the
// state at every chunk start (a workspace), then walks the chunks in reverse: replay the chunk from
// its checkpoint keeping h_{t-1} in registers, then the reverse recurrence
//   g_t = ā_{t+1} g_{t+1} + dy_t C_t        (g_L includes dfinal_state; dh_0 = ā_1 g_1)
// with dA, dh' accumulated per thread, dΔ and du reduced over states with lane shuffles, and dB, dC
// reduced over each warp's channels with shuffles, then over the block's warps in shared memory, before
// one atomic add per (n, t) per block.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdlib>

#include "selective_scan.h"

namespace ssm_offset {
namespace detail {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// torch's softplus (threshold 20) and its derivative
__device__ __forceinline__ float softplus(float x) { return x <= 20.f ? log1pf(__expf(x)) : x; }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }
// dΔ/d(δ + bias) at x = δ + bias: softplus's derivative, or 1 without softplus
__device__ __forceinline__ float dsoftplus(bool softplus, float x) { return (!softplus || x > 20.f) ? 1.f : sigmoid(x); }

// Chunk lengths and the backward's register budget, measured on an H100 (benches/results/kernels-h100-staging.md):
// forward chunks of 16 at 32 channels per block and backward chunks of 8 keep the staged next chunk in registers
// without spills at 8 (forward) and 4 (backward) blocks per multiprocessor. The macros exist to measure
// alternatives (SSM_OFFSET_NVCC_FLAGS=-DSSM_OFFSET_TB=16 ..., benches/gpu/scan_layout.py).
#ifndef SSM_OFFSET_TF32
#define SSM_OFFSET_TF32 16
#endif
#ifndef SSM_OFFSET_TB
#define SSM_OFFSET_TB 8
#endif
#ifndef SSM_OFFSET_BWD_BLOCKS
#define SSM_OFFSET_BWD_BLOCKS 4
#endif
#ifndef SSM_OFFSET_FWD_WIDE_BLOCKS
#define SSM_OFFSET_FWD_WIDE_BLOCKS 4
#endif
#ifndef SSM_OFFSET_FWD_UNROLL
#define SSM_OFFSET_FWD_UNROLL 16
#endif
constexpr int kFwdUnroll = SSM_OFFSET_FWD_UNROLL;  // a pragma's argument is not macro-expanded
template <int NPT, int LPC>
struct Cfg {
  static constexpr int kNpt = NPT, kLpc = LPC, kCpb = kThreads / LPC, kNpad = NPT * LPC;
  static constexpr int kBs = kNpad + 4;  // B/C rows in shared memory, padded against bank conflicts
  static constexpr int kTf = kCpb >= 128 ? 16 : kCpb >= 64 ? 32 : kNpad >= 256 ? 16 : kNpad >= 128 ? 32 : kCpb >= 32 ? SSM_OFFSET_TF32 : 64;
  static constexpr int kTb = (NPT >= 8 || kCpb >= 64) ? 8 : SSM_OFFSET_TB;
  static_assert(kSegmentAlign % kTf == 0 && kStatesEvery % kSegmentAlign == 0,
                "forward tiles must end on every multiple of kStatesEvery (ScanParams::states)");
  // blocks per SM the register allocation must allow: the whole grid of the common shapes then fits
  // in one wave (e.g. 1024 blocks at B=8, D=4096 on 132 SMs)
  // N in 17..64 at 8 blocks (64 registers) spills inside the unrolled time loop (ptxas: up to 276 bytes; SASS:
  // local loads between the steps' exponentials); at 4 it spills nothing. Measured on an H100 (mixer layout,
  // benches/results/wide-blocks-h100.md): at N = 24 (32 padded states) 8 blocks are faster all the same (0.528 against
  // 0.766 ms forward at 8x1536x1024), at N = 64 4 blocks (1.264 against 1.580 ms).
  static constexpr int kFwdMinBlocks =
      (NPT <= 4 && kNpad <= 32) ? 8 : (NPT <= 4 && kNpad <= 64) ? SSM_OFFSET_FWD_WIDE_BLOCKS : 4;
  static constexpr int kBwdMinBlocks = NPT <= 4 ? SSM_OFFSET_BWD_BLOCKS : 2;
};

struct BlockPos {
  int b, g, d0, nrows;
};

__device__ __forceinline__ BlockPos block_pos(const ScanParams &p, int cpb) {
  const int dim_g = p.dim / p.groups;
  const int per_group = (dim_g + cpb - 1) / cpb;
  BlockPos bp;
  bp.b = blockIdx.y;
  bp.g = blockIdx.x / per_group;
  const int cb = blockIdx.x % per_group;
  bp.d0 = bp.g * dim_g + cb * cpb;
  bp.nrows = min(cpb, dim_g - cb * cpb);
  return bp;
}

// Where a thread works: its block's rows, its channel c (d in the tensor) and its lane among the channel's LPC, and
// the block's time segment [T0, T1) (blockIdx.z; the whole row without a time split).
template <int CPB, int LPC>
struct Place {
  BlockPos bp;
  int c, lane, d, seg, T0, T1;
  bool active;
  __device__ __forceinline__ explicit Place(const ScanParams &p)
      : bp(block_pos(p, CPB)), c(threadIdx.x / LPC), lane(threadIdx.x % LPC), d(bp.d0 + c), seg(blockIdx.z),
        T0(seg * p.seg_len), T1(min(p.len, T0 + p.seg_len)), active(c < bp.nrows) {}
  // this channel's (nstate) row of the segment in the time split's (batch, nseg, dim, nstate) arrays
  __device__ __forceinline__ long long seg_row(const ScanParams &p) const {
    return (((long long)bp.b * p.nseg + seg) * p.dim + d) * p.nstate;
  }
};

// Sum over aligned groups of W consecutive lanes (W a power of two, all 32 lanes taking part).
template <int W>
__device__ __forceinline__ float lane_sum(float v) {
#pragma unroll
  for (int o = W / 2; o >= 1; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int NPT>
__device__ __forceinline__ void load_vec(float *v, const float *s) {
  if constexpr (NPT % 4 == 0) {
#pragma unroll
    for (int k = 0; k < NPT; k += 4) {
      const float4 q = *reinterpret_cast<const float4 *>(s + k);
      v[k] = q.x; v[k + 1] = q.y; v[k + 2] = q.z; v[k + 3] = q.w;
    }
  } else if constexpr (NPT == 2) {
    const float2 q = *reinterpret_cast<const float2 *>(s);
    v[0] = q.x; v[1] = q.y;
  } else {
#pragma unroll
    for (int k = 0; k < NPT; ++k) v[k] = s[k];
  }
}

template <int NPT>
__device__ __forceinline__ void store_vec(float *s, const float *v) {
  if constexpr (NPT % 4 == 0) {
#pragma unroll
    for (int k = 0; k < NPT; k += 4) *reinterpret_cast<float4 *>(s + k) = make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]);
  } else {
#pragma unroll
    for (int k = 0; k < NPT; ++k) s[k] = v[k];
  }
}

// This lane's NPT states from a (D, N) row (the initial state at the scan's start, and again where a document
// starts: h_{t-1} := h_0), or zeros without one. Read from global memory at each restart rather than kept in
// registers: restarts are rare, registers are what the backward runs short of.
template <int NPT>
__device__ __forceinline__ void load_state(float *h, const float *row, int lane, int N) {
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    h[k] = (row && n < N) ? row[n] : 0.f;
  }
}

__host__ __device__ constexpr int sums_per_lane(int m, int lpc) { return m * lpc >= 32 ? m * lpc / 32 : 1; }

// Sum each of M values over the CW = 32 / LPC lanes that hold the same states for different
// channels (lane bits LPC..16), leaving every sum in exactly one lane: a reduce-scatter, M - 1
// shuffles where a butterfly on each value would take M log2(CW). Returns how many sums this lane
// holds (v[0..count)) and the index of the first in `first` (0 if the lane holds none).
template <int M, int LPC>
__device__ __forceinline__ int channel_reduce_scatter(float *v, int &first) {
  first = 0;
  bool writer = true;
#pragma unroll
  for (int r = 0; r < 5; ++r) {
    const int o = 16 >> r;
    if (o < LPC) break;
    const bool up = threadIdx.x & o;
    const int m = M >> (r + 1);
    if (m >= 1) {
#pragma unroll
      for (int j = 0; j < m; ++j) {
        const float send = up ? v[j] : v[j + m];
        const float keep = up ? v[j + m] : v[j];
        v[j] = keep + __shfl_xor_sync(0xffffffffu, send, o);
      }
      if (up) first += m;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
      writer = writer && !up;
    }
  }
  return writer ? sums_per_lane(M, LPC) : 0;
}

// Per-channel constants of a block, zero where absent: delta_bias, D, and the y offset of this batch row.
template <int CPB>
struct Chan {
  float bias[CPB], D[CPB], yoff[CPB];

  __device__ __forceinline__ void load(const ScanParams &p, const BlockPos &bp) {
    for (int r = threadIdx.x; r < CPB; r += kThreads) {
      const int dr = bp.d0 + r;
      const bool ok = r < bp.nrows;
      bias[r] = ok && p.delta_bias ? p.delta_bias[dr] : 0.f;
      D[r] = ok && p.D ? p.D[dr] : 0.f;
      yoff[r] = ok && p.yoff ? p.yoff[bp.b * p.yoff_bstride + dr] : 0.f;
    }
  }
};

// One chunk [t0, t0 + tl) of a block's inputs in shared memory, fp32, zero outside the chunk and the block's
// channels: u, Δ = softplus(δ + bias) per (channel, t), B and C transposed to [t][n]; for the backward also
// z, dΔ/d(δ + bias) and dout; rst[t]: a document starts at t0 + t (never at 0: the initial state is already there).
template <int CPB, int TT, int BS, bool WITH_C, bool GRAD>
struct Tile {
  float u[CPB][TT + 1], dt[CPB][TT + 1];
  float z[GRAD ? CPB : 1][TT + 1], dsp[GRAD ? CPB : 1][TT + 1], go[GRAD ? CPB : 1][TT + 1];
  __align__(16) float B[TT][BS];
  __align__(16) float C[WITH_C ? TT : 1][BS];
  int rst[TT];
};

// Where element i of a ROWS x TT tile of a (batch, D, L) tensor sits: t fastest where the tensor is channel-major,
// the row fastest where it is time-major (TM), so that consecutive lanes touch consecutive addresses either way.
template <int ROWS, int TT, bool TM>
struct TilePos {
  int r, t;
  __device__ __forceinline__ explicit TilePos(int i) : r(TM ? i % ROWS : i / TT), t(TM ? i / ROWS : i % TT) {}
};

// B or C of the block's batch row and group; element (n, t) from there is at n * ld + t (time-major: t * ld + n).
// Entry k of ScanParams::states for channel d of batch row b: the state's nstate floats
__device__ __forceinline__ float *states_row(const ScanParams &p, int b, int d, int k) {
  return p.states + (((long long)b * p.dim + d) * state_chunks(p.len) + k) * p.nstate;
}

template <typename T>
__device__ __forceinline__ const T *group_ptr(const void *base, const BCStrides &s, const BlockPos &bp) {
  return static_cast<const T *>(base) + bp.b * s.b + bp.g * s.g;
}

// The block's first channel of its batch row; element (r, t) from there is at row_off<TM>(s, r, t).
template <bool TM, typename T, typename V>
__device__ __forceinline__ T *row_ptr(V *base, const Strides &s, const BlockPos &bp) {
  return static_cast<T *>(base) + bp.b * s.b + (TM ? (long long)bp.d0 : (long long)bp.d0 * s.ld);
}

template <bool TM>
__device__ __forceinline__ int row_off(const Strides &s, int r, int t) { return TM ? t * s.ld + r : r * s.ld + t; }

// The same chunk in registers, as loaded from global memory: each thread holds elements i = threadIdx.x +
// j * kThreads of each tensor's (channel, t) tile and of the (state, t) tiles, at TilePos(i), so loads coalesce.
// The kernels load chunk k + 1 (the backward: k - 1) right after committing chunk k to shared memory: the loads'
// latency then hides behind chunk k's recurrence. Loading and then waiting, half of the backward's warp time was
// stalled on them (ncu: benches/results/kernels-h100-staging.md).
template <typename T, int CPB, int TT, int NPAD, bool WITH_C, bool GRAD, bool TM>
struct Staged {
  static constexpr int kRow = (CPB * TT + kThreads - 1) / kThreads;
  static constexpr int kSt = (NPAD * TT + kThreads - 1) / kThreads;
  // Tiles are staged in registers only where they are small (4 elements a thread: N <= 16, 32 channels a block,
  // the usual chunk lengths); larger ones would spill, and commit reads them from global memory instead
  static constexpr bool kStageRows = kRow <= 4, kStageBC = kSt <= 4;
  static constexpr int kR = kStageRows ? kRow : 1;
  T u[kR], dl[kR], z[GRAD ? kR : 1], go[GRAD ? kR : 1];
  T B[kStageBC ? kSt : 1], C[kStageBC && WITH_C ? kSt : 1];
  int seq, seq_prev, t0_;

  // one element of a (channel, t) tensor from its block row, zero outside the block's channels and the chunk
  template <bool TMT>
  __device__ __forceinline__ static T row_at(const T *row, const Strides &s, const BlockPos &bp, int i, int t0,
                                             int tl) {
    const TilePos<CPB, TT, TMT> q(i);
    const bool ok = i < CPB * TT && q.r < bp.nrows && q.t < tl;
    return ok ? row[row_off<TMT>(s, q.r, t0 + q.t)] : from_f<T>(0.f);
  }

  __device__ __forceinline__ static T state_at(const T *bg, const BCStrides &s, int nstate, int i, int t0, int tl) {
    const TilePos<NPAD, TT, TM> q(i);
    const bool ok = i < NPAD * TT && q.r < nstate && q.t < tl;
    return ok ? bg[TM ? (t0 + q.t) * s.ld + q.r : q.r * s.ld + t0 + q.t] : from_f<T>(0.f);
  }

  // element j of this thread's share of the (channel, t) tiles: u, delta, and for the backward z and dout
  __device__ __forceinline__ static void load_rows(int j, const ScanParams &p, const BlockPos &bp, int t0, int tl,
                                                   T &u_, T &dl_, T &z_, T &go_) {
    const int i = threadIdx.x + j * kThreads;
    u_ = row_at<false>(row_ptr<false, const T>(p.u, p.su, bp), p.su, bp, i, t0, tl);
    dl_ = row_at<TM>(row_ptr<TM, const T>(p.delta, p.sdelta, bp), p.sdelta, bp, i, t0, tl);
    if constexpr (GRAD) {
      z_ = p.z ? row_at<TM>(row_ptr<TM, const T>(p.z, p.sz, bp), p.sz, bp, i, t0, tl) : from_f<T>(0.f);
      go_ = row_at<TM>(row_ptr<TM, const T>(p.dout, p.sdout, bp), p.sdout, bp, i, t0, tl);
    }
  }

  __device__ __forceinline__ void fetch(const ScanParams &p, const BlockPos &bp, int t0, int tl) {
    t0_ = t0;
    if constexpr (kStageRows) {
#pragma unroll
      for (int j = 0; j < kRow; ++j) load_rows(j, p, bp, t0, tl, u[j], dl[j], z[GRAD ? j : 0], go[GRAD ? j : 0]);
    }
    if constexpr (kStageBC) {
      const T *bB = group_ptr<T>(p.B, p.sB, bp), *bC = group_ptr<T>(p.C, p.sC, bp);
#pragma unroll
      for (int j = 0; j < kSt; ++j) {
        const int i = threadIdx.x + j * kThreads;
        B[j] = state_at(bB, p.sB, p.nstate, i, t0, tl);
        if constexpr (WITH_C) C[j] = state_at(bC, p.sC, p.nstate, i, t0, tl);
      }
    }
    if (p.seq_idx && threadIdx.x < TT) {
      const int t = threadIdx.x;
      const int *sq = p.seq_idx + (long long)bp.b * p.len + t0 + t;
      seq = t < tl ? sq[0] : 0;
      seq_prev = (t < tl && t0 + t > 0) ? sq[-1] : seq;
    }
  }

  template <int BS>
  __device__ __forceinline__ void commit(Tile<CPB, TT, BS, WITH_C, GRAD> &s, const Chan<CPB> &ch,
                                         const ScanParams &p, const BlockPos &bp, int tl) const {
#pragma unroll
    for (int j = 0; j < kRow; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i < CPB * TT) {
        T u_, dl_, z_ = from_f<T>(0.f), go_ = from_f<T>(0.f);
        if constexpr (kStageRows) {
          u_ = u[j], dl_ = dl[j], z_ = z[GRAD ? j : 0], go_ = go[GRAD ? j : 0];
        } else {
          load_rows(j, p, bp, t0_, tl, u_, dl_, z_, go_);
        }
        const TilePos<CPB, TT, false> qu(i);
        const TilePos<CPB, TT, TM> qd(i);
        s.u[qu.r][qu.t] = to_f(u_);
        float dt = 0.f, dsp = 0.f;
        if (qd.r < bp.nrows && qd.t < tl) {
          const float x = to_f(dl_) + ch.bias[qd.r];
          dt = p.softplus ? softplus(x) : x;
          dsp = dsoftplus(p.softplus, x);
        }
        s.dt[qd.r][qd.t] = dt;
        if constexpr (GRAD) {
          s.dsp[qd.r][qd.t] = dsp;
          s.z[qd.r][qd.t] = to_f(z_);
          s.go[qd.r][qd.t] = to_f(go_);
        }
      }
    }
    const T *bB = group_ptr<T>(p.B, p.sB, bp), *bC = group_ptr<T>(p.C, p.sC, bp);
#pragma unroll
    for (int j = 0; j < kSt; ++j) {
      const int i = threadIdx.x + j * kThreads;
      if (i < NPAD * TT) {
        const TilePos<NPAD, TT, TM> q(i);
        if constexpr (kStageBC) {
          s.B[q.t][q.r] = to_f(B[j]);
          if constexpr (WITH_C) s.C[q.t][q.r] = to_f(C[j]);
        } else {
          s.B[q.t][q.r] = to_f(state_at(bB, p.sB, p.nstate, i, t0_, tl));
          if constexpr (WITH_C) s.C[q.t][q.r] = to_f(state_at(bC, p.sC, p.nstate, i, t0_, tl));
        }
      }
    }
    if (p.seq_idx && threadIdx.x < TT) s.rst[threadIdx.x] = threadIdx.x < tl && seq != seq_prev;
  }
};

// One segment of every row per blockIdx.z (the whole row without a time split). SUMMARY: from a zero start, no
// output; the segment's end state and decay product for compose_kernel. Otherwise from the segment's start state
// (the initial state for the first), writing y, and the final state from the last segment.
template <typename T, int NPT, int LPC, bool TM, bool SUMMARY>
__global__ void __launch_bounds__(kThreads, Cfg<NPT, LPC>::kFwdMinBlocks) fwd_kernel(ScanParams p) {
  using K = Cfg<NPT, LPC>;
  constexpr int CPB = K::kCpb, NPAD = K::kNpad, TF = K::kTf, BS = K::kBs;
  __shared__ Tile<CPB, TF, BS, !SUMMARY, false> s;
  __shared__ Chan<CPB> ch;
  __shared__ float s_y[SUMMARY ? 1 : CPB][TF + 1];

  const Place<CPB, LPC> w(p);
  const BlockPos &bp = w.bp;
  const int c = w.c, lane = w.lane, d = w.d, N = p.nstate, seg = w.seg, T0 = w.T0, T1 = w.T1;
  const bool active = w.active;
  // this channel's row in the initial state: recomputed where used, since registers are what the forward runs
  // short of (kept live, it pushed the staged loads into local memory); so is w.seg_row(p)
  auto h0row = [&] { return (active && p.h0) ? p.h0 + bp.b * p.h0_bstride + (long long)d * N : nullptr; };

  float A2[NPT], h[NPT], ho[NPT], decay[NPT];
  load_state<NPT>(h, SUMMARY ? nullptr : (active && p.seg_start) ? p.seg_start + w.seg_row(p) : h0row(), lane, N);
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    const bool ok = active && n < N;
    const long long dn = (long long)d * N + n;
    A2[k] = ok ? p.A[dn] * kLog2e : 0.f;
    ho[k] = (ok && p.hoff) ? p.hoff[bp.b * p.hoff_bstride + dn] : 0.f;
    decay[k] = 1.f;
  }
  // h at a chunk start into ScanParams::states: the segments start and the tiles end on multiples of kSegmentAlign,
  // so every multiple of kStatesEvery below L is the end of one tile (or the row's start)
  auto save = [&](int t) {
    if (!SUMMARY && active && t % kStatesEvery == 0 && t < p.len) {
      float *row = states_row(p, bp.b, d, t / kStatesEvery);
#pragma unroll
      for (int k = 0; k < NPT; ++k)
        if (lane * NPT + k < N) row[lane * NPT + k] = h[k];
    }
  };
  ch.load(p, bp);
  Staged<T, CPB, TF, NPAD, !SUMMARY, false, TM> st;
  st.fetch(p, bp, T0, min(TF, T1 - T0));
  __syncthreads();

  for (int t0 = T0; t0 < T1; t0 += TF) {
    const int tl = min(TF, T1 - t0);
    st.commit(s, ch, p, bp, tl);
    // here rather than at the tile's end, where the next tile's staged loads hold registers; a segment's start state
    // is the previous segment's end state, saved there
    if (t0 > T0 || seg == 0) save(t0);
    __syncthreads();
    if (t0 + TF < T1) st.fetch(p, bp, t0 + TF, min(TF, T1 - t0 - TF));
#pragma unroll kFwdUnroll
    for (int t = 0; t < tl; ++t) {
      if (p.seq_idx && s.rst[t]) {  // uniform over the block: one batch row
        load_state<NPT>(h, h0row(), lane, N);
#pragma unroll
        for (int k = 0; k < NPT; ++k) decay[k] = 0.f;  // what came before the restart no longer reaches h
      }
      const float dt = s.dt[c][t];
      const float du = dt * s.u[c][t];
      float Bv[NPT];
      load_vec<NPT>(Bv, &s.B[t][lane * NPT]);
      if constexpr (SUMMARY) {
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          const float a = exp2f(dt * A2[k]);
          h[k] = a * h[k] + du * Bv[k];
          decay[k] *= a;
        }
      } else {
        float Cv[NPT];
        load_vec<NPT>(Cv, &s.C[t][lane * NPT]);
        float acc = 0.f;
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          h[k] = exp2f(dt * A2[k]) * h[k] + du * Bv[k];
          acc += Cv[k] * (h[k] + ho[k]);
        }
        acc = lane_sum<LPC>(acc);
        if (lane == 0) s_y[c][t] = acc;
      }
    }
    __syncthreads();
    if constexpr (!SUMMARY) {
      const T *z = p.z ? row_ptr<TM, const T>(p.z, p.sz, bp) : nullptr;
      T *y = row_ptr<TM, T>(p.y, p.sy, bp);
      for (int i = threadIdx.x; i < CPB * TF; i += kThreads) {
        const TilePos<CPB, TF, TM> q(i);
        if (q.r < bp.nrows && q.t < tl) {
          float v = s_y[q.r][q.t] + ch.D[q.r] * s.u[q.r][q.t] + ch.yoff[q.r];
          if (z) {
            const float zz = to_f(z[row_off<TM>(p.sz, q.r, t0 + q.t)]);
            v *= zz * sigmoid(zz);
          }
          y[row_off<TM>(p.sy, q.r, t0 + q.t)] = from_f<T>(v);
        }
      }
      __syncthreads();
    }
  }
  save(T1);
  if (active) {
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const int n = lane * NPT + k;
      if (n >= N) continue;
      if constexpr (SUMMARY) {
        p.seg_end[w.seg_row(p) + n] = h[k];
        p.seg_decay[w.seg_row(p) + n] = decay[k];
      } else if (seg == p.nseg - 1) {
        p.final_state[((long long)bp.b * p.dim + d) * N + n] = h[k];
      }
    }
  }
}

template <typename T, int NPT, int LPC, bool TM>
__global__ void __launch_bounds__(kThreads, Cfg<NPT, LPC>::kBwdMinBlocks) bwd_kernel(ScanParams p) {
  using K = Cfg<NPT, LPC>;
  constexpr int CPB = K::kCpb, NPAD = K::kNpad, TB = K::kTb, BS = K::kBs;
  constexpr int kWarps = kThreads / 32;
  // dB, dC summed over a warp's channels go to the warp's own slice of s_part, written without atomics (a float
  // atomicAdd to shared memory is a compare-and-swap loop on sm_90), and 2d sums the slices. Where the slices would
  // not fit (large N), the lanes holding the sums add them to global memory directly.
  constexpr bool kSlices = kWarps * TB * 2 * NPAD * 4 <= 16384;
  __shared__ Tile<CPB, TB, BS, true, true> s;
  __shared__ Chan<CPB> ch;
  __shared__ float s_y[CPB][TB + 1], s_dy[CPB][TB + 1], s_s1[CPB][TB + 1], s_s2[CPB][TB + 1];
  __shared__ float s_part[kSlices ? kWarps : 1][kSlices ? TB : 1][2 * NPAD];
  __shared__ float s_accD[CPB], s_accY[CPB], s_accBias[CPB];

  const Place<CPB, LPC> w(p);
  const BlockPos &bp = w.bp;
  const int c = w.c, lane = w.lane, d = w.d, N = p.nstate, L = p.len, seg = w.seg, T1 = w.T1;
  const int warp = threadIdx.x / 32;
  const bool active = w.active;
  const long long seg_row = w.seg_row(p);
  const long long dn0 = (long long)d * N;
  const float *h0row = (active && p.h0) ? p.h0 + bp.b * p.h0_bstride + dn0 : nullptr;
  float *dh0row = (active && p.dh0) ? p.dh0 + bp.b * p.h0_bstride + dn0 : nullptr;

  for (int r = threadIdx.x; r < CPB; r += kThreads) s_accD[r] = s_accY[r] = s_accBias[r] = 0.f;
  ch.load(p, bp);

  float A2[NPT], h[NPT], ho[NPT], G[NPT], dAacc[NPT], dho[NPT];
  // with a time split, the segment ends on its composed adjoint
  load_state<NPT>(G, !active ? nullptr : p.adj_end ? p.adj_end + seg_row
                                     : p.dfinal ? p.dfinal + ((long long)bp.b * p.dim + d) * N : nullptr, lane, N);
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    const bool ok = active && n < N;
    A2[k] = ok ? p.A[dn0 + n] * kLog2e : 0.f;
    ho[k] = (ok && p.hoff) ? p.hoff[bp.b * p.hoff_bstride + dn0 + n] : 0.f;
    dAacc[k] = 0.f;
    dho[k] = 0.f;
  }
  const long long bc_off = ((long long)bp.b * p.groups + bp.g) * N * L;  // dB, dC: contiguous fp32
  // The segment in pieces of at most kStatesEvery steps, last first: each piece replays the recurrence from its start
  // state (the forward's ScanParams::states, or the segment's start state) to checkpoint every chunk of TB steps,
  // then runs back through them; so the checkpoints take ckpt_slots = kStatesEvery / TB slots (fewer for short rows)
  // a channel instead of one per chunk of the row. Segments are whole chunks (but for the row's last).
  static_assert(kStatesEvery % TB == 0, "backward chunks must tile ScanParams::states' interval");
  // this thread's checkpoint slots: ckpt[b][seg][slot][d][lane * NPT + k]
  float *ck = p.ckpt + (((long long)bp.b * p.nseg + seg) * p.ckpt_slots * p.dim + d) * NPAD + lane * NPT;
  const long long ck_stride = (long long)p.dim * NPAD;
  for (int piece = (T1 - 1) / kStatesEvery; piece >= w.T0 / kStatesEvery; --piece) {
    const int p0 = max(w.T0, piece * kStatesEvery), p1 = min(T1, (piece + 1) * kStatesEvery);
    const int c0 = p0 / TB, c1 = (p1 + TB - 1) / TB - 1;  // the piece's first and last chunk
    if (p0 == w.T0) {
      load_state<NPT>(h, (active && p.seg_start) ? p.seg_start + seg_row : h0row, lane, N);
    } else {
      load_state<NPT>(h, active ? states_row(p, bp.b, d, piece) : nullptr, lane, N);
    }

    // 1. replay the recurrence to checkpoint the state at every chunk start (every chunk but the last is whole)
    {
      Staged<T, CPB, TB, NPAD, false, false, TM> st;
      if (c1 > c0) st.fetch(p, bp, c0 * TB, TB);
      __syncthreads();
      for (int kc = c0; kc <= c1; ++kc) {
        if (active) store_vec<NPT>(ck + (kc - c0) * ck_stride, h);
        if (kc == c1) break;
        auto &r = reinterpret_cast<Tile<CPB, TB, BS, false, false> &>(s);  // a smaller tile in the same memory
        st.commit(r, ch, p, bp, TB);
        __syncthreads();
        if (kc + 1 < c1) st.fetch(p, bp, (kc + 1) * TB, TB);
#pragma unroll
        for (int t = 0; t < TB; ++t) {
          if (p.seq_idx && r.rst[t]) load_state<NPT>(h, h0row, lane, N);
          const float dt = r.dt[c][t];
          const float du = dt * r.u[c][t];
          float Bv[NPT];
          load_vec<NPT>(Bv, &r.B[t][lane * NPT]);
#pragma unroll
          for (int k = 0; k < NPT; ++k) h[k] = exp2f(dt * A2[k]) * h[k] + du * Bv[k];
        }
        __syncthreads();
      }
    }

    // 2. the piece's chunks in reverse
    Staged<T, CPB, TB, NPAD, true, true, TM> st;
    float hck[NPT];
#pragma unroll
    for (int k = 0; k < NPT; ++k) hck[k] = 0.f;
    st.fetch(p, bp, c1 * TB, p1 - c1 * TB);
    if (active) load_vec<NPT>(hck, ck + (c1 - c0) * ck_stride);
    for (int kc = c1; kc >= c0; --kc) {
      const int t0 = kc * TB;
      const int tl = min(TB, p1 - t0);
      st.commit(s, ch, p, bp, tl);
#pragma unroll
      for (int k = 0; k < NPT; ++k) h[k] = hck[k];
      __syncthreads();
      if (kc > c0) {
        st.fetch(p, bp, t0 - TB, TB);
        if (active) load_vec<NPT>(hck, ck + (kc - 1 - c0) * ck_stride);
      }

      // 2a. replay the chunk: h_{t-1} kept in registers, y before the gate to shared memory
      float hist[TB][NPT];
#pragma unroll
      for (int t = 0; t < TB; ++t) {
        if (t < tl) {
          if (p.seq_idx && s.rst[t]) load_state<NPT>(h, h0row, lane, N);
          const float dt = s.dt[c][t];
          const float du = dt * s.u[c][t];
          float Bv[NPT], Cv[NPT];
          load_vec<NPT>(Bv, &s.B[t][lane * NPT]);
          load_vec<NPT>(Cv, &s.C[t][lane * NPT]);
          float acc = 0.f;
#pragma unroll
          for (int k = 0; k < NPT; ++k) {
            hist[t][k] = h[k];
            h[k] = exp2f(dt * A2[k]) * h[k] + du * Bv[k];
            acc += Cv[k] * (h[k] + ho[k]);
          }
          acc = lane_sum<LPC>(acc);
          if (lane == 0) s_y[c][t] = acc;
        }
      }
      __syncthreads();

      // 2b. through the readout: dy before the gate, and dz
      T *dz = p.z ? row_ptr<TM, T>(p.dz, p.sdz, bp) : nullptr;
#pragma unroll 1
      for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
        const TilePos<CPB, TB, TM> q(i);
        float dy = 0.f;
        if (q.r < bp.nrows && q.t < tl) {
          const float go = s.go[q.r][q.t];
          if (p.z) {
            const float yv = s_y[q.r][q.t] + ch.D[q.r] * s.u[q.r][q.t] + ch.yoff[q.r];
            const float zz = s.z[q.r][q.t];
            const float sg = sigmoid(zz);
            dz[row_off<TM>(p.sdz, q.r, t0 + q.t)] = from_f<T>(go * yv * sg * (1.f + zz * (1.f - sg)));
            dy = go * zz * sg;
          } else {
            dy = go;
          }
        }
        s_dy[q.r][q.t] = dy;
      }
      __syncthreads();

      // 2c. the reverse recurrence
#pragma unroll
      for (int t = TB - 1; t >= 0; --t) {
        if (t < tl) {
          const float dt = s.dt[c][t];
          const float uu = s.u[c][t];
          const float dy = s_dy[c][t];
          const float du = dt * uu;
          float Bv[NPT], Cv[NPT], v[2 * NPT];
          load_vec<NPT>(Bv, &s.B[t][lane * NPT]);
          load_vec<NPT>(Cv, &s.C[t][lane * NPT]);
          float s1 = 0.f, s2 = 0.f;
#pragma unroll
          for (int k = 0; k < NPT; ++k) {
            const float a = exp2f(dt * A2[k]);
            const float hp = hist[t][k];
            const float g = G[k] + dy * Cv[k];
            const float hc = a * hp + du * Bv[k];
            v[NPT + k] = dy * (hc + ho[k]);  // dC
            dho[k] += dy * Cv[k];
            const float gah = g * a * hp;
            s1 += gah * A2[k];
            dAacc[k] += gah * dt;
            s2 += g * Bv[k];
            v[k] = g * du;  // dB
            G[k] = a * g;
          }
          if (p.seq_idx && s.rst[t]) {
            // h_{t-1} was the initial state, not the previous document's last state: ∂/∂h_{t-1} goes to h_0, and
            // nothing flows back across the boundary
#pragma unroll
            for (int k = 0; k < NPT; ++k) {
              if (dh0row && lane * NPT + k < N) atomicAdd(dh0row + lane * NPT + k, G[k]);
              G[k] = 0.f;
            }
          }
          s1 = lane_sum<LPC>(s1) * kLn2;
          s2 = lane_sum<LPC>(s2);
          if (lane == 0) {
            s_s1[c][t] = s1;
            s_s2[c][t] = s2;
          }
          int first;
          const int count = channel_reduce_scatter<2 * NPT, LPC>(v, first);
          if (count) {
#pragma unroll
            for (int j = 0; j < sums_per_lane(2 * NPT, LPC); ++j) {
              const int idx = first + j;
              const int which = idx < NPT ? 0 : 1, n = lane * NPT + idx - which * NPT;
              if constexpr (kSlices) {
                s_part[warp][t][which * NPAD + n] = v[j];
              } else if (n < N) {
                atomicAdd((which ? p.dC : p.dB) + bc_off + (long long)n * L + t0 + t, v[j]);
              }
            }
          }
        }
      }
      __syncthreads();

      // 2d. du, dδ per (channel, t), each in its own layout; dD, dy', dbias summed per channel; dB, dC per (n, t)
      T *du = row_ptr<false, T>(p.du, p.sdu, bp), *ddl = row_ptr<TM, T>(p.ddelta, p.sddelta, bp);
      // du is channel-major: its loop runs t fastest, so the sums over t for dD, dy' and dbias are lane sums there
      for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
        const TilePos<CPB, TB, false> q(i);
        float vD = 0.f, vY = 0.f, vB = 0.f;
        if (q.r < bp.nrows && q.t < tl) {
          const float dy = s_dy[q.r][q.t], uu = s.u[q.r][q.t], s2 = s_s2[q.r][q.t];
          du[row_off<false>(p.sdu, q.r, t0 + q.t)] = from_f<T>(s.dt[q.r][q.t] * s2 + ch.D[q.r] * dy);
          vD = dy * uu;
          vY = dy;
          vB = (s_s1[q.r][q.t] + uu * s2) * s.dsp[q.r][q.t];
        }
        vD = lane_sum<TB>(vD);
        vY = lane_sum<TB>(vY);
        vB = lane_sum<TB>(vB);
        if (q.t == 0) {
          s_accD[q.r] += vD;
          s_accY[q.r] += vY;
          s_accBias[q.r] += vB;
        }
      }
#pragma unroll 1
      for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
        const TilePos<CPB, TB, TM> q(i);
        if (q.r < bp.nrows && q.t < tl) {
          const float ddt = (s_s1[q.r][q.t] + s.u[q.r][q.t] * s_s2[q.r][q.t]) * s.dsp[q.r][q.t];
          ddl[row_off<TM>(p.sddelta, q.r, t0 + q.t)] = from_f<T>(ddt);
        }
      }
      if constexpr (kSlices) {
        for (int i = threadIdx.x; i < 2 * NPAD * TB; i += kThreads) {
          const int m = i / TB, t = i % TB, which = m / NPAD, n = m % NPAD;
          if (n < N && t < tl) {
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) sum += s_part[w][t][m];
            atomicAdd((which ? p.dC : p.dB) + bc_off + (long long)n * L + t0 + t, sum);
          }
        }
      }
      __syncthreads();
    }
  }  // pieces

  if (active) {
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const int n = lane * NPT + k;
      if (n < N) {
        atomicAdd(p.dA + dn0 + n, dAacc[k]);
        if (dh0row && seg == 0) atomicAdd(dh0row + n, G[k]);  // later segments' G went into adj_end
        if (p.dhoff) atomicAdd(p.dhoff + bp.b * p.hoff_bstride + dn0 + n, dho[k]);
      }
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < bp.nrows; r += kThreads) {
    const int dr = bp.d0 + r;
    if (p.dD) atomicAdd(p.dD + dr, s_accD[r]);
    if (p.dyoff) atomicAdd(p.dyoff + bp.b * p.yoff_bstride + dr, s_accY[r]);
    if (p.dbias) atomicAdd(p.dbias + dr, s_accBias[r]);
  }
}

// The backward's time split: each segment's adjoint at its start from a zero adjoint at its end, g_{t-1} =
// exp(Δ_t A) (g_t + dy_t C_t) (nothing crosses a document restart), for compose_adjoint in step.cu. It needs no
// state h, so it is a light pass: dy before the gate and C, per chunk in reverse.
template <typename T, int NPT, int LPC, bool TM>
__global__ void __launch_bounds__(kThreads, Cfg<NPT, LPC>::kBwdMinBlocks) adjoint_kernel(ScanParams p) {
  using K = Cfg<NPT, LPC>;
  constexpr int CPB = K::kCpb, NPAD = K::kNpad, TB = K::kTb, BS = K::kBs;
  __shared__ Tile<CPB, TB, BS, true, true> s;
  __shared__ Chan<CPB> ch;
  __shared__ float s_dy[CPB][TB + 1];

  const Place<CPB, LPC> w(p);
  const BlockPos &bp = w.bp;
  const int c = w.c, lane = w.lane, d = w.d, N = p.nstate, T0 = w.T0, T1 = w.T1;
  const bool active = w.active;
  float A2[NPT], G[NPT];
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    A2[k] = (active && n < N) ? p.A[(long long)d * N + n] * kLog2e : 0.f;
    G[k] = 0.f;
  }
  ch.load(p, bp);
  Staged<T, CPB, TB, NPAD, true, true, TM> st;
  for (int kc = (T1 + TB - 1) / TB - 1; kc >= T0 / TB; --kc) {
    const int t0 = kc * TB, tl = min(TB, T1 - t0);
    __syncthreads();  // the previous chunk's reads are done
    st.fetch(p, bp, t0, tl);
    st.commit(s, ch, p, bp, tl);
    __syncthreads();
    for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
      const TilePos<CPB, TB, TM> q(i);
      float dy = 0.f;
      if (q.r < bp.nrows && q.t < tl) {
        dy = s.go[q.r][q.t];
        if (p.z) dy *= s.z[q.r][q.t] * sigmoid(s.z[q.r][q.t]);
      }
      s_dy[q.r][q.t] = dy;
    }
    __syncthreads();
#pragma unroll
    for (int t = TB - 1; t >= 0; --t) {
      if (t < tl) {
        const float dt = s.dt[c][t], dy = s_dy[c][t];
        float Cv[NPT];
        load_vec<NPT>(Cv, &s.C[t][lane * NPT]);
#pragma unroll
        for (int k = 0; k < NPT; ++k) G[k] = exp2f(dt * A2[k]) * (G[k] + dy * Cv[k]);
        if (p.seq_idx && s.rst[t]) {
#pragma unroll
          for (int k = 0; k < NPT; ++k) G[k] = 0.f;
        }
      }
    }
  }
  if (active) {
    const long long row = w.seg_row(p);
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const int n = lane * NPT + k;
      if (n < N) p.adj_loc[row + n] = G[k];
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) step_kernel(StepParams p) {
  const int warp = (blockIdx.x * kThreads + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (warp >= p.batch * p.dim) return;  // whole warps leave together
  const int b = warp / p.dim, d = warp % p.dim, N = p.nstate;
  const int g = d / (p.dim / p.groups);
  const long long bd = (long long)b * p.dim + d;
  float x = to_f(static_cast<const T *>(p.delta)[bd]);
  if (p.delta_bias) x += p.delta_bias[d];
  const float dt = p.softplus ? softplus(x) : x;
  const float uu = to_f(static_cast<const T *>(p.u)[bd]);
  const T *Bp = static_cast<const T *>(p.B) + ((long long)b * p.groups + g) * N;
  const T *Cp = static_cast<const T *>(p.C) + ((long long)b * p.groups + g) * N;
  float acc = 0.f;
  for (int n = lane; n < N; n += 32) {
    const long long dn = (long long)d * N + n;
    const float hn = __expf(dt * p.A[dn]) * p.state[bd * N + n] + dt * to_f(Bp[n]) * uu;
    p.new_state[bd * N + n] = hn;
    const float ho = p.hoff ? p.hoff[b * p.hoff_bstride + dn] : 0.f;
    acc += to_f(Cp[n]) * (hn + ho);
  }
  acc = lane_sum<32>(acc);
  if (lane == 0) {
    float v = acc;
    if (p.D) v += p.D[d] * uu;
    if (p.yoff) v += p.yoff[b * p.yoff_bstride + d];
    if (p.z) {
      const float zz = to_f(static_cast<const T *>(p.z)[bd]);
      v *= zz * sigmoid(zz);
    }
    static_cast<T *>(p.y)[bd] = from_f<T>(v);
  }
}

// Blocks of CPB channels, none straddling a B/C group: (groups x blocks per group, batch)
template <int CPB>
inline dim3 scan_grid(const ScanParams &p) {
  const int per_group = (p.dim / p.groups + CPB - 1) / CPB;
  return dim3(p.groups * per_group, p.batch);
}

}  // namespace detail
}  // namespace ssm_offset

#include "selective_scan_tp.cuh"
#include "selective_scan_sp.cuh"

namespace ssm_offset {
namespace detail {

// (NPT, LPC) by state size: 4 states per lane up to 128 states, 8 beyond; LPC lanes cover them.
// Few channels (batch x D below a threshold) leave most of the GPU idle with 4 states per lane: then (NARROW)
// one state per lane, 16 lanes per channel, for up to 16 states. It was faster below 12,288 channels (forward) and
// 8,192 (backward) on an H100 (benches/results/scan-layout-h100.md) until the kernels split time into segments
// where channels are few; since then 4 states per lane with the split is faster at every size measured
// (benches/results/kernels-h100-staging.md), so the thresholds are 0. SSM_OFFSET_{FWD,BWD}_NARROW_BELOW
// (channels) set them, to measure the narrow layout again.
#define SSM_OFFSET_DISPATCH_NSTATE(N, NARROW, ...)                 \
  if ((N) <= 16 && (N) > 4 && (NARROW)) { constexpr int NPT = 1, LPC = 16; __VA_ARGS__; } \
  else if ((N) <= 4) { constexpr int NPT = 4, LPC = 1; __VA_ARGS__; }       \
  else if ((N) <= 8) { constexpr int NPT = 4, LPC = 2; __VA_ARGS__; }  \
  else if ((N) <= 16) { constexpr int NPT = 4, LPC = 4; __VA_ARGS__; } \
  else if ((N) <= 32) { constexpr int NPT = 4, LPC = 8; __VA_ARGS__; } \
  else if ((N) <= 64) { constexpr int NPT = 4, LPC = 16; __VA_ARGS__; } \
  else if ((N) <= 128) { constexpr int NPT = 4, LPC = 32; __VA_ARGS__; } \
  else { constexpr int NPT = 8, LPC = 32; __VA_ARGS__; }

inline int narrow_below(bool backward) {
  static const int fwd = [] { const char *e = std::getenv("SSM_OFFSET_FWD_NARROW_BELOW"); return e ? std::atoi(e) : 0; }();
  static const int bwd = [] { const char *e = std::getenv("SSM_OFFSET_BWD_NARROW_BELOW"); return e ? std::atoi(e) : 0; }();
  return backward ? bwd : fwd;
}

template <typename T, int NPT, int LPC, bool TM>
void launch_fwd_layout(const ScanParams &p, cudaStream_t s) {
  dim3 grid = scan_grid<Cfg<NPT, LPC>::kCpb>(p);
  grid.z = p.nseg;
  if (p.nseg > 1) {
    fwd_kernel<T, NPT, LPC, TM, true><<<grid, kThreads, 0, s>>>(p);
    launch_compose(p, s);
  }
  fwd_kernel<T, NPT, LPC, TM, false><<<grid, kThreads, 0, s>>>(p);
}

template <typename T>
void launch_fwd(const ScanParams &p, cudaStream_t s) {
  if constexpr (sizeof(T) == 2) {  // state_parallel() sets sp only for what the kernel reads: 16-bit inputs, ...
    if (p.sp) return sp::launch_fwd<T>(p, s);
  }
  if (p.tp) return tp::launch_fwd<T>(p, s);
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < narrow_below(false), {
    if (p.time_major) launch_fwd_layout<T, NPT, LPC, true>(p, s);
    else launch_fwd_layout<T, NPT, LPC, false>(p, s);
  })
}

// The forward's summary and compose passes alone: the time-split backward's segment start states.
template <typename T>
void launch_segment_starts(const ScanParams &p, cudaStream_t s) {
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < narrow_below(false), {
    dim3 grid = scan_grid<Cfg<NPT, LPC>::kCpb>(p);
    grid.z = p.nseg;
    if (p.time_major) fwd_kernel<T, NPT, LPC, true, true><<<grid, kThreads, 0, s>>>(p);
    else fwd_kernel<T, NPT, LPC, false, true><<<grid, kThreads, 0, s>>>(p);
    launch_compose(p, s);
  })
}

template <typename T, int NPT, int LPC, bool TM>
void launch_bwd_layout(const ScanParams &p, cudaStream_t s) {
  dim3 grid = scan_grid<Cfg<NPT, LPC>::kCpb>(p);
  grid.z = p.nseg;
  if (p.nseg > 1) {
    launch_segment_starts<T>(p, s);
    adjoint_kernel<T, NPT, LPC, TM><<<grid, kThreads, 0, s>>>(p);
    launch_compose_adjoint(p, s);
  }
  bwd_kernel<T, NPT, LPC, TM><<<grid, kThreads, 0, s>>>(p);
}

template <typename T>
void launch_bwd(const ScanParams &p, cudaStream_t s) {
  if constexpr (sizeof(T) == 2) {  // as in launch_fwd
    if (p.sp) return sp::launch_bwd<T>(p, s);
  }
  if (p.tp) return tp::launch_bwd<T>(p, s);
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < narrow_below(true), {
    if (p.time_major) launch_bwd_layout<T, NPT, LPC, true>(p, s);
    else launch_bwd_layout<T, NPT, LPC, false>(p, s);
  })
}

}  // namespace detail
}  // namespace ssm_offset
