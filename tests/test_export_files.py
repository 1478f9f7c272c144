"""What the export commands leave on disk: the same bytes from the same run, the permissions of
the user's umask (a shared file system needs group/other read), and nothing written over what is
not theirs (their inputs, a checkpoint, a folder that is not an export, a read-only --out)."""
from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnext_backbone import ConvNextBackbone, ConvNextV2Config
from convnext_backbone.cli import main as cli
from convnext_backbone.export import load_features
from convnext_backbone.export.store import describe_file, serialize

from helpers import randomize_

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    model = randomize_(ConvNextBackbone(ConvNextV2Config.from_preset("atto", out_features=["stage2", "stage4"])), seed=11)
    return model.save_pretrained(tmp_path_factory.mktemp("weights") / "atto")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    rng = np.random.default_rng(0)
    for rel, (h, w) in {"a.png": (40, 56), "sub/b.jpg": (64, 32), "sub/c.png": (24, 24)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / rel)
    (root / "bad.png").write_bytes(b"not a png")  # an error record is content too
    return root


def _export(weights: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return ["export", "--weights", str(weights), "--input", str(src), "--out", str(out), "--size", str(SIZE),
            "--features", "stage2,stage4", "--batch-size", "2", "--workers", "0", "--no-progress", *extra]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_identical_runs_write_identical_bytes(weights, images, tmp_path):
    """Every file of two runs of the same command into two directories, byte for byte. No file
    legitimately differs: the export writes no log or time stamp (run ids only name the manifest
    part files, which are removed when the run finishes)."""
    runs = []
    for name in ("one", "two"):
        assert cli(_export(weights, images, tmp_path / name)) == 0
        runs.append(_files(tmp_path / name))
    one, two = runs
    assert sorted(one) == sorted(two) == [
        "export_config.json", "features/a.png.safetensors", "features/sub/b.jpg.safetensors",
        "features/sub/c.png.safetensors", "manifest.jsonl",
    ]
    assert [k for k in one if one[k] != two[k]] == []
    # the re-written header is what safetensors and --verify read
    path = tmp_path / "one" / "features" / "a.png.safetensors"
    (n,) = np.frombuffer(path.read_bytes()[:8], "<u8")
    assert n % 8 == 0 and set(describe_file(path)) == {"stage2", "stage4"}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert set(f.metadata()) == {"source", "geometry", "strides"} and f.metadata()["source"] == str(images / "a.png")
    assert cli(["export", "--verify", str(tmp_path / "one"), "--no-progress"]) == 0


def test_serialize_is_canonical(monkeypatch):
    """safetensors' metadata order (hash-map order, new per map) and npz's zip time stamps
    (the current time) do not reach the bytes."""
    g = torch.Generator().manual_seed(0)
    tensors = {"stage4": torch.randn(8, 2, 2, generator=g), "stage2": torch.randn(4, 4, 4, generator=g).half()}
    meta = {f"k{i}": str(i) for i in range(8)}
    st = {serialize(tensors, "safetensors", m) for m in (meta, dict(reversed(meta.items()))) for _ in range(3)}
    assert len(st) == 1
    npz = set()
    for fake_now in (1_000_000_000.0, 1_500_000_000.0):  # 2001 and 2017
        monkeypatch.setattr(time, "time", lambda now=fake_now: now)
        npz.add(serialize(tensors, "npz"))
    monkeypatch.undo()
    assert len(npz) == 1
    data = npz.pop()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["stage4.npy", "stage2.npy"]
    with np.load(io.BytesIO(data)) as z:  # still what np.load reads
        assert np.array_equal(z["stage2"], tensors["stage2"].numpy()) and z["stage2"].dtype == np.float16


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_get_the_umask_permissions(umask, weights, images, tmp_path):
    """Features, manifest, config, figure, ONNX, checkpoint and benchmark JSON:
    0666 minus the umask (mkstemp alone gives 0600), directories 0777 minus it."""
    from benchmarks.report import write_json

    old = os.umask(umask)
    try:
        out = tmp_path / "export"
        assert cli(_export(weights, images, out, "--format", "npz")) == 0
        assert cli(["show", str(images / "a.png"), "--weights", str(weights), "--size", str(SIZE),
                    "--out", str(tmp_path / "figs" / "fig.png")]) == 0
        assert cli(["export-onnx", "--weights", str(weights), "--out", str(tmp_path / "onnx" / "backbone.onnx"),
                    "--no-verify"]) == 0
        ConvNextBackbone.from_pretrained(weights).save_pretrained(tmp_path / "ckpt")
        write_json({"results": []}, tmp_path / "bench" / "results.json")
    finally:
        os.umask(old)
    files = {p: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    names = sorted(p.relative_to(tmp_path).as_posix() for p in files)
    for want in ("export/manifest.jsonl", "export/export_config.json", "export/features/sub/b.jpg.npz",
                 "figs/fig.png", "onnx/backbone.onnx", "ckpt/model.safetensors", "ckpt/config.json", "bench/results.json"):
        assert want in names
    assert {p.relative_to(tmp_path).as_posix(): oct(m) for p, m in files.items() if m != 0o666 & ~umask} == {}
    dirs = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.rglob("*") if p.is_dir()}
    assert {k: v for k, v in dirs.items() if v != oct(0o777 & ~umask)} == {}
    assert set(load_features(tmp_path / "export" / "features" / "a.png.npz")) == {"stage2", "stage4"}


# -- never over what is not the export's own -------------------------------------------------------
def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("convnext-backbone export: error: "), err
    return lines[0].removeprefix("convnext-backbone export: error: ")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_refuses_to_write_over_its_inputs(weights, images, tmp_path, capsys):
    """--out = the checkpoint directory (the rule every writer follows), a folder holding the export's own names that no export made
    (a dataset's manifest.jsonl, a features/ folder), an image folder whose features/ holds inputs:
    refused in one line, nothing written. An --out that only shares a folder with images is fine."""
    before = _tree(weights)
    msg = _one_line_error(capsys, cli(_export(weights, images, weights)))
    assert msg == f"--out {weights} is the input {weights}: the output would replace it; choose another output directory"
    assert _tree(weights) == before

    data = tmp_path / "data"
    (data / "features").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 10, 10)).save(data / "top.png")
    Image.new("RGB", (40, 40), (10, 200, 10)).save(data / "features" / "inner.png")  # an input where the export writes
    (data / "manifest.jsonl").write_text('{"dataset": "mine"}\n')
    before = _tree(data)
    msg = _one_line_error(capsys, cli(_export(weights, data, data)))
    assert msg == (f"--out {data} holds manifest.jsonl, features/ but no export_config.json, so it is not an export "
                   "directory and the export would overwrite or delete what is there; choose another --out")
    (data / "manifest.jsonl").unlink()
    msg = _one_line_error(capsys, cli(_export(weights, data, data)))
    assert msg.startswith(f"--out {data} holds features/ but no export_config.json")
    assert _tree(data) == {k: v for k, v in before.items() if k != "manifest.jsonl"}

    # an export directory already: its features/ is its own, but an input inside it is still refused
    out = tmp_path / "out"
    assert cli(_export(weights, images, out)) == 0
    capsys.readouterr()
    shutil.copy(data / "features" / "inner.png", out / "features" / "inner.png")
    alias = tmp_path / "alias"
    alias.symlink_to(out)  # the same folder by another name
    msg = _one_line_error(capsys, cli(_export(weights, out, alias)))
    assert msg == (f"--out {alias}: the input {out}/features/inner.png lies in its features/, which the export writes "
                   "and clears itself; choose an --out away from the input images")

    shutil.rmtree(data / "features")  # images and the export side by side: nothing of the user's is in the way
    assert cli(_export(weights, data, data)) == 0
    assert sorted(_tree(data)) == ["export_config.json", "features/top.png.safetensors", "manifest.jsonl", "top.png"]


