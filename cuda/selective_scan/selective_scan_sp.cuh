// State-parallel Mamba-1 forward for N = 16 (fp16 / bf16): lane n of a half-warp owns state n of one channel and
// walks the whole row in time, so that the recurrence
//   h_t = a_t h_{t-1} + b_t,   a_t = exp(Δ_t A_n),   b_t = Δ_t u_t B_t,n
// is one FFMA a step with no scan across lanes (the time-parallel kernels, selective_scan_tp.cuh, pay a fold, a
// 5-round shuffle scan and a replay per state and 8 steps: 32 % more instructions than mamba_ssm's forward). What a
// channel's 16 lanes share is paid once, not once a lane:
// - per chunk of 128 steps, lane j loads, converts and finishes steps 8j .. 8j + 7 (16-byte vectors of u, δ, z and
//   y, loaded a chunk ahead): Δ = softplus(δ + bias) and Δ u into shared memory for all 16 lanes, and at the chunk's
//   end y_t = (Σ_n C_t,n (h_t,n + h'_n) + D u_t + y') silu(z_t) for its 8 steps;
// - per group of 16 steps, each lane writes its 16 terms C_t,n (h_t,n + h'_n) to shared memory and lane j sums
//   column j: a transpose, where a shuffle reduction would cost 4 shuffles a step (the narrow channel-parallel
//   layout's);
// - B and C, shared by the block's 8 channels, are staged in shared memory a chunk ahead by asynchronous copies
//   (BCStage).
// What bounds it is shared memory and L1 traffic (ncu: l1tex 97 % busy before B and C were staged, when each lane
// read its state's row of them from global memory). A document restart at t (seq_idx) sets h_{t-1} := h_0 in every
// lane of the channel. The state every kStatesEvery steps (ScanParams::states) and the final state are lane n's h,
// so the time-parallel backward follows it as it follows the other forwards. Which calls take it: step.cu's
// state_parallel(); benches/results/kernels-sp-h100.md has what it measured.
#pragma once

namespace ssm_offset {
namespace detail {
namespace sp {

constexpr int kLanes = 16;                 // one state a lane: the kernel serves N = 16
constexpr int kGroup = 16;                 // steps a group: one per lane, for the y transpose
constexpr int kSteps = 8;                  // steps a lane loads, converts and writes per chunk (16-byte vectors)
constexpr int kChunk = kLanes * kSteps;    // steps a chunk: its inputs are loaded one chunk ahead
constexpr int kChans = kThreads / kLanes;  // channels a block
constexpr int kRow = 20;                   // floats a lane's row of the transpose: 16 + 4 keeps its float4 stores
                                           // and the column reads free of bank conflicts
constexpr int kChanFloats = kLanes * kRow + 16;  // a channel's transpose; + 16 puts the warp's second channel's
                                                 // columns on the other 16 banks
#ifndef SSM_OFFSET_SP_BLOCKS
#define SSM_OFFSET_SP_BLOCKS 3
#endif
static_assert(kStatesEvery % kChunk == 0, "a saved state must fall on a chunk's end");

// B and C of a chunk, staged once per block (its 8 channels share the batch row and group) by asynchronous copies
// issued a chunk ahead: run (k, n) = steps 8k .. 8k + 7 of state n, stored at [k][n] so that the 16 lanes of a channel
// read 16 consecutive runs (two wavefronts, the warp's other channel reading the same ones), and padded to 17 a row
// so that the copies' stores, 8 consecutive k for one n, fall on distinct banks. Read from B and C in global memory
// by each lane instead (16 rows, 16 cache lines an instruction), they kept L1 busy 97 % of the time.
template <typename T>
struct BCStage {
  static constexpr int kVec = kSteps * (int)sizeof(T) / 16;  // 16-byte pieces a run
  uint4 B[2][kChunk / kSteps][kLanes + 1][kVec], C[2][kChunk / kSteps][kLanes + 1][kVec];

  // every thread of the block: its share of the chunk from c0 into buffer `buf`, zeros past L
  __device__ __forceinline__ void issue(const T *Bg, const T *Cg, const BCStrides &sB, const BCStrides &sC, int c0,
                                        int len, int buf) {
    constexpr int kRuns = kLanes * (kChunk / kSteps) * kVec;
    for (int q = threadIdx.x; q < kRuns; q += kThreads) {
      const int v = q % kVec, k = q / kVec % (kChunk / kSteps), n = q / kVec / (kChunk / kSteps);
      const int t = c0 + k * kSteps + v * (16 / (int)sizeof(T));
      const int bytes = max(0, min(16, (len - t) * (int)sizeof(T)));
      copy(&B[buf][k][n][v], Bg + (long long)n * sB.ld + (bytes ? t : 0), bytes);
      copy(&C[buf][k][n][v], Cg + (long long)n * sC.ld + (bytes ? t : 0), bytes);
    }
    asm volatile("cp.async.commit_group;\n" ::);
  }
  static __device__ __forceinline__ void copy(uint4 *dst, const T *src, int bytes) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes));
  }
  static __device__ __forceinline__ void wait() { asm volatile("cp.async.wait_group 0;\n" ::); }

