"""The rules every ``shg-fast`` command keeps, each test held over the commands:

1. a bad option is one line on stderr naming the option, exit status 2, before any work starts;
2. a bad output path (missing folder, under a file, a folder for a file, read-only) likewise, and
   nothing is created;
3. outputs are written whole or not at all (temporary name, then rename);
4. an invalid ``$SHG_FAST_BACKEND`` is reported by ``info`` and refused in one line by the others;
5. a device or a package that is not here is refused before any work.
"""

import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from shg_fast import benchmarking, reference
from shg_fast.cli import COMMANDS, _args, main
from shg_fast.cli import train as train_cmd
from tests.pose.test_pckh import ANNOT, PREDS

PHOTO = Path(__file__).resolve().parent / "data" / "mpii" / "images" / "043789989.jpg"
MODULES = {name: __import__(f"shg_fast.cli.{name}", fromlist=["run"]) for name in COMMANDS}


def valid_argv(command: str, tmp: Path) -> list[str]:
    """A small run of ``command`` that succeeds, writing into ``tmp``."""
    if command == "convert" and not (tmp / "in.pt").exists():
        torch.save(reference.StackedHourglass(1, 16).state_dict(), tmp / "in.pt")
    return [str(a) for a in {
        "info": [],
        "bench": ["--device", "cpu", "--stacks", 1, "--size", 64, "--batch", 1, "--warmup", 0, "--repeats", 1,
                  "--variants", "reference,fast"],
        "eval": ["--preds", PREDS, "--annot", ANNOT],
        "train": ["--model", "reference", "--stacks", 1, "--features", 16, "--res", 64, "--batch-size", 2,
                  "--train-size", 2, "--val-size", 2, "--quiet", "--out", tmp / "run"],
        "predict": [PHOTO, "--out", tmp / "pred"],
        "convert": [tmp / "in.pt", tmp / "out.pt"],
        "export": ["--onnx", tmp / "model.onnx", "--size", 64],
    }[command]]


def run_cli(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words, status=2):
    assert code == status and err.count("\n") == 1 and err.startswith("shg-fast ") and ": error: " in err, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def no_work(monkeypatch):
    """Every command's run() fails the test: an error reported with this in place came before any work."""
    for module in MODULES.values():
        monkeypatch.setattr(module, "run", lambda args: pytest.fail("the command started working"))


# ---- rule 1: bad options --------------------------------------------------------------------------------------

def _random_bytes(tmp: Path) -> Path:
    (tmp / "random.pt").write_bytes(bytes(range(256)) * 4)
    return tmp / "random.pt"


def _zero_normalize(tmp: Path) -> Path:
    with h5py.File(ANNOT, "r") as src, h5py.File(tmp / "zero.h5", "w") as dst:
        dst["part"] = src["part"][()]
        dst["normalize"] = np.zeros(src["normalize"].shape)
    return tmp / "zero.h5"


# (command, how to change its valid argv, words the error must contain)
BAD_OPTIONS = [
    ("predict", lambda a, t: a + ["--scale", "inf"], "--scale"),
    ("predict", lambda a, t: a + ["--scale", "1e9"], "--scale"),
    ("predict", lambda a, t: a + ["--scale", "0"], "--scale"),
    ("predict", lambda a, t: a + ["--center", "nan", "nan"], "--center"),
    ("predict", lambda a, t: a + ["--device", "foo"], "--device"),
    ("predict", lambda a, t: a + ["--crop", "nearest"], "--crop", "original"),
    ("predict", lambda a, t: [str(t)] + a[1:], "IMAGE", "is a folder"),
    ("predict", lambda a, t: [str(t / "none.jpg")] + a[1:], "IMAGE", "does not exist"),
    ("predict", lambda a, t: a + ["--checkpoint", _random_bytes(t)], "--checkpoint", "not a PyTorch checkpoint"),
    ("bench", lambda a, t: a + ["--stacks", "100000"], "--stacks"),
    ("bench", lambda a, t: a + ["--size", "1000000"], "--size"),
    ("bench", lambda a, t: a + ["--batch", "1,100000"], "--batch"),
    ("bench", lambda a, t: a + ["--repeats", "0"], "--repeats"),
    ("bench", lambda a, t: a + ["--device", "foo"], "--device"),
    ("bench", lambda a, t: a + ["--threads", "0"], "--threads"),
    ("train", lambda a, t: a + ["--stacks", "100000"], "--stacks"),
    ("train", lambda a, t: a + ["--stacks", "64", "--features", "2048"], "--stacks", "parameters"),
    ("train", lambda a, t: a + ["--features", "15"], "--features"),
    ("train", lambda a, t: a + ["--max-steps", "-1"], "--max-steps"),
    ("train", lambda a, t: a + ["--train-size", "1"], "--train-size", "--batch-size"),
    ("train", lambda a, t: a + ["--lr", "nan"], "--lr"),
    ("train", lambda a, t: a + ["--sigma", "-1"], "--sigma"),
    ("train", lambda a, t: a + ["--res", "100"], "--res"),
    ("train", lambda a, t: a + ["--device", "foo"], "--device"),
    ("train", lambda a, t: a + ["--resume", _random_bytes(t)], "--resume", "not a PyTorch checkpoint"),
    ("train", lambda a, t: a + ["--data", "mpii"], "--annot"),
    ("train", lambda a, t: a + ["--data", "mpii", "--annot", ANNOT, "--images", t / "none"], "--images"),
    ("eval", lambda a, t: a + ["--threshold", "-1"], "--threshold"),
    ("eval", lambda a, t: a + ["--curve", t / "x.txt"], "--curve", ".png"),
    ("eval", lambda a, t: ["--preds", PREDS, "--annot", _zero_normalize(t)], "normalize", "positive"),
    ("eval", lambda a, t: ["--preds", t / "none.h5", "--annot", ANNOT], "--preds", "does not exist"),
    ("convert", lambda a, t: [_random_bytes(t), a[1]], "IN", "not a PyTorch checkpoint"),
    ("export", lambda a, t: a + ["--size", "96"], "--size", "multiple of 64"),
    ("export", lambda a, t: a + ["--checkpoint", _random_bytes(t)], "--checkpoint", "not a PyTorch checkpoint"),
]