def _read_only(path: Path) -> list[str]:
    """A command prefix that runs its command with ``path`` read-only: a read-only bind mount in a
    private mount namespace as root (who writes through permission bits), permission bits otherwise."""
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)
        return []
    return ["unshare", "--mount", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(path)]


def test_rerun_on_a_read_only_out_is_one_line(weights, images, tmp_path):
    """A finished export re-run where --out cannot be written (a read-only mount, a shared folder of
    someone else's): one line saying so and how to check it instead; --verify works there."""
    out = tmp_path / "out"
    assert cli(_export(weights, images, out)) == 0
    before = _tree(out)
    prefix = _read_only(out)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("CONVNEXT_DEBUG", None)
    run = subprocess.run([*prefix, sys.executable, "-m", "convnext_backbone.cli", *_export(weights, images, out)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        f"convnext-backbone export: error: --out {out} is not writable "
        f"({'Read-only file system' if prefix else 'Permission denied'}): an export cannot run or resume there "
        f"(to check a finished one: --verify {out})",
    ]
    verify = subprocess.run([*prefix, sys.executable, "-m", "convnext_backbone.cli", "export", "--verify", str(out), "--no-progress"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert verify.returncode == 0, verify.stderr[-3000:]
    assert _tree(out) == before


def test_show_mistakes_are_one_line(weights, images, tmp_path, capsys):
    cases = [
        (["--out", str(tmp_path / "fig.xyz")], f"--out {tmp_path / 'fig.xyz'}: cannot write a .xyz figure; use one of "),
        (["--out", str(tmp_path / "fig.png"), "--size", "100"], "size must be a positive multiple of 32"),
    ]
    for extra, want in cases:
        assert cli(["show", str(images / "a.png"), "--weights", str(weights), *extra]) == 2
        err = capsys.readouterr().err
        assert want in err and "Traceback" not in err, err
    assert cli(["show", str(images / "bad.png"), "--weights", str(weights), "--out", str(tmp_path / "fig.png")]) == 2
    assert "cannot identify image file" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("failing", ["write", "rename"])
def test_a_failed_atomic_write_names_the_destination_and_leaves_the_old_file(tmp_path, monkeypatch, failing):
    """Disk full while writing, or the rename refused: the error names the file the user asked
    for (not the hidden temp file), the old content stays, and no temp file is left."""
    import errno

    from convnext_backbone import fileio

    dst = tmp_path / "results.json"
    dst.write_text("old")

    def write(tmp):
        Path(tmp).write_text("half")
        if failing == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    if failing == "rename":
        def refuse(src, target):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), src, target)

        monkeypatch.setattr(fileio.os, "replace", refuse)
    with pytest.raises(OSError) as caught:
        fileio.atomic_write(dst, write)
    assert str(dst) in str(caught.value) and ".tmp" not in str(caught.value), str(caught.value)
    assert dst.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


@pytest.mark.parametrize("command", ["export", "show"])
def test_bad_image_mean_or_std_is_one_line_before_the_model_loads(weights, images, tmp_path, monkeypatch, capsys, command):
    from convnext_backbone.export import run as export_run
    from convnext_backbone.export import show

    def no_loading(*a, **k):
        raise AssertionError("the model was loaded before --image-mean/--image-std were checked")

    monkeypatch.setattr(export_run, "model_from_args", no_loading)
    monkeypatch.setattr(show, "model_from_args", no_loading)
    argv = (["export", "--weights", str(weights), "--input", str(images), "--out", str(tmp_path / "out"), "--no-progress"]
            if command == "export" else ["show", str(images / "a.png"), "--weights", str(weights), "--out", str(tmp_path / "fig.png")])
    for extra, want in [(["--image-mean", "0.5,0.5,0.5"], "give both --image-mean and --image-std (or neither)"),
                        (["--image-mean", "0.5,0.5", "--image-std", "0.2,0.2,0.2"], "take three values each (std > 0)"),
                        (["--image-mean", "0.5,0.5,0.5", "--image-std", "0.2,0,0.2"], "take three values each (std > 0)")]:
        capsys.readouterr()
        assert cli(argv + extra) == 2
        err = capsys.readouterr().err
        assert want in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
