"""The thin client's floor environment: a virtual environment holding exactly the lowest
grpcio, protobuf and numpy that pyproject.toml allows, and the grpcio-tools that generates
the committed stubs (both pinned in scripts/floor-requirements.txt), with this checkout's
bnserve installed there with --no-deps (editable, so it runs the code as it is now).

    .venv/bin/python scripts/floor_env.py            # build it if needed; print its python
    .venv/bin/python scripts/floor_env.py --rebuild  # build it afresh

It lives in .venv/floor and is reused while its key (the pins, pyproject.toml, this Python
and this checkout's path) is unchanged. Building it takes about 20 s: about 30 MB of wheels
from the package index, then an editable install of bnserve. ``make proto`` generates the
stubs with its python; tests/client/test_floor_env.py runs the thin client's tests there.

Exit status: 0 (the python's path on stdout), 1 when a step fails (pip's own message on
stderr), 3 when this Python is one the pinned wheels are not built for.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "scripts" / "floor-requirements.txt"
LOCATION = ROOT / ".venv" / "floor"
KEY_FILE = "bnserve-floor.key"
# numpy 1.23.2 has wheels for CPython 3.8 to 3.11 only, and bnserve
# needs 3.10: on a newer Python the floor cannot be installed (pip would try to compile it).
PYTHONS = ((3, 10), (3, 11))
UNSUPPORTED_EXIT = 3  # the exit status for a Python the pins have no wheels for


class FloorEnvError(RuntimeError):
    """The floor environment could not be built; the message says which step and why."""


class UnsupportedPython(FloorEnvError):
    """This Python is not one the floor pins have wheels for."""


def environment_key() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    digest.update(str(ROOT).encode())
    return digest.hexdigest()[:16]


def ensure(*, rebuild: bool = False) -> Path:
    """The floor environment's python, once the environment is there and current."""
    if sys.version_info[:2] not in PYTHONS:
        raise UnsupportedPython(
            f"the floor pins ({REQUIREMENTS.name}) have wheels for CPython "
            f"{' and '.join('.'.join(map(str, v)) for v in PYTHONS)} only; this is "
            f"{sys.version.split()[0]}")
    python = LOCATION / "bin" / "python"
    wanted = environment_key()
    LOCATION.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCATION.parent / "floor.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second caller reuses it
        stamp = LOCATION / KEY_FILE
        if not rebuild and stamp.is_file() and stamp.read_text() == wanted and python.exists():
            return python
        shutil.rmtree(LOCATION, ignore_errors=True)
        _run("create the virtual environment", [sys.executable, "-m", "venv", str(LOCATION)])
        # Wheels only: an sdist would mean compiling grpcio, minutes, and not the tested build.
        _run("install the floor pins", [str(python), "-m", "pip", "install", "--quiet",
                                        "--only-binary=:all:", "--requirement", str(REQUIREMENTS)])
        _run("install bnserve without its dependencies",
             [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--editable", str(ROOT)])
        stamp.write_text(wanted)
    return python


def _run(step: str, command: list[str]) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        raise FloorEnvError(f"could not {step}: no end after {exc.timeout:g} s: "
                            f"{' '.join(command)}") from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-4000:]
        hint = " (the pins come from the package index: is it reachable?)" if "pip" in command else ""
        raise FloorEnvError(f"could not {step}{hint}: `{' '.join(command)}` exited "
                            f"{done.returncode}:\n{output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="build it afresh")
    args = parser.parse_args(argv)
    try:
        print(ensure(rebuild=args.rebuild))
    except UnsupportedPython as exc:
        print(f"floor environment: {exc}", file=sys.stderr)
        return UNSUPPORTED_EXIT
    except FloorEnvError as exc:
        print(f"floor environment: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
