"""How a torch or JAX user spells a backend and its device: each spelling means what they meant, or is refused
with a message that names the backend and the forms it takes (never "cannot run here" for a mere misspelling)."""

from __future__ import annotations

import pytest

import nnx
from nnx.backends import BackendUnavailableError, backend_status


def _need(name):
    ok, why = backend_status(name)
    if not ok:
        pytest.skip(f"{name} not available: {why}")


@pytest.mark.parametrize("spelling", ["cuda", "gpu", "cpu", "CUDA", "mps", "tpu"])
def test_a_device_given_as_the_backend_says_to_name_the_library_first(spelling):
    """"cuda" alone listed the valid backend names only, leaving the user to guess that a device goes after one."""
    with pytest.raises(ValueError, match=rf"'{spelling}' is a device, not a backend.*'torch:cuda'.*'jax:gpu'"):
        nnx.get_backend(spelling)


@pytest.mark.parametrize("label", ["0", "CPU", "cuda:01", "-1", "cuda:x", " cpu"])
def test_a_torch_device_torch_does_not_parse_is_refused_with_the_forms_nnx_takes(label):
    """Torch's own message ("Invalid device string: '0'") named neither the backend nor what to write instead."""
    _need("torch")
    with pytest.raises(ValueError, match=r"backend 'torch:.*'torch:cpu', 'torch:cuda', 'torch:cuda:N'"):
        nnx.get_backend(f"torch:{label}")


def test_torch_cpu_with_an_index_beyond_the_one_cpu_is_refused():
    """"torch:cpu:1" was taken: torch makes its tensors on "cpu" whatever the index, so the model's backend
    claimed a device ("cpu:1") that none of its arrays were on."""
    _need("torch")
    assert str(nnx.get_backend("torch:cpu:0").device) in ("cpu", "cpu:0")
    with pytest.raises(BackendUnavailableError, match=r"'torch:cpu:1'.*1 cpu device"):
        nnx.get_backend("torch:cpu:1")


@pytest.mark.parametrize("label", ["CPU", "Cpu:0"])
def test_jax_platform_names_are_case_insensitive(label):
    """JAX names its platforms in lower case; "jax:CPU" was reported as "cannot run here" (and "jax:GPU", on a
    machine with a GPU, as a missing CUDA build with an install command)."""
    _need("jax")
    assert nnx.get_backend(f"jax:{label}").device == nnx.get_backend("jax:cpu").device


def test_a_device_object_is_refused_with_the_spec_that_names_it():
    """A torch.device or a JAX Device passed as backend= got the one hint "torch:cuda", whatever the device."""
    _need("torch")
    import torch

    with pytest.raises(TypeError, match=r"backend='torch:cuda:1'"):
        nnx.get_backend(torch.device("cuda", 1))
    with pytest.raises(TypeError, match=r"backend='torch:cpu'"):
        nnx.Sequential(nnx.Dense(2, 1), backend=torch.device("cpu"))
    if backend_status("jax")[0]:
        import jax

        with pytest.raises(TypeError, match=r"backend='jax:cpu:0'"):
            nnx.get_backend(jax.devices("cpu")[0])


def test_moving_a_model_to_its_own_backend_gives_an_independent_copy():
    model = nnx.Sequential(nnx.Dense(2, 1), backend="numpy", seed=0)
    other = model.to("NumPy")
    assert other is not model and other.backend.spec == "numpy"
    weights = other.state_dict()
    name = next(iter(weights))
    weights[name][...] = 7.0
    other.load_state_dict(weights)
    assert float(model.state_dict()[name].ravel()[0]) != 7.0
