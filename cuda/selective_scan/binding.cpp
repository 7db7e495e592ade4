// Torch binding of the selective-scan kernels. The ops themselves are defined once in Python
// (ssm_offset/ops/selective_scan/op.py); ssm_offset/ops/kernels.py registers these functions as
// their CUDA implementations after normalising the inputs: u, delta, z, B, C in one dtype (B, C as
// (batch, groups, N, L)), u channel-major, the others all channel-major or all time-major (selective_scan.h);
// A, D, delta_bias and the adapter tensors fp32 contiguous. The scan's (batch, D, L) outputs come allocated
// from Python.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "selective_scan.h"

namespace {

using at::Tensor;
using Opt = std::optional<Tensor>;

bool has(const Opt &t) { return t.has_value() && t->defined(); }

const float *cptr(const Opt &t, const char *name) {
  if (!has(t)) return nullptr;
  TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous(), name, ": expected contiguous float32");
  return t->data_ptr<float>();
}

float *mptr(const Opt &t) { return has(t) ? t->data_ptr<float>() : nullptr; }

// A tensor shaped like its shared form with one more leading dim is per batch row.
long long row_stride(const Opt &t, int shared_dims) {
  return has(t) && t->dim() > shared_dims ? t->stride(0) : 0;
}

int dtype_code(const Tensor &u) {
  switch (u.scalar_type()) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, "selective scan kernels: u must be float32, float16 or bfloat16, got ", u.scalar_type());
  }
  return -1;
}

void check_like(const Tensor &t, const Tensor &u, const char *name, bool contiguous) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == u.scalar_type() && t.sizes() == u.sizes() &&
                  (!contiguous || t.is_contiguous()),
              name, ": expected a ", contiguous ? "contiguous " : "", "CUDA tensor of dtype ", u.scalar_type(),
              " and shape ", u.sizes(), ", got ", t.scalar_type(), " ", t.sizes());
}

// The leading stride of a (batch, D, L) tensor, or of B, C (batch, G, N, L), laid out as the kernels read it:
// time-major (rows adjacent: element (r, t) at t * ld + r) or channel-major (r * ld + t); the Python side lays the
// tensors out so (ssm_offset/ops/kernels.py). One batch row must be reachable with 32-bit offsets.
int lead(const Tensor &t, bool time_major, const char *name) {
  const int rd = t.dim() - 2, td = t.dim() - 1;  // row and time dims
  const int inner = time_major ? rd : td, outer = time_major ? td : rd;
  TORCH_CHECK(t.size(inner) == 1 || t.stride(inner) == 1, name, ": expected ",
              time_major ? "time-major (stride 1 over its rows, as a transposed (batch, L, ·) view)" : "stride 1 over L",
              ", got strides ", t.strides());
  long long far = 0;
  for (int i = 1; i < t.dim(); ++i) far += (t.size(i) - 1) * std::abs(t.stride(i));
  TORCH_CHECK(far < (1LL << 31), name, ": one batch row spans ", far + 1, " elements with strides ", t.strides(),
              "; the scan kernels address at most 2^31 per row");
  return t.size(outer) == 1 ? 0 : static_cast<int>(t.stride(outer));
}

ssm_offset::Strides strides(const Tensor &t, bool time_major, const char *name) {
  return {t.stride(0), lead(t, time_major, name)};
}

// The time split (ScanParams::nseg) into about `want` segments of whole `chunk`s, none empty, and its workspace:
// the summaries' (batch, nseg, dim, nstate) fp32 arrays, with the adjoint's two more for the backward.
// Without a split (want <= 1) one segment spans the row and nothing is allocated.
Tensor split_time(ssm_offset::ScanParams &p, int want, int chunk, bool backward, const at::TensorOptions &f32) {
  p.nseg = 1;
  p.seg_len = p.len;
  if (want <= 1) return Tensor();
  const int len = ((p.len + want - 1) / want + chunk - 1) / chunk * chunk;
  const int nseg = (p.len + len - 1) / len;
  if (nseg <= 1) return Tensor();
  p.nseg = nseg;
  p.seg_len = len;
  Tensor seg = at::empty({backward ? 5 : 3, p.batch, p.nseg, p.dim, p.nstate}, f32);
  p.seg_end = seg[0].data_ptr<float>();
  p.seg_decay = seg[1].data_ptr<float>();
  p.seg_start = seg[2].data_ptr<float>();
  if (backward) {
    p.adj_loc = seg[3].data_ptr<float>();
    p.adj_end = seg[4].data_ptr<float>();
  }
  return seg;
}

