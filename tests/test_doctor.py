"""Packaging and the environment check: installed packages import, doctor and the CLI run."""
import os
import re
import subprocess
import sys
import tempfile

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
        "for m in ('convnext_backbone', 'detectron2_convnext', 'mmseg_convnext', 'mmdet_convnext', 'openmmlab_convnext'):"
        " print(u.find_spec(m).origin)"
    )
    assert r.returncode == 0, r.stderr
    core, d2, mmseg, mmdet, shared = r.stdout.split()
    assert core.endswith(os.path.join("convnext_backbone", "__init__.py"))
    assert d2.endswith(os.path.join("integrations", "detectron2_convnext", "__init__.py"))
    assert mmseg.endswith(os.path.join("integrations", "mmseg_convnext", "__init__.py"))
    assert mmdet.endswith(os.path.join("integrations", "mmdet_convnext", "__init__.py"))
    assert shared.endswith(os.path.join("integrations", "openmmlab_convnext", "__init__.py"))


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
    assert re.search(r"\n  dwconv kernel +built ", out), out  # the C depthwise kernel compiled here
    assert "MISSING" not in out, out
