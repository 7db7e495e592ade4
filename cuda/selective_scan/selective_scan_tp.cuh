// Time-parallel Mamba-1 selective scan, for few channels: states in the outer loop, time scanned across a warp.
//
// Where batch x channels cannot fill the GPU, the channel-parallel kernels (selective_scan_kernels.cuh) split each
// row into time segments and pay a second recurrence (a summary pass, and in the backward an adjoint pass). Here
// instead each warp owns one channel of one batch row and walks it in chunks of 32 x IT steps, lane l holding the
// chunk's steps l*IT .. l*IT + IT - 1 in registers. Per state n the recurrence
//   h_t = a_t h_{t-1} + b_t,   a_t = exp(Δ_t A_n),   b_t = Δ_t B_t,n u_t
// is a chain of affine maps: a lane folds its IT maps, the warp scans the lanes' folds (log2 32 shuffle rounds),
// and the chunk's carry-in (per n, in shared memory) gives every lane the state before its first step, from which
// it replays its steps and reads out C_t,n (h_t + h'_n) into y_t. A document restart at t is the map
// h -> a_t h_0 + b_t (the previous state dropped), so packed rows scan the same way. Which family a call takes is
// step.cu's time_parallel(): these kernels for channel-major inputs with N <= 16 and 1,025..16,384 batch x channels,
// where they measured faster (benches/results/kernels-tp-h100.md).
//
// Backward: P_t = a_t G_t, the adjoint that flows from h_t into h_{t-1}, obeys P_t = a_t (dy_t C_t + P_{t+1})
// (G_t = dy_t C_t + P_{t+1} the whole gradient of h_t; P_L = dfinal): affine again, scanned the same way in
// reverse. Each chunk starts from the state the forward saved there (ScanParams::states, (batch, dim, chunks, N)).
// dB and dC are summed over a block's 4 channels (its warps) in shared memory, then added to the fp32 buffers with
// one coalesced atomic per (n, t) and block.
#pragma once

#include <cstdint>
#include <type_traits>