Opt zeros_like_opt(const Opt &t) {
  return has(t) ? Opt(at::zeros(t->sizes(), t->options().dtype(at::kFloat))) : Opt();
}

// The inputs the scan and the decode step share: u, delta, z, B, C in u's dtype (CUDA; contiguous for the step),
// A, D, delta_bias and the offsets fp32. The caller has checked u's and B's ranks (they differ: the step has no L).
template <typename Params>
void fill_inputs(Params &p, const Tensor &u, const Tensor &delta, const Tensor &A, const Tensor &B,
                 const Tensor &C, const Opt &D, const Opt &z, const Opt &delta_bias, bool softplus,
                 const Opt &hoff, const Opt &yoff, bool contiguous) {
  check_like(delta, u, "delta", contiguous);
  check_like(C, B, "C", contiguous);
  TORCH_CHECK(B.is_cuda() && B.scalar_type() == u.scalar_type() && (!contiguous || B.is_contiguous()),
              "B: expected a CUDA tensor of dtype ", u.scalar_type());
  if (has(z)) check_like(*z, u, "z", contiguous);
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.groups = B.size(1);
  p.nstate = A.size(1);
  p.softplus = softplus;
  p.u = u.data_ptr();
  p.delta = delta.data_ptr();
  p.z = has(z) ? z->data_ptr() : nullptr;
  p.B = B.data_ptr();
  p.C = C.data_ptr();
  p.A = cptr(A, "A");
  p.D = cptr(D, "D");
  p.delta_bias = cptr(delta_bias, "delta_bias");
  p.hoff = cptr(hoff, "state_offset");
  p.yoff = cptr(yoff, "y_offset");
  p.hoff_bstride = row_stride(hoff, 2);
  p.yoff_bstride = row_stride(yoff, 1);
}

ssm_offset::ScanParams common(const Tensor &u, const Tensor &delta, const Tensor &A, const Tensor &B,
                              const Tensor &C, const Opt &D, const Opt &z, const Opt &delta_bias,
                              bool softplus, bool time_major, const Opt &h0, const Opt &hoff,
                              const Opt &yoff, const Opt &seq_idx) {
  TORCH_CHECK(u.is_cuda() && u.dim() == 3, "u: expected a CUDA (batch, D, L) tensor, got ", u.sizes());
  TORCH_CHECK(B.dim() == 4 && C.sizes() == B.sizes(), "B, C: expected (batch, groups, N, L)");
  ssm_offset::ScanParams p{};
  fill_inputs(p, u, delta, A, B, C, D, z, delta_bias, softplus, hoff, yoff, false);
  p.len = u.size(2);
  // the caller's layout rule (ssm_offset/ops/_common.time_major on delta), which lead() checks every tensor obeys
  p.time_major = time_major;
  p.su = strides(u, false, "u");
  p.sdelta = strides(delta, p.time_major, "delta");
  if (has(z)) p.sz = strides(*z, p.time_major, "z");
  p.sB = {B.stride(0), B.stride(1), lead(B, p.time_major, "B")};
  p.sC = {C.stride(0), C.stride(1), lead(C, p.time_major, "C")};
  TORCH_CHECK(p.nstate >= 1 && p.nstate <= 256, "A: d_state must be in 1..256, got ", p.nstate);
  TORCH_CHECK(p.dim % p.groups == 0, "B: groups must divide D");
  p.h0 = cptr(h0, "initial_state");
  p.h0_bstride = row_stride(h0, 2);
  if (has(seq_idx)) {
    TORCH_CHECK(seq_idx->is_cuda() && seq_idx->scalar_type() == at::kInt && seq_idx->is_contiguous() &&
                    seq_idx->dim() == 2 && seq_idx->size(0) == p.batch && seq_idx->size(1) == p.len,
                "seq_idx: expected a contiguous int32 CUDA (batch, L) = (", p.batch, ", ", p.len, ") tensor, got ",
                seq_idx->sizes());
    p.seq_idx = seq_idx->data_ptr<int>();
  }
  return p;
}

