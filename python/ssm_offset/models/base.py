"""What Mamba-1 and Mamba-2 language models share: norms, the cached causal conv, the residual block,
the backbone, the LM head and loss, and the output object. A model file adds only its mixer.

Module names follow transformers' `MambaForCausalLM` / `Mamba2ForCausalLM` exactly (`backbone.embeddings`,
`backbone.layers.{i}.norm`, `backbone.layers.{i}.mixer.*`, `backbone.norm_f`, `lm_head`), so state dicts
map 1:1 and adapters can find the `nn.Linear` modules by name.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Cache
from .config import SSMConfig
from .loss import IGNORE_INDEX, linear_cross_entropy, shifted_targets


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in at least fp32: norms, residuals, logits and SSM states are computed in fp32 over bf16/fp16/fp32
    weights, and stay fp64 in an fp64 model (the gradient checks run in fp64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """weight · x / rms(x), computed in fp32 (fp64 inputs: fp64) and cast back before the weight
    (transformers' MambaRMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype and x.dtype in (torch.float32, torch.float64):
            # the same product, x · rsqrt(mean(x²) + eps) · weight, as one fused kernel forward and one backward
            # where torch has them (CUDA): the fp32 residual stream's norms otherwise take ~5 passes each way
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        xf = wide(x)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """Mamba-2's output norm: RMSNorm(y · silu(z)) over groups of `group_size` channels (gate before norm,
    mamba_ssm's `norm_before_gate=False`); RMSNorm(y) with the same weight when no gate is given."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
        # without a gate: the same grouped RMSNorm and weight (TransMamba's attention tokens take this path)
        yf = wide(y) if gate is None else wide(y) * F.silu(wide(gate))
        g = yf.view(*yf.shape[:-1], -1, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.view(yf.shape).to(y.dtype)


def causal_conv(
    conv: nn.Conv1d, x: torch.Tensor, state: Optional[torch.Tensor], seq_idx: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv over x (batch, C, L) continuing from `state` (batch, C, K-1) (zeros if None).

    One formula for every path: the parallel forward (zero state), a prefill that continues a cache, and
    the one-token step (L = 1) all call the same `conv` module, so a hook or adapter on it applies everywhere.
    The module pads K-1 on both sides (transformers' layout); output K-1+t is the window ending at x_t.
    Returns (pre-activation output (batch, C, L), the new state = the last K-1 inputs).

    With `seq_idx` (packed documents) no window reaches across a document start: out_t = b + Σ_j w_j x_{t-j}
    over the j with seq_idx[t-j] = seq_idx[t], written with the module's (possibly adapted) weight and bias.
    """
    k = conv.kernel_size[0]
    batch, channels, length = x.shape
    if seq_idx is not None:
        if state is not None:
            raise ValueError("seq_idx (packed documents) is for a parallel forward from the start, not with a cache")
        windows = F.pad(x, (k - 1, 0)).unfold(-1, k, 1)  # (batch, C, L, K)
        same = F.pad(seq_idx, (k - 1, 0), value=-1).unfold(-1, k, 1) == seq_idx[..., None]  # (batch, L, K)
        out = torch.einsum("bclk,ck->bcl", windows * same[:, None].to(x.dtype), conv.weight[:, 0].to(x.dtype))
        if conv.bias is not None:
            out = out + conv.bias.to(x.dtype)[:, None]
        tail = F.pad(x, (k - 1, 0))[..., -(k - 1):] if k > 1 else x[..., :0]
        return out, tail
    if state is None:
        # from zeros the module's own left padding is the state: output t is the window ending at x_t, and
        # no (batch, C, K-1+L) copy is made (a whole pass over the activations on a GPU)
        out = conv(x)[..., :length]
        tail = x[..., max(0, length - (k - 1)):].contiguous()  # a copy: a view would keep all of x alive in a cache
        if tail.shape[-1] < k - 1:
            tail = F.pad(tail, (k - 1 - tail.shape[-1], 0))
        return out, tail
    window = torch.cat([state.to(x.dtype), x], dim=-1)
    out = conv(window)[..., k - 1 : k - 1 + length]
    return out, window[..., window.shape[-1] - (k - 1) :]


def ssm_start(cache: Optional[Cache], layer_idx: int, initial_state: Optional[torch.Tensor]):
    """The SSM state a mixer call starts from: the cached one when the cache holds it, else the adapter's
    initial state (which seeds only a fresh sequence), else None (zeros)."""
    if cache is not None and cache.ssm[layer_idx] is not None:
        return cache.ssm[layer_idx]
    return initial_state


def step_state(start: Optional[torch.Tensor], batch: int, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """The state a one-token step starts from: zeros for a fresh sequence, a shared initial state repeated over
    the batch, or the cached (batch, …) state as it is."""
    if start is None:
        return like.new_zeros(batch, *shape, dtype=wide(like).dtype)
    if start.dim() == len(shape):
        return wide(start).expand(batch, *shape)
    return start


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x)); the residual stream is fp32 when residual_in_fp32."""

    def __init__(self, config: SSMConfig, mixer: nn.Module):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = mixer

    def forward(self, hidden_states: torch.Tensor, cache: Optional[Cache] = None, seq_idx=None) -> torch.Tensor:
        residual = wide(hidden_states) if self.residual_in_fp32 else hidden_states
        # keyword call: a forward pre-hook registered with_kwargs=True on the mixer can add
        # initial_state / state_offset / y_offset here without the model knowing about adapters
        extra = {} if seq_idx is None else {"seq_idx": seq_idx}
        out = self.mixer(self.norm(hidden_states.to(self.norm.weight.dtype)), cache=cache, **extra)
        return residual + out


class Backbone(nn.Module):
    def __init__(self, config: SSMConfig, mixer_class: Type[nn.Module]):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Block(config, mixer_class(config, layer_idx=i)) for i in range(config.num_hidden_layers)
        )
        self.norm_f = RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)

    def forward(self, inputs_embeds: torch.Tensor, cache: Optional[Cache] = None, seq_idx=None) -> torch.Tensor:
        h = inputs_embeds
        for layer in self.layers:
            h = layer(h, cache=cache, seq_idx=seq_idx)
        return self.norm_f(h)


class CausalLMOutput(dict):
    """`loss` (when labels were given), `logits` (batch, L, vocab) fp32 (unless the call asked for the loss
    alone), `cache` (when one was used).

    A dict holding only the present entries, in that order, with attribute access: the shape
    `transformers.Trainer` reads (`outputs["loss"]`).
    """

    def __init__(self, logits: Optional[torch.Tensor], loss: Optional[torch.Tensor] = None,
                 cache: Optional[Cache] = None):
        super().__init__()
        if loss is not None:
            self["loss"] = loss
        if logits is not None:
            self["logits"] = logits
        if cache is not None:
            self["cache"] = cache

    def __getattr__(self, name):
        if name in ("loss", "logits", "cache"):
            return self.get(name)
        raise AttributeError(name)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy ("mean" or "sum" over targets): position t predicts labels[t+1]; labels -100
    are ignored."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels: got shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    return F.cross_entropy(shifted, labels[:, 1:].reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX,
                           reduction=reduction)


def _check_right_padded(mask: torch.Tensor) -> None:
    """A causal model needs no mask for right padding (later positions cannot reach earlier ones); any other
    mask (left padding, holes) would need the padded tokens removed from the recurrence, which we refuse."""
    if mask.dim() != 2:
        raise ValueError(f"attention_mask: got shape {tuple(mask.shape)}, expected (batch, L)")
    m = mask.to(torch.int64)
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError(
            "attention_mask: only right padding (ones then zeros per row) is supported; an SSM cannot skip "
            "left-padded or masked-out tokens. Prefill prompts of different lengths separately (see generate)."
        )


def _drop_tied_head(module, state_dict, prefix, local_metadata):
    # A tied head is one tensor: keep it once, under the embeddings' name (transformers' on-disk convention),
    # so that any state dict of the model can go to safetensors (which refuses shared tensors) as is.
    if module.is_tied:
        state_dict.pop(prefix + "lm_head.weight", None)


def _fill_tied_head(module, state_dict, prefix, *args):
    head, emb = prefix + "lm_head.weight", prefix + "backbone.embeddings.weight"
    if module.is_tied and head not in state_dict and emb in state_dict:
        state_dict[head] = state_dict[emb]


class CausalLM(nn.Module):
    """Embeddings → residual blocks → norm_f → LM head (tied to the embeddings when the config says so)."""

    config_class: ClassVar[type]
    mixer_class: ClassVar[Type[nn.Module]]

    def __init__(self, config: SSMConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.backbone = Backbone(config, self.mixer_class)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        nn.init.normal_(self.backbone.embeddings.weight, std=0.02)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        self._register_state_dict_hook(_drop_tied_head)
        self._register_load_state_dict_pre_hook(_fill_tied_head, with_module=True)

    @property
    def is_tied(self) -> bool:
        return self.lm_head.weight is self.backbone.embeddings.weight

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.embeddings

    def new_cache(self) -> Cache:
        return Cache.empty(self.config.num_hidden_layers)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        cache: Optional[Cache] = None,
        use_cache: bool = False,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        seq_idx: Optional[torch.Tensor] = None,
        logits_to_keep: int = 0,
        return_logits: bool = True,
        loss_reduction: str = "mean",
    ) -> CausalLMOutput:
        """input_ids (batch, L) or inputs_embeds (batch, L, hidden); labels (batch, L), -100 ignored.
        `logits_to_keep` > 0 computes the logits of the last that many positions only (transformers' name): a
        prefill needs one, and (batch, L, vocab) fp32 logits of a long prompt batch take gigabytes.

        With `cache` (or `use_cache=True`, which starts a fresh one) the call continues from the cached
        state and updates the cache: a prefill on a fresh cache, a recurrent step when L = 1.
        `attention_mask` is accepted for right-padded batches only (what `transformers.Trainer` passes).
        `seq_idx` (batch, L), a non-decreasing document index, packs several examples in a row: conv windows and
        SSM states restart at each document (its first label should be -100: nothing before it may predict it).
        `return_logits=False` with labels returns the loss alone, computed slice by slice from the hidden states
        (models.loss): what training needs, without the (batch, L, vocab) fp32 logits and their gradient.
        `loss_reduction`: "mean" over the target tokens, or "sum" (a trainer that normalises over a larger batch).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction: got {loss_reduction!r}, expected 'sum' or 'mean'")
        if inputs_embeds is None:
            inputs_embeds = self.backbone.embeddings(input_ids)
        if attention_mask is not None:
            _check_right_padded(attention_mask)
        if cache is None and use_cache:
            cache = self.new_cache()
        hidden = self.backbone(inputs_embeds, cache=cache, seq_idx=seq_idx)
        if logits_to_keep:
            if labels is not None:
                raise ValueError("logits_to_keep drops positions the loss needs: pass labels or logits_to_keep")
            hidden = hidden[:, -logits_to_keep:]
        if cache is not None:
            cache.advance(inputs_embeds.shape[1])
        if not return_logits:
            if labels is None:
                raise ValueError("return_logits=False returns only the loss: pass labels")
            return CausalLMOutput(logits=None, loss=self._loss_from_hidden(hidden, labels, loss_reduction), cache=cache)
        logits = wide(self.lm_head(hidden.to(self.lm_head.weight.dtype)))
        loss = causal_lm_loss(logits, labels, loss_reduction) if labels is not None else None
        return CausalLMOutput(logits=logits, loss=loss, cache=cache)

    def _loss_from_hidden(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str) -> torch.Tensor:
        if labels.shape != hidden.shape[:2]:
            raise ValueError(f"labels: got shape {tuple(labels.shape)}, expected {tuple(hidden.shape[:2])}")
        head = self.lm_head
        if type(head) is not nn.Linear or head.bias is not None or head._forward_hooks or head._forward_pre_hooks:
            # an adapter wraps or hooks the head: only its own forward computes its logits
            return causal_lm_loss(wide(head(hidden.to(head.weight.dtype))), labels, reduction)
        targets = shifted_targets(labels.to(hidden.device))
        return linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), head.weight, targets.reshape(-1),
                                    reduction)

    def generate(self, prompts, max_new_tokens: int, **kwargs):
        """See `ssm_offset.models.generation.generate`."""
        from .generation import generate

        return generate(self, prompts, max_new_tokens, **kwargs)

    def save_pretrained(self, directory, *, dtype=None, max_shard_size=None) -> None:
        """Write Hugging Face format (config.json + model.safetensors, or shards with `max_shard_size`="16MiB",
        cast with `dtype`="bf16"); see `ssm_offset.models.io.save_pretrained`."""
        from .io import save_pretrained

        save_pretrained(self, directory, dtype=dtype, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, path_or_hub_id, **kwargs):
        """`load_model`, checked to give this class."""
        from .io import load_model

        model = load_model(path_or_hub_id, **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{path_or_hub_id} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
