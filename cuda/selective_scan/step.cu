// The one-token decode step, and the host helpers that size the backward workspace.
#include "selective_scan_kernels.cuh"

namespace ssm_offset {

void launch_step(const StepParams &p, int dtype, cudaStream_t s) {
  const int warps = p.batch * p.dim;
  const dim3 grid((warps * 32 + detail::kThreads - 1) / detail::kThreads);
  if (dtype == 0) detail::step_kernel<float><<<grid, detail::kThreads, 0, s>>>(p);
  else if (dtype == 1) detail::step_kernel<__half><<<grid, detail::kThreads, 0, s>>>(p);
  else detail::step_kernel<__nv_bfloat16><<<grid, detail::kThreads, 0, s>>>(p);
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
