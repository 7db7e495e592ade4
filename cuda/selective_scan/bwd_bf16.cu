// One translation unit per (direction, dtype) so that the build compiles them in parallel.
#include "selective_scan_kernels.cuh"

namespace ssm_offset {
void launch_bwd_bf16(const ScanParams &p, cudaStream_t s) { detail::launch_bwd<__nv_bfloat16>(p, s); }
}  // namespace ssm_offset
