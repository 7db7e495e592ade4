// Host-side interface of the Mamba-1 selective-scan kernels: one parameter block per launch.
// The torch binding (binding.cpp) fills it; the kernels (selective_scan_kernels.cuh) read it.
#pragma once

#include <cuda_runtime_api.h>

namespace ssm_offset {

// A (batch, D, L) tensor's batch stride and leading stride. u and du are channel-major (t contiguous: element (r, t)
// of a batch row at r * ld + t); the others (delta, z, dout, y, ddelta, dz, and B, C over (N, L)) are all
// channel-major, or all time-major (`time_major`: element (r, t) at t * ld + r): transposed views of projection
// outputs (batch, L, ·), which the Mamba-1 mixer hands over, read and written in place without layout copies.
// In-row offsets are 32-bit (the binding checks they fit).
struct Strides {
  long long b;
  int ld;
};

// B, C (batch, groups, N, L): batch and group strides, and the leading stride over (N, L) as above
struct BCStrides {
  long long b, g;
  int ld;
};

struct ScanParams {
  int batch, dim, len, nstate, groups;
  bool softplus;
  // inputs: u, delta, z in one dtype (the template's T); B, C (batch, groups, nstate, len) in T too
  const void *u, *delta, *z, *B, *C;
  bool time_major;
  Strides su, sdelta, sz, sdout, sy, sdu, sddelta, sdz;
  BCStrides sB, sC;
  // fp32: A (dim, nstate); D, delta_bias (dim); initial state / state offset (dim, nstate) or per row;
  // y offset (dim) or per row. A null pointer means the input is absent.
  const float *A, *D, *delta_bias, *h0, *hoff, *yoff;
  long long h0_bstride, hoff_bstride, yoff_bstride;  // 0 = shared across the batch
  // document index per position (batch, len), non-decreasing, or null: where it changes the state restarts
  // from the initial state (zero without one), so packed documents scan as if each were alone
  const int *seq_idx;
  // forward outputs
  void *y;             // (batch, dim, len), T, strides sy
  float *final_state;  // (batch, dim, nstate)
  // The state at the start of every kStatesEvery-step chunk, (batch, dim, ceil(len / kStatesEvery), nstate): chunk
  // k's is h after step k kStatesEvery - 1 (the initial state, or zero, for k = 0). The forward writes it (both
  // families); the time-parallel backward starts each of its chunks from it instead of replaying the recurrence.
  float *states;
  // backward
  const void *dout;       // (batch, dim, len), T, strides sdout
  const float *dfinal;    // (batch, dim, nstate) or null
  void *du, *ddelta, *dz; // T, strides sdu, sddelta, sdz
  // fp32 accumulators, zeroed by the caller (atomically accumulated): dA (dim, nstate), dB/dC like B,
  // dD/dbias (dim), dh0/dhoff/dyoff shaped like their inputs
  float *dA, *dB, *dC, *dD, *dbias, *dh0, *dhoff, *dyoff;
  // the channel-parallel backward's workspace: the state at the start of each backward chunk of the piece (at most
  // kStatesEvery steps) it is in, (batch, nseg, ckpt_slots, dim, padded_state(...))
  float *ckpt;
  int ckpt_slots;
  // Time split of the forward (few channels): nseg segments of seg_len steps, one grid slice (blockIdx.z) each.
  // A summary pass writes each segment's end state from a zero start (seg_end) and Π exp(Δ A) since its last
  // document restart (seg_decay; 0 where it restarts); a compose pass turns them into every segment's start state
  // (seg_start; the first is the initial state); the output pass then runs each segment from its start. All three
  // (batch, nseg, dim, nstate) fp32; nseg = 1 (no split) leaves them null.
  int nseg, seg_len;
  float *seg_end, *seg_decay, *seg_start;
  // The backward splits the same way (its segments whole backward chunks): the forward's summary and compose give
  // the segments' start states; adjoint_kernel each segment's adjoint at its start from a zero one at its end
  // (adj_loc); compose_adjoint the adjoint each segment ends on (adj_end; the last one's is dfinal).
  float *adj_loc, *adj_end;
  // Nonzero: the time-parallel kernels (selective_scan_tp.cuh) instead, with no split (nseg = 1); their backward
  // needs no ckpt. Both backwards start from `states` (the forward's).
  int tp;
  // Nonzero: the state-parallel kernels (selective_scan_sp.cuh), with no split (nseg = 1): the forward writes `states`
  // as the others do, and the backward starts from them as the time-parallel one does.
  int sp;
};

// The interval of ScanParams::states; ssm_offset/ops/selective_scan/op.py's STATES_EVERY is the same number. The
// time-parallel kernels' chunk is this long, and the channel-parallel forward's time tiles and segments end on
// multiples of it (kSegmentAlign).
constexpr int kStatesEvery = 256;
// How many entries ScanParams::states has per channel for a row of len steps
__host__ __device__ inline int state_chunks(int len) { return (len + kStatesEvery - 1) / kStatesEvery; }
// The channel-parallel forward's time split: segments whole multiples of this (every forward tile length divides
// it), so that each multiple of kStatesEvery inside a row is the end of some tile.
constexpr int kSegmentAlign = 64;

struct StepParams {
  int batch, dim, nstate, groups;
  bool softplus;
  const float *state;  // (batch, dim, nstate)
  const void *u, *delta, *z, *B, *C;  // u/delta/z (batch, dim), B/C (batch, groups, nstate), dtype T
  const float *A, *D, *delta_bias, *hoff, *yoff;
  long long hoff_bstride, yoff_bstride;
  void *y;            // (batch, dim), T
  float *new_state;   // (batch, dim, nstate)
};

// dtype codes: 0 float32, 1 float16, 2 bfloat16
void launch_fwd_f32(const ScanParams &p, cudaStream_t s);
void launch_fwd_f16(const ScanParams &p, cudaStream_t s);
void launch_fwd_bf16(const ScanParams &p, cudaStream_t s);
void launch_bwd_f32(const ScanParams &p, cudaStream_t s);
void launch_bwd_f16(const ScanParams &p, cudaStream_t s);
void launch_bwd_bf16(const ScanParams &p, cudaStream_t s);
void launch_step(const StepParams &p, int dtype, cudaStream_t s);
// the time-split forward's middle pass: every segment's start state from the summaries (ScanParams::seg_*)
void launch_compose(const ScanParams &p, cudaStream_t s);
// the time-split backward's: every segment's end adjoint from the adjoint summaries (ScanParams::adj_*)
void launch_compose_adjoint(const ScanParams &p, cudaStream_t s);

// How many time segments the forward splits each row into (1: none): enough for the grid to fill the GPU's
// multiprocessors when batch x channels alone cannot (SSM_OFFSET_SEGMENTS overrides; 1 disables).
int fwd_segments(const ScanParams &p);
int bwd_segments(const ScanParams &p);

// Whether the forward / backward takes the time-parallel kernels (selective_scan_tp.cuh): SSM_OFFSET_TIME_PARALLEL=1
// always, =0 never; unset, where they were faster on an H100 (benches/results/kernels-tp-h100.md, kernels-h100.md):
// channel-major inputs (time-major ones cost them uncoalesced loads), N <= 16 (what was measured), more than
// kTimeParallelFrom batch x channels (fewer leave too few warps), and for the forward at most kTimeParallelTo (more
// fill the GPU without a time split, and the channel-parallel forward is faster there). The backward, which starts its
// chunks from the forward's states whichever family wrote them, has no upper bound: it was faster at 32,768 channels.
constexpr long long kTimeParallelFrom = 1024, kTimeParallelTo = 16384;
bool time_parallel(const ScanParams &p, bool backward);
// Whether the forward takes the state-parallel kernel (selective_scan_sp.cuh), which reads channel-major fp16 / bf16
// inputs (elem_bytes 2) with N = 16 whose rows are 16-byte aligned (for contiguous inputs: L a multiple of 8):
// SSM_OFFSET_STATE_PARALLEL=1 wherever it can, =0 never; unset, wherever it can with more than kTimeParallelFrom
// batch x channels (where it was measured faster than both other families and mamba_ssm:
// benches/results/kernels-sp-h100.md), unless SSM_OFFSET_TIME_PARALLEL or SSM_OFFSET_SEGMENTS asks for another family.
// The backward takes its state-parallel kernel by the same rule (with backward set, its dout, du, ddelta and dz rows
// aligned too) from kStateParallelBwdFrom batch x channels: it was faster than the time-parallel backward at 2,048
// (2x1024x2048: 0.33 against 0.42 ms) and above, slower at 1,536 (1x1536x4096: 0.60 against 0.45 ms;
// benches/results/kernels-sp-bwd-h100.md). A forward of any family may precede it: all save the same
// ScanParams::states.
constexpr long long kStateParallelBwdFrom = 2048;
bool state_parallel(const ScanParams &p, int elem_bytes, bool backward);

// Length of one backward chunk (the checkpoint interval) for a state size and batch x dim channels;
// the caller sizes ckpt as (batch, nseg, min(kStatesEvery / chunk, ceil(len / chunk)), dim, padded_state(...)) floats.
int bwd_chunk_len(int nstate, int channels);
int padded_state(int nstate, int channels);

}  // namespace ssm_offset
