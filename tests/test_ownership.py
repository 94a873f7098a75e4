"""Commands never destroy user files: ownership markers, outputs that never replace inputs, safe swaps."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from schemas import ConfigError
from tests.conftest import tiny_overrides


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too), with each file's bytes."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err, err
    return err


def _user_config_folder(folder: Path) -> Path:
    """A folder of the user's own: a commented config.yaml, a model/ and a hidden .tmp file."""
    from schemas.loading import config_to_yaml, load_config

    folder.mkdir()
    config = config_to_yaml(load_config(None, tiny_overrides()))
    (folder / "config.yaml").write_text("# my notes: keep these comments\n" + config)
    (folder / "model").mkdir()
    (folder / "model" / "weights.safetensors").write_bytes(b"mine")
    (folder / ".draft.tmp").write_text("mine too")
    return folder


# --------------------------------------------------------------------------- train --resume


def test_resume_refuses_a_folder_that_merely_holds_a_config(prefect_api, tmp_path, capsys):
    from flows.train import main

    folder = _user_config_folder(tmp_path / "mine")
    before = _snapshot(folder)
    assert main(["--resume", str(folder)]) == 2
    err = _error(capsys)
    assert "not a run folder made by flows.train (no .pytorch-workflow marker, no run.json)" in err, err
    assert "found .draft.tmp, config.yaml, model/" in err and "nothing was changed" in err
    assert _snapshot(folder) == before


def test_resume_refuses_a_bundle_folder(tmp_path):
    from tasks.run.rundir import open_run_dir_for_resume

    folder = _user_config_folder(tmp_path / "bundle")
    (folder / "bundle.json").write_text("{}")
    before = _snapshot(folder)
    with pytest.raises(ConfigError, match=r"this is a model bundle \(bundle.json\), not a run folder"):
        open_run_dir_for_resume(folder)
    assert _snapshot(folder) == before


def test_resume_refuses_a_sweep_folder(tmp_path):
    from tasks.common.files import write_marker
    from tasks.run.rundir import open_run_dir_for_resume

    folder = _user_config_folder(tmp_path / "sweep")
    write_marker(folder, "sweep")
    before = _snapshot(folder)
    with pytest.raises(ConfigError, match="this folder holds a sweep, not a training run"):
        open_run_dir_for_resume(folder)
    assert _snapshot(folder) == before


def test_new_runs_carry_the_marker_and_resume_clears_only_their_own_leftovers(tmp_path):
    from tasks.common.files import MARKER, marker_kind
    from tasks.run.rundir import create_run_dir, open_run_dir_for_resume

    run = create_run_dir(tmp_path / "run", "x")
    assert marker_kind(run) == "run" and json.loads((run / MARKER).read_text())["created_at"]
    assert marker_kind(create_run_dir(None, "y", root=tmp_path / "runs")) == "run"
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "model").mkdir()
    (run / ".metrics.json.abc.tmp").write_text("half")
    assert open_run_dir_for_resume(run) == run
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "config.yaml"]


def test_a_run_from_before_markers_resumes_and_is_marked(tmp_path):
    from tasks.common.files import marker_kind
    from tasks.run.rundir import open_run_dir_for_resume

    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"ckpt")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "run.json").write_text(json.dumps({"state": "failed", "pid": 2**22 + 7}))
    assert open_run_dir_for_resume(run) == run
    assert marker_kind(run) == "run" and (run / "checkpoints" / "last.pt").read_bytes() == b"ckpt"


# --------------------------------------------------------------------------- save.dirname


@pytest.mark.parametrize("name", ["checkpoints", "plots", "tensorboard", "Plots"])
def test_a_bundle_folder_named_like_the_runs_own_is_refused_at_config_time(tmp_path, capsys, name):
    from flows.train import main

    assert main(["--set", f"save.dirname={name}", "--run-dir", str(tmp_path / "run")]) == 2
    err = _error(capsys)
    assert f"save.dirname = {name!r}: the run directory already uses that name" in err, err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- sweeps


def test_sweep_refuses_a_folder_holding_the_users_own_sweep_yaml(prefect_api, tmp_path, capsys):
    from flows.sweep import main

    folder = tmp_path / "mine"
    (folder / "best_model").mkdir(parents=True)
    (folder / "best_model" / "weights.safetensors").write_bytes(b"my model")
    (folder / "leaderboard.csv").write_text("trial,value\n0,0.9\n")
    spec = {
        "name": "iris", "n_trials": 1, "trials_per_round": 1,
        "base": {"data": {"source": {"kind": "builtin", "name": "iris"}}, "device": {"name": "cpu"},
                 "train": {"epochs": 1, "progress": False}},
        "space": {"optimizer.lr": [0.01, 0.1]},
    }
    (folder / "sweep.yaml").write_text("# my sweep, with comments\n" + yaml.safe_dump(spec))
    before = _snapshot(folder)
    assert main(["--config", str(folder / "sweep.yaml"), "--sweep-dir", str(folder)]) == 2
    err = _error(capsys)
    assert "holds a sweep.yaml but is not a sweep folder made by flows.sweep (no .pytorch-workflow marker)" in err, err
    assert "found best_model/, leaderboard.csv, sweep.yaml" in err
    assert _snapshot(folder) == before


