"""The compiled-kernel wrapper: compile failures fall back to eager, other errors propagate."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch._dynamo.exc import Unsupported

import qsr_plugin
from qsr_plugin.quantizers import _kernels
from qsr_plugin.quantizers._kernels import Kernels, compiled_kernels_enabled


@pytest.fixture
def compiled_on():
    with _kernels.use_compiled_kernels(True):
        yield


def eager_double(x):
    if x.dim() != 1:
        raise ValueError("needs a 1-D tensor")
    return 2 * x


def compiled_that_raises(error):
    def compile(function, dynamic):
        def run(*args):
            raise error

        return run

    return compile


def test_a_compile_failure_falls_back_to_eager_with_a_one_line_warning(monkeypatch, compiled_on):
    failure = Unsupported("no C++ compiler found\nlong details that do not belong in a warning")
    monkeypatch.setattr(torch, "compile", compiled_that_raises(failure))
    kernels = Kernels(eager_double, eager_double, compilable=True)
    with pytest.warns(UserWarning) as caught:
        assert torch.equal(kernels.forward(torch.ones(3)), torch.full((3,), 2.0))
    (warning,) = caught
    message = str(warning.message)
    assert "\n" not in message and "Unsupported: no C++ compiler found" in message
    assert not compiled_kernels_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: eager from now on
        assert torch.equal(kernels.backward(torch.ones(2)), torch.full((2,), 2.0))


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"), ValueError("x")])
def test_errors_of_the_computation_propagate_and_keep_compiling(monkeypatch, compiled_on, error):
    monkeypatch.setattr(torch, "compile", compiled_that_raises(error))
    kernels = Kernels(eager_double, eager_double, compilable=True)
    with pytest.raises(type(error)):
        kernels.forward(torch.ones(3))
    assert compiled_kernels_enabled()


def test_a_tracing_error_the_eager_kernels_share_propagates(monkeypatch, compiled_on):
    monkeypatch.setattr(torch, "compile", compiled_that_raises(Unsupported("shape mismatch")))
    kernels = Kernels(eager_double, eager_double, compilable=True)
    with pytest.raises(ValueError, match="needs a 1-D tensor"):
        kernels.forward(torch.ones(2, 2))
    assert compiled_kernels_enabled()


def test_use_compiled_kernels_as_a_call_sets_the_choice_for_the_process(compiled_on):
    qsr_plugin.use_compiled_kernels(False)
    assert not compiled_kernels_enabled()
    qsr_plugin.use_compiled_kernels(True)
    assert compiled_kernels_enabled()


@pytest.mark.parametrize("inner", [False, True])
def test_use_compiled_kernels_as_a_context_manager_restores_the_previous_choice(inner):
    with qsr_plugin.use_compiled_kernels(not inner):
        with qsr_plugin.use_compiled_kernels(inner):
            assert compiled_kernels_enabled() is inner
        assert compiled_kernels_enabled() is (not inner)
        with pytest.raises(RuntimeError), qsr_plugin.use_compiled_kernels(inner):
            raise RuntimeError("the previous choice comes back on an error too")
        assert compiled_kernels_enabled() is (not inner)
