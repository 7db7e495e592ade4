"""TransMamba (Li et al. 2025): one Mamba-2 parameter set per layer, used as attention before the layer's
TransPoint P and as the SSM from P on, joined by the parameter-free Memory Converter.

Per layer, after Mamba-2's shared in_proj and causal conv (computed once over all tokens, so the SSM part
continues the same conv window the attention part used):

    tokens [0, P):  y = softmax(Q Kᵀ / sqrt(N) + causal) V      Q = C, K = B, V = x      → RMSNorm(y)
    tokens [P, T):  y = SSD scan from h_{P-1} (with D skip)                              → RMSNorm(y · silu(z))
    out = out_proj(y)  for all tokens

Head mapping: C and B have G groups of width N, x has H heads of width head_dim. Value head h attends with
the Q/K of its group g = h // (H / G) — the same head→group map the SSD scan uses, so the attention path is
the SSD's "C Bᵀ" mixing with the decay mask replaced by a causal softmax, scaled by 1/sqrt(N). Q and K are
repeated to the H heads (GQA-style) and SDPA runs over H heads of Q/K width N and value width head_dim.
(Running one attention per group with the group's heads concatenated into one wide value is also exact and
does 1/(H/G) of the softmax work, but measured 3-4x slower on an H100 for G = 1: SDPA's fused kernels do not
take, or are slow at, values of width (H/G)·head_dim; see benches/results/transmamba_attention_layout.txt.)

Output norm: the SSM tokens take Mamba-2's gated RMSNorm unchanged; the attention tokens take the same
grouped RMSNorm and weight without the z gate (z and D belong to the SSM path). So P = 0 is exactly
`Mamba2Mixer`, and P ≥ T is causal attention through Mamba-2's norm weight and out_proj.

Memory Converter: the SSM state at P is h_{P-1} = Σ_{s<P} (Π_{r=s+1}^{P-1} exp(Δ_r a)) Δ_s V_s K_sᵀ — the
state the SSM itself reaches on the prefix (lossless, no parameters). It is the final state of the same scan
op run on the prefix's (K = B, V = x, dt), so every kernel and adapter hook of the scan applies to it.

Adapter hooks (forward pre-hook keyword tensors, as on `Mamba2Mixer`) act on the SSM path only:
initial_state seeds the SSM at position 0 (so it reaches tokens ≥ P through the converter), state_offset and
y_offset apply to the SSM tokens' outputs. A pure-attention layer (P ≥ T) is untouched by them.
"""
from __future__ import annotations

from collections import defaultdict
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..ops import ssd_scan, ssd_step
from .base import CausalLM, causal_conv, step_state, wide
from .cache import TransMambaCache, stack_rows
from .config import TransMambaConfig, check_transpoints
from .mamba2 import Mamba2Mixer

KV = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # key (b, T, G, N), value (b, T, H, P), dt (b, T, H)


