"""Nothing of ours shadows an installed package, from any working directory, the repository root
included: Python puts the working directory first on sys.path, so a top-level folder that were a
regular package (an `__init__.py`) would win over an installed package of the same name, as
`kernels/` once did over Hugging Face's `kernels`, which transformers imports."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def top_level_folders() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and any(p.glob("*.py")))


def run_in_root(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_top_level_folders_are_namespace_portions() -> None:
    folders = top_level_folders()
    assert {"kernels", "scheduler", "worker", "proto", "tests"} <= set(folders)
    regular = [name for name in folders if (ROOT / name / "__init__.py").exists()]
    assert not regular, f"{regular} have an __init__.py: they would shadow installed packages of that name"
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert not modules, f"{modules} at the repository root would shadow installed modules of that name"


def test_an_installed_package_wins_over_each_folder(tmp_path: Path) -> None:
    """For every top-level folder, a regular package of that name installed elsewhere on the path
    (here on PYTHONPATH, which comes after the working directory) is the one imported."""
    folders = top_level_folders()
    for name in folders:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("ORIGIN = 'installed'\n")
    code = "import importlib; print(' '.join(importlib.import_module(n).ORIGIN for n in %r))" % folders
    result = run_in_root("-c", code, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["installed"] * len(folders)


def test_litelang_still_imports_its_own_folders() -> None:
    code = ("import litelang.kernels.kernel_set as k, litelang.scheduler.launch, litelang.worker.runner; "
            "from litelang import LitelangClient; print(k.REFERENCE.name, LitelangClient.__module__)")
    result = run_in_root("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["torch", "litelang.client.api"]


def test_hugging_face_kernels_and_transformers_from_the_root() -> None:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's `kernels` is not installed (transformers < 5.2x does not need it)")
    code = ("import kernels, os; print(os.path.dirname(kernels.__file__)); "
            "import transformers.models.qwen2.modeling_qwen2; print('qwen2 ok')")
    result = run_in_root("-c", code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "qwen2 ok", result.stdout
    assert not Path(lines[0]).resolve().is_relative_to(ROOT / "kernels"), f"`import kernels` found {lines[0]}"


def test_prepare_model_help_from_the_root() -> None:
    result = run_in_root("-m", "litelang.tools.prepare_model", "--help")
    assert result.returncode == 0, result.stderr
    assert "--keep-downloads" in result.stdout


def test_kernels_in_this_test_process_is_not_ours() -> None:
    """pytest imports test modules by their path (importlib mode): a test folder named `kernels`
    would register a `kernels` module that hides Hugging Face's from transformers."""
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401  (imports `kernels` when installed)

    module = sys.modules.get("kernels")
    if module is not None:
        origin = getattr(module, "__file__", None)
        assert origin is not None and not Path(origin).resolve().is_relative_to(ROOT / "kernels"), \
            f"`kernels` in this process is {module!r}"


def load_install_script() -> dict:
    import runpy

    return runpy.run_path(str(ROOT / "tools" / "install.py"))


def test_install_stamp_belongs_to_the_interpreter(tmp_path: Path) -> None:
    """A new virtual environment has no stamp of an earlier install, so `make serve` there installs."""
    import subprocess as sp
    import sysconfig

    here = Path(load_install_script()["stamp_path"]("model"))
    assert here.parent == Path(sysconfig.get_paths()["purelib"])
    sp.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    code = f"import runpy; print(runpy.run_path({str(ROOT / 'tools' / 'install.py')!r})['stamp_path']('model'))"
    there = sp.run([str(tmp_path / "venv" / "bin" / "python"), "-c", code], check=True,
                   capture_output=True, text=True).stdout.strip()
    assert Path(there) != here and Path(there).is_relative_to(tmp_path / "venv")


def test_a_users_torch_build_keeps_its_own_triton() -> None:
    script = load_install_script()
    pins = "# header\ntorch==2.13.0\ntriton==3.9.0\nnvidia-nccl-cu13==2.28.3\ntransformers==5.25.0\nkernels==0.19.1\n"
    assert script["without_torch_family"](pins) == "# header\ntransformers==5.25.0\nkernels==0.19.1\n"


def test_constraints_pin_every_dependency_exactly() -> None:
    """Each line of constraints.txt is `name==version` (or a comment), and torch is pinned to the
    CPU build CI installs."""
    lines = [ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines and all(ln.count("==") == 1 and " " not in ln for ln in lines), lines
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"torch", "transformers", "triton", "grpcio", "kernels", "setuptools"} <= names
    assert "litelang" not in names and "pip" not in names