@pytest.mark.parametrize("command, change, words", [pytest.param(c[0], c[1], c[2:], id=f"{c[0]}-{i}")
                                                     for i, c in enumerate(BAD_OPTIONS)])
def test_a_bad_option_is_one_line_before_any_work(command, change, words, capsys, tmp_path, no_work):
    argv = [command] + change(valid_argv(command, tmp_path), tmp_path)
    before = files_under(tmp_path)
    assert_one_line_error(*run_cli(capsys, argv)[::2], *words)
    assert files_under(tmp_path) == before


def test_torch_load_advice_is_never_shown(capsys, tmp_path, no_work):
    _, _, err = run_cli(capsys, ["convert", _random_bytes(tmp_path), tmp_path / "out.pt"])
    assert "will likely succeed" not in err and "not a PyTorch checkpoint" in err


# ---- rule 2: bad output paths ---------------------------------------------------------------------------------

# (command, output option, is it a folder); the option is appended to the valid argv (or replaces OUT)
OUTPUTS = [("bench", "--json", False), ("bench", "--markdown", False), ("bench", "--plot", False),
           ("eval", "--curve", False), ("convert", "OUT", False), ("predict", "--out", True),
           ("train", "--out", True), ("export", "--onnx", False)]


def _with_output(command: str, option: str, path: Path, tmp: Path) -> list[str]:
    argv = valid_argv(command, tmp)
    if option == "OUT":
        return [command, argv[0], str(path)]
    return [command] + argv + [option, str(path)]


@pytest.mark.parametrize("problem", ["missing folder", "under a file", "wrong kind", "read-only"])
@pytest.mark.parametrize("command, option, folder", OUTPUTS)
def test_a_bad_output_path_is_one_line_before_any_work(command, option, folder, problem, capsys, tmp_path,
                                                       monkeypatch, no_work):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    suffix = "" if folder else ".png"
    if problem == "missing folder":
        if folder:
            pytest.skip("a missing output folder is created")
        path = tmp_path / "missing" / f"out{suffix}"
    elif problem == "under a file":
        path = tmp_path / "a_file" / f"out{suffix}"
    elif problem == "wrong kind":
        path = tmp_path / ("a_file" if folder else "a_folder")
    else:  # permissions are simulated: the tests may run as root, who may write anywhere
        locked = tmp_path / "a_folder"
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
        path = locked / ("sub" if folder else f"out{suffix}")
    argv = _with_output(command, option, path, tmp_path)
    before = files_under(tmp_path)
    assert_one_line_error(*run_cli(capsys, argv)[::2], option if option != "OUT" else "OUT")
    assert files_under(tmp_path) == before


# ---- rule 3: whole outputs or none ----------------------------------------------------------------------------

WRITERS = {  # command -> extra options that make it write every kind of output it has
    "bench": lambda t: ["--json", t / "r.json", "--markdown", t / "r.md", "--plot", t / "r.png"],
    "eval": lambda t: ["--curve", t / "c.png"],
    "predict": lambda t: ["--heatmaps"],
    "convert": lambda t: [],
}


