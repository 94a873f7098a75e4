"""Received bundles run no code: a custom-model bundle imports its module only when the caller trusts it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from schemas import BundleError, ConfigError
from schemas.loading import load_config
from tasks.bundle import load_model, write_bundle
from tasks.data import prepare_data
from tests.conftest import tiny_overrides

# A module a bundle's maker ships beside the bundle: importing it writes the marker file.
PAYLOAD = """
from pathlib import Path
from torch import nn

Path({marker!r}).write_text("the payload ran")

def make_net(in_features, out_features):
    return nn.Linear(in_features, out_features)
"""
LEGIT = """
from torch import nn

def make_net(in_features, out_features):
    return nn.Linear(in_features, out_features)
"""


def _custom_bundle(folder: Path, target: str) -> Path:
    """A valid bundle (hashes recomputed, as any maker can) whose config names the custom model `target`."""
    config = load_config(None, tiny_overrides(**{"model.kind": "custom", "model.target": target}))
    spec = prepare_data(config.data, 0).spec
    torch.manual_seed(0)
    return write_bundle(nn.Linear(spec.n_features, spec.n_outputs), config, spec, None, folder / "bundle")


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch) -> tuple[Path, Path, dict[str, bytes]]:
    """A folder holding a `payload:make_net` bundle and `payload.py`; the cwd is that folder and on sys.path."""
    folder = tmp_path / "received"
    folder.mkdir()
    marker = tmp_path / "PAYLOAD_RAN"
    (folder / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
    bundle = _custom_bundle(folder, "payload:make_net")
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend("")  # as `python -c` / an interactive session would have it
    monkeypatch.delenv("PYTORCH_WORKFLOW_TRUSTED_MODULES", raising=False)
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    yield bundle, marker, before
    sys.modules.pop("payload", None)


@pytest.fixture
def legit_package(tmp_path: Path, monkeypatch) -> Path:
    """A package `lab` with `lab/models.py`, in a folder of its own that is put on the import path explicitly."""
    root = tmp_path / "site"
    (root / "lab").mkdir(parents=True)
    (root / "lab" / "__init__.py").write_text("")
    (root / "lab" / "models.py").write_text(LEGIT)
    yield root
    for name in ("lab.models", "lab"):
        sys.modules.pop(name, None)


def test_load_model_refuses_a_custom_bundle_and_its_payload_never_runs(hostile):
    bundle, marker, before = hostile
    with pytest.raises(BundleError) as caught:
        load_model(bundle)
    message = str(caught.value)
    assert "\n" not in message
    assert "config.yaml: model.target = 'payload:make_net' would import and run the module 'payload'" in message
    assert "--trust-code" in message and "trust_code=True" in message
    assert "PYTORCH_WORKFLOW_TRUSTED_MODULES=payload" in message
    assert not marker.exists() and "payload" not in sys.modules
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_an_allow_list_for_other_modules_does_not_let_the_bundle_in(hostile, monkeypatch):
    bundle, marker, _ = hostile
    monkeypatch.setenv("PYTORCH_WORKFLOW_TRUSTED_MODULES", "pay, payloads, lab.payload")  # prefixes, not substrings
    with pytest.raises(BundleError, match="would import and run the module 'payload'"):
        load_model(bundle)
    assert not marker.exists()


def test_even_trusted_the_module_is_not_taken_from_the_current_directory(hostile):
    bundle, marker, _ = hostile
    with pytest.raises(ConfigError, match="model.target = 'payload:make_net': cannot import 'payload'"):
        load_model(bundle, trust_code=True)
    assert not marker.exists()
    assert sys.path[0] == ""  # the import path is restored afterwards


def test_trusted_custom_bundle_loads_by_opt_in_or_allow_list(tmp_path, legit_package, monkeypatch):
    monkeypatch.delenv("PYTORCH_WORKFLOW_TRUSTED_MODULES", raising=False)
    monkeypatch.syspath_prepend(str(legit_package))
    bundle = _custom_bundle(tmp_path, "lab.models:make_net")
    with pytest.raises(BundleError, match="PYTORCH_WORKFLOW_TRUSTED_MODULES=lab.models"):
        load_model(bundle)
    assert "lab.models" not in sys.modules
    assert isinstance(load_model(bundle, trust_code=True).model, nn.Linear)
    monkeypatch.setenv("PYTORCH_WORKFLOW_TRUSTED_MODULES", "other,lab")
    loaded = load_model(bundle)
    assert loaded.predict_proba(torch.zeros(2, loaded.spec.n_features).numpy()).shape == (2, 3)


@pytest.mark.slow
def test_cli_predict_refuses_the_hostile_bundle_with_exit_5(hostile, run_cli):
    bundle, marker, before = hostile
    pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=_iris_columns()).to_csv(bundle.parent / "in.csv", index=False)
    result = run_cli("flows.predict", "--model", "bundle", "--input", "in.csv", "--output", "out.csv",
                     cwd=bundle.parent)
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'payload'" in lines[0] and "--trust-code" in lines[0]
    assert not marker.exists() and not (bundle.parent / "out.csv").exists()
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before

    trusted = run_cli("flows.predict", "--model", "bundle", "--input", "in.csv", "--output", "out.csv",
                      "--trust-code", cwd=bundle.parent)
    assert trusted.returncode == 2, trusted.stderr  # `python -m` puts the cwd on the path: not for the bundle
    assert "cannot import 'payload'" in trusted.stderr and "Traceback" not in trusted.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_cli_predict_with_trust_code_loads_a_custom_model_from_pythonpath(tmp_path, legit_package, run_cli,
                                                                          monkeypatch):
    bundle = _custom_bundle(tmp_path, "lab.models:make_net")
    pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=_iris_columns()).to_csv(tmp_path / "in.csv", index=False)
    monkeypatch.setenv("PYTHONPATH", str(legit_package))
    refused = run_cli("flows.predict", "--model", str(bundle), "--input", "in.csv", "--output", "out.csv")
    assert refused.returncode == 5 and "--trust-code" in refused.stderr
    result = run_cli("flows.predict", "--model", str(bundle), "--input", "in.csv", "--output", "out.csv",
                     "--trust-code")
    assert result.returncode == 0, result.stderr
    assert list(pd.read_csv(tmp_path / "out.csv").columns)[0] == "prediction"


def _iris_columns() -> list[str]:
    from sklearn.datasets import load_iris

    return list(load_iris().feature_names)


def test_with_a_bundle_key_only_bundles_signed_with_it_load(tmp_path, monkeypatch):
    import json

    from tasks.common.bundle_format import spec_hash
    from tasks.nets.networks import build_network

    config = load_config(None, tiny_overrides())
    spec = prepare_data(config.data, 0).spec
    monkeypatch.delenv("PYTORCH_WORKFLOW_BUNDLE_KEY", raising=False)
    unsigned = write_bundle(build_network(config.model, spec), config, spec, None, tmp_path / "unsigned")
    monkeypatch.setenv("PYTORCH_WORKFLOW_BUNDLE_KEY", "team secret")
    signed = write_bundle(build_network(config.model, spec), config, spec, None, tmp_path / "signed")
    assert json.loads((signed / "bundle.json").read_text())["signature"]["alg"] == "hmac-sha256"
    load_model(signed)
    shutil.copytree(signed, tmp_path / "copy")
    unsigned_message = r"unsigned[/\\]bundle.json: is not signed; PYTORCH_WORKFLOW_BUNDLE_KEY is set"
    with pytest.raises(BundleError, match=unsigned_message):
        load_model(unsigned)

    manifest = json.loads((signed / "bundle.json").read_text())  # a maker without the key edits and rehashes
    manifest["spec"]["class_names"] = list(reversed(manifest["spec"]["class_names"]))
    manifest["spec_sha256"] = spec_hash(manifest["spec"])
    (signed / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="signature that does not match the key, or was modified after signing"):
        load_model(signed)
    monkeypatch.setenv("PYTORCH_WORKFLOW_BUNDLE_KEY", "another key")
    with pytest.raises(BundleError, match="does not match"):
        load_model(tmp_path / "copy")
    monkeypatch.delenv("PYTORCH_WORKFLOW_BUNDLE_KEY")
    load_model(unsigned)  # without a key, signatures are not required


# --------------------------------------------------------------------------- the working directory's modules

HIJACK = "from pathlib import Path\nPath({marker!r}).joinpath({name!r}).write_text('imported')\nraise ImportError('planted')\n"


@pytest.mark.slow
def test_no_command_imports_a_module_from_the_working_directory(tmp_path, run_cli):
    """yaml.py, pandas.py and torch.py planted where each command runs (a received bundle's folder included) never run."""
    markers = tmp_path / "markers"
    markers.mkdir()
    planted = tmp_path / "here"
    planted.mkdir()

    def plant(folder: Path) -> None:
        for name in ("yaml", "pandas", "torch", "numpy", "safetensors"):
            (folder / f"{name}.py").write_text(HIJACK.format(marker=str(markers), name=name))

    plant(planted)
    train = run_cli("flows.train", *[a for o in tiny_overrides() for a in ("--set", o)], "--run-dir", str(tmp_path / "run"),
                    cwd=planted)
    assert train.returncode == 0, train.stderr
    bundle = tmp_path / "run" / "model"
    pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=_iris_columns()).to_csv(tmp_path / "in.csv", index=False)
    received = tmp_path / "received"
    shutil.copytree(bundle, received)
    plant(received)  # modules that arrived with a bundle, in the folder the user predicts from
    commands = [
        ("flows.predict", ["--model", ".", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")],
         received),
        ("flows.sweep", ["--config", str(Path(__file__).parents[1] / "configs" / "sweep_digits.yaml"), "--print-config"],
         planted),
        ("deployments.serve", ["--list"], planted),
        ("flows.train", ["--print-config"], planted),
    ]
    for module, args, cwd in commands:
        result = run_cli(module, *args, cwd=cwd)
        assert result.returncode == 0, (module, result.stderr)
    assert list(markers.iterdir()) == []
    assert (tmp_path / "out.csv").is_file()


def test_the_working_directory_comes_off_the_import_path_unless_pythonpath_names_it(tmp_path, monkeypatch):
    import os

    from flows._import_path import working_directory_off_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), *sys.path])
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    monkeypatch.setenv("PYTHONPATH", "")
    assert working_directory_off_path() == ["", str(tmp_path)]
    assert "" not in sys.path and str(tmp_path) not in sys.path
    assert os.environ["PYTHONSAFEPATH"] == "1"  # for the processes a command starts

    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the user asked for it
    assert working_directory_off_path() == []
    assert sys.path[0] == str(tmp_path)


