"""Packaging and the environment check: installed packages import, doctor and the CLI run."""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from convnext_backbone.adapters import ADAPTERS, PACKAGES

FRAMEWORKS = ("detectron2", "mmcv", "mmengine", "mmseg", "mmdet")


def _run(code: str) -> subprocess.CompletedProcess:
    # Run outside the repository so imports come from the installed (editable) packages.
    with tempfile.TemporaryDirectory() as cwd:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        return subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )


def test_installed_packages_found_from_anywhere():
    # find_spec, not import: the adapters' own tests import them; this checks the packaging.
    r = _run(
        "import importlib.util as u\n"
        f"for m in {PACKAGES!r}: print(m, u.find_spec(m).origin)"
    )
    assert r.returncode == 0, r.stderr
    origin = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert list(origin) == list(PACKAGES)
    assert origin["convnext_backbone"].endswith(os.path.join("convnext_backbone", "__init__.py"))
    for adapter in ADAPTERS:
        assert origin[adapter].endswith(os.path.join("integrations", adapter, "__init__.py")), (adapter, origin[adapter])


def test_the_adapter_list_names_every_adapter_package():
    # The one list (setup.py, doctor, scripts/setup.sh read it) against the integrations/ folder.
    root = Path(__file__).resolve().parents[1]
    on_disk = {p.parent.name for p in (root / "integrations").glob("*/__init__.py")}
    assert set(ADAPTERS) == on_disk and len(ADAPTERS) == len(on_disk)


def test_doctor_imports_no_framework_at_import_time():
    r = _run(
        "import sys, convnext_backbone.doctor, convnext_backbone.cli\n"
        f"print([m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}])"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_doctor_reports_the_stack(capsys):
    from convnext_backbone import cli

    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "torchvision", "numpy", "detectron2", "mmcv", "mmengine",
                 "mmseg", "mmdet", "transformers", "timm", "onnxruntime"):
        assert f"\n  {name} " in out, f"doctor does not report {name}:\n{out}"
    assert "mmcv.ops loads" in out, out
    for package in PACKAGES:  # the "packages:" section: where each import package comes from
        assert re.search(rf"\n  {package} +/", out), f"doctor does not locate {package}:\n{out}"
    assert re.search(r"\n  dwconv kernel +built ", out), out  # the C depthwise kernel compiled here
    # ... for which instruction set, and whether this CPU computes bfloat16 natively
    assert re.search(r"\n  dwconv kernel +built +\(.*\((native|portable).*bfloat16 (native|not native) on this CPU", out), out
    assert "MISSING" not in out, out
