"""The documentation: the site builds strictly, the generated reference matches the code, the examples run.

The tutorials, the Python API page and the README's quickstart are run as a reader would run them, in a
fresh folder holding copies of `configs/` and `docs/examples/`:

- a ```yaml block with `title="NAME"` is written to NAME;
- each line of a ```bash block is a `python -m MODULE ...` command, run in this process through the
  module's `main(argv)` with small overrides appended (`SMALL`: 2 epochs, one thread, few images);
- a ```python block is run with `exec`;
- a block preceded by `<!-- docs-test: skip (why) -->` is shown, not run. Any other command fails the test,
  so every command of those pages either runs here or says why it cannot.

Every other YAML block in docs/ must validate as a run config or a sweep config (or be marked skipped).
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOCS = ROOT / "docs"
RUN_PAGES = sorted((DOCS / "tutorials").glob("*.md")) + [DOCS / "reference" / "python-api.md"]
GENERATED = {DOCS / "reference" / "configuration.md", DOCS / "reference" / "cli.md"}
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b")
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)

# Appended to each command so a tutorial runs in seconds; the last value of an option wins.
SMALL = {
    "flows.train": ["--set", "train.epochs=2", "--set", "device.threads=1", "--set", "train.progress=false"],
    "flows.sweep": ["--set", "n_trials=2", "--set", "base.train.epochs=2", "--set", "parallelism=1"],
}
MAX_IMAGES_PER_CLASS = 20


@dataclass
class Block:
    lang: str
    info: str
    body: str
    skipped: bool
    line: int

    @property
    def title(self) -> str | None:
        found = re.search(r'title="([^"]+)"', self.info)
        return found.group(1) if found else None


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a markdown text, in order, each marked when a skip comment precedes it."""
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        skipped = bool(before) and bool(SKIP.search(before[-1]))
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group(1), match.group(2), match.group(3), skipped, line))
    return found


def commands(script: str) -> list[list[str]]:
    """A bash block's commands: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [words for words in (shlex.split(line, comments=True) for line in joined.splitlines()) if words]


def small(module: str, args: list[str]) -> list[str]:
    """The command's arguments, made quick to run."""
    if module == "tasks.data.shapes" and "--per-class" in args:
        i = args.index("--per-class")
        args = [*args[: i + 1], str(min(int(args[i + 1]), MAX_IMAGES_PER_CLASS)), *args[i + 2:]]
    if module == "flows.train" and "--print-config" in args:
        return args
    return [*args, *SMALL.get(module, [])]


def run_command(words: list[str], where: str) -> None:
    if words[:2] != ["python", "-m"] or len(words) < 3:
        raise AssertionError(
            f"{where}: `{shlex.join(words)}` is not a `python -m` command this test can run; "
            "mark its block with <!-- docs-test: skip (why) -->"
        )
    module = importlib.import_module(words[2] + (".__main__" if words[2] == "benchmarks" else ""))
    code = module.main(small(words[2], words[3:]))
    assert code in (0, None), f"{where}: `{shlex.join(words)}` exited with {code}"


def run_page(text: str, name: str, workspace: Path) -> dict:
    """Run a page's blocks in `workspace` (the current directory).

    Returns the page's Python namespace (its python blocks share one), with `__blocks__`: how many blocks ran.
    """
    namespace: dict = {"__name__": "__docs__", "__blocks__": 0}
    for block in blocks(text):
        where = f"{name}:{block.line}"
        if block.skipped or block.lang not in ("bash", "python", "yaml"):
            continue
        if block.lang == "yaml":
            if block.title:
                (workspace / block.title).write_text(block.body, encoding="utf-8")
            continue
        if block.lang == "python":
            exec(compile(block.body, where, "exec"), namespace)
        else:
            for words in commands(block.body):
                run_command(words, where)
        namespace["__blocks__"] += 1
    return namespace


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A reader's folder: copies of the presets and the example data; the commands' outputs land here."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(DOCS / "examples", tmp_path / "docs" / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- the site


def test_the_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    api = (site / "reference" / "python-api" / "index.html").read_text(encoding="utf-8")
    for name in ("select_device", "prepare_data", "build_model", "train_model", "evaluate_model", "Predictor"):
        assert f'id="tasks.' in api and name in api, name  # mkdocstrings rendered the stage's docstring
    results = (site / "explanation" / "benchmark-results" / "index.html").read_text(encoding="utf-8")
    assert "Training throughput" in results  # benchmarks/results.md, shown rather than copied


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages and [p for p in pages if p not in nav] == []


# --------------------------------------------------------------------------- generated reference