namespace ssm_offset {
namespace detail {
namespace tp {

constexpr int kWarps = kThreads / 32;  // channels per block
// Steps a lane per chunk (a chunk is 32 x that) and states staged in shared memory at a time; macros to measure
// alternatives (SSM_OFFSET_NVCC_FLAGS=-DSSM_OFFSET_TP_FWD_ITEMS=16 ...)
#ifndef SSM_OFFSET_TP_FWD_ITEMS
#define SSM_OFFSET_TP_FWD_ITEMS 8
#endif
#ifndef SSM_OFFSET_TP_BWD_ITEMS
#define SSM_OFFSET_TP_BWD_ITEMS 8
#endif
#ifndef SSM_OFFSET_TP_STATES
#define SSM_OFFSET_TP_STATES 8
#endif
constexpr int kFwdItems = SSM_OFFSET_TP_FWD_ITEMS, kBwdItems = SSM_OFFSET_TP_BWD_ITEMS;
// the forward saves the state at every chunk start and the backward starts its chunks from them
static_assert((32 * kFwdItems) % kStatesEvery == 0 && kStatesEvery % kFwdItems == 0 && 32 * kBwdItems == kStatesEvery,
              "a forward chunk must be whole intervals of ScanParams::states, each starting at a lane's first step; a "
              "backward chunk one interval");
// ScanParams::states the forward saves inside a chunk (at lane kLanesPerState, 2 kLanesPerState, ...) besides its end
constexpr int kLanesPerState = kStatesEvery / kFwdItems, kMidStates = 32 / kLanesPerState - 1;
#ifndef SSM_OFFSET_TP_FWD_BLOCKS
#define SSM_OFFSET_TP_FWD_BLOCKS 4
#endif

// Inclusive scan over the warp's lanes of the maps h -> a h + b, in time order (lane 0 first).
__device__ __forceinline__ void scan_up(float &a, float &b, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float pa = __shfl_up_sync(0xffffffffu, a, o), pb = __shfl_up_sync(0xffffffffu, b, o);
    if (lane >= o) {
      b = a * pb + b;
      a = a * pa;
    }
  }
}

// The same in reverse time (lane 31 first): on return lane l holds the maps of lanes l..31 composed.
__device__ __forceinline__ void scan_down(float &a, float &b, int lane) {
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const float qa = __shfl_down_sync(0xffffffffu, a, o), qb = __shfl_down_sync(0xffffffffu, b, o);
    if (lane + o < 32) {
      b = a * qb + b;
      a = a * qa;
    }
  }
}

// From lanes' inclusive scans (scan_up / scan_down) and the chunk's carry-in x: the value this lane starts from
// (the maps of the lanes before it, in the scan's direction, applied to x); `out`, in every lane, the value after
// the whole chunk.
template <bool UP>
__device__ __forceinline__ float lane_start(float a, float b, float x, int lane, float &out) {
  const int first = UP ? 0 : 31, last = 31 - first;
  out = __shfl_sync(0xffffffffu, a, last) * x + __shfl_sync(0xffffffffu, b, last);
  float pa = UP ? __shfl_up_sync(0xffffffffu, a, 1) : __shfl_down_sync(0xffffffffu, a, 1);
  float pb = UP ? __shfl_up_sync(0xffffffffu, b, 1) : __shfl_down_sync(0xffffffffu, b, 1);
  if (lane == first) pa = 1.f, pb = 0.f;
  return pa * x + pb;
}

// One warp's channel: its batch row and group (bp, d0 = the channel) and the per-channel constants.
struct Chan1 {
  BlockPos bp;
  int d;
  bool active;  // bp.nrows: the block's channels; warps past them idle
  float bias, D, yoff;
  const float *h0, *hoff;  // this channel's (N) rows, or null
  __device__ __forceinline__ explicit Chan1(const ScanParams &p) {
    const BlockPos blk = block_pos(p, kWarps);
    const int warp = threadIdx.x / 32;
    active = warp < blk.nrows;
    bp = blk;
    d = bp.d0 = blk.d0 + (active ? warp : 0);  // an idle warp reads channel d0's inputs and writes nothing
    bias = p.delta_bias ? p.delta_bias[d] : 0.f;
    D = p.D ? p.D[d] : 0.f;
    yoff = p.yoff ? p.yoff[bp.b * p.yoff_bstride + d] : 0.f;
    const long long dn = (long long)d * p.nstate;
    h0 = p.h0 ? p.h0 + bp.b * p.h0_bstride + dn : nullptr;
    hoff = p.hoff ? p.hoff + bp.b * p.hoff_bstride + dn : nullptr;
  }
};

// This lane's IT steps from tb: u, Δ = softplus(δ + bias) (zero past L), and a bit per step where a document starts.
template <typename T, int IT, bool TM>
__device__ __forceinline__ unsigned load_steps(const ScanParams &p, const Chan1 &ch, int tb, float *u, float *dt) {
  const T *ur = row_ptr<false, const T>(p.u, p.su, ch.bp), *dr = row_ptr<TM, const T>(p.delta, p.sdelta, ch.bp);
  unsigned rst = 0;
#pragma unroll
  for (int j = 0; j < IT; ++j) {
    const int t = tb + j;
    u[j] = dt[j] = 0.f;
    if (t < p.len) {
      u[j] = to_f(ur[t]);
      const float x = to_f(dr[row_off<TM>(p.sdelta, 0, t)]) + ch.bias;
      dt[j] = p.softplus ? softplus(x) : x;
      if (p.seq_idx && t > 0) {
        const int *sq = p.seq_idx + (long long)ch.bp.b * p.len + t;
        rst |= (unsigned)(sq[0] != sq[-1]) << j;
      }
    }
  }
  return rst;
}

// A lane's run of IT elements of a channel-major (n, ·) row of B or C, read with 16-byte vector loads where whole
// (DIRECT: the binding's alignment check passed), into registers one state ahead of its use so that the load's
// latency hides behind the state before.
template <typename T, int IT>
struct Run {
  static constexpr int kVec = IT * (int)sizeof(T) / 16;
  static_assert(kVec >= 1 && IT * sizeof(T) % 16 == 0, "a run must be whole 16-byte vectors");
  uint4 v[kVec];

