"""TCA/TCF layers: reference parameter counts, equivalence with torch MHA and a direct computation of spec 6,
masks, attention weights, and a graph-break-free stack (torch.compile fullgraph)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lgrnet.config import ModelConfig
from lgrnet.model.reasoning import Attention, ReasoningLayer, ReasoningStack


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_reference_parameter_counts_at_256():
    layer = ReasoningLayer(256, 8, 2048, 0.1)
    assert count(layer) == 1_381_376
    assert count(layer.self_attn) == 263_168
    assert count(layer.cross_attn) == 65_792  # out-proj only: projection-free cross-attention
    projected = ReasoningLayer(256, 8, 2048, 0.1, cross_attn_projections=True)
    assert count(projected.cross_attn) == 65_792 + 197_376


def test_self_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(32, 4, 0.0, in_proj=True).eval()
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())
    q, v = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 4:] = True
    out, w = ours(q, q, v, mask, weight_rows=2)
    ref_out, ref_w = ref(q, q, v, key_padding_mask=mask, need_weights=True, average_attn_weights=True)
    assert torch.allclose(out, ref_out, atol=1e-6)
    assert torch.allclose(w, ref_w[:, :2], atol=1e-6)


def test_projection_free_cross_attention_equals_direct_formula():
    torch.manual_seed(0)
    attn = Attention(32, 4, 0.0, in_proj=False).eval()
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 6, 32), torch.randn(2, 6, 32)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 3:] = True
    out, _ = attn(q, k, v, mask)
    heads = []
    for h in range(4):
        sl = slice(8 * h, 8 * h + 8)
        logits = (q[..., sl] * 8**-0.5) @ k[..., sl].transpose(1, 2)
        logits = logits.masked_fill(mask[:, None, :], float("-inf"))
        heads.append(logits.softmax(-1) @ v[..., sl])
    expected = attn.out_proj(torch.cat(heads, dim=-1))
    assert torch.allclose(out, expected, atol=1e-6)


def direct_reference_layer(layer: ReasoningLayer, x, vis_mask, memory, text_mask, vpos, tpos, coord, p):
    """Spec section 6 with torch's own MHA for TCA and the formula for TCF (eval, no dropout)."""
    sa = torch.nn.MultiheadAttention(x.shape[-1], layer.self_attn.num_heads, batch_first=True).eval()
    sa.load_state_dict(layer.self_attn.state_dict())
    qk = torch.cat((x[:, :p] + coord[:, None], x[:, p:] + vpos[None, p:]), dim=1)
    x = layer.norm1(x + sa(qk, qk, x, key_padding_mask=vis_mask, need_weights=False)[0])
    ca, _ = layer.cross_attn(x + vpos[None], memory + tpos[None], memory, text_mask)
    x = layer.norm2(x + ca)
    return layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))


def test_stack_equals_direct_reference_computation():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=32, num_heads=4, ffn_dim=64, num_layers=2, num_pred_tokens=1)
    stack = ReasoningStack(cfg).eval()
    b, nv, length, p = 2, 9, 5, 1
    x = torch.cat((torch.zeros(b, p, 32), torch.randn(b, nv, 32)), dim=1)
    vis_mask = torch.zeros(b, p + nv, dtype=torch.bool)
    vis_mask[1, 6:] = True
    memory, text_mask = torch.randn(b, length, 32), torch.zeros(b, length, dtype=torch.bool)
    text_mask[0, 3:] = True
    vpos, tpos, coord = torch.randn(p + nv, 32), torch.randn(length, 32), torch.randn(b, 32)
    states, vis_attn, txt_attn = stack(x, vis_mask, memory, text_mask, vpos, tpos, coord, output_attentions=True)
    expected, h = [], x
    for layer in stack.layers:
        h = direct_reference_layer(layer, h, vis_mask, memory, text_mask, vpos, tpos, coord, p)
        expected.append(stack.norm(h[:, 0]))
    assert torch.allclose(states, torch.stack(expected), atol=1e-5)
    assert vis_attn.shape == (2, b, nv) and txt_attn.shape == (2, b, length)
    assert (vis_attn[:, 1, 5:] == 0).all() and (txt_attn[:, 0, 3:] == 0).all()


