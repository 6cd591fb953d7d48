"""lgrnet.precision: the precision names, their aliases, the one-line errors and what autocast really runs."""

import pytest
import torch

from lgrnet.errors import LGRNetError
from lgrnet.precision import PRECISIONS, autocast, autocast_dtype, normalize_precision


def test_names_are_fp32_first():
    assert PRECISIONS == ("fp32", "bf16", "fp16")


@pytest.mark.parametrize(("value", "name"), [
    ("fp32", "fp32"), ("off", "fp32"), ("OFF", "fp32"), (None, "fp32"), (torch.float32, "fp32"),
    ("bf16", "bf16"), ("BF16", "bf16"), ("bfloat16", "bf16"), (torch.bfloat16, "bf16"),
    ("fp16", "fp16"), ("Fp16", "fp16"), ("half", "fp16"), (torch.float16, "fp16"),
])
def test_normalize_accepts_names_aliases_and_dtypes(value, name):
    assert normalize_precision(value) == name


@pytest.mark.parametrize("value", ["int8", "fp64", "", torch.float64, torch.int8, 16])
def test_normalize_refuses_others_naming_value_and_choices(value):
    with pytest.raises(LGRNetError) as info:
        normalize_precision(value, what="--precision")
    message = str(info.value)
    assert message.startswith("--precision ") and repr(value) in message
    assert "fp32, bf16, fp16" in message and "\n" not in message


def test_autocast_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("off", "cpu") is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", "cuda:0") is torch.float16
    with pytest.raises(LGRNetError, match="fp16: not supported on the CPU, use bf16 or fp32"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(LGRNetError, match="fp16"):
        autocast_dtype(torch.float16, "cpu")


def test_autocast_bf16_runs_a_cpu_matmul_in_bf16_and_fp32_leaves_float32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(torch.device("cpu"), "bf16"):
        low = a @ b
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, a.bfloat16() @ b.bfloat16())
    # bf16 keeps 8 bits of mantissa: the product differs from the float32 one, by about that rounding.
    exact = (a.double() @ b.double())
    assert torch.allclose(low.double(), exact, rtol=0.05, atol=0.05)
    with autocast("cpu", "fp32"):
        full = a @ b
    assert full.dtype == torch.float32
    assert torch.allclose(full.double(), exact, rtol=1e-5, atol=1e-5)
    with autocast("cpu", "off"):
        assert (a @ b).dtype == torch.float32


def test_autocast_fp16_on_cpu_is_left_to_the_caller():
    """Training runs fp16 on a CPU on purpose (with a gradient scaler): autocast builds it; only autocast_dtype,
    which inference asks first, refuses it."""
    with autocast(torch.device("cpu"), torch.float16):
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.float16
