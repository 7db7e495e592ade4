"""Mamba-1 (S6) language model: the selective-scan mixer on top of the shared backbone (base.py)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import selective_scan, selective_scan_step
from .base import CausalLM, causal_conv, ssm_start, step_state, wide
from .cache import Cache
from .config import MambaConfig


class MambaMixer(nn.Module):
    """in_proj → (x, z); x → causal conv → silu → x_proj → (dt, B, C); Δ = softplus(dt_proj(dt));
    y = selective_scan(x, Δ, A, B, C, D, z) (which applies the silu(z) gate); out_proj(y).

    forward(hidden_states (batch, L, hidden), cache=None, *, initial_state=None, state_offset=None,
    y_offset=None) → (batch, L, hidden)

    The adapter hooks are plain tensors handed to the scan op (shapes as in `ops.selective_scan`, D = the
    mixer's intermediate size, N = state size):
      initial_state  (D, N) or (batch, D, N): h_0 of a fresh sequence (no cache, or a cache not filled yet);
                     a filled cache already carries the state, and then initial_state plays no part.
      state_offset   (D, N) or (batch, D, N): h' in y_t = C_t·(h_t + h') + D x_t, on every path.
      y_offset       (D,) or (batch, D): y' added before the silu(z) gate, on every path.
    With `cache` the call continues from and updates the cache (conv window + fp32 SSM state); one token
    (L = 1) with a cache takes the recurrent step op, anything else the parallel scan op. Both paths go
    through the same in_proj / conv1d / x_proj / dt_proj / out_proj modules, so an adapter wrapping one of
    them applies everywhere. dt_proj is called as a module (bias included), so the op gets no delta_bias.
    """

    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.intermediate_size = d = config.intermediate_size
        n = config.state_size
        self.time_step_rank = r = config.time_step_rank
        self.in_proj = nn.Linear(config.hidden_size, 2 * d, bias=config.use_bias)
        self.conv1d = nn.Conv1d(d, d, config.conv_kernel, groups=d, padding=config.conv_kernel - 1,
                                bias=config.use_conv_bias)
        self.x_proj = nn.Linear(d, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d, bias=True)
        self.A_log = nn.Parameter(torch.empty(d, n))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, config.hidden_size, bias=config.use_bias)
        self.reset_ssm_parameters()

    @property
    def state_size(self) -> int:
        # read from A_log so that an adapter that grows the state (Additional-scan) is seen by every path
        return self.A_log.shape[1]

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: A = -(1..N) per channel (S4D-real), D = 1, dt_proj's bias = softplus⁻¹ of
        a log-uniform step in [dt_min, dt_max]."""
        n = self.state_size
        self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand_as(self.A_log))
        self.D.fill_(1.0)
        std = self.time_step_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.intermediate_size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

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
        # Channel-major (batch, D, L) tensors, each channel's steps adjacent in memory, for x, z and Δ: the conv reads
        # x so, and the scan kernels read it fastest (their time-parallel family only so;
        # benches/results/kernels-tp-h100.md). One copy each of the projections' (batch, L, ·) outputs buys it (x and
        # z apart: x then reaches the conv contiguous, and their gradients meet again in in_proj's (batch, L, 2D)
        # layout); at one token (decode) the views are already contiguous and nothing is copied.
        x, z = (t.transpose(1, 2).contiguous() for t in self.in_proj(hidden_states).chunk(2, dim=-1))
        conv_state = cache.conv[self.layer_idx] if cache is not None else None
        x, conv_state = causal_conv(self.conv1d, x, conv_state, seq_idx)
        x = F.silu(x)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.time_step_rank, self.state_size, self.state_size], -1)
        delta = self.dt_proj(dt).transpose(1, 2).contiguous()
        A = -torch.exp(wide(self.A_log))
        start = ssm_start(cache, self.layer_idx, initial_state)
        if cache is not None and length == 1:
            start = step_state(start, batch, (self.intermediate_size, self.state_size), x)
            y, state = selective_scan_step(
                start, x[..., 0], delta[..., 0], A, B[:, 0], C[:, 0], D=wide(self.D), z=z[..., 0],
                delta_softplus=True, state_offset=state_offset, y_offset=y_offset,
            )
            y = y[..., None]
        else:
            y, state = selective_scan(
                x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D=wide(self.D), z=z, delta_softplus=True,
                initial_state=start, state_offset=state_offset, y_offset=y_offset, return_final_state=True,
                seq_idx=seq_idx,
            )
        if cache is not None:
            cache.conv[self.layer_idx] = conv_state
            cache.ssm[self.layer_idx] = state
        # y is in u's dtype: the model's, or autocast's, which out_proj casts to itself
        return self.out_proj(y.transpose(1, 2))


class MambaForCausalLM(CausalLM):
    """Mamba-1 causal LM with transformers' `MambaForCausalLM` module names."""

    config_class = MambaConfig
    mixer_class = MambaMixer


__all__ = ["MambaMixer", "MambaForCausalLM"]
