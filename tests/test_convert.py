import pytest
import torch

from shg_fast import convert
from shg_fast.cli import main
from shg_fast.reference import StackedHourglass
from shg_fast.tolerances import assert_close_to_reference
from .helpers import randomize_bn
from .ports import BearpawHourglassNet, PrincetonPoseNet, anibali_hg

TINY = dict(num_stacks=2, num_features=16, num_joints=3)

pytestmark = pytest.mark.usefixtures("one_thread")


def _ours(num_modules=1, stem="torch7"):
    return randomize_bn(StackedHourglass(**TINY, num_modules=num_modules, stem=stem)).eval()


def _load_ours(state_dict):
    model = StackedHourglass(**convert.model_config(state_dict)).eval()
    model.load_state_dict(state_dict, strict=True)
    return model


def _from_checkpoint(checkpoint):
    """Our model built and loaded strictly from a converted checkpoint (as ``predict`` does)."""
    config = {k: v for k, v in checkpoint["config"].items() if k != "res"}
    model = StackedHourglass(**config).eval()
    model.load_state_dict(checkpoint["model"], strict=True)
    return model


def _assert_same_outputs(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_close_to_reference(a, b, "port_float32")


@pytest.mark.parametrize("nstack", [1, 2, 8])
def test_princeton_port_computes_the_same_function(nstack):
    port = randomize_bn(PrincetonPoseNet(nstack=nstack, inp_dim=16, oup_dim=3)).eval()
    checkpoint = {"state_dict": {f"model.module.{k}": v for k, v in port.state_dict().items()}, "epoch": 3}
    assert convert.detect_source(checkpoint) == "princeton-vl"
    converted = convert.convert_checkpoint(checkpoint)
    assert converted["config"] == dict(TINY, num_stacks=nstack, num_modules=1, stem="torch7", input_mean=None,
                                       res=256)
    model = _from_checkpoint(converted)
    x = torch.rand(2, 64, 64, 3)  # princeton-vl's forward takes NHWC
    with torch.no_grad():
        theirs = port(x)
        ours = torch.stack(model(x.permute(0, 3, 1, 2)), 1)  # ... and returns (N, S, K, H, W)
    _assert_same_outputs([ours], [theirs])


@pytest.mark.parametrize("num_stacks, num_blocks", [(1, 2), (2, 1), (2, 3), (8, 1)])
@pytest.mark.parametrize("wrap, expected", [(True, "bearpaw"), (False, "anibali")])
def test_bearpaw_port_computes_the_same_function(num_stacks, num_blocks, wrap, expected):
    build = BearpawHourglassNet if wrap else anibali_hg
    port = randomize_bn(build(num_stacks=num_stacks, num_blocks=num_blocks, num_classes=3, num_feats=8)).eval()
    state = port.state_dict()
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrap else state
    assert convert.detect_source(checkpoint) == expected
    converted = convert.convert_checkpoint(checkpoint)
    model = _from_checkpoint(converted)
    assert (model.num_stacks, model.num_modules, model.stem_kind) == (num_stacks, num_blocks, "bearpaw")
    assert converted["config"]["input_mean"] == list(convert.MPII_RGB_MEAN)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # the port runs on mean-subtracted input, as it was trained; ours subtracts it itself
        _assert_same_outputs(model(x), port(convert.prepare_input(x, expected)))


def test_bearpaw_hg2_at_its_real_width():
    """bearpaw's own sizes (num_feats 128, so 256 channels; hg2 of 2 stacks): strict load, same outputs,
    the same parameter count as the port."""
    port = randomize_bn(BearpawHourglassNet(num_stacks=2, num_blocks=1, num_classes=16)).eval()
    model = _from_checkpoint(convert.convert_checkpoint({"state_dict": {f"module.{k}": v
                                                                         for k, v in port.state_dict().items()}}))
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in port.parameters())
    assert model.r4.skip is not None and model.r5.skip is None  # layer2 projects 128->256, layer3 is identity
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        _assert_same_outputs(model(x), port(convert.prepare_input(x, "bearpaw")))


def test_princeton_increase_is_refused_with_the_shapes():
    port = PrincetonPoseNet(nstack=1, inp_dim=16, oup_dim=3, increase=4)
    with pytest.raises(ValueError, match=r"wrong shapes \(\d+\): hgs.0.0.low1.conv1.conv.weight"):
        convert.load_state_dict(port.state_dict(), source="princeton-vl")


def test_known_key_pairs():
    state = _ours().state_dict()
    wide = _ours(stem="bearpaw").state_dict()
    bearpaw = convert.to_source_layout(wide, "bearpaw")
    princeton = convert.to_source_layout(state, "princeton-vl")
    assert bearpaw["hg.1.hg.3.0.0.conv1.weight"] is wide["hg.1.up1.0.conv1.weight"]
    assert bearpaw["hg.0.hg.0.3.0.bn2.running_var"] is wide["hg.0.low2.low2.low2.low2.0.bn2.running_var"]
    assert bearpaw["hg.0.hg.2.2.0.conv3.bias"] is wide["hg.0.low2.low3.0.conv3.bias"]
    assert bearpaw["layer1.0.downsample.0.weight"] is wide["r1.skip.weight"]
    assert bearpaw["layer2.0.downsample.0.weight"] is wide["r4.skip.weight"]
    assert bearpaw["layer3.0.downsample.0.weight"] is wide["r5.skip.weight"]  # 256 -> 16 features here
    assert bearpaw["fc.1.1.running_mean"] is wide["lin.1.bn.running_mean"]
    assert bearpaw["score_.0.weight"] is wide["merge_preds.0.weight"]
    assert princeton["pre.0.bn.weight"] is state["bn1.weight"]
    assert princeton["pre.1.skip_layer.conv.weight"] is state["r1.skip.weight"]
    assert princeton["hgs.0.0.low2.low2.low2.low2.conv2.conv.weight"] is state["hg.0.low2.low2.low2.low2.0.conv2.weight"]
    assert princeton["features.1.1.conv.bias"] is state["lin.1.conv.bias"]
    assert princeton["merge_features.0.conv.conv.weight"] is state["merge_features.0.weight"]


