"""Build the serving image and prove it works as a container: ``make container-test``.

What it proves, with buildah and podman (no Docker engine needed; see docs/container.md):

1. the Dockerfile builds (``buildah bud --format docker``, which keeps the HEALTHCHECK);
2. the image honours ``-e BNSERVE_PORT=<a free port, not 8001>``: the server listens there
   and the image's own HEALTHCHECK (``podman healthcheck run``) passes, while the same health
   command pointed by BNSERVE_PORT at another port fails;
3. ``bnserve predict`` from this machine gets the right digits back from that port;
4. ``podman stop --time 30`` stops it with exit code 0 well before the 30 s: the server
   handles SIGTERM as PID 1.

The container is removed whatever happens (Ctrl-C and SIGTERM included). Nothing is installed:
without buildah or podman it says how to install them and exits 2. The first run on a machine
that cannot reach Docker Hub makes a local Debian base image (debootstrap, about a minute,
needs root) and keeps it in podman's storage for later runs.

    .venv/bin/python scripts/container_test.py [--image localhost/bnserve:test]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = "localhost/bnserve:test"
DEFAULT_BASE = "docker.io/library/python:3.11-slim"  # what the Dockerfile's FROM resolves to
LOCAL_BASE = "localhost/debian-python:bookworm"  # the debootstrap stand-in, kept for reuse
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # lets pip in the build reach the index
IMAGE_PORT = 8001  # the image's default BNSERVE_PORT, which this test must not use
INSTALL_HINT = "apt-get update && apt-get install -y buildah podman runc debootstrap"

# podman/buildah settings for a sandbox without cgroup or rlimit privileges (containers.md):
# written to a temporary file named by CONTAINERS_CONF, so nothing under /etc changes.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
"""

START = time.monotonic()


class Failed(Exception):
    """A check failed: the message says which and why."""


def say(message: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    say(f"{name} ...")
    began = time.monotonic()
    yield
    say(f"{name}: done in {time.monotonic() - began:.1f}s")


class Engine:
    """podman and buildah, run with the sandbox's CONTAINERS_CONF."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 120,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(args, env=self.env, capture_output=True, text=stdin is None,
                                input=stdin, timeout=timeout, check=False)
        if stdin is not None:  # bytes in, so bytes out: decode for the caller
            result = subprocess.CompletedProcess(
                result.args, result.returncode, result.stdout.decode(errors="replace"),
                result.stderr.decode(errors="replace"))
        if check and result.returncode != 0:
            raise Failed(f"`{' '.join(args)}` exited {result.returncode}:\n"
                         f"{result.stdout}{result.stderr}".rstrip())
        return result

    def image_exists(self, image: str) -> bool:
        return self.run("podman", "image", "exists", image, check=False).returncode == 0


def missing_tools(names: Sequence[str]) -> list[str]:
    return [name for name in names if shutil.which(name) is None]


def debian_mirror() -> str:
    """The first Debian mirror this machine's apt uses (deb822 or one-line sources)."""
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    if deb822.is_file():
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    classic = Path("/etc/apt/sources.list")
    if classic.is_file():
        for line in classic.read_text().splitlines():
            words = line.split()
            if words[:1] == ["deb"] and words[1].startswith("http"):
                return words[1]
    return "http://deb.debian.org/debian"


def make_debian_base(engine: Engine, tag: str) -> None:
    """A Debian bookworm image with python3 + venv + pip, made with debootstrap and imported."""
    if os.geteuid() != 0:
        raise Failed("making the base image needs root (debootstrap, chroot)")
    missing = missing_tools(["debootstrap", "chroot", "mount", "tar"])
    if missing:
        raise Failed(f"making the base image needs {', '.join(missing)}: {INSTALL_HINT}")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="bnserve-base-") as folder:
        rootfs = Path(folder) / "rootfs"
        say(f"debootstrap --variant=minbase bookworm from {mirror}")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
                       check=True, capture_output=True, timeout=900)
        shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
        try:
            chroot_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                          "DEBIAN_FRONTEND": "noninteractive"}
            for command in (
                ["apt-get", "update"],
                ["apt-get", "install", "-y", "--no-install-recommends",
                 "python3", "python3-venv", "python3-pip", "ca-certificates"],
                ["apt-get", "clean"],
            ):
                say(f"chroot: {' '.join(command)}")
                subprocess.run(["chroot", str(rootfs), *command], env=chroot_env, check=True,
                               capture_output=True, timeout=900)
        finally:
            subprocess.run(["umount", str(rootfs / "proc")], check=False)
        for leftover in (rootfs / "var/lib/apt/lists").glob("*_*"):
            leftover.unlink()
        (rootfs / "etc/resolv.conf").write_text("")  # the runtime provides its own
        say(f"importing the root file system as {tag}")
        archive = subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                                 check=True, capture_output=True, timeout=600).stdout
        engine.run("podman", "import", "--change", 'CMD ["/bin/bash"]', "-", tag,
                   stdin=archive, timeout=600)


