"""Packed rows' attention (chattune.training.packed_attention): each example attends to itself only, with no mask built.

The reference is the same examples as a padded batch under sdpa; the block-diagonal mask transformers builds
under sdpa from restarting position ids is the path it replaces. The GPU kernel (torch's varlen_attn) cannot
run here: its call is checked against a stand-in that computes attention from the arguments it is given.
"""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import chattune.training.packed_attention as varlen
from chattune.training.packed_attention import register

ATTENTION = register()  # what the sft stage does before loading a model for packed rows

LENGTHS = [37, 90, 15, 140]
CONFIG = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def examples():
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, 100, (n,), generator=generator) for n in LENGTHS]


def padded_batch():
    rows = examples()
    ids = torch.zeros(len(rows), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = row, 1
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def packed_batch(boundaries: bool = True):
    """One flattened row as TRL's padding-free collator makes it (and, with `boundaries`, where each example
    starts, as it passes them); a row's first token is no label, as it would be predicted from the last example."""
    ids = torch.cat(examples())[None]
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    batch = dict(input_ids=ids, position_ids=positions, labels=ids.masked_fill(positions == 0, -100), use_cache=False)
    if boundaries:
        starts = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
        batch.update(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(LENGTHS), max_length_k=max(LENGTHS))
    return batch


def loss_and_gradients(attention: str, batch: dict, dtype=torch.float32):
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(CONFIG, attn_implementation=attention, dtype=dtype)
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), torch.cat([p.grad.float().flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def reference():
    return {dtype: loss_and_gradients("sdpa", padded_batch(), dtype) for dtype in (torch.float32, torch.bfloat16)}


@pytest.mark.parametrize("dtype, loss_tolerance, gradient_tolerance",
                         [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-3, 2**-5)])
def test_packed_rows_give_the_padded_batchs_loss_and_gradients(reference, dtype, loss_tolerance, gradient_tolerance):
    """Loss within float noise, every gradient within `gradient_tolerance` of the largest (bf16: a few of its
    steps, 2**-8 each), for the packed row with and without its boundaries, and for transformers' own
    block-diagonal mask, which this attention replaces."""
    loss, gradients = reference[dtype]
    largest = gradients.abs().max().item()
    runs = {"varlen": loss_and_gradients(ATTENTION, packed_batch(), dtype),
            "varlen, boundaries from the position ids": loss_and_gradients(ATTENTION, packed_batch(False), dtype),
            "sdpa, block-diagonal mask": loss_and_gradients("sdpa", packed_batch(False), dtype)}
    for name, (packed_loss, packed_gradients) in runs.items():
        assert packed_loss == pytest.approx(loss, rel=loss_tolerance), name
        assert (packed_gradients - gradients).abs().max().item() <= gradient_tolerance * largest, name


def test_a_row_whose_examples_see_each_other_is_told_apart(reference):
    """The comparison can fail: one running position over the row lets every example attend to those before it."""
    leaked = dict(packed_batch(False), position_ids=torch.arange(sum(LENGTHS))[None])
    loss, gradients = loss_and_gradients(ATTENTION, leaked)
    assert abs(loss - reference[torch.float32][0]) > 1e-4


def test_a_padded_batch_goes_through_sdpa_with_its_mask(reference):
    loss, gradients = loss_and_gradients(ATTENTION, padded_batch())
    assert loss == reference[torch.float32][0] and torch.equal(gradients, reference[torch.float32][1])


def dense_attention(q, k, v, starts, scale):
    """Attention from first principles over (tokens, heads, head_dim), same heads for q and k: a full score
    matrix, masked to causal within each example."""
    tokens = q.shape[0]
    example = torch.repeat_interleave(torch.arange(len(starts) - 1), starts.diff().long())
    allowed = (example[:, None] == example[None, :]) & torch.ones(tokens, tokens, dtype=torch.bool).tril()
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    return torch.einsum("hqk,khd->qhd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)


@pytest.mark.parametrize("takes_gqa", [True, False])
def test_the_gpu_kernel_is_called_causal_per_example_with_its_key_heads_grouped_right(monkeypatch, takes_gqa):
    """flash_varlen's call of torch's varlen_attn, with a stand-in computing what that call asks for: the
    (tokens, heads, head_dim) layout, int32 boundaries, causal (window (-1, 0)), and grouped-query heads passed
    as they are (enable_gqa, torch >= 2.12) or repeated for their query heads as sdpa groups them."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(sum(LENGTHS), 8, 16, generator=generator)
    k, v = (torch.randn(sum(LENGTHS), 2, 16, generator=generator) for _ in range(2))
    starts = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()])
    calls = []

    def kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append(dict(window_size=window_size, dtype=cu_q.dtype, longest=(max_q, max_k), gqa=enable_gqa))
        assert torch.equal(cu_q, cu_k)
        if enable_gqa:
            k, v = k.repeat_interleave(q.shape[1] // k.shape[1], 1), v.repeat_interleave(q.shape[1] // v.shape[1], 1)
        assert k.shape == q.shape, "without enable_gqa the kernel takes as many key heads as query heads"
        return dense_attention(q, k, v, cu_q, scale)

    if not takes_gqa:
        def kernel_without_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
            return kernel(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size)
        monkeypatch.setattr(varlen, "varlen_attn", kernel_without_gqa)
    else:
        monkeypatch.setattr(varlen, "varlen_attn", kernel)
    out = varlen.flash_varlen(q, k, v, starts, max(LENGTHS), scaling=0.25)
    assert calls == [dict(window_size=(-1, 0), dtype=torch.int32, longest=(140, 140), gqa=takes_gqa)]
    assert torch.allclose(out, varlen.per_example(q, k, v, starts.to(torch.int32), 0.25), atol=1e-5)

