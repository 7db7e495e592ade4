"""`ssm-offset methods --model DIR`: every PEFT method on this model — trainable parameters (count and share
of the model) and the formula the count follows."""
from __future__ import annotations

import math


def formulas(config) -> dict:
    """{method: (trainable count by formula, the formula)} for a Mamba / Mamba-2 config, with each method's
    default settings (`ssm_offset.peft.config_for`)."""
    from ssm_offset.peft import config_for

    L, H = config.num_hidden_layers, config.hidden_size
    n_virtual = config_for("prompt").num_virtual_tokens
    mamba2 = getattr(config, "num_heads", None) is not None and config.model_type != "mamba"
    r = config_for("lora-inout").r
    out = {}
    if mamba2:
        h, p, n = config.num_heads, config.head_dim, config.state_size
        d, conv = h * p, h * p + 2 * config.n_groups * n
        in_out = (H, 2 * d + 2 * config.n_groups * n + h)
        out["state-offset-h"] = (L * h * p * n, "L·H·P·N")
        out["state-offset-y"] = (L * h * p, "L·H·P")
        out["initial-state"] = (L * h * p * n, "L·H·P·N")
        out["lora-inout"] = (L * r * (sum(in_out) + d + H), "L·r·(in+out) over in_proj, out_proj")
        out["bitfit"] = (L * (conv + h), "L·(conv channels + H) [conv1d.bias, dt_bias]")
        out["svf"] = (L * (min(in_out) + min(d, H)), "L·Σ min(out, in) over in_proj, out_proj")
    else:
        d, n, rank = config.intermediate_size, config.state_size, config.time_step_rank
        k = config_for("additional-scan").k
        sdt = config_for("sdt")
        kept = math.ceil((1 - sdt.channel_freeze) * d) * math.ceil(sdt.state_keep * n)
        out["state-offset-h"] = (L * d * n, "L·D·N")
        out["state-offset-y"] = (L * d, "L·D")
        out["initial-state"] = (L * d * n, "L·D·N")
        out["lora-s6"] = (L * r * ((d + rank + 2 * n) + (rank + d)), "L·r·(in+out) over x_proj, dt_proj")
        out["lora-inout"] = (L * r * ((H + 2 * d) + (d + H)), "L·r·(in+out) over in_proj, out_proj")
        out["bitfit"] = (L * 2 * d, "L·2D [conv1d.bias, dt_proj.bias]")
        out["sdt"] = (L * (3 * kept + sdt.r * (d + H)),
                      "L·(3·⌈1%·D⌉·⌈25%·N⌉ sparse A,B,C + r·(D+H) LoRA on out_proj), after selection")
        out["svf"] = (L * (min(H, 2 * d) + min(d, H)), "L·Σ min(out, in) over in_proj, out_proj")
        out["additional-scan"] = (L * 3 * k * d, "L·3·k·D [A_log columns, B and C rows]")
    out["prompt"] = (n_virtual * H, "n_virtual·hidden")
    out["prefix"] = (L * n_virtual * H, "L·n_virtual·hidden")
    return out


def trainable_count(model, name: str) -> int:
    """What the method trains, counted on the model: for SDT the entries its masks leave free after selection."""
    import copy

    from ssm_offset.peft import config_for, get_peft_model

    peft = get_peft_model(copy.deepcopy(model), config_for(name))
    if name == "sdt":
        from ssm_offset.peft import sdt

        sdt.begin_warmup(peft)
        sdt.select_dimensions(peft, config=peft.peft_config["default"])
    return count_trainable(peft)


def count_trainable(peft) -> int:
    """Trainable parameters of a PeftModel, where a masked delta (SDT after its selection) counts only the
    entries its mask leaves free."""
    from ssm_offset.peft.delta import ParamDelta

    name = peft.active_adapter
    masked = [m for m in peft.modules() if isinstance(m, ParamDelta) and m.mask(name) is not None]
    dense = sum(m.delta[name].numel() for m in masked)
    # x_proj's mask covers B and C rows: count each kept (d, n) once per matrix
    free = sum(int(m.mask(name).sum()) for m in masked)
    return peft.get_nb_trainable_parameters()[0] - dense + free


def run(args) -> int:
    from ssm_offset.models import load_model
    from ssm_offset.peft import SHORT_NAMES

    model = load_model(args.model)
    total = sum(p.numel() for p in model.parameters())
    expected = formulas(model.config)
    rows = []
    for name in SHORT_NAMES:
        if name == "full":
            rows.append((name, total, "all parameters"))
        elif name in expected:
            rows.append((name, trainable_count(model, name), expected[name][1]))
    print(f"{args.model}: {type(model).__name__}, {total:,} parameters")
    print(f"{'method':<16} {'trainable':>12} {'%':>9}  formula")
    for name, count, formula in rows:
        print(f"{name:<16} {count:>12,} {100 * count / total:>8.4f}%  {formula}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("methods", help="trainable parameters of every PEFT method on a model")
    p.add_argument("--model", required=True, help="model directory (Hugging Face or mamba_ssm format) or hub id")
    p.set_defaults(func=run)