def rotary(t: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary position embedding (rotate-half layout) of t (..., T, N) at absolute `positions` (T,)."""
    half = t.shape[-1] // 2
    inv_freq = theta ** (-torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angle = positions.to(torch.float64)[:, None] * inv_freq[None]
    cos, sin = angle.cos().to(t.dtype), angle.sin().to(t.dtype)
    t1, t2 = t[..., :half], t[..., half:]
    return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1)


def _rows(t: Optional[torch.Tensor], idx: Optional[torch.Tensor], shared_ndim: int) -> Optional[torch.Tensor]:
    """The given batch rows of a per-row tensor; a shared (batch-less) tensor or None passes through."""
    if t is None or idx is None or t.dim() == shared_ndim:
        return t
    return t[idx.to(t.device)]


class TransMambaMixer(Mamba2Mixer):
    """A `Mamba2Mixer` (same parameters, same module names) whose tokens before the TransPoint are mixed by
    causal softmax attention with Q = C, K = B, V = x; see the module docstring for the equations.

    forward(hidden_states, cache=None, *, transpoint=None, initial_state=None, state_offset=None,
    y_offset=None) → (batch, L, hidden). `transpoint` overrides the schedule for this call (tests, analysis);
    by default the layer takes its entry of the config's training or inference schedule (`self.training`),
    or of the model's explicit schedule (`TransMambaForCausalLM.set_schedule`).

    With a `TransMambaCache` the call continues each row from its position: rows before P extend their KV
    cache (attention over cached + new keys); the first SSM token of a row converts its KV cache into the SSM
    state (Memory Converter) and the KV cache is dropped; rows past P continue the SSM (one token: step op).
    """

    def __init__(self, config: TransMambaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.config = config  # read at call time: editing config.transpoints_* takes effect
        self.schedule: Optional[List[int]] = None  # an explicit schedule overriding both (set_schedule)
        self.use_rope, self.rope_theta = config.use_rope, float(config.rope_theta)

    @property
    def transpoint(self) -> int:
        schedule = self.schedule
        if schedule is None:
            schedule = self.config.transpoints_train if self.training else self.config.transpoints_infer
        return schedule[self.layer_idx % len(schedule)]

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: Optional[TransMambaCache] = None,
        *,
        transpoint: Optional[int] = None,
        initial_state: Optional[torch.Tensor] = None,
        state_offset: Optional[torch.Tensor] = None,
        y_offset: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        P = self.transpoint if transpoint is None else check_transpoints([transpoint], "transpoint")[0]
        batch, length, _ = hidden_states.shape
        h, p, g, n = self.num_heads, self.head_dim, self.n_groups, self.state_size
        z, xBC, dt = self.in_proj(hidden_states).split([self.intermediate_size, self.conv_dim, h], dim=-1)
        if cache is not None and not isinstance(cache, TransMambaCache):
            raise TypeError(f"TransMamba needs a TransMambaCache (model.new_cache()), got {type(cache).__name__}")
        conv_state = cache.conv[self.layer_idx] if cache is not None else None
        xBC, conv_state = causal_conv(self.conv1d, xBC.transpose(1, 2), conv_state)
        xBC = F.silu(xBC).transpose(1, 2)
        x, B, C = xBC.split([self.intermediate_size, g * n, g * n], dim=-1)
        x, B, C = x.reshape(batch, length, h, p), B.reshape(batch, length, g, n), C.reshape(batch, length, g, n)
        adapters = dict(initial_state=initial_state, state_offset=state_offset, y_offset=y_offset)
        if cache is None:
            y, _, _ = self._mix(x, B, C, dt, z, 0, P, None, None, False, **adapters)
            return self.out_proj(y.to(hidden_states.dtype))

        i = self.layer_idx
        if cache.transpoints[i] is None or cache.is_fresh:
            cache.transpoints[i] = P
        elif cache.transpoints[i] != P:
            raise ValueError(f"layer {i}: the cache was filled with TransPoint {cache.transpoints[i]}, the model "
                             f"now uses {P}; keep one schedule for a sequence (train()/eval() switch schedules)")
        positions = cache.positions if cache.positions is not None else [0] * batch
        # rows past P share one SSM continuation; rows at or before P are grouped by position (their KV length)
        groups = defaultdict(list)
        for r, t0 in enumerate(positions):
            groups[t0 if t0 <= P else P + 1].append(r)
        ys, states, kvs = [], [], []
        for t0, rows in groups.items():
            idx = None if len(groups) == 1 else torch.tensor(rows, device=x.device)
            pick = (lambda t: t) if idx is None else (lambda t: t[idx])
            kv = None
            if t0 <= P and cache.key[i] is not None and t0 > 0:
                kv = tuple(pick(c[:, :t0]) for c in (cache.key[i], cache.value[i], cache.dt[i]))
            state = cache.ssm[i] if t0 > P else None
            y, state, kv = self._mix(
                pick(x), pick(B), pick(C), pick(dt), pick(z), t0, P, kv, None if state is None else pick(state),
                True, initial_state=_rows(initial_state, idx, 3), state_offset=_rows(state_offset, idx, 3),
                y_offset=_rows(y_offset, idx, 2),
            )
            ys.append((rows, y))
            states.append((rows, state))
            kvs.append((rows, kv))
        cache.conv[i] = conv_state
        cache.ssm[i] = stack_rows(states, batch)
        for j, name in enumerate(("key", "value", "dt")):
            getattr(cache, name)[i] = stack_rows([(r, None if kv is None else kv[j]) for r, kv in kvs], batch, True)
        y = stack_rows(ys, batch)
        return self.out_proj(y.to(hidden_states.dtype))

    def _mix(self, x, B, C, dt, z, t0: int, P: int, kv: Optional[KV], state: Optional[torch.Tensor],
             cached: bool, *, initial_state, state_offset, y_offset):
        """Rows all at position t0 (any value > P for rows already past P). Returns the normed mixer output
        (b, L, intermediate) and the row's new cached form: the SSM state, or the KV cache while all of the
        call's tokens lie before P."""
        batch, length = x.shape[:2]
        s = min(max(P - t0, 0), length)  # the attention tokens of this call: [0, s)
        outs: List[torch.Tensor] = []
        prefix = None
        if t0 <= P:  # still in attention form: the prefix so far is the cache plus the new attention tokens
            new = (B[:, :s], x[:, :s], dt[:, :s])
            prefix = new if kv is None else tuple(torch.cat([c, t], dim=1) for c, t in zip(kv, new))
        if s > 0:
            y = self.attend(C[:, :s], prefix[0], prefix[1], t0)
            outs.append(self.norm(y.reshape(batch, s, self.intermediate_size)))
        if s == length:
            return torch.cat(outs, dim=1), None, prefix
        start = state if t0 > P else self.memory_converter(*prefix, initial_state=initial_state)
        A = -torch.exp(wide(self.A_log))
        common = dict(D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.time_step_limit,
                      state_offset=state_offset, y_offset=y_offset)
        xs, Bs, Cs, dts = x[:, s:], B[:, s:], C[:, s:], dt[:, s:]
        if cached and length - s == 1:
            start = step_state(start, batch, (self.num_heads, self.head_dim, self.state_size), x)
            y, final = ssd_step(start, xs[:, 0], dts[:, 0], A, Bs[:, 0], Cs[:, 0], **common)
            y = y[:, None]
        else:
            y, final = ssd_scan(xs, dts, A, Bs, Cs, initial_state=start, chunk_size=self.chunk_size,
                                return_final_state=True, **common)
        outs.append(self.norm(y.reshape(batch, length - s, self.intermediate_size), z[:, s:]))
        return torch.cat(outs, dim=1), final, None

    def attend(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, t0: int) -> torch.Tensor:
        """Causal softmax attention of queries q = C at positions [t0, t0 + s) over key = B, value = x at
        [0, t0 + s); head h uses group h // (H / G) (module docstring). Returns (b, s, H, head_dim)."""
        batch, s, groups, _ = q.shape
        total = key.shape[1]
        qh, kh = q.transpose(1, 2), key.transpose(1, 2)  # (b, G, ·, N)
        if self.use_rope:
            qh = rotary(qh, torch.arange(t0, t0 + s, device=q.device), self.rope_theta)
            kh = rotary(kh, torch.arange(total, device=q.device), self.rope_theta)
        per_group = self.num_heads // groups
        qh, kh = qh.repeat_interleave(per_group, dim=1), kh.repeat_interleave(per_group, dim=1)  # (b, H, ·, N)
        vh = value.transpose(1, 2)  # (b, H, T, head_dim)
        if t0 == 0:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)
        elif s == 1:  # one new token sees every cached one
            o = F.scaled_dot_product_attention(qh, kh, vh)
        else:  # is_causal aligns the mask top-left; queries continuing a cache need it bottom-right
            mask = torch.arange(t0, t0 + s, device=q.device)[:, None] >= torch.arange(total, device=q.device)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
        return o.transpose(1, 2)

    def memory_converter(self, key: torch.Tensor, value: torch.Tensor, dt: torch.Tensor, *,
                         initial_state: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The SSM state after the prefix (key = B, value = x, dt as in_proj gives it; length P):
        h_{P-1} = Σ_{s<P} (Π_{r=s+1}^{P-1} exp(Δ_r a)) Δ_s V_s K_sᵀ (+ the decayed initial state), computed as
        the final state of the scan op itself (its outputs are not used). Empty prefix: the initial state."""
        if key.shape[1] == 0:
            return initial_state
        A = -torch.exp(wide(self.A_log))
        _, h = ssd_scan(value, dt, A, key, key, dt_bias=self.dt_bias, dt_softplus=True,
                        dt_limit=self.time_step_limit, initial_state=initial_state, chunk_size=self.chunk_size,
                        return_final_state=True)
        return h


class TransMambaForCausalLM(CausalLM):
    """TransMamba causal LM: transformers' Mamba-2 module names (a Mamba-2 checkpoint's tensors fit it as is),
    `config.json` with model_type "transmamba". The schedule follows train()/eval() unless set explicitly."""

    config_class = TransMambaConfig
    mixer_class = TransMambaMixer

    def new_cache(self) -> TransMambaCache:
        return TransMambaCache.empty(self.config.num_hidden_layers)

    @property
    def transpoints(self) -> List[int]:
        """The TransPoint each layer uses now (per the current mode and any explicit schedule)."""
        return [layer.mixer.transpoint for layer in self.backbone.layers]

    def set_schedule(self, schedule: Optional[Sequence[int]]) -> None:
        """Use `schedule` (cycled over layers) in every mode; None returns to the config's train/infer pair."""
        schedule = None if schedule is None else check_transpoints(schedule, "schedule")
        for layer in self.backbone.layers:
            layer.mixer.schedule = schedule


__all__ = ["TransMambaMixer", "TransMambaForCausalLM", "rotary"]