  __device__ __forceinline__ void load(const T *row, int tb, int len) {
    if (tb + IT <= len) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) v[k] = reinterpret_cast<const uint4 *>(row + tb)[k];
    } else {
      T *x = reinterpret_cast<T *>(v);
#pragma unroll
      for (int j = 0; j < IT; ++j) x[j] = tb + j < len ? row[tb + j] : from_f<T>(0.f);
    }
  }
  __device__ __forceinline__ void get(float *out) const {
#pragma unroll
    for (int j = 0; j < IT; ++j) out[j] = at(j);
  }
  __device__ __forceinline__ float at(int j) const { return to_f(reinterpret_cast<const T *>(v)[j]); }
  // the run back to a row from tb: one vector store where whole, else its elements before len
  __device__ __forceinline__ void store(T *row, int tb, int len) const {
    if (tb + IT <= len) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) reinterpret_cast<uint4 *>(row + tb)[k] = v[k];
    } else {
      const T *x = reinterpret_cast<const T *>(v);
      for (int j = 0; j < IT && tb + j < len; ++j) row[tb + j] = x[j];
    }
  }
};

// B and C of one chunk for a group of NB states, fp32, staged by the whole block (its 4 channels share the batch row
// and group) with coalesced loads in either layout; step j of lane l at [n][j][l], so that a warp's reads of one
// step index hit 32 banks.
template <int IT, int NB, bool WITH_B, bool WITH_C>
struct BCTile {
  float B[WITH_B ? NB : 1][IT][33], C[WITH_C ? NB : 1][IT][33];

  template <typename T, bool TM>
  __device__ __forceinline__ void stage(const ScanParams &p, const T *Bg, const T *Cg, int n0, int c0) {
    constexpr int kChunk = 32 * IT;
    for (int e = threadIdx.x; e < NB * kChunk; e += kThreads) {
      const int n = TM ? e % NB : e / kChunk, tt = TM ? e / NB : e % kChunk;
      const int t = c0 + tt;
      const bool ok = n0 + n < p.nstate && t < p.len;
      if constexpr (WITH_B) B[n][tt % IT][tt / IT] = ok ? to_f(Bg[TM ? (long long)t * p.sB.ld + n0 + n : (long long)(n0 + n) * p.sB.ld + t]) : 0.f;
      if constexpr (WITH_C) C[n][tt % IT][tt / IT] = ok ? to_f(Cg[TM ? (long long)t * p.sC.ld + n0 + n : (long long)(n0 + n) * p.sC.ld + t]) : 0.f;
    }
  }

  // a lane's IT steps of staged state n
  __device__ __forceinline__ void row(float *b, float *c, int n, int lane) const {
#pragma unroll
    for (int j = 0; j < IT; ++j) {
      if constexpr (WITH_B) b[j] = B[n][j][lane];
      if constexpr (WITH_C) c[j] = C[n][j][lane];
    }
  }
};
constexpr int kStates = SSM_OFFSET_TP_STATES;

// State n's maps over this lane's steps: a_t = exp(Δ_t A_n) (the true decay), b_t = Δ_t u_t B_t,n (plus a_t h_0,n
// where a document starts, whose map then has decay 0: R, where some lane of the warp has a restart in the chunk),
// identity past L (there Δ = 0, B = 0); returns their fold (a, b) in `fa`, `fb`.
template <int IT, bool R>
__device__ __forceinline__ void step_maps(const float *Bv, const float *dtu, const float *dt,
                                          unsigned rst, float A2, float h0n, float *a, float *b, float &fa,
                                          float &fb) {
  fa = 1.f, fb = 0.f;
#pragma unroll
  for (int j = 0; j < IT; ++j) {
    a[j] = exp2f(dt[j] * A2);
    b[j] = dtu[j] * Bv[j];
    const bool r = R && ((rst >> j) & 1u);
    if (r) b[j] += a[j] * h0n;
    const float as = r ? 0.f : a[j];
    fb = as * fb + b[j];
    fa *= as;
  }
}