def test_each_port_has_its_own_stem():
    with pytest.raises(ValueError, match="bearpaw network has the 'bearpaw' stem"):
        convert.to_source_layout(_ours().state_dict(), "bearpaw")
    with pytest.raises(ValueError, match="princeton-vl network has the 'torch7' stem"):
        convert.to_source_layout(_ours(stem="bearpaw").state_dict(), "princeton-vl")
    for stem in ("torch7", "bearpaw"):
        assert convert.model_config(_ours(stem=stem).state_dict())["stem"] == stem


@pytest.mark.parametrize("source, num_modules, stem", [("princeton-vl", 1, "torch7"), ("bearpaw", 2, "bearpaw"),
                                                       ("anibali", 1, "bearpaw"), ("shg_fast", 2, "torch7"),
                                                       ("shg_fast", 1, "bearpaw")])
def test_round_trip_loads_strictly_with_identical_outputs(source, num_modules, stem):
    model = _ours(num_modules, stem)
    renamed = convert.to_source_layout(model.state_dict(), source)
    back = convert.load_state_dict(renamed, source=source)
    assert list(back) == list(model.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(_load_ours(back)(x), model(x)):
            assert torch.equal(a, b)


def test_princeton_layout_needs_one_module():
    with pytest.raises(ValueError, match="num_modules must be 1"):
        convert.to_source_layout(_ours(2).state_dict(), "princeton-vl")


def test_missing_unexpected_and_misshaped_keys_are_listed():
    state = dict(convert.to_source_layout(_ours(stem="bearpaw").state_dict(), "bearpaw"))
    del state["hg.0.hg.2.1.0.conv2.weight"]
    state["hg.0.extra.weight"] = torch.zeros(1)
    state["fc.0.0.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as info:
        convert.load_state_dict(state, source="anibali")
    message = str(info.value)
    assert "missing keys (1): hg.0.hg.2.1.0.conv2.weight" in message
    assert "unexpected keys (1): hg.0.extra.weight" in message
    assert "wrong shapes (1): fc.0.0.bias (5,) (expected (16,))" in message


def test_num_batches_tracked_is_optional():
    model = _ours()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    back = convert.load_state_dict(state)
    assert torch.equal(back["bn1.num_batches_tracked"], torch.tensor(0))
    _load_ours(back)


def test_unknown_layout_and_bad_objects():
    with pytest.raises(ValueError, match="cannot tell which implementation"):
        convert.load_state_dict({"backbone.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a state_dict"):
        convert.load_state_dict({"conv1.weight": [1, 2]})
    with pytest.raises(ValueError, match="expected a state_dict"):
        convert.load_state_dict(42)
    with pytest.raises(ValueError, match="unknown source 'caffe'"):
        convert.load_state_dict({}, source="caffe")


def test_prepare_input_subtracts_the_mpii_mean_for_bearpaw_weights():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    mean = torch.tensor(convert.MPII_RGB_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.equal(convert.prepare_input(x, "anibali"), x - mean)
    assert convert.prepare_input(x, "princeton-vl") is x
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        convert.prepare_input(x[:, :2], "bearpaw")


@pytest.fixture
def princeton_file(tmp_path):
    state = convert.to_source_layout(_ours().state_dict(), "princeton-vl")
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": {f"model.module.{k}": v for k, v in state.items()}}, path)
    return path


def test_cli_converts_a_file(princeton_file, tmp_path, capsys):
    out = tmp_path / "ours.pt"
    assert main(["convert", str(princeton_file), str(out)]) == 0
    assert "(princeton-vl)" in capsys.readouterr().out
    checkpoint = torch.load(out, weights_only=True)
    assert set(checkpoint) == {"model", "config", "source"} and checkpoint["source"] == "princeton-vl"
    assert convert.detect_source(checkpoint) == "shg_fast"
    _from_checkpoint(checkpoint)
    again = tmp_path / "again.pt"  # our own format converts to itself
    assert main(["convert", str(out), str(again)]) == 0
    assert "(shg_fast)" in capsys.readouterr().out
    assert torch.load(again, weights_only=True)["config"] == checkpoint["config"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_checkpoint_fails_in_one_line(princeton_file, tmp_path, capsys, damage):
    data = princeton_file.read_bytes()
    princeton_file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x80\x02garbage" * 100)
    with pytest.raises(ValueError) as info:
        convert.load_state_dict(princeton_file)
    assert "\n" not in str(info.value) and "cannot read checkpoint" in str(info.value)
    assert main(["convert", str(princeton_file), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shg-fast convert: error: cannot read checkpoint")
    assert not (tmp_path / "out.pt").exists()


class NotATensor:
    pass


def test_pickled_objects_are_refused_with_advice(tmp_path):
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match=r"holds objects other than tensors.*weights_only=False") as info:
        convert.load_state_dict(path)
    assert "\n" not in str(info.value)


def test_cli_missing_file_and_mismatched_source(princeton_file, tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nope.pt"), str(tmp_path / "out.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["convert", str(princeton_file), str(tmp_path / "out.pt"), "--source", "bearpaw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no 4-D 'score.0.weight'" in err
