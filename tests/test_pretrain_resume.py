"""Verified resume and atomic checkpoints: damaged RNG / collator / trainer states, a full disk while saving."""

import errno
import json
import shutil

import pytest
import torch
from test_pretrain import dataset_dir, one_torch_thread, tiny_args  # noqa: F401  (fixtures)

from mmae_hf.training.pretraining import CheckpointError, list_checkpoints, run_pretraining

COMMON = dict(max_steps=4, gradient_accumulation_steps=1)


@pytest.fixture(scope="module")
def stopped_run(dataset_dir, tmp_path_factory):  # noqa: F811
    """A run stopped at step 2 (checkpoint-2), and the weights of the same run done without stopping."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("resume")
    run_pretraining(tiny_args(dataset_dir, root / "straight", **COMMON))
    run_pretraining(tiny_args(dataset_dir, root / "stopped", stop_after_step=2, **COMMON))
    return root / "stopped", load_file(str(root / "straight" / "model.safetensors"))


def _copy(stopped, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(stopped, target)
    return target, target / "checkpoints" / "checkpoint-2"


def test_damaged_rng_state_is_refused_unless_inexact_is_allowed(dataset_dir, stopped_run, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file

    stopped, straight = stopped_run
    out, checkpoint = _copy(stopped, tmp_path)
    rng = checkpoint / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[: rng.stat().st_size // 2])  # truncated
    # accelerate itself only logs "Could not load random states" at INFO and goes on with other random numbers
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint-2: cannot resume exactly: random_states_0\.pkl cannot be "
        r"read .*--allow_inexact_resume",
    ):
        run_pretraining(tiny_args(dataset_dir, out, resume_from_checkpoint="latest", **COMMON))
    resumed = run_pretraining(
        tiny_args(dataset_dir, out, resume_from_checkpoint="latest", allow_inexact_resume=True, **COMMON)
    )
    assert resumed.finished and "warning: resuming from" in capsys.readouterr().out
    weights = load_file(str(out / "model.safetensors"))
    assert weights.keys() == straight.keys()  # it ran to the end, with other random numbers than the straight run


def test_damaged_collator_state_and_trainer_state_are_named(dataset_dir, stopped_run, tmp_path):  # noqa: F811
    stopped, _ = stopped_run
    out, checkpoint = _copy(stopped, tmp_path)
    (checkpoint / "collator_state_0.json").write_text('{"kind": "torch", "sta')
    with pytest.raises(CheckpointError, match=r"cannot resume exactly: collator_state_0\.json cannot be read"):
        run_pretraining(tiny_args(dataset_dir, out, resume_from_checkpoint="latest", **COMMON))
    out, checkpoint = _copy(stopped, tmp_path / "b")
    (checkpoint / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint-2/trainer_state\.json: unreadable trainer state"):
        run_pretraining(tiny_args(dataset_dir, out, resume_from_checkpoint="latest", **COMMON))


def test_intact_checkpoint_still_resumes_exactly(dataset_dir, stopped_run, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    stopped, straight = stopped_run
    out, _ = _copy(stopped, tmp_path)
    resumed = run_pretraining(tiny_args(dataset_dir, out, resume_from_checkpoint="latest", **COMMON))
    assert resumed.finished
    weights = load_file(str(out / "model.safetensors"))
    for name in straight:
        torch.testing.assert_close(weights[name], straight[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("with_errno", [True, False])
def test_full_disk_while_saving_a_checkpoint_is_named_and_leaves_no_half_checkpoint(
    dataset_dir,  # noqa: F811  (the fixture imported above)
    tmp_path,
    monkeypatch,
    with_errno,
):
    from accelerate import Accelerator

    original = Accelerator.save_state

    def full_disk(self, output_dir=None, **kwargs):
        original(self, output_dir, **kwargs)  # the files are there ... then the disk fills up
        if with_errno:
            raise OSError(errno.ENOSPC, "No space left on device", f"{output_dir}/optimizer.bin")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1099776 vs 1099664")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    if not with_errno:  # torch's zip writer names no errno: the free space says what happened
        monkeypatch.setattr("mmae_hf.traffic.atomic.free_bytes", lambda path: 0)
    out = tmp_path / "run"
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint-2: the checkpoint could not be written: ENOSPC \(no space "
        r"left on device\)",
    ):
        run_pretraining(tiny_args(dataset_dir, out, stop_after_step=2, **COMMON))
    assert list_checkpoints(out) == []  # never a half-written checkpoint that "latest" would pick
    assert [p.name for p in (out / "checkpoints").iterdir()] == []


def test_checkpoints_are_renamed_into_place(dataset_dir, tmp_path, monkeypatch):  # noqa: F811
    """While a checkpoint is written it is not called checkpoint-<step>; a stale temp folder is cleared."""
    from accelerate import Accelerator

    seen = []
    original = Accelerator.save_state

    def spy(self, output_dir=None, **kwargs):
        seen.append(output_dir)
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", spy)
    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-checkpoint-1").mkdir(parents=True)  # left by a killed run
    result = run_pretraining(
        tiny_args(dataset_dir, out, save_steps=1, save_total_limit=2, overwrite_output_dir=True, **COMMON)
    )
    assert result.finished and all("/.tmp-checkpoint-" in str(path) for path in seen)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["step"] == 3
