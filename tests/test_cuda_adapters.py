"""Every PEFT method takes effect on the CUDA fast path exactly as on the reference path.

For a small Mamba and Mamba-2 model, each method with every adapter parameter moved off its initial
value: the loss, the logits and the gradient of every trainable parameter on CUDA (fp32, our kernels:
the Mamba-1 CUDA scan, the Mamba-2 Triton SSD + our chunk-scan kernel) against the same model in float64 on
the CPU (the reference ops). fp32 Triton dots are asked to be IEEE (see test_cuda_ssd.py).
"""
from __future__ import annotations

import copy
import os

os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

import pytest  # noqa: E402
import torch  # noqa: E402

from ssm_offset.models import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM  # noqa: E402
from ssm_offset.ops import kernels  # noqa: E402
from ssm_offset.ops.ssd import kernel as ssd_kernel  # noqa: E402
from ssm_offset.peft import SHORT_NAMES, config_for, get_peft_model  # noqa: E402

pytestmark = pytest.mark.cuda

VOCAB = 64
MAMBA1_ONLY = {"lora-s6", "sdt", "additional-scan"}


def mamba1():
    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=16, num_hidden_layers=2))


def mamba2():
    torch.manual_seed(0)
    return Mamba2ForCausalLM(Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=16, num_hidden_layers=2,
                                          num_heads=4, head_dim=16, n_groups=2, chunk_size=64))


ARCHS = {"mamba": mamba1, "mamba2": mamba2}
CASES = [(a, m) for a in ARCHS for m in SHORT_NAMES if not (a == "mamba2" and m in MAMBA1_ONLY)]


@pytest.fixture(scope="module", autouse=True)
def _fast_path():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is false)")
    if not kernels.enabled():
        pytest.skip("kernels disabled by SSM_OFFSET_KERNELS=0")
    kernels.build()
    if not ssd_kernel.available():
        pytest.skip(ssd_kernel._error)
    ssd_kernel.limit_autotuning(1)  # compile time, see test_cuda_ssd.py


@pytest.mark.parametrize("arch,name", CASES, ids=[f"{a}-{m}" for a, m in CASES])
def test_adapter_same_on_cuda_kernels_as_on_reference(arch, name):
    model = get_peft_model(ARCHS[arch](), config_for(name))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ids = torch.randint(0, VOCAB, (2, 100), generator=torch.Generator().manual_seed(1))
    results = {}
    for where, dtype in (("cuda", torch.float32), ("cpu", torch.float64)):
        m = copy.deepcopy(model).to(where, dtype).eval()  # eval: no dropout masks to differ
        out = m(ids.to(where), labels=ids.to(where))
        out.loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.requires_grad}
        assert grads and all(v is not None for v in grads.values()), f"{name}: a trainable parameter got no gradient"
        results[where] = (out.loss, out.logits, grads)
    (loss, logits, grads), (loss_ref, logits_ref, grads_ref) = results["cuda"], results["cpu"]
    torch.testing.assert_close(loss.double().cpu(), loss_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits.double().cpu(), logits_ref, rtol=1e-3, atol=1e-3)
    for n, gr in grads_ref.items():
        scale = gr.abs().max().item() + 1e-12
        err = (grads[n].double().cpu() - gr).abs().max().item()
        assert err <= 2e-3 * scale + 1e-6, f"{arch}/{name}: grad of {n} off by {err:.3g} (max |ref| {scale:.3g})"
