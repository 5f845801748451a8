"""A decode attention for the hf backend on CPU, registered with transformers' attention interface.

Why: one decode step attends one new query token per row to the whole KV cache. On CPU, torch's
SDPA sends that to its flash-attention kernel, which measured 5.3 ms a call in bf16 for 32 rows of
400 cached tokens (66% of the step); eager attention first copies the KV cache once per query head
(`repeat_kv`: 3x the cache for SmolLM2's 9 heads over 3 KV heads). Here each KV head's query heads
are stacked into one matrix and multiplied with that head's cache as it is: no copy, no kernel
dispatch. Prefill (more than one query token) still goes to SDPA, whose kernel is right for it.
`benchmarks/bench_hf_decode.py` measures it against SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass

GROUPED_DECODE = "evolray_grouped_decode"


@dataclass
class Tiered:
    """A decode step's keys (or values) when its rows sit in caches of their own widths (the running
    batch's tiers, generation/continuous.py): each tier's (rows, kv_heads, columns, dim) and its mask
    (rows, 1, 1, columns), in the order of the step's rows. Each tier is attended over its own columns."""
    parts: list
    masks: list


def grouped_decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention-function contract: query (batch, heads, q, dim), key and value
    (batch, kv_heads, kv, dim), the mask SDPA would get (bool, True = attend; or additive float; or
    None); returns (batch, q, heads, dim) and no weights. Query head h reads KV head h // group, as
    `repeat_kv` lays them out."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if isinstance(key, Tiered):
        outputs, first = [], 0
        for keys, values, mask in zip(key.parts, value.parts, key.masks):
            outputs.append(grouped_decode_attention(module, query[first:first + len(keys)], keys, values, mask,
                                                    scaling=scaling)[0])
            first += len(keys)
        return torch.cat(outputs), None
    batch, heads, q_len, dim = query.shape
    if q_len > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scale = scaling if scaling is not None else dim ** -0.5
    scores = torch.matmul(query.reshape(batch, kv_heads, group, dim), key.transpose(2, 3)) * scale
    if attention_mask is not None:  # (batch, 1, 1, >= kv_len): the same for every head
        mask = attention_mask[:, :, :, :kv_len]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv_heads, group, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Makes `attn_implementation=GROUPED_DECODE` loadable; its masks are SDPA's (the prefill uses SDPA)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_DECODE, grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_DECODE, sdpa_mask)
    return GROUPED_DECODE