  // lane n's 16 steps of group g
  __device__ __forceinline__ void group(int buf, int g, int n, tp::Run<T, kGroup> &b, tp::Run<T, kGroup> &c) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        b.v[h * kVec + v] = B[buf][2 * g + h][n][v];
        c.v[h * kVec + v] = C[buf][2 * g + h][n][v];
      }
    }
  }
};

// What the kernel can run: one lane a state (N = 16), and with 16-byte vectors B and C channel-major (each lane's
// 16-step run, tp::direct) and u, delta, z and y rows (each lane's 8 steps); step.cu's state_parallel() asks
template <typename T>
bool usable(const ScanParams &p) {
  auto aligned = [](const void *ptr, const Strides &st) {
    return ptr == nullptr || tp::rows_aligned<T>(ptr, st.b, 0, st.ld);
  };
  return p.nstate == kLanes && tp::direct<T, kGroup>(p) && aligned(p.u, p.su) && aligned(p.delta, p.sdelta) &&
         aligned(p.z, p.sz) && aligned(p.y, p.sy);
}

// One group's 16 steps in this lane's state: the recurrence, and the terms C_t (h_t + h') of y into this lane's row
// of the transpose
template <typename T, bool R>
__device__ __forceinline__ void group_steps(const tp::Run<T, kGroup> &Bv, const tp::Run<T, kGroup> &Cv,
                                            const float *s_dt, const float *s_dtu, unsigned rst, float A2, float h0n,
                                            float ho, float &h, float *red) {
#pragma unroll
  for (int j4 = 0; j4 < kGroup; j4 += 4) {
    const float4 dt4 = *reinterpret_cast<const float4 *>(s_dt + j4);
    const float4 dtu4 = *reinterpret_cast<const float4 *>(s_dtu + j4);
    const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dtu[4] = {dtu4.x, dtu4.y, dtu4.z, dtu4.w};
    float y[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int j = j4 + k;
      const float a = exp2f(dt[k] * A2);
      if (R && ((rst >> j) & 1u)) h = h0n;
      h = fmaf(a, h, dtu[k] * Bv.at(j));
      y[k] = Cv.at(j) * (h + ho);
    }
    *reinterpret_cast<float4 *>(red + j4) = make_float4(y[0], y[1], y[2], y[3]);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, SSM_OFFSET_SP_BLOCKS) fwd_kernel(ScanParams p) {
  // per channel and chunk: Δ and Δ u by step (written by the lane that loaded the step, read by all 16), and
  // Σ_n C_t,n (h_t,n + h'_n) by step (written by the lane that summed it, read by the lane that writes y_t)
  __shared__ __align__(16) float s_dt[kChans][kChunk], s_dtu[kChans][kChunk], s_sum[kChans][kChunk];
  __shared__ __align__(16) float s_red[kThreads / 32][2 * kChanFloats];
  __shared__ BCStage<T> s_bc;
  const BlockPos bp = block_pos(p, kChans);
  const int c = threadIdx.x / kLanes, n = threadIdx.x % kLanes, L = p.len;
  const bool active = c < bp.nrows;
  const int r = active ? c : 0;  // an idle channel reads the block's first and writes nothing
  const int d = bp.d0 + r;
  const long long dn = (long long)d * kLanes + n;
  const float A2 = p.A[dn] * kLog2e;
  const float h0n = p.h0 ? p.h0[bp.b * p.h0_bstride + dn] : 0.f;
  const float ho = p.hoff ? p.hoff[bp.b * p.hoff_bstride + dn] : 0.f;
  const float bias = p.delta_bias ? p.delta_bias[d] : 0.f, Dd = p.D ? p.D[d] : 0.f;
  const float yoff = p.yoff ? p.yoff[bp.b * p.yoff_bstride + d] : 0.f;
  const T *ur = row_ptr<false, const T>(p.u, p.su, bp) + (long long)r * p.su.ld;
  const T *dr = row_ptr<false, const T>(p.delta, p.sdelta, bp) + (long long)r * p.sdelta.ld;
  const T *zr = p.z ? row_ptr<false, const T>(p.z, p.sz, bp) + (long long)r * p.sz.ld : nullptr;
  T *yr = row_ptr<false, T>(p.y, p.sy, bp) + (long long)r * p.sy.ld;
  const T *Bg = group_ptr<T>(p.B, p.sB, bp), *Cg = group_ptr<T>(p.C, p.sC, bp);
  const int *seq = p.seq_idx ? p.seq_idx + (long long)bp.b * L : nullptr;
  float *red = s_red[threadIdx.x / 32] + (c & 1) * kChanFloats;
  float h = h0n;
  if (active) states_row(p, bp.b, d, 0)[n] = h;
  tp::Run<T, kSteps> un, dn_, zn;  // this lane's 8 steps of the next chunk
  un.load(ur, n * kSteps, L);
  dn_.load(dr, n * kSteps, L);
  if (zr) zn.load(zr, n * kSteps, L);
  s_bc.issue(Bg, Cg, p.sB, p.sC, 0, L, 0);
  for (int c0 = 0, buf = 0; c0 < L; c0 += kChunk, buf ^= 1) {
    const int tl = c0 + n * kSteps;  // this lane's first step
    BCStage<T>::wait();
    __syncthreads();  // the chunk's B and C are in, and every warp is done with the other buffer
    if (c0 + kChunk < L) s_bc.issue(Bg, Cg, p.sB, p.sC, c0 + kChunk, L, buf ^ 1);
    const tp::Run<T, kSteps> uc = un, zc = zn;
    {
      const tp::Run<T, kSteps> dc = dn_;
      if (c0 + kChunk < L) {
        un.load(ur, tl + kChunk, L);
        dn_.load(dr, tl + kChunk, L);
        if (zr) zn.load(zr, tl + kChunk, L);
      }
      float dt[kSteps], dtu[kSteps];
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const float x = dc.at(j) + bias;
        dt[j] = tl + j < L ? (p.softplus ? softplus(x) : x) : 0.f;  // Δ = 0 past L: the state stays
        dtu[j] = dt[j] * uc.at(j);
      }
#pragma unroll
      for (int j = 0; j < kSteps; j += 4) {
        *reinterpret_cast<float4 *>(&s_dt[c][n * kSteps + j]) = make_float4(dt[j], dt[j + 1], dt[j + 2], dt[j + 3]);
        *reinterpret_cast<float4 *>(&s_dtu[c][n * kSteps + j]) =
            make_float4(dtu[j], dtu[j + 1], dtu[j + 2], dtu[j + 3]);
      }
    }
    // where documents start among this lane's 8 steps, a bit each
    unsigned rbits = 0;
    if (seq) {
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const int t = tl + j;
        rbits |= (unsigned)(t > 0 && t < L && seq[t] != seq[t - 1]) << j;
      }
    }
    const bool restarts = seq && __any_sync(0xffffffffu, rbits != 0u);
    __syncwarp();
    for (int g = 0; g < kChunk / kGroup && c0 + g * kGroup < L; ++g) {
      tp::Run<T, kGroup> Bv, Cv;
      s_bc.group(buf, g, n, Bv, Cv);
      tp::with_restarts(restarts, [&](auto any) {
        constexpr bool R = decltype(any)::value;
        unsigned rst = 0;
        if constexpr (R) {  // the group's 16 steps are those of lanes 2g and 2g + 1
          rst = __shfl_sync(0xffffffffu, rbits, 2 * g, kLanes) | __shfl_sync(0xffffffffu, rbits, 2 * g + 1, kLanes) << 8;
        }
        group_steps<T, R>(Bv, Cv, &s_dt[c][g * kGroup], &s_dtu[c][g * kGroup], rst, A2, h0n, ho, h, red + n * kRow);
      });
      __syncwarp();
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < kLanes; ++k) sum += red[k * kRow + n];
      s_sum[c][g * kGroup + n] = sum;
      __syncwarp();  // the transpose is read before the next group writes it
    }
    // this lane's 8 outputs: (Σ + D u + y') silu(z), one 16-byte store where the run is whole
    const float4 s0 = *reinterpret_cast<const float4 *>(&s_sum[c][n * kSteps]);
    const float4 s1 = *reinterpret_cast<const float4 *>(&s_sum[c][n * kSteps + 4]);
    const float sums[kSteps] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
    tp::Run<T, kSteps> out;
    T *o = reinterpret_cast<T *>(out.v);
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      float v = sums[j] + Dd * uc.at(j) + yoff;
      if (zr) {
        const float zz = zc.at(j);
        v *= zz * sigmoid(zz);
      }
      o[j] = from_f<T>(v);
    }
    if (active) out.store(yr, tl, L);
    const int next = c0 + kChunk;
    if (next % kStatesEvery == 0 && next < L && active) states_row(p, bp.b, d, next / kStatesEvery)[n] = h;
  }
  if (active) p.final_state[((long long)bp.b * p.dim + d) * kLanes + n] = h;
}

template <typename T>
void launch_fwd(const ScanParams &p, cudaStream_t s) {
  fwd_kernel<T><<<scan_grid<kChans>(p), kThreads, 0, s>>>(p);
}

}  // namespace sp
}  // namespace detail
}  // namespace ssm_offset
