// Mamba-1 selective scan with a learned initial state, a state offset and a y offset, fused.
//
//   Δ_t = softplus(δ_t + bias)      h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t      h_0 = initial state
//   y_t = Σ_n C_t,n (h_t,n + h'_n) + D u_t + y'                                  out_t = y_t silu(z_t)
//
// Layout: a block of 128 threads owns CPB channels of one batch row (all in one B/C group). Each
// channel is served by LPC consecutive lanes, each lane keeping NPT states in registers, so the
// recurrence runs sequentially in time per thread with no scan primitive at all: batch x channels x
// states gives far more independent recurrences than the GPU has threads. Time is cut into chunks;
// per chunk the block stages u, Δ (softplus applied once per (channel, t)) and B, C (shared by the
// block's channels) in shared memory, runs the recurrence, and writes y with coalesced stores.
// The offset h' is added in registers where C_t reads the state, so it costs one add per state.
//
// Backward: the op saves only its inputs, so the kernel first replays the recurrence to store the
// state at every chunk start (a workspace), then walks the chunks in reverse: replay the chunk from
// its checkpoint keeping h_{t-1} in registers, then the reverse recurrence
//   g_t = ā_{t+1} g_{t+1} + dy_t C_t        (g_L includes dfinal_state; dh_0 = ā_1 g_1)
// with dA, dh' accumulated per thread, dΔ and du reduced over states with lane shuffles, and dB, dC
// reduced over the block's channels in shared memory before one atomic add per (n, t) per block.
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