@pytest.mark.parametrize("command", WRITERS)
def test_every_output_is_renamed_into_place_whole(command, capsys, tmp_path, monkeypatch):
    written = []
    real = _args.atomic_path

    def recording(path):
        written.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(_args, "atomic_path", recording)
    valid = valid_argv(command, tmp_path)
    before = files_under(tmp_path)
    code, _, err = run_cli(capsys, [command] + valid + WRITERS[command](tmp_path))
    assert code == 0, err
    new = {(tmp_path / f).resolve() for f in files_under(tmp_path) - before if (tmp_path / f).is_file()}
    assert new and new == set(written)


@pytest.mark.parametrize("command", WRITERS)
def test_a_failed_write_leaves_nothing_behind(command, capsys, tmp_path, monkeypatch):
    valid = valid_argv(command, tmp_path)
    before = files_under(tmp_path)

    def disk_full(src, dst):
        raise OSError(28, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", disk_full)
    code, _, err = run_cli(capsys, [command] + valid + WRITERS[command](tmp_path))
    last_line = err.replace("\r", "\n").strip().splitlines()[-1] + "\n"  # after bench's progress bar
    assert_one_line_error(code, last_line, "No space left on device", status=1)
    assert {f for f in files_under(tmp_path) - before if (tmp_path / f).is_file()} == set()


def test_training_history_is_written_whole(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["train"] + valid_argv("train", tmp_path))
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "history.json").read_text())["loss"]
    assert not [f for f in files_under(tmp_path) if ".tmp" in f]


def test_a_diverging_loss_is_one_line(capsys, tmp_path, monkeypatch):
    from shg_fast import train

    monkeypatch.setattr(train, "stacked_mse", lambda outputs, target: sum(o.sum() for o in outputs) * float("nan"))
    assert_one_line_error(*run_cli(capsys, ["train"] + valid_argv("train", tmp_path))[::2], "diverged", "--lr",
                          status=1)


# ---- rule 4: an invalid $SHG_FAST_BACKEND ----------------------------------------------------------------------

def test_info_reports_an_invalid_backend_env(capsys, monkeypatch):
    monkeypatch.setenv("SHG_FAST_BACKEND", "foo")
    code, out, err = run_cli(capsys, ["info"])
    assert code == 0 and "SHG_FAST_BACKEND=foo: INVALID" in out, err


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "info"])
def test_other_commands_refuse_an_invalid_backend_env(command, capsys, tmp_path, monkeypatch, no_work):
    monkeypatch.setenv("SHG_FAST_BACKEND", "foo")
    assert_one_line_error(*run_cli(capsys, [command] + valid_argv(command, tmp_path))[::2], "SHG_FAST_BACKEND")


# ---- rule 5: what this machine lacks ---------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("command", ["bench", "predict", "train"])
def test_cuda_without_a_gpu_is_one_line(command, capsys, tmp_path, no_work):
    argv = [command] + valid_argv(command, tmp_path) + ["--device", "cuda"]
    assert_one_line_error(*run_cli(capsys, argv)[::2], "--device", "torch.cuda.is_available() is False")


@pytest.mark.parametrize("command, option", [("bench", "--plot"), ("eval", "--curve")])
def test_missing_matplotlib_is_one_line(command, option, capsys, tmp_path, monkeypatch, no_work):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    argv = [command] + valid_argv(command, tmp_path) + [option, tmp_path / "p.png"]
    assert_one_line_error(*run_cli(capsys, argv)[::2], option, "matplotlib")


# ---- help and warnings ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_help_works(command, capsys):
    assert main([command, "--help"]) == 0
    assert "usage: shg-fast " + command in capsys.readouterr().out


def test_bench_help_states_the_real_defaults(capsys):
    main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    gpu, cpu = benchmarking.default_config("cuda"), benchmarking.default_config("cpu")
    for key in ("stacks", "size", "warmup", "repeats"):
        assert f"default: {getattr(gpu, key)} on a GPU, {getattr(cpu, key)} on a CPU" in text, key
    assert f"default: {','.join(map(str, gpu.batches))} on a GPU, {','.join(map(str, cpu.batches))} on a CPU" in text


def test_parameter_count_is_exact():
    for stacks, features, modules in ((8, 256, 1), (1, 16, 1), (2, 32, 2)):
        model = reference.StackedHourglass(stacks, features, 16, modules)
        assert train_cmd.parameter_count(stacks, features, modules) == sum(p.numel() for p in model.parameters())


def test_a_truncated_jpeg_is_predicted_with_a_warning(capsys, tmp_path):
    data = PHOTO.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, ["predict", tmp_path / "cut.jpg", "--out", tmp_path / "pred"])
    assert code == 0
    warning = [line for line in err.splitlines() if line.startswith("shg-fast predict: warning:")]
    assert len(warning) == 1 and "truncated" in warning[0]
    code, _, err = run_cli(capsys, ["predict", PHOTO, "--out", tmp_path / "pred"])
    assert code == 0 and "warning" not in err