def test_sweep_folders_carry_the_marker_and_old_sweeps_are_recognised(tmp_path):
    from tasks.common.files import MARKER, marker_kind
    from tasks.sweep.folder import _check_sweep_folder

    old = tmp_path / "old"
    old.mkdir()
    for name in ("sweep.yaml", "data.json", "study.journal", "run.json"):
        (old / name).write_text("x")
    _check_sweep_folder(old)  # accepted; marked once opened
    (old / "study.journal").unlink()
    with pytest.raises(ConfigError, match=f"no {MARKER} marker"):
        _check_sweep_folder(old)
    (old / MARKER).write_text(json.dumps({"kind": "run"}))
    with pytest.raises(ConfigError, match="this folder holds a run, not a sweep"):
        _check_sweep_folder(old)
    assert marker_kind(old) == "run"


def test_replace_dir_swaps_in_one_step_and_leaves_nothing_beside(tmp_path):
    from tasks.common.files import exchange_paths, replace_dir

    target, staging = tmp_path / "best_model", tmp_path / ".best_model.new.tmp"
    target.mkdir()
    (target / "weights").write_text("old")
    staging.mkdir()
    (staging / "weights").write_text("new")
    replace_dir(staging, target)
    assert (target / "weights").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["best_model"]
    # The swap itself: both names exist before and after, so best_model/ is never missing.
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights").write_text("other")
    if not exchange_paths(other, target):
        pytest.skip("this system cannot swap two paths atomically; replace_dir renames aside instead")
    assert (target / "weights").read_text() == "other" and (other / "weights").read_text() == "new"


# --------------------------------------------------------------------------- predict --output


@pytest.fixture
def inputs(tmp_path):
    bundle = tmp_path / "model"
    bundle.mkdir()
    for name in ("bundle.json", "config.yaml", "weights.safetensors"):
        (bundle / name).write_text(f"bundle {name}")
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    return bundle, tmp_path / "in.csv"


@pytest.mark.parametrize(("output", "message"), [
    (lambda b, i: i, "is the --input file; predictions would replace their input"),
    (lambda b, i: i.parent / "." / "in.csv", "is the --input file"),
    (lambda b, i: (os.link(i, i.parent / "hard.csv"), i.parent / "hard.csv")[1], "is the --input file"),
    (lambda b, i: (os.symlink(i, i.parent / "link.csv"), i.parent / "link.csv")[1], "is the --input file"),
    (lambda b, i: b / "weights.safetensors", "is inside the --model bundle"),
    (lambda b, i: b / "config.yaml", "is inside the --model bundle"),
    (lambda b, i: b / "new.csv", "is inside the --model bundle"),
    (lambda b, i: i.parent / "out.json", "extension '.json'; expected .csv (CSV) or .parquet (Parquet)"),
    (lambda b, i: i.parent / "out", "no extension; expected .csv (CSV) or .parquet (Parquet)"),
], ids=["same-path", "same-resolved-path", "hard-link", "symlink", "bundle-weights", "bundle-config",
        "new-file-in-bundle", "unknown-extension", "no-extension"])
def test_predict_output_never_replaces_an_input_or_the_bundle(inputs, tmp_path, capsys, output, message):
    from flows.predict import main

    bundle, input_path = inputs
    out = output(bundle, input_path)
    before = _snapshot(tmp_path)
    assert main(["--model", str(bundle), "--input", str(input_path), "--output", str(out)]) == 2
    err = _error(capsys)
    assert f"--output {out}: " in err and message in err, err
    assert _snapshot(tmp_path) == before


def test_predict_output_inside_an_input_folder_is_refused(inputs, tmp_path, capsys):
    from flows.predict import main

    bundle, _ = inputs
    (tmp_path / "images").mkdir()
    assert main(["--model", str(bundle), "--input", str(tmp_path / "images"), "--output", str(tmp_path / "images" / "p.csv")]) == 2
    assert "is inside the --input folder" in _error(capsys)
    assert not (tmp_path / "images" / "p.csv").exists()


def test_predict_writes_parquet_for_parquet(prefect_api, tmp_path):
    import pandas as pd
    from sklearn.datasets import load_iris

    from flows.predict import main as predict
    from flows.train import main as train

    assert train([*(a for s in tiny_overrides(**{"train.epochs": "1"}) for a in ("--set", s)),
                  "--run-dir", str(tmp_path / "run")]) == 0
    load_iris(as_frame=True).frame.head(5).to_csv(tmp_path / "in.csv", index=False)
    common = ["--model", str(tmp_path / "run" / "model"), "--input", str(tmp_path / "in.csv")]
    assert predict([*common, "--output", str(tmp_path / "p.parquet")]) == 0
    assert predict([*common, "--output", str(tmp_path / "p.csv")]) == 0
    frame = pd.read_parquet(tmp_path / "p.parquet")  # a real Parquet file, not CSV text
    assert list(frame.columns)[0] == "prediction" and len(frame) == 5
    pd.testing.assert_frame_equal(frame, pd.read_csv(tmp_path / "p.csv"), check_dtype=False)
