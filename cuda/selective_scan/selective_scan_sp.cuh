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

// Where documents start (seq_idx changes) among the 8 steps from tl, a bit each
__device__ __forceinline__ unsigned restart_bits(const int *seq, int tl, int len) {
  unsigned bits = 0;
  if (seq) {
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const int t = tl + j;
      bits |= (unsigned)(t > 0 && t < len && seq[t] != seq[t - 1]) << j;
    }
  }
  return bits;
}

// The restart bits of group g's 16 steps: those of lanes 2g and 2g + 1 of the channel (every lane must call it)
__device__ __forceinline__ unsigned group_restarts(unsigned rbits, int g) {
  return __shfl_sync(0xffffffffu, rbits, 2 * g, kLanes) | __shfl_sync(0xffffffffu, rbits, 2 * g + 1, kLanes) << 8;
}

// What a lane of either kernel knows: its block's position, its channel c among the block's (an idle one past the
// block's rows reads the block's first, r, and writes nothing) and state n, and the (channel, state) constants
struct Lane {
  BlockPos bp;
  int c, n, r, d;
  bool active;
  long long dn;
  float A2, h0n, ho, bias, Dd, yoff;

  __device__ __forceinline__ explicit Lane(const ScanParams &p) : bp(block_pos(p, kChans)) {
    c = threadIdx.x / kLanes, n = threadIdx.x % kLanes;
    active = c < bp.nrows;
    r = active ? c : 0;
    d = bp.d0 + r;
    dn = (long long)d * kLanes + n;
    A2 = p.A[dn] * kLog2e;
    h0n = p.h0 ? p.h0[bp.b * p.h0_bstride + dn] : 0.f;
    ho = p.hoff ? p.hoff[bp.b * p.hoff_bstride + dn] : 0.f;
    bias = p.delta_bias ? p.delta_bias[d] : 0.f, Dd = p.D ? p.D[d] : 0.f;
    yoff = p.yoff ? p.yoff[bp.b * p.yoff_bstride + d] : 0.f;
  }
  // the channel's row of a channel-major (batch, dim, len) tensor, or null where the tensor is absent
  template <typename T, typename V>
  __device__ __forceinline__ T *row(V *base, const Strides &s) const {
    return base ? row_ptr<false, T>(base, s, bp) + (long long)r * s.ld : nullptr;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads, SSM_OFFSET_SP_BLOCKS) fwd_kernel(ScanParams p) {
  // per channel and chunk: Δ and Δ u by step (written by the lane that loaded the step, read by all 16), and
  // Σ_n C_t,n (h_t,n + h'_n) by step (written by the lane that summed it, read by the lane that writes y_t)
  __shared__ __align__(16) float s_dt[kChans][kChunk], s_dtu[kChans][kChunk], s_sum[kChans][kChunk];
  __shared__ __align__(16) float s_red[kThreads / 32][2 * kChanFloats];
  __shared__ BCStage<T> s_bc;
  const Lane ln(p);
  const BlockPos &bp = ln.bp;
  const int c = ln.c, n = ln.n, d = ln.d, L = p.len;
  const bool active = ln.active;
  const float A2 = ln.A2, h0n = ln.h0n, ho = ln.ho, bias = ln.bias, Dd = ln.Dd, yoff = ln.yoff;
  const T *ur = ln.row<const T>(p.u, p.su), *dr = ln.row<const T>(p.delta, p.sdelta), *zr = ln.row<const T>(p.z, p.sz);
  T *yr = ln.row<T>(p.y, p.sy);
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
    const unsigned rbits = restart_bits(seq, tl, L);
    const bool restarts = seq && __any_sync(0xffffffffu, rbits != 0u);
    __syncwarp();
    for (int g = 0; g < kChunk / kGroup && c0 + g * kGroup < L; ++g) {
      tp::Run<T, kGroup> Bv, Cv;
      s_bc.group(buf, g, n, Bv, Cv);
      tp::with_restarts(restarts, [&](auto any) {
        constexpr bool R = decltype(any)::value;
        unsigned rst = 0;
        if constexpr (R) rst = group_restarts(rbits, g);
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

// ------------------------------------------------------------------------------------------------------- backward
// The same lanes and blocks walk each 256-step interval of ScanParams::states in reverse. A replay from the interval's
// saved state keeps every 16-step group's starting state in shared memory; then, per group in reverse, each lane
// replays its state over the group in registers and walks it back:
//   G_t = dy_t C_t,n + P,        P := (a restart at t ? 0 : a_t) G_t     (P reaches h_{t-1}; dfinal at the row's end)
//   dA_n += G_t a_t h_{t-1} Δ_t,   dB_t,n += G_t Δ_t u_t,   dC_t,n += dy_t (h_t + h'_n),   dh'_n += dy_t C_t,n
// (a restart at t: h_{t-1} is h_0 there, and dh_0 += G_t a_t). Sums over a step's 16 states go through the forward's
// transpose: du_t = Δ_t Σ_n G_t B_t,n + D dy_t and dΔ_t = u_t Σ_n G_t B_t,n + ln 2 Σ_n G_t a_t h_{t-1} A_n log2 e,
// and with z the pre-gate output that dz needs. dB and dC add the warp's two channels by a shuffle and the block's
// four warps in shared memory before one atomic add per (step, state) and block, as the time-parallel backward does.
template <typename T>
struct BwdShared {
  float dt[kChans][kChunk], dtu[kChans][kChunk], dy[kChans][kChunk];  // per step of the chunk: Δ, Δ u, dy
  float gb[kChans][kChunk], ah[kChans][kChunk], yp[kChans][kChunk];   // the transposed sums, per step
  float hg[kChans][kStatesEvery / kGroup][kLanes];                    // each group's starting state
  float red[kThreads / 32][2 * kChanFloats];                          // the transpose
  float dbc[2][kThreads / 32][kLanes][kGroup];                        // a group's dB, dC of each warp's channels
  BCStage<T> bc;
};

// the transpose: lane n's 16 values of a group in, lane n's column sum (step n of the group) out
__device__ __forceinline__ float column_sum(float *red, int n, const float (&v)[kGroup]) {
#pragma unroll
  for (int j4 = 0; j4 < kGroup; j4 += 4)
    *reinterpret_cast<float4 *>(red + n * kRow + j4) = make_float4(v[j4], v[j4 + 1], v[j4 + 2], v[j4 + 3]);
  __syncwarp();
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kLanes; ++k) sum += red[k * kRow + n];
  __syncwarp();  // read before the next transpose writes
  return sum;
}

// The chunks the backward visits, in order: per interval of ScanParams::states from the last, its chunks forward (the
// replay) and then back (the walk back); `at` counts visits. A visit's B and C are staged during the one before.
struct Visits {
  int len;
  __device__ __forceinline__ int total() const { return 2 * ((len + kChunk - 1) / kChunk); }  // every chunk twice
  // visit `at`: its chunk's first step, whether it walks back, and its interval (the last may hold one chunk)
  __device__ __forceinline__ void get(int at, int &c0, bool &back, int &iv) const {
    constexpr int kPer = kStatesEvery / kChunk;
    const int chunks = (len + kChunk - 1) / kChunk, last = state_chunks(len) - 1;
    const int in_last = chunks - last * kPer;  // chunks of the last interval (1 .. kPer)
    int idx, n;
    if (at < 2 * in_last) {
      iv = last, idx = at, n = in_last;
    } else {
      const int k = at - 2 * in_last;
      iv = last - 1 - k / (2 * kPer), idx = k % (2 * kPer), n = kPer;
    }
    back = idx >= n;
    c0 = iv * kStatesEvery + kChunk * (back ? 2 * n - 1 - idx : idx);
  }
};

template <typename T, int MIN_BLOCKS>
__global__ void __launch_bounds__(kThreads, MIN_BLOCKS) bwd_kernel(ScanParams p) {
  extern __shared__ __align__(16) unsigned char sp_smem[];
  BwdShared<T> &s = *reinterpret_cast<BwdShared<T> *>(sp_smem);
  const Lane ln(p);  // an idle channel's dy and carry are zero: it adds nothing to the sums
  const BlockPos &bp = ln.bp;
  const int c = ln.c, n = ln.n, d = ln.d, L = p.len, warp = threadIdx.x / 32;
  const bool active = ln.active;
  const long long dn = ln.dn;
  const float A2 = ln.A2, h0n = ln.h0n, ho = ln.ho, bias = ln.bias, Dd = ln.Dd, yoff = ln.yoff;
  const T *ur = ln.row<const T>(p.u, p.su), *dlr = ln.row<const T>(p.delta, p.sdelta), *zr = ln.row<const T>(p.z, p.sz);
  const T *dor = ln.row<const T>(p.dout, p.sdout);
  const T *Bg = group_ptr<T>(p.B, p.sB, bp), *Cg = group_ptr<T>(p.C, p.sC, bp);
  const int *seq = p.seq_idx ? p.seq_idx + (long long)bp.b * L : nullptr;
  const long long bc_off = ((long long)bp.b * p.groups + bp.g) * kLanes * L;  // dB, dC: contiguous fp32
  float *red = s.red[warp] + (c & 1) * kChanFloats;
  const bool lead = (threadIdx.x & 31) < kLanes;  // the warp's first channel, which stores the warp's dB, dC sums

  const Visits visits{L};
  const int nvisits = visits.total();
  // B and C of a visit's chunk are staged during the visit before (u, Δ, dout and z would hold 16 more registers
  // a lane: they are loaded when the visit starts)
  auto prefetch = [&](int at) {
    int c0, iv;
    bool back;
    visits.get(at, c0, back, iv);
    s.bc.issue(Bg, Cg, p.sB, p.sC, c0, L, at & 1);
  };
  prefetch(0);

  float P = (active && p.dfinal) ? p.dfinal[((long long)bp.b * p.dim + d) * kLanes + n] : 0.f;
  float h = 0.f;  // the replay's state
  float dA = 0.f, dh0 = 0.f, dho = 0.f, dD = 0.f, dY = 0.f, dBias = 0.f;
  for (int at = 0; at < nvisits; ++at) {
    int c0, iv;
    bool back;
    visits.get(at, c0, back, iv);
    const int s0 = iv * kStatesEvery, tl = c0 + n * kSteps, buf = at & 1;
    tp::Run<T, kSteps> uc, dc, oc, zc;  // this lane's 8 steps (dout and z only for a walk back)
    uc.load(ur, tl, L);
    dc.load(dlr, tl, L);
    if (back) {
      oc.load(dor, tl, L);
      if (zr) zc.load(zr, tl, L);
    }
    BCStage<T>::wait();
    __syncthreads();  // the chunk's B and C are in, and every warp is done with the other buffer
    if (at + 1 < nvisits) prefetch(at + 1);
    {
      float dt[kSteps], dtu[kSteps], dy[kSteps];
#pragma unroll
      for (int j = 0; j < kSteps; ++j) {
        const float x = dc.at(j) + bias;
        const bool in = tl + j < L;
        dt[j] = in ? (p.softplus ? softplus(x) : x) : 0.f;  // Δ = 0 past L: the state stays
        dtu[j] = dt[j] * uc.at(j);
        dy[j] = 0.f;
        if (back && in && active) {
          dy[j] = oc.at(j);
          if (zr) {
            const float zz = zc.at(j);
            dy[j] *= zz * sigmoid(zz);
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kSteps; j += 4) {
        *reinterpret_cast<float4 *>(&s.dt[c][n * kSteps + j]) = make_float4(dt[j], dt[j + 1], dt[j + 2], dt[j + 3]);
        *reinterpret_cast<float4 *>(&s.dtu[c][n * kSteps + j]) =
            make_float4(dtu[j], dtu[j + 1], dtu[j + 2], dtu[j + 3]);
        if (back)
          *reinterpret_cast<float4 *>(&s.dy[c][n * kSteps + j]) = make_float4(dy[j], dy[j + 1], dy[j + 2], dy[j + 3]);
      }
    }
    const unsigned rbits = restart_bits(seq, tl, L);
    const bool restarts = seq && __any_sync(0xffffffffu, rbits != 0u);
    __syncwarp();
    const int groups = min(kChunk / kGroup, (L - c0 + kGroup - 1) / kGroup);
    if (!back) {
      // the replay: each group's starting state, from the interval's saved one
      if (c0 == s0) h = active ? states_row(p, bp.b, d, iv)[n] : 0.f;
      for (int g = 0; g < groups; ++g) {
        s.hg[c][(c0 - s0) / kGroup + g][n] = h;
        tp::Run<T, kGroup> Bv, Cv;
        s.bc.group(buf, g, n, Bv, Cv);
        const unsigned rst = group_restarts(rbits, g);
#pragma unroll
        for (int j4 = 0; j4 < kGroup; j4 += 4) {
          const float4 dt4 = *reinterpret_cast<const float4 *>(&s.dt[c][g * kGroup + j4]);
          const float4 dtu4 = *reinterpret_cast<const float4 *>(&s.dtu[c][g * kGroup + j4]);
          const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dtu[4] = {dtu4.x, dtu4.y, dtu4.z, dtu4.w};
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const float a = exp2f(dt[k] * A2);
            if (restarts && ((rst >> (j4 + k)) & 1u)) h = h0n;
            h = fmaf(a, h, dtu[k] * Bv.at(j4 + k));
          }
        }
      }
      continue;
    }
    // the walk back over the chunk's groups
    for (int g = groups - 1; g >= 0; --g) {
      tp::Run<T, kGroup> Bv, Cv;
      s.bc.group(buf, g, n, Bv, Cv);
      const unsigned rst = group_restarts(rbits, g);
      const float *gdt = &s.dt[c][g * kGroup], *gdtu = &s.dtu[c][g * kGroup], *gdy = &s.dy[c][g * kGroup];
      const float hstart = s.hg[c][(c0 - s0) / kGroup + g][n];
      float hs[kGroup], as[kGroup], w[kGroup];
      tp::with_restarts(restarts, [&](auto any) {
        constexpr bool R = decltype(any)::value;
        float hh = hstart;
#pragma unroll
        for (int j4 = 0; j4 < kGroup; j4 += 4) {
          const float4 dt4 = *reinterpret_cast<const float4 *>(gdt + j4);
          const float4 dtu4 = *reinterpret_cast<const float4 *>(gdtu + j4);
          const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dtu[4] = {dtu4.x, dtu4.y, dtu4.z, dtu4.w};
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const int j = j4 + k;
            as[j] = exp2f(dt[k] * A2);
            if (R && ((rst >> j) & 1u)) hh = h0n;
            hh = fmaf(as[j], hh, dtu[k] * Bv.at(j));
            hs[j] = hh;
            w[j] = Cv.at(j) * (hh + ho);  // the pre-gate output's terms
          }
        }
        if (zr) s.yp[c][g * kGroup + n] = column_sum(red, n, w);
#pragma unroll
        for (int j4 = kGroup - 4; j4 >= 0; j4 -= 4) {
          const float4 dt4 = *reinterpret_cast<const float4 *>(gdt + j4);
          const float4 dtu4 = *reinterpret_cast<const float4 *>(gdtu + j4);
          const float4 dy4 = *reinterpret_cast<const float4 *>(gdy + j4);
          const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dtu[4] = {dtu4.x, dtu4.y, dtu4.z, dtu4.w};
          const float dy[4] = {dy4.x, dy4.y, dy4.z, dy4.w};
          float gb[4], bt[4], ct[4];
#pragma unroll
          for (int k = 3; k >= 0; --k) {
            const int j = j4 + k;
            const bool rs = R && ((rst >> j) & 1u);
            const float Cj = Cv.at(j);
            const float G = fmaf(dy[k], Cj, P);
            const float hp = rs ? h0n : j > 0 ? hs[j - 1] : hstart;
            const float gah = G * as[j] * hp;
            dA += gah * dt[k];
            dho += dy[k] * Cj;
            if (rs) dh0 += G * as[j];
            gb[k] = G * Bv.at(j);  // Σ_n G B, transposed below
            w[j] = gah * A2;
            // dB, dC of the step and state: the warp's two channels by a shuffle, its four warps below
            bt[k] = G * dtu[k];
            ct[k] = dy[k] * (hs[j] + ho);
            bt[k] += __shfl_xor_sync(0xffffffffu, bt[k], kLanes);
            ct[k] += __shfl_xor_sync(0xffffffffu, ct[k], kLanes);
            P = (rs ? 0.f : as[j]) * G;
          }
          *reinterpret_cast<float4 *>(red + n * kRow + j4) = make_float4(gb[0], gb[1], gb[2], gb[3]);
          if (lead) {
            *reinterpret_cast<float4 *>(&s.dbc[0][warp][n][j4]) = make_float4(bt[0], bt[1], bt[2], bt[3]);
            *reinterpret_cast<float4 *>(&s.dbc[1][warp][n][j4]) = make_float4(ct[0], ct[1], ct[2], ct[3]);
          }
        }
      });
      __syncwarp();
      {
        float sum = 0.f;
#pragma unroll
        for (int k = 0; k < kLanes; ++k) sum += red[k * kRow + n];
        s.gb[c][g * kGroup + n] = sum;
      }
      __syncwarp();
      s.ah[c][g * kGroup + n] = column_sum(red, n, w);
      __syncthreads();
      static_assert(2 * kLanes * kGroup == 4 * kThreads, "one quad of steps a thread");
      {
        // thread i: dB (i < 64) or dC, state nn, steps j4 .. j4 + 3 of the group
        const int which = threadIdx.x / (kThreads / 2), nn = threadIdx.x / 4 % kLanes, j4 = threadIdx.x % 4 * 4;
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int w4 = 0; w4 < kThreads / 32; ++w4) {
          const float4 v = *reinterpret_cast<const float4 *>(&s.dbc[which][w4][nn][j4]);
          sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
        }
        float *out = (which ? p.dC : p.dB) + bc_off + (long long)nn * L + c0 + g * kGroup + j4;
        const float q[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (c0 + g * kGroup + j4 + k < L) atomicAdd(out + k, q[k]);
      }
      __syncthreads();  // read before the next group writes
    }
    // this lane's 8 steps: du, dΔ (and dz), one 16-byte store each where the run is whole
    tp::Run<T, kSteps> du, ddl, dz;
    T *pu = reinterpret_cast<T *>(du.v), *pd = reinterpret_cast<T *>(ddl.v), *pz = reinterpret_cast<T *>(dz.v);
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      const int k = n * kSteps + j;
      const float u = uc.at(j), dyj = s.dy[c][k], gb = s.gb[c][k];
      const float dd = (u * gb + kLn2 * s.ah[c][k]) * dsoftplus(p.softplus, dc.at(j) + bias);
      pu[j] = from_f<T>(s.dt[c][k] * gb + Dd * dyj);
      pd[j] = from_f<T>(dd);
      if (zr) {
        const float zz = zc.at(j), sg = sigmoid(zz), yv = s.yp[c][k] + Dd * u + yoff;
        pz[j] = from_f<T>(oc.at(j) * yv * sg * (1.f + zz * (1.f - sg)));
      }
      if (tl + j < L) {
        dD += dyj * u;
        dY += dyj;
        dBias += dd;
      }
    }
    if (active) {
      du.store(ln.row<T>(p.du, p.sdu), tl, L);
      ddl.store(ln.row<T>(p.ddelta, p.sddelta), tl, L);
      if (zr) dz.store(ln.row<T>(p.dz, p.sdz), tl, L);
    }
  }
  dh0 += P;  // what reaches h_{-1} = h_0
  if (!active) return;
  atomicAdd(p.dA + dn, dA);
  if (p.dhoff) atomicAdd(p.dhoff + bp.b * p.hoff_bstride + dn, dho);
  if (p.dh0) atomicAdd(p.dh0 + bp.b * p.h0_bstride + dn, dh0);
#pragma unroll
  for (int o = kLanes / 2; o > 0; o /= 2) {  // within the channel's half-warp
    dD += __shfl_xor_sync(0xffffffffu, dD, o);
    dY += __shfl_xor_sync(0xffffffffu, dY, o);
    dBias += __shfl_xor_sync(0xffffffffu, dBias, o);
  }
  if (n == 0) {
    if (p.dD) atomicAdd(p.dD + d, dD);
    if (p.dyoff) atomicAdd(p.dyoff + bp.b * p.yoff_bstride + d, dY);
    if (p.dbias) atomicAdd(p.dbias + d, dBias);
  }
}

// What the backward reads and writes besides the forward's inputs, with 16-byte vectors too: dout, du, dΔ, dz rows
template <typename T>
bool usable_bwd(const ScanParams &p) {
  auto aligned = [](const void *ptr, const Strides &st) {
    return ptr == nullptr || tp::rows_aligned<T>(ptr, st.b, 0, st.ld);
  };
  return usable<T>(p) && aligned(p.dout, p.sdout) && aligned(p.du, p.sdu) && aligned(p.ddelta, p.sddelta) &&
         aligned(p.dz, p.sdz);
}

// Up to this many batch x channels the backward runs 2 blocks a multiprocessor (255 registers a thread, no spills),
// beyond it 3 (168 registers and a few spilled): on an H100 (benches/results/kernels-sp-bwd-h100.md) 2 were faster
// at 8,192 (4x2048x1024: 0.749 against 0.784 ms forward+backward), 3 at 12,288 and 32,768 (0.991 against 1.056,
// 5.094 against 5.475 ms)
constexpr long long kSpBwdFewChannels = 8192;

template <typename T, int MIN_BLOCKS>
void launch_bwd_blocks(const ScanParams &p, cudaStream_t s) {
  constexpr int bytes = sizeof(BwdShared<T>);
  cudaFuncSetAttribute(bwd_kernel<T, MIN_BLOCKS>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  bwd_kernel<T, MIN_BLOCKS><<<scan_grid<kChans>(p), kThreads, bytes, s>>>(p);
}

template <typename T>
void launch_bwd(const ScanParams &p, cudaStream_t s) {
  if ((long long)p.batch * p.dim <= kSpBwdFewChannels) launch_bwd_blocks<T, 2>(p, s);
  else launch_bwd_blocks<T, 3>(p, s);
}

}  // namespace sp
}  // namespace detail
}  // namespace ssm_offset
