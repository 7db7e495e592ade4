"""Mamba-2 (SSD) language model: the chunked-SSD mixer with a gated RMSNorm, on the shared backbone."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import ssd_scan, ssd_step
from .base import CausalLM, GatedRMSNorm, causal_conv, ssm_start, step_state, wide
from .cache import Cache
from .config import Mamba2Config


class Mamba2Mixer(nn.Module):
    """in_proj → (z, xBC, dt); xBC → causal conv → silu → (x, B, C); y = ssd_scan(x, dt, A, B, C, D, dt_bias)
    per head; out_proj(GatedRMSNorm(y, z)).

    forward(hidden_states (batch, L, hidden), cache=None, *, initial_state=None, state_offset=None,
    y_offset=None) → (batch, L, hidden)

    Adapter hooks, handed to the scan op as tensors (H heads of P = head_dim channels, N = state size):
      initial_state  (H, P, N) or (batch, H, P, N): h_0 of a fresh sequence (no cache or an unfilled one);
                     a filled cache carries its own state and initial_state then plays no part.
      state_offset   (H, P, N) or (batch, H, P, N): h' in y_t = (h_t + h') C_t + D x_t, on every path.
      y_offset       (H, P) or (batch, H, P): y' added to y before the gated RMSNorm (inside the op: the
                     gate z is applied by the norm, so the op gets no z).
    With `cache` the call continues from and updates the cache; one token with a cache takes the step op,
    anything else the chunked scan op. Both go through the same in_proj / conv1d / norm / out_proj modules.
    """

    def __init__(self, config: Mamba2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = d = config.intermediate_size
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.n_groups, self.state_size = config.n_groups, config.state_size
        self.time_step_limit = tuple(config.time_step_limit)
        self.chunk_size = config.chunk_size
        self.conv_dim = d + 2 * self.n_groups * self.state_size
        self.in_proj = nn.Linear(config.hidden_size, d + self.conv_dim + self.num_heads, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.num_heads))
        self.A_log = nn.Parameter(torch.empty(self.num_heads))
        self.D = nn.Parameter(torch.empty(self.num_heads))
        self.norm = GatedRMSNorm(d, group_size=d // self.n_groups, eps=config.layer_norm_epsilon)
        self.out_proj = nn.Linear(d, config.hidden_size, bias=config.use_bias)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba-2's initialisation: A_h = -h (h = 1..H), D = 1, dt_bias = softplus⁻¹ of a log-uniform step."""
        self.A_log.copy_(torch.log(torch.arange(1, self.num_heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        dt = torch.exp(torch.rand(self.num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Optional[Cache] = None,
        *,
        initial_state: Optional[torch.Tensor] = None,
        state_offset: Optional[torch.Tensor] = None,
        y_offset: Optional[torch.Tensor] = None,
        seq_idx: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        h, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.state_size
        z, xBC, dt = self.in_proj(hidden_states).split([self.intermediate_size, self.conv_dim, h], dim=-1)
        conv_state = cache.conv[self.layer_idx] if cache is not None else None
        xBC, conv_state = causal_conv(self.conv1d, xBC.transpose(1, 2), conv_state, seq_idx)
        xBC = F.silu(xBC).transpose(1, 2)
        x, B, C = xBC.split([self.intermediate_size, g * n, g * n], dim=-1)
        x, B, C = x.reshape(batch, length, h, p), B.reshape(batch, length, g, n), C.reshape(batch, length, g, n)
        A = -torch.exp(wide(self.A_log))
        start = ssm_start(cache, self.layer_idx, initial_state)
        common = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit,
                      state_offset=state_offset, y_offset=y_offset)
        if cache is not None and length == 1:
            start = step_state(start, batch, (h, p, n), x)
            y, state = ssd_step(start, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], **common)
            y = y[:, None]
        else:
            y, state = ssd_scan(x, dt, A, B, C, initial_state=start, chunk_size=self.chunk_size,
                                return_final_state=True, seq_idx=seq_idx, **common)
        if cache is not None:
            cache.conv[self.layer_idx] = conv_state
            cache.ssm[self.layer_idx] = state
        y = self.norm(y.reshape(batch, length, self.intermediate_size), z)
        return self.out_proj(y.to(hidden_states.dtype))


class Mamba2ForCausalLM(CausalLM):
    """Mamba-2 causal LM with transformers' `Mamba2ForCausalLM` module names."""

    config_class = Mamba2Config
    mixer_class = Mamba2Mixer


__all__ = ["Mamba2Mixer", "Mamba2ForCausalLM"]