// y: the output, shaped like u, laid out like delta (the caller allocates it). Returns y, the final state and the
// states every kStatesEvery steps (ScanParams::states).
std::tuple<Tensor, Tensor, Tensor> fwd(const Tensor &u, const Tensor &delta, const Tensor &A, const Tensor &B,
                                       const Tensor &C, const Opt &D, const Opt &z, const Opt &delta_bias,
                                       bool softplus, bool time_major, const Opt &h0, const Opt &hoff,
                                       const Opt &yoff, const Opt &seq_idx, const Tensor &y) {
  const c10::cuda::CUDAGuard guard(u.device());
  auto p = common(u, delta, A, B, C, D, z, delta_bias, softplus, time_major, h0, hoff, yoff, seq_idx);
  check_like(y, u, "y", false);
  p.sy = strides(y, p.time_major, "y");
  const auto f32 = u.options().dtype(at::kFloat);
  Tensor final_state = at::empty({p.batch, p.dim, p.nstate}, f32);
  Tensor states = at::empty({p.batch, p.dim, ssm_offset::state_chunks(p.len), p.nstate}, f32);
  p.y = y.data_ptr();
  p.final_state = final_state.data_ptr<float>();
  p.states = states.data_ptr<float>();
  if (p.len == 0 || p.batch == 0 || p.dim == 0) return {y, final_state, states};
  p.sp = ssm_offset::state_parallel(p, static_cast<int>(u.element_size()), false);
  p.tp = !p.sp && ssm_offset::time_parallel(p, false);
  const Tensor seg = split_time(p, p.tp || p.sp ? 1 : ssm_offset::fwd_segments(p), ssm_offset::kSegmentAlign, false,
                                f32);
  auto stream = c10::cuda::getCurrentCUDAStream();
  switch (dtype_code(u)) {
    case 0: ssm_offset::launch_fwd_f32(p, stream); break;
    case 1: ssm_offset::launch_fwd_f16(p, stream); break;
    default: ssm_offset::launch_fwd_bf16(p, stream); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {y, final_state, states};
}

// Gradients in the op's order (u, delta, A, B, C, D, z, delta_bias, initial_state, state_offset,
// y_offset); undefined for absent inputs. A, B, C, D, delta_bias and the adapters come back fp32; du, ddelta
// and dz are written into the tensors given (du channel-major, ddelta and dz laid out like delta). chunk_states:
// what fwd returned as its third output for these inputs.
std::vector<Tensor> bwd(const Tensor &dout, const Opt &dfinal, const Tensor &u, const Tensor &delta,
                        const Tensor &A, const Tensor &B, const Tensor &C, const Opt &D, const Opt &z,
                        const Opt &delta_bias, bool softplus, bool time_major, const Opt &h0,
                        const Opt &hoff, const Opt &yoff, const Opt &seq_idx, const Tensor &chunk_states,
                        const Tensor &du, const Tensor &ddelta, const Opt &dz) {
  const c10::cuda::CUDAGuard guard(u.device());
  auto p = common(u, delta, A, B, C, D, z, delta_bias, softplus, time_major, h0, hoff, yoff, seq_idx);
  check_like(dout, u, "dy", false);
  check_like(du, u, "du", false);
  check_like(ddelta, u, "ddelta", false);
  TORCH_CHECK(has(dz) == has(z), "dz: expected exactly when z is given");
  if (has(dz)) check_like(*dz, u, "dz", false);
  p.sdout = strides(dout, p.time_major, "dy");
  p.sdu = strides(du, false, "du");
  p.sddelta = strides(ddelta, p.time_major, "ddelta");
  if (has(dz)) p.sdz = strides(*dz, p.time_major, "dz");
  auto f32 = u.options().dtype(at::kFloat);
  Tensor dA = at::zeros(A.sizes(), f32);
  Tensor dB = at::zeros(B.sizes(), f32), dC = at::zeros(C.sizes(), f32);
  Opt dD = zeros_like_opt(D), dbias = zeros_like_opt(delta_bias);
  Opt dh0 = zeros_like_opt(h0), dhoff = zeros_like_opt(hoff), dyoff = zeros_like_opt(yoff);
  p.dout = dout.data_ptr();
  p.dfinal = cptr(dfinal, "dfinal_state");
  p.du = du.data_ptr();
  p.ddelta = ddelta.data_ptr();
  p.dz = has(dz) ? dz->data_ptr() : nullptr;
  p.dA = dA.data_ptr<float>();
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  p.dD = mptr(dD);
  p.dbias = mptr(dbias);
  p.dh0 = mptr(dh0);
  p.dhoff = mptr(dhoff);
  p.dyoff = mptr(dyoff);
  if (p.len > 0 && p.batch > 0 && p.dim > 0) {
    p.sp = ssm_offset::state_parallel(p, static_cast<int>(u.element_size()), true);
    p.tp = !p.sp && ssm_offset::time_parallel(p, true);
    const bool whole = p.tp || p.sp;  // no time split, no checkpoints: they start every 256 steps from the states
    const int chunk = whole ? ssm_offset::kStatesEvery : ssm_offset::bwd_chunk_len(p.nstate, p.batch * p.dim);
    const long long nch = (p.len + chunk - 1) / chunk;
    const Tensor seg = split_time(p, whole ? 1 : ssm_offset::bwd_segments(p), chunk, true, f32);
    // every family starts from the forward's states (the time- and state-parallel kernels every 256 steps, the others
    // every piece)
    const std::vector<int64_t> want{p.batch, p.dim, ssm_offset::state_chunks(p.len), p.nstate};
    TORCH_CHECK(chunk_states.is_cuda() && chunk_states.scalar_type() == at::kFloat && chunk_states.is_contiguous() &&
                    chunk_states.sizes().vec() == want,
                "chunk_states: expected the forward's contiguous float32 (batch, D, chunks, N) = (", p.batch, ", ",
                p.dim, ", ", ssm_offset::state_chunks(p.len), ", ", p.nstate, "), got ", chunk_states.sizes());
    p.states = chunk_states.data_ptr<float>();
    Tensor ckpt;
    if (!whole) {  // the channel-parallel backward checkpoints every chunk of the piece it is running
      p.ckpt_slots = static_cast<int>(std::min<long long>(ssm_offset::kStatesEvery / chunk, nch));
      ckpt = at::empty({p.batch, p.nseg, p.ckpt_slots, p.dim, ssm_offset::padded_state(p.nstate, p.batch * p.dim)},
                       f32);
      p.ckpt = ckpt.data_ptr<float>();
    }
    auto stream = c10::cuda::getCurrentCUDAStream();
    switch (dtype_code(u)) {
      case 0: ssm_offset::launch_bwd_f32(p, stream); break;
      case 1: ssm_offset::launch_bwd_f16(p, stream); break;
      default: ssm_offset::launch_bwd_bf16(p, stream); break;
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    du.zero_();
    ddelta.zero_();
    if (has(dz)) dz->zero_();
    if (has(dh0) && has(dfinal)) dh0->copy_(has(h0) && h0->dim() == 2 ? dfinal->sum(0) : *dfinal);
  }
  auto out = [](const Opt &t) { return has(t) ? *t : Tensor(); };
  return {du, ddelta, dA, dB, dC, out(dD), out(dz), out(dbias), out(dh0), out(dhoff), out(dyoff)};
}

std::tuple<Tensor, Tensor> step(const Tensor &state, const Tensor &u, const Tensor &delta, const Tensor &A,
                                const Tensor &B, const Tensor &C, const Opt &D, const Opt &z,
                                const Opt &delta_bias, bool softplus, const Opt &hoff, const Opt &yoff) {
  const c10::cuda::CUDAGuard guard(u.device());
  TORCH_CHECK(u.is_cuda() && u.dim() == 2 && u.is_contiguous(), "u: expected a contiguous CUDA (batch, D) tensor");
  TORCH_CHECK(B.dim() == 3, "B, C: expected (batch, groups, N)");
  TORCH_CHECK(state.scalar_type() == at::kFloat && state.is_contiguous() && state.dim() == 3,
              "state: expected contiguous float32 (batch, D, N)");
  ssm_offset::StepParams p{};
  fill_inputs(p, u, delta, A, B, C, D, z, delta_bias, softplus, hoff, yoff, true);
  p.state = state.data_ptr<float>();
  Tensor y = at::empty_like(u);
  Tensor new_state = at::empty_like(state);
  p.y = y.data_ptr();
  p.new_state = new_state.data_ptr<float>();
  if (p.batch > 0 && p.dim > 0) {
    ssm_offset::launch_step(p, dtype_code(u), c10::cuda::getCurrentCUDAStream());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {y, new_state};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ssm_offset CUDA kernels: Mamba-1 selective scan (fwd, bwd) and decode step";
  m.def("fwd", &fwd, "selective scan forward");
  m.def("bwd", &bwd, "selective scan backward");
  m.def("step", &step, "selective scan decode step");
}
