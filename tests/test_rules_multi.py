"""Rules added for the registry (bilinear, weight_norm, the reverses of sum and the GRU biases), block-wise
application of every rule, and arithmetic rules on raw-bit dtypes: torch is the oracle."""

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis")  # a dev dependency; a bare environment skips these property tests
from hypothesis import given, settings
from hypothesis import strategies as st

from torch2mlx.core import casts, dtypes, rules
from torch2mlx.core.entry import TensorEntry
from torch2mlx.stream.execute import compute_block
from torch2mlx.stream.plan import Op, Output

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# rule -> (source arrays, args) that the rule accepts
SAMPLES = {
    "identity": ([_x(5, 3)], {}),
    **{
        name: ([_x(*([4, 3, 5, 2, 3][: len(rules.RULES[name].perm)]))], {})
        for name in rules.RULES
        if isinstance(rules.RULES[name], rules.Permute)
    },
    "split": ([_x(9, 4)], {"parts": 3, "index": 1}),
    "concat": ([_x(2, 4), _x(5, 4), _x(1, 4)], {}),
    "sum": ([_x(7, 3), _x(7, 3)], {}),
    "sum.reverse": ([_x(6)], {"index": 1}),
    "gru_input_bias": ([_x(12), _x(12)], {"hidden": 4}),
    "gru_hidden_bias": ([_x(4)], {}),
    "weight_norm": ([np.abs(_x(1, 1, 5)), _x(6, 3, 5)], {"dim": 2, "layout": "conv1d"}),
    "weight_norm.reverse": ([_x(6, 5, 3)], {"dim": 2, "layout": "conv1d", "index": 0}),
}


def test_every_rule_has_a_sample_and_a_reverse_that_exists():
    assert set(SAMPLES) == set(rules.RULES)
    for r in rules.RULES.values():
        assert r.reverse_name is None or r.reverse_name in rules.RULES


def _blockwise(rule, arrays, args, cuts):
    """Apply ``rule`` block by block the way the stream does, from the slices it asks for."""
    shapes = [a.shape for a in arrays]
    rows = rule.out_shape(shapes, args)[0]
    bounds = sorted({0, rows, *[c % (rows + 1) for c in cuts]})
    parts = []
    for r0, r1 in zip(bounds, bounds[1:], strict=False):
        blocks = []
        for a, (axis, s, e) in zip(arrays, rule.source_slices(r0, r1, shapes, args), strict=True):
            sl = [slice(None)] * a.ndim
            sl[axis] = slice(s, e)
            blocks.append(a[tuple(sl)])
        parts.append(rule.apply(blocks, args, r0, r1))
    return np.concatenate(parts, axis=0)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(SAMPLES)), cuts=st.lists(st.integers(0, 40), max_size=4))
def test_blocks_of_rows_assemble_to_the_whole(name, cuts):
    rule = rules.RULES[name]
    arrays, args = SAMPLES[name]
    whole = rule.forward(arrays, args)
    assert whole.shape == tuple(rule.out_shape([a.shape for a in arrays], args))
    np.testing.assert_array_equal(_blockwise(rule, arrays, args, cuts), whole)


@pytest.mark.parametrize("name", [n for n, r in rules.RULES.items() if isinstance(r, rules.Permute)])
def test_permutations_and_their_twins_undo_each_other(name):
    rule = rules.RULES[name]
    (x,), _ = SAMPLES[name]
    back = rules.RULES[rule.reverse_name]
    np.testing.assert_array_equal(back.forward([rule.forward([x])]), x)


def test_bilinear_matches_mlx_weight_order():
    w = torch.from_numpy(_x(5, 4, 3))  # torch Bilinear (out, in1, in2)
    got = rules.RULES["bilinear"].forward([w.numpy()])
    np.testing.assert_array_equal(got, w.permute(0, 2, 1).numpy())  # MLX (out, in2, in1)


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
def test_weight_norm_is_torchs_weight(dim):
    v = torch.from_numpy(_x(6, 3, 5))
    g = torch.linalg.vector_norm(v, dim=[a for a in range(3) if a != dim] if dim != -1 else None, keepdim=True)
    g = g * torch.from_numpy(np.abs(_x(*g.shape)) + 0.5)
    want = torch._weight_norm(v, g, dim).permute(0, 2, 1).numpy()
    got = rules.RULES["weight_norm"].forward([g.numpy(), v.numpy()], {"dim": dim, "layout": "conv1d"})
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-7)
    g_back, v_back = (
        rules.RULES["weight_norm.reverse"].forward([got], {"dim": dim, "layout": "conv1d", "index": i}) for i in (0, 1)
    )
    again = torch._weight_norm(torch.from_numpy(v_back), torch.from_numpy(g_back), dim).permute(0, 2, 1).numpy()
    np.testing.assert_allclose(again, got, rtol=1e-6, atol=1e-7)


def test_gru_reverse_biases_compute_what_the_mlx_ones_do():
    b_ih, b_hh = _x(12), _x(12)
    b = rules.RULES["gru_input_bias"].forward([b_ih, b_hh], {"hidden": 4})
    bhn = rules.RULES["split"].forward([b_hh], {"parts": 3, "index": 2})
    b_ih2 = rules.RULES["sum.reverse"].forward([b], {"index": 0})
    b_hh2 = rules.RULES["gru_hidden_bias"].forward([bhn])
    # torch's gates see b_ih + b_hh for r and z, and b_in, b_hn apart: all four must agree.
    np.testing.assert_allclose((b_ih2 + b_hh2)[:8], (b_ih + b_hh)[:8], rtol=1e-6)
    np.testing.assert_array_equal(b_ih2[8:], b_ih[8:])
    np.testing.assert_array_equal(b_hh2[8:], b_hh[8:])


def _entry(name, arr, dtype):
    return TensorEntry(name, dtypes.get(dtype), tuple(arr.shape), array=arr)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float8_e4m3fn"])
def test_sum_adds_values_not_bit_patterns(dtype):
    a, b = (torch.from_numpy(_x(64)).to(getattr(torch, dtype)) for _ in range(2))
    bits = {"bfloat16": torch.uint16, "float16": torch.float16, "float8_e4m3fn": torch.uint8}[dtype]
    src = [_entry(n, t.view(bits).numpy(), dtype) for n, t in (("b_ih", a), ("b_hh", b))]
    out_dtype = dtypes.mlx_target(dtypes.get(dtype))
    op = Op(src, "sum", "model", {}, [Output("bias", out_dtype, (64,))])

    class _Memory:  # compute_block's reader, over in-memory entries
        def read_rows(self, e, s, t, axis=0):
            return e.array[s:t]

        def read_flat(self, e, s, t):
            return e.array[s:t]

    got = compute_block(op, _Memory(), 0, 64)
    want = (a.float() + b.float()).to(getattr(torch, out_dtype.name))  # torch adds float8 via float32 too
    want_bits = want.view(torch.uint16).numpy() if out_dtype.name == "bfloat16" else want.numpy()
    np.testing.assert_array_equal(got, want_bits)
    if dtype == "bfloat16":  # and it is exactly torch's own bfloat16 addition
        np.testing.assert_array_equal(got, (a + b).view(torch.uint16).numpy())
    assert casts.to_f32(got, out_dtype).dtype == np.float32