// Runs body(std::bool_constant<R>) with R = `any`, whether any lane of the warp has a document restart in its steps
// (voted once a chunk): the common case (none) then pays nothing per step for them.
template <typename F>
__device__ __forceinline__ void with_restarts(bool any, F &&body) {
  if (any) body(std::true_type{});
  else body(std::false_type{});
}

// Per warp and state, in dynamic shared memory: (A_n log2 e, h_0,n, h'_n, w), read with one 16-byte load a state
// where three global loads and their address arithmetic stood; w is the backward's state at the current chunk's start
// (loaded per chunk, coalesced, from the forward's ScanParams::states). After them the kernels keep per warp and state
// one carry and the states saved inside a chunk (the forward) or a carry and the dA, dh', dh0 sums (the backward): the
// floats a state takes in all.
constexpr size_t kFwdStateFloats = 4 + 1 + kMidStates, kBwdStateFloats = 4 + 1 + 3;
__device__ __forceinline__ float4 *state_consts(const ScanParams &p, const Chan1 &ch, float4 *dyn) {
  const int warp = threadIdx.x / 32, N = p.nstate;
  float4 *con = dyn + warp * N;
  for (int n = threadIdx.x % 32; n < N; n += 32)
    con[n] = make_float4(p.A[(long long)ch.d * N + n] * kLog2e, ch.h0 ? ch.h0[n] : 0.f, ch.hoff ? ch.hoff[n] : 0.f, 0.f);
  __syncwarp();
  return con;
}

// Where a lane's B and C values of each state come from: the staged tile, or (DIRECT) its own vector loads one state
// ahead (after a chunk's last state, the first state of the chunk `step` steps on).
template <typename T, int IT, bool DIRECT, bool WITH_C>
struct Rows {
  Run<T, IT> b, c;

  __device__ __forceinline__ void fetch(const ScanParams &p, const T *Bg, const T *Cg, int n, int tb) {
    if constexpr (DIRECT) {
      if (tb < 0) return;  // before the row's start: nothing is taken from it
      b.load(Bg + (long long)n * p.sB.ld, tb, p.len);  // zeros past L, as the tile has
      if constexpr (WITH_C) c.load(Cg + (long long)n * p.sC.ld, tb, p.len);
    }
  }

  template <typename Tile>
  __device__ __forceinline__ void take(const ScanParams &p, const T *Bg, const T *Cg, const Tile &tile, int n, int n0,
                                       int tb, int step, int lane, float *Bv, float *Cv) {
    if constexpr (DIRECT) {
      b.get(Bv);
      if constexpr (WITH_C) c.get(Cv);
      if (n + 1 < p.nstate) fetch(p, Bg, Cg, n + 1, tb);
      else fetch(p, Bg, Cg, 0, tb + step);
    } else {
      tile.row(Bv, Cv, n - n0, lane);
    }
  }
};

// h (the warp's N values) as the state kStatesEvery steps after step c0, for the backward
// (ScanParams::states[b][d][c0 / kStatesEvery + 1][n]); the initial state with c0 = -kStatesEvery. Once a chunk, out of
// the state loop, with the warp's lanes side by side.
__device__ __forceinline__ void save_states(const ScanParams &p, const Chan1 &ch, int c0, const float *h) {
  __syncwarp();  // lane 0's carries are in
  const int k = c0 / kStatesEvery + 1;
  if (!ch.active || k >= state_chunks(p.len)) return;
  float *row = states_row(p, ch.bp.b, ch.d, k);
  for (int n = threadIdx.x % 32; n < p.nstate; n += 32) row[n] = h[n];
}