def ensure_base_image(engine: Engine, base: str) -> None:
    if engine.image_exists(base):
        say(f"base image {base}: in local storage")
        return
    if base == DEFAULT_BASE:
        # Docker Hub is out of reach here: the Debian stand-in, tagged as the name FROM uses.
        if not engine.image_exists(LOCAL_BASE):
            make_debian_base(engine, LOCAL_BASE)
        engine.run("podman", "tag", LOCAL_BASE, base)
        say(f"base image {base}: tagged from {LOCAL_BASE}")
    else:
        make_debian_base(engine, base)
        say(f"base image {base}: made with debootstrap")


def build_image(engine: Engine, image: str, base: str, log: Path) -> None:
    command = ["buildah", "bud", "--format", "docker", "--layers", "--pull=never",
               "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", image]
    if base != DEFAULT_BASE:
        command += ["--build-arg", f"BASE_IMAGE={base}"]
    say(" ".join(command) + " .")
    with open(log, "w") as out:
        done = subprocess.run([*command, "."], cwd=ROOT, env=engine.env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=1200, check=False)
    lines = log.read_text().splitlines()
    steps = [line for line in lines if "STEP " in line and ": " in line]  # "[1/2] STEP 1/4: FROM ..."
    cached = sum(line.startswith("--> Using cache") for line in lines)
    if done.returncode != 0:
        raise Failed(f"buildah bud exited {done.returncode}; its last lines:\n"
                     + "\n".join(lines[-30:]))
    say(f"built {image}: {len(steps)} steps, {cached} from the layer cache")


def build_repository(folder: Path) -> Path:
    """A freshly trained digits model, readable by the image's non-root user."""
    from bnserve.training.quick import build_digits_repository

    repository = folder / "models"
    build_digits_repository(repository, name="digits")
    for path in [folder, *folder.rglob("*")]:  # the tempdir is 0700; uid 10001 reads it
        path.chmod(0o755 if path.is_dir() else 0o644)
    return repository


def free_port(avoid: int) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        if port != avoid:
            return port


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(engine: Engine, name: str, limit_s: float) -> int:
    """Run the image's HEALTHCHECK until it passes; return how many runs it took."""
    deadline = time.monotonic() + limit_s
    attempts = 0
    while True:
        attempts += 1
        check = engine.run("podman", "healthcheck", "run", name, check=False, timeout=30)
        if check.returncode == 0:
            return attempts
        state = engine.run("podman", "inspect", "--format", "{{.State.Status}}", name,
                           check=False).stdout.strip()
        if state not in {"running", "created", "configured"}:
            logs = engine.run("podman", "logs", name, check=False)
            raise Failed(f"the container is {state or 'gone'}; its log:\n{logs.stdout}{logs.stderr}")
        if time.monotonic() > deadline:
            raise Failed(f"the health check still fails after {limit_s:.0f}s ({attempts} runs): "
                         f"{(check.stdout + check.stderr).strip()}")
        time.sleep(0.5)


def check_predictions(folder: Path, port: int) -> str:
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[:5, None].astype(np.float32)  # (5, 1, 8, 8), raw pixels
    labels = digits.target[:5]
    np.save(folder / "five.npy", images)
    bnserve = Path(sys.executable).parent / "bnserve"
    command = [str(bnserve), "predict", "--address", f"127.0.0.1:{port}", "--model", "digits",
               "--input", str(folder / "five.npy"), "--output", str(folder / "probs.npy")]
    say(f"bnserve predict --address 127.0.0.1:{port} --model digits --input five.npy "
        "--output probs.npy")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise Failed(f"bnserve predict exited {done.returncode}: {done.stderr.strip()}")
    probabilities = np.load(folder / "probs.npy")
    if probabilities.shape != (5, 10) or not np.allclose(probabilities.sum(axis=1), 1, atol=1e-4):
        raise Failed(f"not five rows of ten probabilities: {probabilities.shape}")
    predicted = probabilities.argmax(axis=1)
    if (predicted == labels).sum() < 4:
        raise Failed(f"predicted {predicted.tolist()} for digits {labels.tolist()}")
    return f"predicted {predicted.tolist()} for digits {labels.tolist()}"