def test_several_prediction_tokens_are_mean_pooled():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=16, num_heads=2, ffn_dim=32, num_layers=1, num_pred_tokens=3)
    stack = ReasoningStack(cfg).eval()
    x = torch.randn(2, 3 + 4, 16)
    args = (torch.zeros(2, 7, dtype=torch.bool), torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool),
            torch.randn(7, 16), torch.randn(5, 16), torch.randn(2, 16))
    layer_out = stack.layers[0](x, args[0], args[1], args[2],
                                torch.cat((args[5][:, None].expand(-1, 3, -1), args[3][None, 3:].expand(2, -1, -1)), 1),
                                args[3][None], args[4][None], args[5], 3)[0]
    states, _, _ = stack(x, *args)
    assert torch.allclose(states[0], stack.norm(layer_out[:, :3]).mean(dim=1), atol=1e-6)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden_dim=16, num_heads=2, ffn_dim=32, num_layers=2, dropout=0.5)
    stack = ReasoningStack(cfg)
    args = (torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool), torch.randn(2, 4, 16),
            torch.zeros(2, 4, dtype=torch.bool), torch.randn(6, 16), torch.randn(4, 16), torch.randn(2, 16))
    stack.train()
    assert not torch.equal(stack(*args)[0], stack(*args)[0])
    stack.eval()
    assert torch.equal(stack(*args)[0], stack(*args)[0])


@pytest.mark.parametrize("changes", [{}, {"coord_embed": "concat", "text_attends_image": True}])
def test_stack_compiles_without_graph_breaks(changes):
    cfg = dataclasses.replace(ModelConfig(hidden_dim=16, num_heads=2, ffn_dim=32, num_layers=2), **changes)
    stack = ReasoningStack(cfg).eval()
    args = (torch.randn(2, 6, 16), torch.zeros(2, 6, dtype=torch.bool), torch.randn(2, 4, 16),
            torch.zeros(2, 4, dtype=torch.bool), torch.randn(6, 16), torch.randn(4, 16), torch.randn(2, 16))
    compiled = torch.compile(stack, backend="eager", fullgraph=True)
    eager = stack(*args, output_attentions=True)
    traced = compiled(*args, output_attentions=True)
    for a, b in zip(eager, traced):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("changes", [
    {}, {"num_pred_tokens": 2}, {"coord_embed": "add"}, {"coord_embed": "concat", "num_pred_tokens": 2},
    {"coord_embed": "none"}, {"text_attends_image": True}, {"text_attends_image": True, "num_pred_tokens": 3},
    {"cross_attn_projections": True, "num_layers": 1},
])
def test_last_layer_on_prediction_rows_equals_full_computation(changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(hidden_dim=32, num_heads=4, ffn_dim=64, num_layers=3), **changes)
    stack = ReasoningStack(cfg).eval()
    p, b, nv, length = cfg.num_pred_tokens, 2, 11, 6
    x = torch.cat((torch.randn(b, p, 32), torch.randn(b, nv, 32)), dim=1)
    vis_mask = torch.zeros(b, p + nv, dtype=torch.bool)
    vis_mask[1, p + 7:] = True
    memory, text_mask = torch.randn(b, length, 32), torch.zeros(b, length, dtype=torch.bool)
    text_mask[0, 4:] = True
    args = (x, vis_mask, memory, text_mask, torch.randn(p + nv, 32), torch.randn(length, 32), torch.randn(b, 32))
    for attentions in (False, True):
        fast = stack(*args, output_attentions=attentions)
        full = stack(*args, output_attentions=attentions, last_layer_pred_only=False)
        for a, e in zip(fast, full):
            if e is None:
                assert a is None
            else:
                assert a.shape == e.shape
                torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-6)
    # The last layer really returns only the prediction rows (and the whole sequence when asked to).
    last = stack.layers[-1]
    seen = {}
    handle = last.register_forward_hook(lambda _m, _a, out: seen.update(x=out[0]))
    stack(*args)
    assert seen["x"].shape == (b, p, 32)
    stack(*args, last_layer_pred_only=False)
    handle.remove()
    assert seen["x"].shape == (b, p + nv, 32)
