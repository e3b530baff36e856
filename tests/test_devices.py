"""A device this machine cannot run is one clear line, before any work: extraction and training alike."""
import pytest
import torch

from lamflow.cli import main
from lamflow.devices import available_devices, require_device
from lamflow.errors import DeviceError
from lamflow.train.distributed import init_distributed

NO_CUDA = not torch.cuda.is_available()
ONE_PAST_THE_LAST_GPU = f"cuda:{torch.cuda.device_count()}"  # cannot run on any machine


def test_cpu_runs_everywhere_and_is_listed_first():
    assert require_device("cpu", "--device") == torch.device("cpu")
    assert available_devices()[0] == "cpu"


def test_a_gpu_index_past_this_machines_gpus_names_the_setting_and_the_devices_here():
    with pytest.raises(DeviceError) as error:
        require_device(ONE_PAST_THE_LAST_GPU, "--device")
    message = str(error.value)
    assert message.startswith(f"--device: '{ONE_PAST_THE_LAST_GPU}' cannot run here (")
    assert message.endswith(f"devices here: {', '.join(available_devices())}") and "\n" not in message


@pytest.mark.skipif(not NO_CUDA, reason="this machine runs CUDA")
def test_cuda_without_a_gpu_says_why():
    with pytest.raises(DeviceError, match=r"run.device: 'cuda' cannot run here \((no CUDA GPU|this torch build|no CUDA)"):
        require_device("cuda", "run.device")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine runs MPS")
def test_mps_off_apple_silicon_is_refused():
    with pytest.raises(DeviceError, match=r"'mps' cannot run here \(MPS \(Apple silicon\) is not available\)"):
        require_device("mps", "--device")


def test_a_name_that_is_no_device_lists_the_kinds():
    with pytest.raises(DeviceError, match=r"--device: 'gpu0' is not a device; use one of cpu, cuda, cuda:N, mps"):
        require_device("gpu0", "--device")


def test_extract_refuses_the_device_before_any_work(media, tmp_path, capsys):
    video, out = media("clip.mp4", duration=1.0), tmp_path / "out"
    assert main(["extract", str(video), "--out", str(out), "--device", ONE_PAST_THE_LAST_GPU, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lamflow extract: error: --device: '{ONE_PAST_THE_LAST_GPU}' cannot run here")
    assert len(err.splitlines()) == 1
    assert not out.exists()  # no output directory, no cluster, no decoding


def test_trainer_refuses_a_local_rank_without_its_gpu(monkeypatch):
    """torchrun with more processes per node than GPUs: LOCAL_RANK names a GPU that is not there."""
    monkeypatch.setenv("LOCAL_RANK", str(torch.cuda.device_count()))
    with pytest.raises(DeviceError, match=r"^run.device"):
        init_distributed("cuda")


@pytest.mark.skipif(not NO_CUDA, reason="this machine runs CUDA")
def test_train_with_run_device_cuda_on_a_machine_without_one_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "train/configs/qvhighlights_lam.yaml", "run.device=cuda", f"run.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lamflow train: error: run.device: 'cuda' cannot run here (") and len(err.splitlines()) == 1
    assert not out.exists()