template <typename T, int IT, bool TM, bool DIRECT>
__global__ void __launch_bounds__(kThreads, SSM_OFFSET_TP_FWD_BLOCKS) fwd_kernel(ScanParams p) {
  constexpr int kChunk = 32 * IT;
  __shared__ BCTile<IT, kStates, true, true> s;
  extern __shared__ float4 s_dyn4[];
  const Chan1 ch(p);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, N = p.nstate, L = p.len, d = ch.d;
  const float4 *con = state_consts(p, ch, s_dyn4);
  float *s_carry = reinterpret_cast<float *>(s_dyn4 + kWarps * N);  // [warp][n]: h at the current chunk's start
  // [m][warp][n]: h at the chunk's (m + 1)-th interval of ScanParams::states, where a chunk holds several
  float *s_mid = s_carry + kWarps * N;
  for (int n = lane; n < N; n += 32) s_carry[warp * N + n] = con[n].y;
  save_states(p, ch, -kStatesEvery, s_carry + warp * N);
  const T *Bg = group_ptr<T>(p.B, p.sB, ch.bp), *Cg = group_ptr<T>(p.C, p.sC, ch.bp);
  const T *zr = p.z ? row_ptr<TM, const T>(p.z, p.sz, ch.bp) : nullptr;
  T *yr = row_ptr<TM, T>(p.y, p.sy, ch.bp);
  Rows<T, IT, DIRECT, true> rows;
  rows.fetch(p, Bg, Cg, 0, lane * IT);
  for (int c0 = 0; c0 < L; c0 += kChunk) {
    const int tb = c0 + lane * IT;
    float dtu[IT], dt[IT], acc[IT];  // acc: y before the gate, from D u + y'
    unsigned rst;
    {
      float u[IT];
      rst = load_steps<T, IT, TM>(p, ch, tb, u, dt);
#pragma unroll
      for (int j = 0; j < IT; ++j) {
        dtu[j] = dt[j] * u[j];
        acc[j] = ch.D * u[j] + ch.yoff;
      }
    }
    const bool restarts = __any_sync(0xffffffffu, rst != 0u);
    for (int n0 = 0; n0 < N; n0 += kStates) {
      if constexpr (!DIRECT) {
        __syncthreads();  // the previous group's reads are done
        s.template stage<T, TM>(p, Bg, Cg, n0, c0);
        __syncthreads();
      }
      for (int n = n0; n < min(N, n0 + kStates); ++n) {
        const float4 cn = con[n];
        const float A2 = cn.x, h0n = cn.y, ho = cn.z;
        const float carry = s_carry[warp * N + n];
        float next, Bv[IT], Cv[IT];
        rows.take(p, Bg, Cg, s, n, n0, tb, kChunk, lane, Bv, Cv);
        with_restarts(restarts, [&](auto any) {
          constexpr bool R = decltype(any)::value;
          float a[IT], b[IT], fa, fb;
          step_maps<IT, R>(Bv, dtu, dt, rst, A2, h0n, a, b, fa, fb);
          scan_up(fa, fb, lane);
          float h = lane_start<true>(fa, fb, carry, lane, next);
          if constexpr (kMidStates > 0) {  // this lane starts an interval of ScanParams::states
            if (lane % kLanesPerState == 0 && lane > 0)
              s_mid[(lane / kLanesPerState - 1) * kWarps * N + warp * N + n] = h;
          }
#pragma unroll
          for (int j = 0; j < IT; ++j) {
            h = ((R && ((rst >> j) & 1u)) ? 0.f : a[j]) * h + b[j];
            acc[j] += Cv[j] * (h + ho);
          }
        });
        __syncwarp();  // every lane has read the carry
        if (lane == 0) s_carry[warp * N + n] = next;
      }
    }
#pragma unroll
    for (int m = 0; m < kMidStates; ++m) save_states(p, ch, c0 + m * kStatesEvery, s_mid + m * kWarps * N + warp * N);
    save_states(p, ch, c0 + kChunk - kStatesEvery, s_carry + warp * N);
    if (ch.active) {
#pragma unroll
      for (int j = 0; j < IT; ++j) {
        const int t = tb + j;
        if (t < L) {
          float v = acc[j];
          if (zr) {
            const float zz = to_f(zr[row_off<TM>(p.sz, 0, t)]);
            v *= zz * sigmoid(zz);
          }
          yr[row_off<TM>(p.sy, 0, t)] = from_f<T>(v);
        }
      }
    }
  }
  __syncwarp();
  if (ch.active) {
    for (int n = lane; n < N; n += 32) p.final_state[((long long)ch.bp.b * p.dim + d) * N + n] = s_carry[warp * N + n];
  }
}