def container_test(args: argparse.Namespace, folder: Path) -> None:
    conf = folder / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    engine = Engine(conf)
    say(f"CONTAINERS_CONF={conf}")
    name = f"bnserve-container-test-{os.getpid()}"

    with step("base image"):
        ensure_base_image(engine, args.base_image)
    with step("build"):
        build_image(engine, args.image, args.base_image, folder / "build.log")
    healthcheck = engine.run("podman", "image", "inspect", "--format", "{{.Config.Healthcheck.Test}}",
                             args.image).stdout.strip()
    say(f"image HEALTHCHECK: {healthcheck}")
    with step("model repository (digits, trained and exported here)"):
        repository = args.repository or build_repository(folder)
    port = args.port or free_port(avoid=IMAGE_PORT)
    say(f"BNSERVE_PORT={port}; port {IMAGE_PORT} on this host is "
        f"{'in use (by something else)' if port_in_use(IMAGE_PORT) else 'free'}")

    try:
        with step("run"):
            engine.run("podman", "run", "-d", "--name", name, "--network", "host",
                       "-e", f"BNSERVE_PORT={port}",
                       # The drain window on SIGTERM (a setting being added; an unknown
                       # BNSERVE_* variable is ignored, so this is harmless before it lands).
                       "-e", "BNSERVE_DRAIN_WINDOW_S=0",
                       "-v", f"{repository}:/models:ro", args.image)
        with step("podman healthcheck run, until it passes"):
            attempts = wait_healthy(engine, name, args.healthy_within_s)
            say(f"healthy after {attempts} health check run(s)")
        with step("the health command follows BNSERVE_PORT"):
            other = free_port(avoid=port)
            wrong = engine.run("podman", "exec", "-e", f"BNSERVE_PORT={other}", name,
                               "bnserve", "health", "--timeout", "2", check=False, timeout=30)
            if wrong.returncode == 0:
                raise Failed(f"`bnserve health` with BNSERVE_PORT={other} passed: it ignores the port")
            say(f"with BNSERVE_PORT={other} (nothing there) it fails: exit {wrong.returncode}, "
                f"{(wrong.stdout + wrong.stderr).strip()}")
        with step("predict from the host"):
            say(check_predictions(folder, port))
        with step(f"podman stop --time {args.stop_time_s}"):
            began = time.monotonic()
            engine.run("podman", "stop", "--time", str(args.stop_time_s), name,
                       timeout=args.stop_time_s + 30)
            took = time.monotonic() - began
            code = engine.run("podman", "inspect", "--format", "{{.State.ExitCode}}",
                              name).stdout.strip()
            say(f"stopped in {took:.2f}s, exit code {code}")
        logs = engine.run("podman", "logs", name, check=False)
        log = (logs.stdout + logs.stderr).rstrip()
        print("--- container log ---\n" + log + "\n---------------------", flush=True)
        if code != "0":
            raise Failed(f"exit code {code} after SIGTERM, not 0")
        if took > args.stop_within_s:
            raise Failed(f"stopping took {took:.1f}s (limit {args.stop_within_s:.0f}s): "
                         "SIGTERM was not handled")
        if "Traceback" in log:
            raise Failed("the container log has a traceback")
    finally:
        engine.run("podman", "rm", "--force", name, check=False, timeout=60)
        say(f"removed container {name}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=DEFAULT_IMAGE, help=f"tag to build (default {DEFAULT_IMAGE})")
    parser.add_argument("--base-image", default=DEFAULT_BASE,
                        help=f"BASE_IMAGE; made with debootstrap when absent (default {DEFAULT_BASE})")
    parser.add_argument("--repository", type=Path,
                        help="serve this model repository (it must hold 'digits'); default: a "
                        "fresh one trained here")
    parser.add_argument("--port", type=int, help="BNSERVE_PORT for the container (default: a free one)")
    parser.add_argument("--healthy-within-s", type=float, default=60.0)
    parser.add_argument("--stop-time-s", type=int, default=30, help="podman stop --time")
    parser.add_argument("--stop-within-s", type=float, default=10.0,
                        help="fail when the stop takes longer (SIGTERM not handled)")
    args = parser.parse_args(argv)
    if args.port == IMAGE_PORT:
        parser.error(f"--port {IMAGE_PORT} is the image's default: it would prove nothing")
    if args.repository:
        args.repository = args.repository.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(["buildah", "podman", "runc"])
    if missing:
        print(f"container-test: {', '.join(missing)} not found; this test installs nothing. "
              f"On Debian or Ubuntu: {INSTALL_HINT}", file=sys.stderr)
        return 2
    # SIGTERM (a CI job cancelled) unwinds like Ctrl-C, so the container is still removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with tempfile.TemporaryDirectory(prefix="bnserve-container-test-") as folder:
            container_test(args, Path(folder))
    except Failed as exc:
        say(f"FAILED: {exc}")
        return 1
    except subprocess.CalledProcessError as exc:
        output = exc.stderr or exc.stdout or b""
        text = output.decode(errors="replace") if isinstance(output, bytes) else output
        say(f"FAILED: `{' '.join(map(str, exc.cmd))}` exited {exc.returncode}:\n{text[-3000:]}")
        return 1
    except subprocess.TimeoutExpired as exc:
        say(f"FAILED: `{' '.join(map(str, exc.cmd))}` ran past {exc.timeout:.0f}s")
        return 1
    say("container test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
