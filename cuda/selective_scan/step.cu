// The one-token decode step, and the host helpers that size the backward workspace.
#include "selective_scan_kernels.cuh"

#include <algorithm>

namespace ssm_offset {

void launch_step(const StepParams &p, int dtype, cudaStream_t s) {
  const int warps = p.batch * p.dim;
  const dim3 grid((warps * 32 + detail::kThreads - 1) / detail::kThreads);
  if (dtype == 0) detail::step_kernel<float><<<grid, detail::kThreads, 0, s>>>(p);
  else if (dtype == 1) detail::step_kernel<__half><<<grid, detail::kThreads, 0, s>>>(p);
  else detail::step_kernel<__nv_bfloat16><<<grid, detail::kThreads, 0, s>>>(p);
}

namespace {

// Sequential over segments, one thread per (batch, channel, state): S_0 = h_0, S_{s+1} = decay_s S_s + end_s.
__global__ void __launch_bounds__(detail::kThreads) compose_kernel(ScanParams p) {
  const long long i = (long long)blockIdx.x * detail::kThreads + threadIdx.x;
  const long long per_row = (long long)p.dim * p.nstate;
  if (i >= p.batch * per_row) return;
  const long long b = i / per_row, dn = i % per_row;
  float h = p.h0 ? p.h0[b * p.h0_bstride + dn] : 0.f;
  for (int s = 0; s < p.nseg; ++s) {
    const long long at = (b * p.nseg + s) * per_row + dn;
    p.seg_start[at] = h;
    h = p.seg_decay[at] * h + p.seg_end[at];
  }
}

// Sequential over segments in reverse: E_{S-1} = dfinal, E_{s-1} = decay_s E_s + adj_loc_s (the decay of the
// forward summary: a restart inside the segment stops the adjoint as it stops the state).
__global__ void __launch_bounds__(detail::kThreads) compose_adjoint_kernel(ScanParams p) {
  const long long i = (long long)blockIdx.x * detail::kThreads + threadIdx.x;
  const long long per_row = (long long)p.dim * p.nstate;
  if (i >= p.batch * per_row) return;
  const long long b = i / per_row, dn = i % per_row;
  float g = p.dfinal ? p.dfinal[b * per_row + dn] : 0.f;
  for (int s = p.nseg - 1; s >= 0; --s) {
    const long long at = (b * p.nseg + s) * per_row + dn;
    p.adj_end[at] = g;
    g = p.seg_decay[at] * g + p.adj_loc[at];
  }
}

unsigned blocks_for(const ScanParams &p) {
  const long long n = (long long)p.batch * p.dim * p.nstate;
  return (unsigned)((n + detail::kThreads - 1) / detail::kThreads);
}

}  // namespace

void launch_compose_adjoint(const ScanParams &p, cudaStream_t s) {
  compose_adjoint_kernel<<<blocks_for(p), detail::kThreads, 0, s>>>(p);
}

void launch_compose(const ScanParams &p, cudaStream_t s) {
  compose_kernel<<<blocks_for(p), detail::kThreads, 0, s>>>(p);
}

namespace {

int env_int(const char *name, int fallback) {
  const char *e = std::getenv(name);
  return e && *e ? std::atoi(e) : fallback;
}

// SSM_OFFSET_SEGMENTS: a time split forced for measurement (read once, like the layout switches)
int forced_segments() {
  static const int forced = env_int("SSM_OFFSET_SEGMENTS", 0);
  return forced;
}

// Segments enough for the grid to fill the multiprocessors' block slots where batch x channels alone leave at least
// half of them empty (splitting costs a summary pass and a compose), each at least 4 chunks long.
int segments(const ScanParams &p, bool backward) {
  const int forced = forced_segments();
  static const int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n;
  }();
  int blocks = 0, wave = 0, chunk = 0;
  SSM_OFFSET_DISPATCH_NSTATE(p.nstate, p.batch * p.dim < detail::narrow_below(backward), {
    using K = detail::Cfg<NPT, LPC>;
    blocks = (int)detail::scan_grid<K::kCpb>(p).x * p.batch;
    wave = sms * (backward ? K::kBwdMinBlocks : K::kFwdMinBlocks);
    chunk = backward ? K::kTb : K::kTf;
  })
  const int most = std::max(1, p.len / (4 * chunk));
  const int want = forced > 0 ? forced : (2 * blocks <= wave ? wave / std::max(blocks, 1) : 1);
  return std::max(1, std::min(want, most));
}

}  // namespace

int fwd_segments(const ScanParams &p) { return segments(p, false); }
int bwd_segments(const ScanParams &p) { return segments(p, true); }

bool time_parallel(const ScanParams &p, bool backward) {
  // read at every call (not cached like the layout switches) so that a test or benchmark can run both families in one
  // process
  const int forced = env_int("SSM_OFFSET_TIME_PARALLEL", -1);
  if (forced >= 0) return forced > 0;
  if (forced_segments() > 0) return false;  // a split was asked for: that is the other family
  const long long channels = (long long)p.batch * p.dim;
  return !p.time_major && p.nstate <= 16 && channels > kTimeParallelFrom && (backward || channels <= kTimeParallelTo);
}

bool state_parallel(const ScanParams &p, int elem_bytes, bool backward) {
  // what the kernels can read: 16-bit inputs (their staged B and C then fit a block), and what sp::usable asks: N = 16,
  // channel-major, every row they read with 16-byte vectors aligned (for contiguous inputs: L a multiple of 8; the
  // backward's dout, du, ddelta and dz rows too)
  const bool usable = backward ? detail::sp::usable_bwd<__nv_bfloat16>(p) : detail::sp::usable<__nv_bfloat16>(p);
  if (elem_bytes != 2 || !usable) return false;
  const int forced = env_int("SSM_OFFSET_STATE_PARALLEL", -1);  // read at every call, as time_parallel's
  if (forced >= 0) return forced > 0;
  if (forced_segments() > 0 || env_int("SSM_OFFSET_TIME_PARALLEL", -1) >= 0) return false;  // another family was asked for
  const long long channels = (long long)p.batch * p.dim;
  return backward ? channels >= kStateParallelBwdFrom : channels > kTimeParallelFrom;
}

int bwd_chunk_len(int nstate, int channels) {
  int len = 0;
  SSM_OFFSET_DISPATCH_NSTATE(nstate, channels < detail::narrow_below(true), { len = detail::Cfg<NPT, LPC>::kTb; })
  return len;
}

int padded_state(int nstate, int channels) {
  int npad = 0;
  SSM_OFFSET_DISPATCH_NSTATE(nstate, channels < detail::narrow_below(true), { npad = detail::Cfg<NPT, LPC>::kNpad; })
  return npad;
}

}  // namespace ssm_offset
