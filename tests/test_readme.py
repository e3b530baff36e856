"""Every command the READMEs show runs as written: its options parse with the real CLI and every file of this
repository that it names exists (in a checkout and, for configs, by the name an install resolves)."""
import re
import shlex
from pathlib import Path

import pytest

from lamflow.cli import build_parser, parse_arguments
from lamflow.train.config import resolve_config_path

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "cluster" / "README.md"]
REPO_FOLDERS = ("train/", "cluster/", "benchmarks/", "lamflow/", "pipelines/", "datasets/", "lam/", "tests/", "requirements/")


def commands(readme: Path) -> list[tuple[str, bool]]:
    """(line, runnable): shell lines of the README's ```bash blocks (runnable: continuations joined, comments
    dropped) and command-like `inline` spans (mentions in prose and tables: only the files they name count)."""
    text = readme.read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append((line, True))
    lines += [(span, False) for span in re.findall(r"`([^`\n]+)`", text)
              if span.startswith(("lamflow ", "torchrun ", "python ", "sbatch "))]
    return lines


def lamflow_arguments(line: str) -> list[str] | None:
    """The arguments after `lamflow` (or `-m lamflow` / `-m lamflow.cli`), or None for other commands."""
    words = shlex.split(line.replace("...", ""))
    for index, word in enumerate(words):
        if word == "lamflow" and (index == 0 or words[index - 1] == "-m"):
            return words[index + 1:]
        if word == "lamflow.cli" and words[index - 1] == "-m":
            return words[index + 1:]
    return None


CASES = [(readme.name if readme.parent == ROOT else f"cluster/{readme.name}", line, runnable)
         for readme in READMES for line, runnable in commands(readme)]


def test_the_readmes_show_commands():
    assert sum(runnable and lamflow_arguments(line) is not None for _, line, runnable in CASES) >= 10


@pytest.mark.parametrize("readme, line, runnable", CASES)
def test_each_command_parses_and_names_files_that_exist(readme, line, runnable):
    for word in shlex.split(line.replace("...", "")):
        path = word.split("=", 1)[-1]
        if path.startswith(REPO_FOLDERS) and not any(c in path for c in "*{<"):
            assert (ROOT / path).exists(), f"{readme}: `{line}` names {path}, which does not exist"
    arguments = lamflow_arguments(line)
    if not runnable or not arguments or arguments[0] in ("--help", "COMMAND"):
        return
    try:
        parsed = parse_arguments(build_parser(), arguments)
    except SystemExit as error:
        pytest.fail(f"{readme}: `{line}` does not parse (exit {error.code})")
    if parsed.command == "train" and "/" not in parsed.config and "CONFIG" not in parsed.config:
        resolve_config_path(parsed.config)  # a shipped config's name: an install finds it too
