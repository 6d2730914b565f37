"""Both stems (Torch7's and bearpaw's) and the input mean through the reference, the fused plan and every backend."""

import copy

import pytest
import torch

from shg_fast import StackedHourglass, reference
from shg_fast.tolerances import assert_close_to_reference
from .helpers import randomize_bn
from .ports import BearpawHourglassNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("stacks, params", [(1, 3_426_448), (2, 6_570_400), (8, 25_434_112)])
def test_torch7_parameter_counts_stay_exact(stacks, params):
    with torch.device("meta"):
        model = reference.StackedHourglass(stacks)
    assert model.stem_kind == "torch7" and sum(p.numel() for p in model.parameters()) == params


@pytest.mark.parametrize("stacks", [1, 2, 8])
def test_bearpaw_stem_has_the_ports_parameter_count(stacks):
    with torch.device("meta"):
        ours = reference.StackedHourglass(stacks, stem="bearpaw")
        port = BearpawHourglassNet(num_stacks=stacks, num_blocks=1, num_classes=16)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in port.parameters())


def test_bad_stem_and_mean_are_refused():
    with pytest.raises(ValueError, match="stem must be one of"):
        reference.StackedHourglass(1, 16, stem="resnet")
    with pytest.raises(ValueError, match="input_mean must be None or three finite numbers"):
        reference.StackedHourglass(1, 16, input_mean=(0.5, 0.5))


def test_config_rebuilds_the_same_network():
    model = reference.StackedHourglass(2, 16, 5, 2, stem="bearpaw", input_mean=[0.1, 0.2, 0.3])
    twin = reference.StackedHourglass(**model.config)
    twin.load_state_dict(model.state_dict(), strict=True)
    assert twin.config == model.config and twin.input_mean == (0.1, 0.2, 0.3)


# "auto" on a CPU is the oneDNN runner with the extension's CPU kernels (there is no CPU conv_bn_relu to
# force with "cpu"); "reference" and "triton" (the interpreter here) run every public op of the plan.
@pytest.mark.parametrize("backend", ["auto", "reference", "triton"])
@pytest.mark.parametrize("stem, mean", [("torch7", None), ("bearpaw", (0.4404, 0.4440, 0.4327))])
def test_fused_plan_runs_both_stems_on_every_backend(monkeypatch, backend, stem, mean):
    if backend != "auto":
        monkeypatch.setenv("SHG_FAST_BACKEND", backend)
    ref = randomize_bn(reference.StackedHourglass(1, 16, 3, stem=stem, input_mean=mean)).eval()
    fast = StackedHourglass(**ref.config).eval()
    fast.load_state_dict(ref.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        truth = copy.deepcopy(ref).double()(x.double())
        outs = fast(x)
    if backend != "auto":
        assert fast.plan_info()["runner"] == "ops"
    for out, t in zip(outs, truth, strict=True):
        assert_close_to_reference(out, t, "float32")