# --------------------------------------------------------------------------- spreadsheet-safe CSV

def test_formula_cells_get_a_quote_and_numbers_do_not():
    from flows.predict import neutralize_formulas

    frame = pd.DataFrame({
        "id": ["=1+2", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx", "-1", "+3.5", "1e5", "ok", None],
        "n": [-1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        "=head": ["a"] * 11,
    })
    safe = neutralize_formulas(frame)
    assert list(safe["id"][:6]) == ["'=1+2", "'+cmd", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx"]
    assert list(safe["id"][6:10]) == ["-1", "+3.5", "1e5", "ok"] and pd.isna(safe["id"][10])
    assert list(safe["n"]) == list(frame["n"]) and safe["n"].dtype == frame["n"].dtype
    assert list(safe.columns) == ["id", "n", "'=head"]
    assert list(frame["id"])[0] == "=1+2"  # the input frame is not changed


# --------------------------------------------------------------------------- files checked before they are opened

def test_special_files_are_named_and_never_opened(tmp_path):
    import os
    import socket

    from schemas.errors import DataError
    from tasks.common.files import check_input_file, read_input_bytes, read_json

    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink("/dev/zero", tmp_path / "zero")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        cases = {
            "fifo": "is a FIFO (named pipe), not a regular file; expected a data file",
            "loop": "a symbolic link loop",
            "zero": "is a character device (through the symbolic link to /dev/zero), not a regular file",
            "dangling": f"a symbolic link to {tmp_path / 'nowhere'}, which does not exist",
            "sock": "is a socket, not a regular file",
            "absent": "data file not found",
        }
        for name, words in cases.items():
            with pytest.raises(DataError) as caught:
                check_input_file(tmp_path / name)
            assert words in str(caught.value) and "\n" not in str(caught.value)
    (tmp_path / "big.json").write_text("[" + "0," * 1000 + "0]")
    with pytest.raises(ConfigError, match="more than the 100 bytes a record may hold"):
        read_input_bytes(tmp_path / "big.json", "record", ConfigError, 100)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="deep.json: record nested more than 64 levels deep"):
        read_json(tmp_path / "deep.json", "record", ConfigError)
    (tmp_path / "ok.json").write_text('{"a": [1, {"b": 2}]}')
    assert read_json(tmp_path / "ok.json", "record", ConfigError) == {"a": [1, {"b": 2}]}
