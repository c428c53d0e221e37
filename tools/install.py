"""Install litelang into the interpreter that runs this script, at the versions CI passed with.

    python tools/install.py serve     # what `make serve` needs (the model extra: gguf, accelerate)
    python tools/install.py test      # what `make test` needs (pytest, triton, openai, ...)
    python tools/install.py lock      # refresh constraints.txt from a fresh virtual environment

It is run as a file (stdlib only), before litelang is importable. `serve` and `test` install
torch first when it is missing, then `pip install -c constraints.txt -e .[extra]`. A torch the
user installed for their own GPU is kept: its version (and triton's, the NVIDIA libraries') is
then left out of the constraints, since torch builds pin their own triton.

Each finished install leaves a stamp in the interpreter's own site-packages, named after this
checkout and the extra, holding a hash of pyproject.toml and constraints.txt: a new virtual
environment has no stamp, and a changed pin makes the next run install again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
EXTRAS = {"serve": "model", "test": "test"}
# What a torch build decides for itself: these pins apply only with the torch we pinned.
TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==", re.IGNORECASE)
# Never pinned: pip itself, and litelang (installed editable from this checkout). setuptools is
# pinned: torch needs it at run time.
UNPINNED = re.compile(r"^(pip|litelang)==", re.IGNORECASE)


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def run(*cmd: str) -> None:
    say(" ".join(cmd))
    subprocess.run(cmd, check=True)


def pinned(name: str) -> str | None:
    """The version constraints.txt pins for `name`, if any."""
    for line in CONSTRAINTS.read_text().splitlines():
        if line.lower().startswith(name.lower() + "=="):
            return line.split("==", 1)[1].strip()
    return None


def installed_torch() -> tuple[str, bool] | None:
    """(version without its local label, whether it is a CUDA/ROCm build) or None."""
    probe = "import torch; print(torch.__version__); print(bool(torch.version.cuda or torch.version.hip))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    version, accelerated = result.stdout.split()
    return version.split("+")[0], accelerated == "True"


def without_torch_family(constraints: str) -> str:
    """The constraints with the pins a user's own torch build decides left out."""
    return "".join(ln + "\n" for ln in constraints.splitlines() if not TORCH_FAMILY.match(ln))


def stamp_path(extra: str) -> Path:
    checkout = hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]
    return Path(sysconfig.get_paths()["purelib"]) / f"litelang-{checkout}-{extra}.stamp"


def inputs_hash() -> str:
    digest = hashlib.sha1()
    for path in (ROOT / "pyproject.toml", CONSTRAINTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def litelang_points_here() -> bool:
    probe = "import litelang, os; print(os.path.dirname(os.path.abspath(litelang.__file__)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tempfile.gettempdir())
    return result.returncode == 0 and Path(result.stdout.strip()) == ROOT


def install(target: str) -> None:
    extra = EXTRAS[target]
    stamp = stamp_path(extra)
    # the test extra includes the model extra, so its stamp serves `serve` too
    for done in {stamp, stamp_path(EXTRAS["test"])}:
        if done.exists() and done.read_text().strip() == inputs_hash() and litelang_points_here():
            say(f"litelang[{extra}] is already installed for {sys.executable}")
            return
    say(f"installing litelang[{extra}] for {sys.executable} (pinned by constraints.txt)")
    torch = installed_torch()
    if torch is None:
        version = pinned("torch")
        run(sys.executable, "-m", "pip", "install", "-c", str(CONSTRAINTS), f"torch=={version}" if version else "torch")
        torch = installed_torch()
        if torch is None:
            sys.exit("[install] torch did not install; see pip's message above")
    constraints = CONSTRAINTS
    if torch[1] or torch[0] != pinned("torch"):
        say(f"keeping the installed torch {torch[0]}: torch, triton and NVIDIA libraries are not pinned")
        constraints = Path(tempfile.mkdtemp(prefix="litelang-install-")) / "constraints.txt"
        constraints.write_text(without_torch_family(CONSTRAINTS.read_text()))
    run(sys.executable, "-m", "pip", "install", "-c", str(constraints), "-e", f"{ROOT}[{extra}]")
    try:
        stamp.write_text(inputs_hash() + "\n")
    except OSError as e:  # a system interpreter we may not write into: install again next time
        say(f"no install stamp written ({e}); the next run checks with pip again")


def lock() -> None:
    """Resolve the newest versions pyproject's ranges allow, in a fresh environment, and write
    them to constraints.txt. Run the suite on the new set (`make test`) before committing it."""
    torch = os.environ.get("TORCH_VERSION") or pinned("torch") or ""
    venv = ROOT / ".cache" / "lock-venv"
    shutil.rmtree(venv, ignore_errors=True)
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", f"torch=={torch}" if torch else "torch")
    run(python, "-m", "pip", "install", "-e", f"{ROOT}[test]")
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout.splitlines()
    pins = sorted({re.sub(r"\+[A-Za-z0-9.]+$", "", ln) for ln in frozen
                   if "==" in ln and not UNPINNED.match(ln)}, key=str.lower)
    header = ["# The versions CI passed with: `make serve`, `make test` and .ci/run install from here.",
              "# Refresh with `make lock`, then `make test` on the new set before committing it.",
              f"# Resolved with Python {sys.version_info.major}.{sys.version_info.minor} on {sys.platform}."]
    CONSTRAINTS.write_text("\n".join(header + pins) + "\n")
    say(f"wrote {len(pins)} pins to {CONSTRAINTS}")
    shutil.rmtree(venv, ignore_errors=True)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in (*EXTRAS, "lock"):
        sys.exit(__doc__)
    lock() if argv[0] == "lock" else install(argv[0])


if __name__ == "__main__":
    main(sys.argv[1:])
