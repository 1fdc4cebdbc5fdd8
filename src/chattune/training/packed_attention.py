"""Attention for packed SFT rows, one example at a time, with no mask.

TRL's padding-free collator (sft.packing) flattens a batch into one row of several examples, with position ids
that restart at 0 for each, and passes where each example starts (`cu_seq_lens_q`). Under sdpa, transformers
turns that into a dense (tokens x tokens) block-diagonal mask and attends across the whole row: at 8 rows of
1,024 tokens, attention costs about as much as every linear layer together, almost all of it on pairs the mask
then throws away. Here each example attends causally to itself and nothing else is computed: on a CUDA GPU in
one call of torch's `varlen_attn` (its FlashAttention kernel), elsewhere one sdpa call per example. A batch with
no example boundaries (padded rows) goes to transformers' sdpa unchanged.

`register()` registers the implementation under `ATTENTION` with transformers' attention interface and returns that
name: `chattune.modeling.loading.load_base_model(attention=register())` loads a model with it (the sft stage, with
sft.packing). Importing the module registers nothing.
"""
from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch before 2.10: one sdpa call per example, on a GPU too
    varlen_attn = None

ATTENTION = "packed_varlen"


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     max_length_q=None, position_ids=None, **kwargs):
    """transformers' attention-function contract: query (batch, heads, tokens, head_dim), key and value with
    their own (possibly fewer) heads; returns (batch, tokens, heads, head_dim) and no weights."""
    if cu_seq_lens_q is None and attention_mask is None and position_ids is not None:
        # packed rows from a caller other than TRL's collator, which passes no boundaries: found from the restarts
        cu_seq_lens_q, max_length_q = example_starts(position_ids)
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one flattened row (TRL's padding-free batch), not {query.shape[0]}")
    if dropout:
        raise ValueError("packed attention has no attention dropout; the model's attention_dropout must be 0")
    # (tokens, heads, head_dim): the layout both kernels take
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    if q.is_cuda and varlen_attn is not None:
        out = flash_varlen(q, k, v, cu_seq_lens_q, int(max_length_q), scaling)
    else:
        out = per_example(q, k, v, cu_seq_lens_q, scaling)
    return out.unsqueeze(0), None


def example_starts(position_ids: torch.Tensor) -> tuple[torch.Tensor | None, int | None]:
    """Where each example of one flattened row starts (and the row's end), from position ids that restart at 0,
    and the longest example; (None, None) unless the row holds several examples."""
    if position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return None, None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if len(starts) < 2 or starts[0] != 0:
        return None, None
    bounds = torch.cat([starts, starts.new_tensor([position_ids.shape[1]])])
    return bounds, int(bounds.diff().max())


def flash_varlen(q, k, v, starts: torch.Tensor, longest: int, scaling) -> torch.Tensor:
    """All examples in one FlashAttention call: causal within each, nothing across."""
    groups = {}
    if k.shape[1] != q.shape[1]:
        # Grouped-query attention (TinyLlama: 32 query heads, 4 key/value heads). torch's varlen_attn takes
        # enable_gqa from 2.12; before that, each key/value head is repeated for its group of query heads.
        if "enable_gqa" in inspect.signature(varlen_attn).parameters:
            groups = dict(enable_gqa=True)
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    starts = starts.to(device=q.device, dtype=torch.int32)
    return varlen_attn(q, k, v, starts, starts, longest, longest, scale=scaling, window_size=(-1, 0), **groups)


def per_example(q, k, v, starts: torch.Tensor, scaling) -> torch.Tensor:
    """One causal sdpa call per example (the CPU's way, and the reference the GPU kernel is checked against)."""
    bounds = starts.tolist()
    outputs = []
    for begin, end in zip(bounds, bounds[1:]):
        # sdpa wants (heads, tokens, head_dim)
        segment = [t[begin:end].transpose(0, 1) for t in (q, k, v)]
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            *segment, is_causal=True, scale=scaling, enable_gqa=True).transpose(0, 1))
    return torch.cat(outputs)


def packed_mask(*args, attention_mask=None, **kwargs):
    """No mask for packed rows (they come without one); a padded batch's mask as sdpa builds it."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Register packed_attention and packed_mask under ATTENTION with transformers (again changes nothing); the name
    to load a model with."""
    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, packed_mask)
    return ATTENTION
