"""Our loader against mamba_ssm itself: fixtures saved by mamba_ssm 2.3.2's `MambaLMHeadModel.save_pretrained`
on an H100, with its fp32 logits and greedy continuation (tests/fixtures/make_mamba_ssm_fixture.py)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ssm_offset.models import load_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("name", ["mamba_ssm_mamba1", "mamba_ssm_mamba2"])
def test_mamba_ssm_checkpoint_matches_mamba_ssm(name):
    directory = FIXTURES / name
    expected = load_file(directory / "expected.safetensors")
    model = load_model(directory).eval()
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    assert logits.shape == expected["logits"].shape  # vocab padded to mamba_ssm's multiple of 8
    # mamba_ssm ran its CUDA kernels in fp32; we run the CPU reference.
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-4, atol=1e-4)
    prompt = expected["greedy"][:, :11]
    generated = model.generate(prompt, max_new_tokens=expected["greedy"].shape[1] - 11, eos_token_id=[])
    assert generated.tolist() == expected["greedy"][:, 11:].tolist()