template <int NPT, int LPC>
struct Cfg {
  static constexpr int kNpt = NPT, kLpc = LPC, kCpb = kThreads / LPC, kNpad = NPT * LPC;
  static constexpr int kBs = kNpad + 4;  // B/C rows in shared memory, padded against bank conflicts
  static constexpr int kTf = kCpb >= 128 ? 16 : kCpb >= 64 ? 32 : kNpad >= 256 ? 16 : kNpad >= 128 ? 32 : kCpb >= 32 ? 32 : 64;
  static constexpr int kTb = (NPT >= 8 || kCpb >= 64) ? 8 : 16;
  // blocks per SM the register allocation must allow: the whole grid of the common shapes then fits
  // in one wave (e.g. 1024 blocks at B=8, D=4096 on 132 SMs)
  static constexpr int kFwdMinBlocks = (NPT <= 4 && kNpad <= 64) ? 8 : 4;
  static constexpr int kBwdMinBlocks = NPT <= 4 ? 4 : 2;
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

// A document starts: the state it continues from is the initial state again (h_{t-1} := h_0).
template <int NPT>
__device__ __forceinline__ void restart(float *h, const float *hs) {
#pragma unroll
  for (int k = 0; k < NPT; ++k) h[k] = hs[k];
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

// u and Δ of the block's channels for times [t0, t0 + tl), zero outside; dsp = dΔ/d(δ + bias);
// s_rst[t]: a document starts at t0 + t (never at 0: the initial state is already there).
template <typename T, int CPB, int TT>
__device__ __forceinline__ void load_u_dt(const ScanParams &p, const BlockPos &bp, int t0, int tl,
                                          float (*s_u)[TT + 1], float (*s_dt)[TT + 1],
                                          float (*s_dsp)[TT + 1], int *s_rst) {
  if (p.seq_idx) {
    const int *seq = p.seq_idx + (long long)bp.b * p.len + t0;
    for (int t = threadIdx.x; t < TT; t += kThreads)
      s_rst[t] = (t < tl && t0 + t > 0) ? (seq[t] != seq[t - 1]) : 0;
  }
  const long long row0 = ((long long)bp.b * p.dim + bp.d0) * p.len + t0;
  const T *u = static_cast<const T *>(p.u) + row0;
  const T *dl = static_cast<const T *>(p.delta) + row0;
  for (int i = threadIdx.x; i < CPB * TT; i += kThreads) {
    const int r = i / TT, t = i % TT;
    float uu = 0.f, dt = 0.f, dsp = 0.f;
    if (r < bp.nrows && t < tl) {
      const long long off = (long long)r * p.len + t;
      uu = to_f(u[off]);
      float x = to_f(dl[off]);
      if (p.delta_bias) x += p.delta_bias[bp.d0 + r];
      if (p.softplus) {
        dt = softplus(x);
        dsp = x <= 20.f ? sigmoid(x) : 1.f;
      } else {
        dt = x;
        dsp = 1.f;
      }
    }
    s_u[r][t] = uu;
    s_dt[r][t] = dt;
    if (s_dsp) s_dsp[r][t] = dsp;
  }
}

// One of B, C (this block's row and group) for times [t0, t0 + tl), transposed to [t][n].
template <typename T, int NPAD, int TT, int BS>
__device__ __forceinline__ void load_bc(const T *src, int N, int L, int tl, float (*s)[BS]) {
  for (int i = threadIdx.x; i < NPAD * TT; i += kThreads) {
    const int n = i / TT, t = i % TT;
    s[t][n] = (n < N && t < tl) ? to_f(src[(long long)n * L + t]) : 0.f;
  }
}

template <typename T, int NPT, int LPC>
__global__ void __launch_bounds__(kThreads, Cfg<NPT, LPC>::kFwdMinBlocks) fwd_kernel(ScanParams p) {
  using K = Cfg<NPT, LPC>;
  constexpr int CPB = K::kCpb, NPAD = K::kNpad, TF = K::kTf, BS = K::kBs;
  __shared__ float s_u[CPB][TF + 1], s_dt[CPB][TF + 1], s_y[CPB][TF + 1];
  __shared__ int s_rst[TF];
  __shared__ __align__(16) float s_B[TF][BS];
  __shared__ __align__(16) float s_C[TF][BS];

  const BlockPos bp = block_pos(p, CPB);
  const int c = threadIdx.x / LPC, lane = threadIdx.x % LPC;
  const int d = bp.d0 + c;
  const bool active = c < bp.nrows;
  const int N = p.nstate, L = p.len;

  float A2[NPT], h[NPT], ho[NPT], hs[NPT];
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    const bool ok = active && n < N;
    const long long dn = (long long)d * N + n;
    A2[k] = ok ? p.A[dn] * kLog2e : 0.f;
    hs[k] = h[k] = (ok && p.h0) ? p.h0[bp.b * p.h0_bstride + dn] : 0.f;
    ho[k] = (ok && p.hoff) ? p.hoff[bp.b * p.hoff_bstride + dn] : 0.f;
  }
  const long long bc_off = ((long long)bp.b * p.groups + bp.g) * N * L;
  const T *Bg = static_cast<const T *>(p.B) + bc_off;
  const T *Cg = static_cast<const T *>(p.C) + bc_off;
  const long long row0 = ((long long)bp.b * p.dim + bp.d0) * L;

  for (int t0 = 0; t0 < L; t0 += TF) {
    const int tl = min(TF, L - t0);
    load_u_dt<T, CPB, TF>(p, bp, t0, tl, s_u, s_dt, nullptr, s_rst);
    load_bc<T, NPAD, TF, BS>(Bg + t0, N, L, tl, s_B);
    load_bc<T, NPAD, TF, BS>(Cg + t0, N, L, tl, s_C);
    __syncthreads();
#pragma unroll 2
    for (int t = 0; t < tl; ++t) {
      if (p.seq_idx && s_rst[t]) restart<NPT>(h, hs);  // uniform over the block: one batch row
      const float dt = s_dt[c][t];
      const float du = dt * s_u[c][t];
      float Bv[NPT], Cv[NPT];
      load_vec<NPT>(Bv, &s_B[t][lane * NPT]);
      load_vec<NPT>(Cv, &s_C[t][lane * NPT]);
      float acc = 0.f;
#pragma unroll
      for (int k = 0; k < NPT; ++k) {
        h[k] = exp2f(dt * A2[k]) * h[k] + du * Bv[k];
        acc += Cv[k] * (h[k] + ho[k]);
      }
      acc = lane_sum<LPC>(acc);
      if (lane == 0) s_y[c][t] = acc;
    }
    __syncthreads();
    T *y = static_cast<T *>(p.y) + row0 + t0;
    const T *z = p.z ? static_cast<const T *>(p.z) + row0 + t0 : nullptr;
    for (int i = threadIdx.x; i < CPB * TF; i += kThreads) {
      const int r = i / TF, t = i % TF;
      if (r < bp.nrows && t < tl) {
        const int dr = bp.d0 + r;
        float v = s_y[r][t];
        if (p.D) v += p.D[dr] * s_u[r][t];
        if (p.yoff) v += p.yoff[bp.b * p.yoff_bstride + dr];
        const long long off = (long long)r * L + t;
        if (z) {
          const float zz = to_f(z[off]);
          v *= zz * sigmoid(zz);
        }
        y[off] = from_f<T>(v);
      }
    }
    __syncthreads();
  }
  if (active) {
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const int n = lane * NPT + k;
      if (n < N) p.final_state[((long long)bp.b * p.dim + d) * N + n] = h[k];
    }
  }
}