template <typename T, int IT, bool TM, bool DIRECT>
__global__ void __launch_bounds__(kThreads, 3) bwd_kernel(ScanParams p) {
  constexpr int kChunk = 32 * IT;
  __shared__ BCTile<IT, kStates, true, true> s;
  // dB, dC of one state per warp, laid out like the tile, double-buffered so that one barrier a state does
  __shared__ float s_bc[2][2][kWarps][IT][33];
  const Chan1 ch(p);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, N = p.nstate, L = p.len, d = ch.d;
  const bool active = ch.active;
  // per warp and state (dynamic, kWarps x N each): the carry (the adjoint from the next chunk); dA, dh', dh0 partial
  // sums
  extern __shared__ float4 s_dyn4[];
  float4 *con = state_consts(p, ch, s_dyn4);
  float *s_carry = reinterpret_cast<float *>(s_dyn4 + kWarps * N), *s_acc = s_carry + kWarps * N;
  const int nch = (L + kChunk - 1) / kChunk;
  const T *Bg = group_ptr<T>(p.B, p.sB, ch.bp), *Cg = group_ptr<T>(p.C, p.sC, ch.bp);
  const long long dn = (long long)d * N;
  // the forward's state at each chunk start: states[b][d][chunk][n]
  const float *saved = states_row(p, ch.bp.b, d, 0);

  // chunks in reverse
  __syncwarp();
  for (int n = lane; n < N; n += 32) {
    s_carry[warp * N + n] = (active && p.dfinal) ? p.dfinal[((long long)ch.bp.b * p.dim + d) * N + n] : 0.f;
    s_acc[(warp * N + n) * 3] = s_acc[(warp * N + n) * 3 + 1] = s_acc[(warp * N + n) * 3 + 2] = 0.f;
  }
  const T *dor = row_ptr<TM, const T>(p.dout, p.sdout, ch.bp);
  const T *zr = p.z ? row_ptr<TM, const T>(p.z, p.sz, ch.bp) : nullptr;
  const long long bc_off = ((long long)ch.bp.b * p.groups + ch.bp.g) * N * L;  // dB, dC: contiguous fp32
  float dD = 0.f, dY = 0.f, dBias = 0.f;
  int buf = 0;
  Rows<T, IT, DIRECT, true> rows;
  rows.fetch(p, Bg, Cg, 0, (nch - 1) * kChunk + lane * IT);
  for (int c = nch - 1; c >= 0; --c) {
    const int tb = c * kChunk + lane * IT;
    for (int n = lane; n < N; n += 32) con[n].w = saved[(long long)c * N + n];
    __syncwarp();
    float u[IT], dt[IT], dy[IT], ddt[IT], du[IT], yp[IT];
    const unsigned rst = load_steps<T, IT, TM>(p, ch, tb, u, dt);
    const bool restarts = __any_sync(0xffffffffu, rst != 0u);
#pragma unroll
    for (int j = 0; j < IT; ++j) {
      const int t = tb + j;
      dy[j] = 0.f;
      if (active && t < L) {
        dy[j] = to_f(dor[row_off<TM>(p.sdout, 0, t)]);
        if (zr) {
          const float zz = to_f(zr[row_off<TM>(p.sz, 0, t)]);
          dy[j] *= zz * sigmoid(zz);
        }
      }
      ddt[j] = du[j] = yp[j] = 0.f;
    }
    for (int n0 = 0; n0 < N; n0 += kStates) {
      if constexpr (!DIRECT) {
        __syncthreads();
        s.template stage<T, TM>(p, Bg, Cg, n0, c * kChunk);
        __syncthreads();
      }
      for (int n = n0; n < min(N, n0 + kStates); ++n, buf ^= 1) {
        const float4 cn = con[n];
        const float A2 = cn.x, h0n = cn.y, ho = cn.z, hstart = cn.w, carry = s_carry[warp * N + n];
        float next, P, dA = 0.f, dh0 = 0.f, dho = 0.f, Bv[IT], Cv[IT];
        rows.take(p, Bg, Cg, s, n, n0, tb, -kChunk, lane, Bv, Cv);
        with_restarts(restarts, [&](auto any) {
          constexpr bool R = decltype(any)::value;
          float a[IT], b[IT], dtu[IT], fa, fb, unused;
#pragma unroll
          for (int j = 0; j < IT; ++j) dtu[j] = dt[j] * u[j];
          step_maps<IT, R>(Bv, dtu, dt, rst, A2, h0n, a, b, fa, fb);
          scan_up(fa, fb, lane);
          const float hin = lane_start<true>(fa, fb, hstart, lane, unused);
          // h_t over this lane's steps (b[] becomes h), then the reverse maps P -> a~_t (dy_t C_t + P)
          float beta[IT], h = hin, ra = 1.f, rb = 0.f;
#pragma unroll
          for (int j = 0; j < IT; ++j) {
            h = ((R && ((rst >> j) & 1u)) ? 0.f : a[j]) * h + b[j];
            b[j] = h;
            beta[j] = dy[j] * Cv[j];
            dho += beta[j];
            yp[j] += Cv[j] * (h + ho);
            s_bc[buf][1][warp][j][lane] = dy[j] * (h + ho);  // dC
          }
#pragma unroll
          for (int j = IT - 1; j >= 0; --j) {
            const float as = (R && ((rst >> j) & 1u)) ? 0.f : a[j];
            rb = as * (beta[j] + rb);
            ra *= as;
          }
          scan_down(ra, rb, lane);
          P = lane_start<false>(ra, rb, carry, lane, next);
#pragma unroll
          for (int j = IT - 1; j >= 0; --j) {
            const bool r = R && ((rst >> j) & 1u);
            const float G = beta[j] + P;
            const float hp = r ? h0n : j > 0 ? b[j - 1] : hin;
            const float gah = G * a[j] * hp;
            ddt[j] += G * Bv[j] * u[j] + gah * A2 * kLn2;
            dA += gah * dt[j];
            du[j] += G * dt[j] * Bv[j];
            s_bc[buf][0][warp][j][lane] = G * dtu[j];  // dB
            if (r) dh0 += G * a[j];  // h_{t-1} was h_0 there
            P = (r ? 0.f : a[j]) * G;
          }
        });
        if (c == 0 && lane == 0) dh0 += P;  // what reaches h_{-1} = h_0
        dA = lane_sum<32>(dA);
        if (p.dhoff) dho = lane_sum<32>(dho);
        if (p.dh0) dh0 = lane_sum<32>(dh0);
        __syncwarp();  // every lane has read the carry
        if (lane == 0) {
          s_carry[warp * N + n] = next;
          s_acc[(warp * N + n) * 3] += dA;
          s_acc[(warp * N + n) * 3 + 1] += dho;
          s_acc[(warp * N + n) * 3 + 2] += dh0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < kChunk; i += kThreads) {
          const int t = c * kChunk + i;
          if (t < L) {
            float sb = 0.f, sc = 0.f;
#pragma unroll
            for (int w = 0; w < kWarps; ++w) {
              if (w < ch.bp.nrows) {
                sb += s_bc[buf][0][w][i % IT][i / IT];
                sc += s_bc[buf][1][w][i % IT][i / IT];
              }
            }
            atomicAdd(p.dB + bc_off + (long long)n * L + t, sb);
            atomicAdd(p.dC + bc_off + (long long)n * L + t, sc);
          }
        }
      }
    }
    if (active) {
      T *dur = row_ptr<false, T>(p.du, p.sdu, ch.bp), *ddr = row_ptr<TM, T>(p.ddelta, p.sddelta, ch.bp);
      T *dzr = p.z ? row_ptr<TM, T>(p.dz, p.sdz, ch.bp) : nullptr;
      const T *dlr = row_ptr<TM, const T>(p.delta, p.sdelta, ch.bp);
#pragma unroll
      for (int j = 0; j < IT; ++j) {
        const int t = tb + j;
        if (t < L) {
          if (zr) {
            const float go = to_f(dor[row_off<TM>(p.sdout, 0, t)]), zz = to_f(zr[row_off<TM>(p.sz, 0, t)]);
            const float sg = sigmoid(zz), yv = yp[j] + ch.D * u[j] + ch.yoff;
            dzr[row_off<TM>(p.sdz, 0, t)] = from_f<T>(go * yv * sg * (1.f + zz * (1.f - sg)));
          }
          dur[t] = from_f<T>(du[j] + ch.D * dy[j]);
          const float dd = ddt[j] * dsoftplus(p.softplus, to_f(dlr[row_off<TM>(p.sdelta, 0, t)]) + ch.bias);
          ddr[row_off<TM>(p.sddelta, 0, t)] = from_f<T>(dd);
          dD += dy[j] * u[j];
          dY += dy[j];
          dBias += dd;
        }
      }
    }
  }
  if (!active) return;
  dD = lane_sum<32>(dD);
  dY = lane_sum<32>(dY);
  dBias = lane_sum<32>(dBias);
  if (lane == 0) {
    if (p.dD) atomicAdd(p.dD + d, dD);
    if (p.dyoff) atomicAdd(p.dyoff + ch.bp.b * p.yoff_bstride + d, dY);
    if (p.dbias) atomicAdd(p.dbias + d, dBias);
  }
  __syncwarp();
  for (int n = lane; n < N; n += 32) {
    atomicAdd(p.dA + dn + n, s_acc[(warp * N + n) * 3]);
    if (p.dhoff) atomicAdd(p.dhoff + ch.bp.b * p.hoff_bstride + dn + n, s_acc[(warp * N + n) * 3 + 1]);
    if (p.dh0) atomicAdd(p.dh0 + ch.bp.b * p.h0_bstride + dn + n, s_acc[(warp * N + n) * 3 + 2]);
  }
}

