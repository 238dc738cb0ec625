"""Review of the paths only a GPU takes, checked on the CPU with stand-ins for what a device refuses.

A CUDA tensor (and a CuPy array) refuses NumPy's implicit conversion: ``np.asarray`` raises
TypeError ("can't convert cuda:0 device type tensor to numpy"). `DeviceTensor` is a torch tensor
that refuses it the same way, and gives its values only through ``.cpu()`` as a CUDA tensor does,
so code that reads a device array without its backend fails here as it would on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import nnx  # noqa: E402

REFUSAL = ("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to host "
           "memory first.")


class DeviceTensor(torch.Tensor):
    """A torch tensor that, like one on a CUDA device, NumPy cannot read: only ``.cpu()`` brings it to the host."""

    __module__ = "torch.gpu_paths_review"  # a torch array to nnx (its backend is found by the type's module)

    def __array__(self, *args, **kwargs):
        raise TypeError(REFUSAL)

    def numpy(self, *args, **kwargs):
        raise TypeError(REFUSAL)

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


def on_device(a):
    return torch.as_tensor(np.asarray(a)).as_subclass(DeviceTensor)


def test_the_standin_refuses_numpy_as_a_cuda_tensor_does():
    x = on_device(np.arange(3.0))
    with pytest.raises(TypeError, match="can't convert cuda:0"):
        np.asarray(x)
    np.testing.assert_array_equal(nnx.get_backend(x).to_host(x), np.arange(3.0))  # the backend's way works


def test_plot_decision_boundary_reads_device_data_through_its_backend():
    """A model trained on torch:cuda is plotted with the data it was trained on: a CUDA tensor X and y. The plot read
    them with np.asarray, which a CUDA tensor refuses (and a CuPy array too), where CPU tensors plotted fine."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from nnx import plot

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(16, 2))
    y = (X[:, 0] > 0).astype(float)
    model = nnx.Sequential(nnx.Dense(2, 1), nnx.Sigmoid(), backend="torch", seed=0)
    try:
        fig = plot.plot_decision_boundary(model, on_device(X), on_device(y), resolution=8)
        points = fig.axes[0].collections[-1].get_offsets()
        np.testing.assert_allclose(np.asarray(points), X)
    finally:
        plt.close("all")


def test_a_torch_group_made_without_a_backend_name_reduces_cuda_tensors_where_they_are(monkeypatch):
    """``torch.distributed.init_process_group()`` without a backend (torchrun scripts often call it so) names its
    backend "undefined": torch 2.13 picks one for the machine's accelerator, NCCL alone on a GPU machine
    ("cuda:nccl", no gloo). TorchCommunicator read "undefined" as gloo: a CPU-only group, to which it handed the
    CUDA gradients' host copies, which an NCCL-only group refuses ("No backend type associated with device type
    cpu"). It now reads the group's configuration, as torch built it for a CUDA machine (its own BackendConfig)."""
    import torch.distributed as tdist
    from torch.distributed import distributed_c10d as c10d

    from nnx.distributed import TorchCommunicator

    monkeypatch.setattr(torch._C, "_get_accelerator", lambda: torch.device("cuda"))
    config = str(c10d.BackendConfig(c10d.Backend("undefined")))  # torch's own choice on a CUDA machine
    assert config == "cuda:nccl", config
    for name, value in (("is_initialized", True), ("get_rank", 0), ("get_world_size", 2),
                        ("get_backend", c10d.Backend("undefined")), ("get_backend_config", config)):
        monkeypatch.setattr(tdist, name, lambda *a, value=value, **k: value)
    comm = TorchCommunicator()
    assert not comm._ready(torch.ones(3)), "a CPU tensor handed to an NCCL-only group"