template <typename T, int NPT, int LPC>
__global__ void __launch_bounds__(kThreads, Cfg<NPT, LPC>::kBwdMinBlocks) bwd_kernel(ScanParams p) {
  using K = Cfg<NPT, LPC>;
  constexpr int CPB = K::kCpb, NPAD = K::kNpad, TB = K::kTb, BS = K::kBs;
  __shared__ float s_u[CPB][TB + 1], s_dt[CPB][TB + 1], s_dsp[CPB][TB + 1], s_dy[CPB][TB + 1];
  __shared__ float s_y[CPB][TB + 1], s_s1[CPB][TB + 1], s_s2[CPB][TB + 1];
  __shared__ __align__(16) float s_B[TB][BS];
  __shared__ __align__(16) float s_C[TB][BS];
  __shared__ float s_dB[TB][BS], s_dC[TB][BS];
  __shared__ float s_accD[CPB], s_accY[CPB], s_accBias[CPB];
  __shared__ int s_rst[TB];

  const BlockPos bp = block_pos(p, CPB);
  const int c = threadIdx.x / LPC, lane = threadIdx.x % LPC;
  const int d = bp.d0 + c;
  const bool active = c < bp.nrows;
  const int N = p.nstate, L = p.len;
  const int nch = (L + TB - 1) / TB;

  for (int r = threadIdx.x; r < CPB; r += kThreads) s_accD[r] = s_accY[r] = s_accBias[r] = 0.f;

  // dhs: gradient of the initial state from the documents that restart from it inside the row
  float A2[NPT], h[NPT], hs[NPT], ho[NPT], G[NPT], dAacc[NPT], dho[NPT], dhs[NPT];
#pragma unroll
  for (int k = 0; k < NPT; ++k) {
    const int n = lane * NPT + k;
    const bool ok = active && n < N;
    const long long dn = (long long)d * N + n;
    A2[k] = ok ? p.A[dn] * kLog2e : 0.f;
    hs[k] = h[k] = (ok && p.h0) ? p.h0[bp.b * p.h0_bstride + dn] : 0.f;
    dhs[k] = 0.f;
    ho[k] = (ok && p.hoff) ? p.hoff[bp.b * p.hoff_bstride + dn] : 0.f;
    G[k] = (ok && p.dfinal) ? p.dfinal[((long long)bp.b * p.dim + d) * N + n] : 0.f;
    dAacc[k] = 0.f;
    dho[k] = 0.f;
  }
  const long long bc_off = ((long long)bp.b * p.groups + bp.g) * N * L;
  const T *Bg = static_cast<const T *>(p.B) + bc_off;
  const T *Cg = static_cast<const T *>(p.C) + bc_off;
  const long long row0 = ((long long)bp.b * p.dim + bp.d0) * L;
  // this thread's checkpoint slots: ckpt[b][chunk][d][lane * NPT + k]
  float *ck = p.ckpt + ((long long)bp.b * nch * p.dim + d) * NPAD + lane * NPT;
  const long long ck_stride = (long long)p.dim * NPAD;

  // 1. replay the recurrence to checkpoint the state at every chunk start
  for (int kc = 0; kc < nch; ++kc) {
    if (active) store_vec<NPT>(ck + kc * ck_stride, h);
    if (kc == nch - 1) break;
    const int t0 = kc * TB;
    load_u_dt<T, CPB, TB>(p, bp, t0, TB, s_u, s_dt, nullptr, s_rst);
    load_bc<T, NPAD, TB, BS>(Bg + t0, N, L, TB, s_B);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      if (p.seq_idx && s_rst[t]) restart<NPT>(h, hs);
      const float dt = s_dt[c][t];
      const float du = dt * s_u[c][t];
      float Bv[NPT];
      load_vec<NPT>(Bv, &s_B[t][lane * NPT]);
#pragma unroll
      for (int k = 0; k < NPT; ++k) h[k] = exp2f(dt * A2[k]) * h[k] + du * Bv[k];
    }
    __syncthreads();
  }

  // 2. chunks in reverse
  for (int kc = nch - 1; kc >= 0; --kc) {
    const int t0 = kc * TB;
    const int tl = min(TB, L - t0);
    load_u_dt<T, CPB, TB>(p, bp, t0, tl, s_u, s_dt, s_dsp, s_rst);
    load_bc<T, NPAD, TB, BS>(Bg + t0, N, L, tl, s_B);
    load_bc<T, NPAD, TB, BS>(Cg + t0, N, L, tl, s_C);
    for (int i = threadIdx.x; i < TB * BS; i += kThreads) {
      (&s_dB[0][0])[i] = 0.f;
      (&s_dC[0][0])[i] = 0.f;
    }
    if (active) load_vec<NPT>(h, ck + kc * ck_stride);
    __syncthreads();

    // 2a. replay the chunk: h_{t-1} kept in registers, y before the gate to shared memory
    float hist[TB][NPT];
#pragma unroll
    for (int t = 0; t < TB; ++t) {
      if (t < tl) {
        if (p.seq_idx && s_rst[t]) restart<NPT>(h, hs);
        const float dt = s_dt[c][t];
        const float du = dt * s_u[c][t];
        float Bv[NPT], Cv[NPT];
        load_vec<NPT>(Bv, &s_B[t][lane * NPT]);
        load_vec<NPT>(Cv, &s_C[t][lane * NPT]);
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

    // 2b. through the readout: dy before the gate, dz, and the D and y-offset sums
    {
      const T *dout = static_cast<const T *>(p.dout) + row0 + t0;
      const T *z = p.z ? static_cast<const T *>(p.z) + row0 + t0 : nullptr;
      T *dz = p.z ? static_cast<T *>(p.dz) + row0 + t0 : nullptr;
      for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
        const int r = i / TB, t = i % TB;
        float dy = 0.f, vD = 0.f;
        if (r < bp.nrows && t < tl) {
          const int dr = bp.d0 + r;
          const long long off = (long long)r * L + t;
          const float go = to_f(dout[off]);
          if (z) {
            float yv = s_y[r][t];
            if (p.D) yv += p.D[dr] * s_u[r][t];
            if (p.yoff) yv += p.yoff[bp.b * p.yoff_bstride + dr];
            const float zz = to_f(z[off]);
            const float sg = sigmoid(zz);
            dz[off] = from_f<T>(go * yv * sg * (1.f + zz * (1.f - sg)));
            dy = go * zz * sg;
          } else {
            dy = go;
          }
          vD = dy * s_u[r][t];
        }
        s_dy[r][t] = dy;
        const float sD = lane_sum<TB>(vD);
        const float sY = lane_sum<TB>(dy);
        if (t == 0) {
          s_accD[r] += sD;
          s_accY[r] += sY;
        }
      }
    }
    __syncthreads();

    // 2c. the reverse recurrence
#pragma unroll
    for (int t = TB - 1; t >= 0; --t) {
      if (t < tl) {
        const float dt = s_dt[c][t];
        const float uu = s_u[c][t];
        const float dy = s_dy[c][t];
        const float du = dt * uu;
        float Bv[NPT], Cv[NPT], dBv[NPT], dCv[NPT];
        load_vec<NPT>(Bv, &s_B[t][lane * NPT]);
        load_vec<NPT>(Cv, &s_C[t][lane * NPT]);
        float s1 = 0.f, s2 = 0.f;
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          const float a = exp2f(dt * A2[k]);
          const float hp = hist[t][k];
          const float g = G[k] + dy * Cv[k];
          const float hc = a * hp + du * Bv[k];
          dCv[k] = dy * (hc + ho[k]);
          dho[k] += dy * Cv[k];
          const float gah = g * a * hp;
          s1 += gah * A2[k];
          dAacc[k] += gah * dt;
          s2 += g * Bv[k];
          dBv[k] = g * du;
          G[k] = a * g;
        }
        if (p.seq_idx && s_rst[t]) {
          // h_{t-1} was the initial state, not the previous document's last state: ∂/∂h_{t-1} goes
          // to h_0, and nothing flows back across the boundary
#pragma unroll
          for (int k = 0; k < NPT; ++k) {
            dhs[k] += G[k];
            G[k] = 0.f;
          }
        }
        s1 = lane_sum<LPC>(s1) * kLn2;
        s2 = lane_sum<LPC>(s2);
        if (lane == 0) {
          s_s1[c][t] = s1;
          s_s2[c][t] = s2;
        }
float v[2 * NPT];
#pragma unroll
        for (int k = 0; k < NPT; ++k) {
          v[k] = dBv[k];
          v[NPT + k] = dCv[k];
        }
        int first;
        const int count = channel_reduce_scatter<2 * NPT, LPC>(v, first);
        if (count) {
#pragma unroll
          for (int j = 0; j < sums_per_lane(2 * NPT, LPC); ++j) {
            const int idx = first + j;
            float *dst = idx < NPT ? &s_dB[t][lane * NPT + idx] : &s_dC[t][lane * NPT + idx - NPT];
            atomicAdd(dst, v[j]);
          }
        }
      }
    }
    __syncthreads();

    // 2d. du, dδ per (channel, t); dB, dC per (n, t)
    {
      T *du = static_cast<T *>(p.du) + row0 + t0;
      T *ddl = static_cast<T *>(p.ddelta) + row0 + t0;
      for (int i = threadIdx.x; i < CPB * TB; i += kThreads) {
        const int r = i / TB, t = i % TB;
        float vb = 0.f;
        if (r < bp.nrows && t < tl) {
          const int dr = bp.d0 + r;
          const long long off = (long long)r * L + t;
          const float uu = s_u[r][t], dt = s_dt[r][t], s2 = s_s2[r][t];
          const float ddt = s_s1[r][t] + uu * s2;
          float gu = dt * s2;
          if (p.D) gu += p.D[dr] * s_dy[r][t];
          vb = ddt * s_dsp[r][t];
          du[off] = from_f<T>(gu);
          ddl[off] = from_f<T>(vb);
        }
        const float sb = lane_sum<TB>(vb);
        if (t == 0) s_accBias[r] += sb;
      }
      float *dBg = p.dB + bc_off + t0;
      float *dCg = p.dC + bc_off + t0;
      for (int i = threadIdx.x; i < NPAD * TB; i += kThreads) {
        const int n = i / TB, t = i % TB;
        if (n < N && t < tl) {
          atomicAdd(dBg + (long long)n * L + t, s_dB[t][n]);
          atomicAdd(dCg + (long long)n * L + t, s_dC[t][n]);
        }
      }
    }
    __syncthreads();
  }

  if (active) {
#pragma unroll
    for (int k = 0; k < NPT; ++k) {
      const int n = lane * NPT + k;
      if (n < N) {
        const long long dn = (long long)d * N + n;
        atomicAdd(p.dA + dn, dAacc[k]);
        if (p.dh0) atomicAdd(p.dh0 + bp.b * p.h0_bstride + dn, G[k] + dhs[k]);
        if (p.dhoff) atomicAdd(p.dhoff + bp.b * p.hoff_bstride + dn, dho[k]);
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

template <int CPB>
inline dim3 scan_grid(const ScanParams &p) {
  const int per_group = (p.dim / p.groups + CPB - 1) / CPB;
  return dim3(p.groups * per_group, p.batch);
}

// (NPT, LPC) by state size: 4 states per lane up to 128 states, 8 beyond; LPC lanes cover them.
// Few channels (batch x D below a threshold) leave most of the GPU idle with 4 states per lane: then (NARROW)
// one state per lane, 16 lanes per channel, for up to 16 states. Thresholds measured on an H100 at N = 16, L 1024-
// 8192 (benches/gpu/scan_layout.py, benches/results/scan-layout-h100.md): the forward is faster narrow below
// 12,288 channels, the backward below 8,192. SSM_OFFSET_{FWD,BWD}_NARROW_BELOW (channels) move them.
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
  static const int fwd = [] { const char *e = std::getenv("SSM_OFFSET_FWD_NARROW_BELOW"); return e ? std::atoi(e) : 12288; }();
  static const int bwd = [] { const char *e = std::getenv("SSM_OFFSET_BWD_NARROW_BELOW"); return e ? std::atoi(e) : 8192; }();
  return backward ? bwd : fwd;
}

template <typename T>
void launch_fwd(const ScanParams &p, cudaStream_t s) {
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < narrow_below(false), {
    fwd_kernel<T, NPT, LPC><<<scan_grid<Cfg<NPT, LPC>::kCpb>(p), kThreads, 0, s>>>(p);
  })
}

template <typename T>
void launch_bwd(const ScanParams &p, cudaStream_t s) {
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < narrow_below(true), {
    bwd_kernel<T, NPT, LPC><<<scan_grid<Cfg<NPT, LPC>::kCpb>(p), kThreads, 0, s>>>(p);
  })
}

}  // namespace detail
}  // namespace ssm_offset