// The per-state constants and carries live in dynamic shared memory (kWarps x N x `floats`: k*StateFloats);
// beyond the static tiles that can pass the 48 KB a launch gets by default (the backward at N = 256), so the kernel
// is then allowed the total.
template <typename K>
void launch(K kernel, const ScanParams &p, size_t floats, cudaStream_t s) {
  const size_t dyn = sizeof(float) * kWarps * p.nstate * floats;
  cudaFuncAttributes attr{};
  cudaFuncGetAttributes(&attr, kernel);
  if (attr.sharedSizeBytes + dyn > 48 * 1024) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn));
  }
  kernel<<<scan_grid<kWarps>(p), kThreads, dyn, s>>>(p);
}

// Rows of T read with 16-byte vectors: the base and every step between rows (batch, group, leading) 16-byte multiples,
// so that each row, and each 8-element (16-bit T) run in it, starts aligned
template <typename T>
bool rows_aligned(const void *ptr, long long batch_stride, long long group_stride, long long ld) {
  constexpr long long e = sizeof(T);
  return reinterpret_cast<uintptr_t>(ptr) % 16 == 0 && (batch_stride * e) % 16 == 0 && (group_stride * e) % 16 == 0 &&
         (ld * e) % 16 == 0;
}

// B and C read by each lane straight from global memory: channel-major, every lane's run starting 16-byte aligned
template <typename T, int IT>
bool direct(const ScanParams &p) {
  return !p.time_major && rows_aligned<T>(p.B, p.sB.b, p.sB.g, p.sB.ld) && rows_aligned<T>(p.C, p.sC.b, p.sC.g, p.sC.ld);
}

template <typename T>
void launch_fwd(const ScanParams &p, cudaStream_t s) {
  if (p.time_major) launch(fwd_kernel<T, kFwdItems, true, false>, p, kFwdStateFloats, s);
  else if (direct<T, kFwdItems>(p)) launch(fwd_kernel<T, kFwdItems, false, true>, p, kFwdStateFloats, s);
  else launch(fwd_kernel<T, kFwdItems, false, false>, p, kFwdStateFloats, s);
}

template <typename T>
void launch_bwd(const ScanParams &p, cudaStream_t s) {
  if (p.time_major) launch(bwd_kernel<T, kBwdItems, true, false>, p, kBwdStateFloats, s);
  else if (direct<T, kBwdItems>(p)) launch(bwd_kernel<T, kBwdItems, false, true>, p, kBwdStateFloats, s);
  else launch(bwd_kernel<T, kBwdItems, false, false>, p, kBwdStateFloats, s);
}

}  // namespace tp
}  // namespace detail
}  // namespace ssm_offset