def test_the_configuration_reference_matches_the_schemas():
    from docs.gen_reference import COMMAND, CONFIGURATION, configuration_page

    text, undescribed = configuration_page()
    assert undescribed == [], f"fields without a description (add Field(description=...)): {undescribed}"
    assert CONFIGURATION.read_text(encoding="utf-8") == text, (
        f"{CONFIGURATION.relative_to(ROOT)} differs from the schemas: run `{COMMAND}` and commit the result"
    )


def test_the_configuration_reference_lists_every_key():
    from docs.gen_reference import CONFIGURATION
    from schemas.keys import flatten
    from schemas.run import RunConfig
    from schemas.sweep import SweepConfig

    page = CONFIGURATION.read_text(encoding="utf-8")
    run_keys = flatten(RunConfig().model_dump(mode="json"))
    sweep = SweepConfig.model_validate({"space": {"optimizer.lr": {"kind": "float", "low": 1e-3, "high": 0.1}}})
    sweep_keys = {
        k.replace("space.optimizer.lr.", "space.KEY."): v
        for k, v in flatten(sweep.model_dump(mode="json", exclude={"base"})).items()
    }
    missing = [key for key in [*run_keys, *sweep_keys] if f"| `{key}` |" not in page]
    assert missing == []
    assert "### model (kind: cnn)" in page and "### optimizer (name: sgd)" in page  # a table per union member
    assert "| `train.epochs` | int | `200` | ≥ 1; ≤ 100000 |" in page  # type, default and bounds


def test_a_schema_change_without_regenerating_fails_the_check(monkeypatch, capsys):
    from docs import gen_reference
    from schemas.run import RunConfig

    monkeypatch.setattr(RunConfig.model_fields["seed"], "description", "A description the page does not have.")
    assert gen_reference.main(["--check"]) == 1
    assert "docs/reference/configuration.md; run python -m docs.gen_reference" in capsys.readouterr().err


def test_the_cli_reference_matches_each_commands_help():
    from docs.gen_reference import CLI, COMMAND, COMMANDS, cli_page

    text = cli_page()
    assert CLI.read_text(encoding="utf-8") == text, f"{CLI.relative_to(ROOT)} differs: run `{COMMAND}`"
    for module, _ in COMMANDS:
        assert f"usage: python -m {module} " in text


# --------------------------------------------------------------------------- examples that run


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: p.name)
def test_the_page_runs_as_written(page, prefect_api, workspace):
    """Every command and config of a tutorial (and of the Python API page) runs, on small settings."""
    namespace = run_page(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)), workspace)
    assert namespace["__blocks__"] > 0
    if "report" in namespace:  # the Python API page's own flow learned something
        assert namespace["report"].metrics["accuracy"] > namespace["report"].baseline["accuracy"]


def test_every_yaml_block_in_the_docs_is_a_valid_config(workspace):
    from schemas.loading import validate_config
    from schemas.sweep import load_base, validate_sweep

    checked = 0
    for page in sorted(DOCS.rglob("*.md")):
        if page in GENERATED:
            continue
        for block in blocks(page.read_text(encoding="utf-8")):
            if block.lang != "yaml" or block.skipped:
                continue
            where = f"{page.relative_to(ROOT)}:{block.line}"
            data = yaml.safe_load(block.body)
            assert isinstance(data, dict), where
            if "space" in data:
                if isinstance(data.get("base"), str):
                    data["base"] = load_base(Path(data["base"]), ROOT / "configs")
                validate_sweep(data, where)
            else:
                validate_config(data, where)
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- the README


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_the_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_the_readme_commands_are_the_ones_ci_runs():
    """.ci/run runs the README's test command (with pip's -q), so CI proves the install steps."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace("pip install -q ", "pip install ")
    bash = [b.body.strip() for b in blocks(readme_section("Two commands")) if b.lang == "bash"]
    assert len(bash) == 2 and bash[1] in ci and bash[0].endswith("python -m flows.train")


def test_the_readme_quickstart_runs_on_a_small_csv(prefect_api, workspace):
    section = readme_section("Quickstart")
    assert sum(len(b.body.splitlines()) for b in blocks(section)) < 15  # the config and the commands
    rows = [  # a string column, gaps, a yes/no target
        "city,size,age,label",
        *(f"{'north' if i % 3 else 'south'},{'' if i % 7 == 0 else i % 11 + 0.5},{i % 5},"
          f"{'yes' if (i % 11) + (i % 5) > 6 else 'no'}" for i in range(60)),
    ]
    (workspace / "my_table.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert run_page(section, "README.md", workspace)["__blocks__"] == 1  # the yaml is written, the bash block runs
    predictions = (workspace / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert predictions[0] == "prediction,proba_no,proba_yes" and len(predictions) == 61
