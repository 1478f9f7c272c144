"""Feature export: CLI + API on a generated folder (every image mode, a corrupt and a truncated
file), kill-and-resume, Ctrl-C, two runs into one --out, a 2-process torchrun run, and --verify.
Real files, real subprocesses."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as tvF

from convnext_backbone import ConvNextBackbone, ConvNextImageProcessor, ConvNextV2Config
from convnext_backbone.cli import main as cli
from convnext_backbone.export import extract_features, load_features
from convnext_backbone.processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from helpers import max_abs_diff, randomize_

ALL = ["stem", "stage1", "stage2", "stage3", "stage4"]
SIZE = 64
REPO = Path(__file__).resolve().parents[1]


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: structure for the model to see, deterministic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], -1)
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """atto with every parameter randomised (GRN, norms...), saved in the official layout."""
    model = randomize_(ConvNextBackbone(ConvNextV2Config.from_preset("atto", out_features=ALL)), seed=3)
    return model.save_pretrained(tmp_path_factory.mktemp("weights") / "atto")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray | None]]:
    """Mixed sizes and modes; -> (dir, {relative path: the RGB array it must become, None = must fail})."""
    root = tmp_path_factory.mktemp("images")
    (root / "sub").mkdir()
    expect: dict[str, np.ndarray | None] = {}
    a = _picture(60, 90, 0)
    Image.fromarray(a).save(root / "a.jpg", quality=95)
    expect["a.jpg"] = np.array(Image.open(root / "a.jpg").convert("RGB"))
    g = _picture(100, 50, 1)[..., 0]
    Image.fromarray(g, "L").save(root / "gray.png")
    expect["gray.png"] = np.repeat(g[..., None], 3, -1)
    rgba = np.concatenate([_picture(70, 70, 2), np.linspace(0, 255, 70 * 70).reshape(70, 70, 1).astype(np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "rgba.png")
    expect["sub/rgba.png"] = rgba[..., :3]  # alpha dropped
    Image.fromarray(_picture(40, 120, 3)).convert("P").save(root / "sub" / "pal.png")
    expect["sub/pal.png"] = np.array(Image.open(root / "sub" / "pal.png").convert("RGB"))
    g16 = _picture(80, 64, 4)[..., 1]
    Image.fromarray(g16.astype(np.uint16) * 257).save(root / "i16.png")  # 16-bit: v * 257 / 65535 * 255 == v
    assert Image.open(root / "i16.png").mode == "I;16"
    expect["i16.png"] = np.repeat(g16[..., None], 3, -1)
    f01 = _picture(48, 72, 7)[..., 2].astype(np.float32) / 255  # a float TIFF in [0, 1]: shown as v * 255
    Image.fromarray(f01).save(root / "sub" / "float.tif")
    assert Image.open(root / "sub" / "float.tif").mode == "F"
    expect["sub/float.tif"] = np.repeat(_picture(48, 72, 7)[..., 2:3], 3, -1)
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(5).bytes(700))
    expect["corrupt.jpg"] = None
    buf = io.BytesIO()
    Image.fromarray(_picture(120, 160, 6)).save(buf, format="PNG")
    (root / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    expect["trunc.png"] = None
    (root / "notes.txt").write_text("not an image: ignored when scanning a folder\n")
    return root, expect


def letterbox_ref(rgb: np.ndarray, size: int) -> torch.Tensor:
    """The letterbox spec, written out independently of the package."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    h, w = x.shape[-2:]
    s = size / max(h, w)
    rh, rw = round(h * s), round(w * s)
    if (rh, rw) != (h, w):
        x = tvF.resize(x, [rh, rw], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = (x.float() / 255 - torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]) / torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    out = torch.zeros(3, size, size)
    out[:, :rh, :rw] = x
    return out


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def export_args(weights: Path, src, out: Path, *extra: str) -> list[str]:
    return ["export", "--weights", str(weights), "--input", str(src), "--out", str(out), "--size", str(SIZE),
            "--features", "all", "--batch-size", "3", "--workers", "2", "--no-progress", *extra]


@pytest.fixture(scope="module")
def exported(weights, folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "letterbox"
    assert cli(export_args(weights, folder[0], out)) == 0
    return out


@pytest.mark.parametrize("resize", ["letterbox", "processor"])
def test_export_matches_direct_forward(resize, weights, folder, exported, tmp_path):
    root, expect = folder
    if resize == "letterbox":
        out = exported
    else:
        out = tmp_path / "out"
        assert cli(export_args(weights, root, out, "--resize", "processor")) == 0
    records = manifest(out)
    # every input exactly once, the text file not at all, the right status
    assert sorted(r["source"] for r in records) == sorted(str(root / k) for k in expect)
    status = {Path(r["source"]).relative_to(root).as_posix(): r for r in records}
    assert {k for k, r in status.items() if r["status"] == "error"} == {"corrupt.jpg", "trunc.png"}
    assert "cannot identify" in status["corrupt.jpg"]["error"] and "truncated" in status["trunc.png"]["error"]
    assert not (out / "manifest.parts").exists() and not (out / ".partial").exists()

    model = ConvNextBackbone.from_pretrained(weights, out_features=ALL).eval()
    processor = ConvNextImageProcessor(size={"shortest_edge": SIZE}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    for rel, rgb in expect.items():
        if rgb is None:
            continue
        rec = status[rel]
        path = out / rec["output"]
        assert rec["output"] == f"features/{rel}.safetensors"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]
        got = load_features(path)
        x = letterbox_ref(rgb, SIZE) if resize == "letterbox" else processor(Image.fromarray(rgb))["pixel_values"][0]
        with torch.inference_mode():
            want = model.forward_dict(x[None])
        assert list(got) == ALL or sorted(got) == sorted(ALL)
        for name in ALL:
            meta = rec["features"][name]
            assert meta["shape"] == list(got[name].shape) == list(want[name].shape[1:])
            assert meta["dtype"] == "float32" and meta["stride"] == {"stem": 4, "stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}[name]
            assert max_abs_diff(got[name], want[name][0]) < 1e-4, (rel, name)
        if resize == "letterbox":
            h, w = rgb.shape[:2]
            g = rec["geometry"]
            assert g["image_hw"] == [h, w] and max(g["resized_hw"]) == SIZE
            assert g["pad_tlbr"] == [0, 0, SIZE - g["resized_hw"][0], SIZE - g["resized_hw"][1]]


def test_extract_features_api(weights, folder):
    root, expect = folder
    model = ConvNextBackbone.from_pretrained(weights, out_features=["stage2", "stage4"])
    model.train()
    names = ["gray.png", "sub/rgba.png", "i16.png"]
    feats = extract_features(model, [root / n for n in names], size=SIZE, batch_size=2)
    assert model.training  # mode restored
    x = torch.stack([letterbox_ref(expect[n], SIZE) for n in names])
    with torch.inference_mode():
        want = model.eval().forward_dict(x)
    assert list(feats) == ["stage2", "stage4"] and feats["stage2"].shape == (3, 80, SIZE // 8, SIZE // 8)
    assert max_abs_diff([feats["stage2"], feats["stage4"]], [want["stage2"], want["stage4"]]) < 1e-4
    # PIL and preprocessed-tensor inputs, one level, half storage
    one = extract_features(model, Image.fromarray(expect["gray.png"]), "stage4", size=SIZE, dtype="bfloat16")
    assert one["stage4"].dtype == torch.bfloat16 and max_abs_diff(one["stage4"], want["stage4"][:1]) < 0.05
    assert max_abs_diff(extract_features(model, x)["stage4"], want["stage4"]) < 1e-4
    with pytest.raises(ValueError, match=r"not outputs of this model \(out_features=\['stage2', 'stage4'\]\)"):
        extract_features(model, x, ["stage1"])
    with pytest.raises(ValueError, match="multiple of 32"):
        extract_features(model, [root / "gray.png"], size=50)


def test_npz_float16_and_verify(weights, folder, exported, tmp_path):
    out = tmp_path / "npz"
    assert cli(export_args(weights, folder[0], out, "--format", "npz", "--dtype", "float16")) == 0
    ok = [r for r in manifest(out) if r["status"] == "ok"]
    assert len(ok) == 6 and all(r["output"].endswith(".npz") for r in ok)
    for r in ok:
        ref = load_features(exported / r["output"].replace(".npz", ".safetensors"))
        got = load_features(out / r["output"])
        assert all(got[k].dtype == torch.float16 and r["features"][k]["dtype"] == "float16" for k in ALL)
        assert max_abs_diff([got[k] for k in ALL], [ref[k] for k in ALL]) < 2e-2
    assert cli(["export", "--verify", str(out), "--no-progress"]) == 0


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_half_compute_on_cpu(weights, folder, exported, tmp_path, compute, monkeypatch):
    """--compute-dtype runs the model itself in half precision on CPU (not just stores half features)."""
    from convnext_backbone import ConvNextBackbone

    seen = []
    real = ConvNextBackbone.forward_dict
    monkeypatch.setattr(ConvNextBackbone, "forward_dict", lambda self, x: seen.append(x.dtype) or real(self, x))
    out = tmp_path / compute
    assert cli(export_args(weights, folder[0], out, "--dtype", compute, "--compute-dtype", compute, "--workers", "0")) == 0
    assert seen and set(seen) == {getattr(torch, compute)}
    ok = [r for r in manifest(out) if r["status"] == "ok"]
    assert len(ok) == 6
    tol = 5e-2 if compute == "bfloat16" else 1e-2
    for r in ok:
        ref, got = load_features(exported / r["output"]), load_features(out / r["output"])
        for k in ALL:
            assert got[k].dtype == getattr(torch, compute) and torch.isfinite(got[k].float()).all()
            rel = ((got[k].float() - ref[k]).norm() / ref[k].norm()).item()
            assert 0 < rel < tol, (k, rel)  # computed in half (not bit-equal), close to float32
    assert json.loads((out / "export_config.json").read_text())["compute_dtype"] == compute
    # resuming into the float32 export with another compute dtype is refused, naming it
    assert cli(export_args(weights, folder[0], exported, "--compute-dtype", compute, "--workers", "0")) == 2


@pytest.mark.parametrize("native", [True, False], ids=["bf16-cpu", "other-cpu"])
def test_bfloat16_suggested_on_a_cpu_that_runs_it_natively(weights, folder, tmp_path, native, monkeypatch, capsys):
    """A float32 export on a CPU with native bfloat16 says that --compute-dtype bfloat16 is faster;
    it stays float32 (numbers change only when asked); an export in bfloat16, or explicitly in
    float32, is not told."""
    from convnext_backbone.accel import native as kernel

    monkeypatch.setattr(kernel, "cpu_bf16", lambda: (native, "CPU flags: avx512_bf16" if native else "no bf16 CPU flag"))
    note = "--compute-dtype bfloat16 exports faster"
    for compute, out in (("auto", tmp_path / "auto"), ("bfloat16", tmp_path / "bf16"), ("float32", tmp_path / "fp32")):
        capsys.readouterr()
        assert cli(export_args(weights, folder[0], out, "--compute-dtype", compute, "--workers", "0")) == 0
        err = capsys.readouterr().err
        assert (note in err) == (native and compute == "auto"), err
        assert json.loads((out / "export_config.json").read_text())["compute_dtype"] == compute


def test_verify_catches_flipped_byte_missing_and_unlisted(exported, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(exported, out)
    assert cli(["export", "--verify", str(out), "--no-progress"]) == 0
    victim = out / "features" / "sub" / "pal.png.safetensors"
    data = bytearray(victim.read_bytes())
    data[len(data) - 100] ^= 0x01  # one bit in the tensor data
    victim.write_bytes(bytes(data))
    capsys.readouterr()
    assert cli(["export", "--verify", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"BAD {victim}: sha256 mismatch" in err and err.count("BAD ") == 1
    (out / "features" / "gray.png.safetensors").unlink()
    shutil.copy(out / "features" / "a.jpg.safetensors", out / "features" / "extra.safetensors")
    assert cli(["export", "--verify", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "gray.png.safetensors: missing file" in err and "extra.safetensors: not in the manifest" in err
    assert cli(["export", "--verify", str(tmp_path), "--no-progress"]) == 1  # not an export dir


def test_bad_arguments_are_reported(weights, folder, exported, tmp_path, capsys):
    root = folder[0]
    cases = [
        (export_args(weights, root, exported)[:-1] + ["--size", "96", "--no-progress"], "other settings (preprocess"),
        (export_args(weights, root, tmp_path / "a", "--format", "npz", "--dtype", "bfloat16"), "npz (numpy) has no bfloat16"),
        (export_args(weights, root, tmp_path / "b")[:-1] + ["--features", "stage9", "--no-progress"], "stage9"),
        (export_args(weights, tmp_path / "nowhere", tmp_path / "c"), "no such directory"),
        (["export", "--weights", str(weights), "--out", str(tmp_path / "d")], "--input is required"),
        (export_args(weights, root, tmp_path / "e", "--size", "100"), "multiple of 32"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli(argv) == 2, argv
        assert message in capsys.readouterr().err, (argv, message)


# -- kill -9 / Ctrl-C mid-run, then resume; a second run into the same --out ----------------------
def _many_images(root: Path, n: int) -> None:
    root.mkdir()
    for i in range(n):
        Image.fromarray(_picture(96 + (i % 3) * 16, 128, 100 + i)).save(root / f"img{i:03d}.png")


def _slow_export(weights: Path, tmp_path: Path, n: int = 32) -> tuple[Path, Path, list[str]]:
    """-> (images, out, argv) of an export slow enough to be stopped mid-run (one image at a time, 224 px)."""
    src, out = tmp_path / "many", tmp_path / "out"
    _many_images(src, n)
    argv = ["export", "--weights", str(weights), "--input", str(src), "--out", str(out), "--size", "224",
            "--features", "stage1,stage3", "--batch-size", "1", "--workers", "1", "--writer-threads", "1", "--no-progress",
            "--compute-dtype", "float32"]  # stated: no start note on a bfloat16 CPU, the same stderr on every CPU
    return src, out, argv


def _start_and_freeze(argv: list[str], out: Path, n: int, at_least: int = 4) -> subprocess.Popen:
    """Start the export in its own process group, let it write ``at_least`` files, then SIGSTOP the group
    (it and its DataLoader worker): a run caught mid-way, whatever the machine's speed."""
    proc = subprocess.Popen([sys.executable, "-m", "convnext_backbone.cli", *argv], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    feats = out / "features"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(feats.glob("*.safetensors"))) < at_least:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGSTOP)
    assert proc.poll() is None, f"the export ended before it could be stopped: {proc.stderr.read()[-2000:]}"
    assert at_least <= len(list(feats.glob("*.safetensors"))) < n
    return proc


def _assert_complete_and_right(weights: Path, src: Path, out: Path) -> None:
    """Every image exported once, verified, equal to a direct forward; nothing of an earlier run left over."""
    feats = out / "features"
    records = manifest(out)
    assert sorted(r["source"] for r in records) == sorted(str(p) for p in src.glob("*.png"))
    assert all(r["status"] == "ok" for r in records)
    assert sorted(p.name for p in feats.iterdir()) == sorted(f"{p.name}.safetensors" for p in src.glob("*.png"))
    assert not (out / "manifest.parts").exists() and not (out / ".partial").exists() and not (out / ".export.lock").exists()
    assert cli(["export", "--verify", str(out), "--no-progress"]) == 0
    model = ConvNextBackbone.from_pretrained(weights, out_features=["stage1", "stage3"])
    paths = sorted(src.glob("*.png"))
    want = extract_features(model, paths, size=224, batch_size=8)
    for i, p in enumerate(paths):
        got = load_features(feats / f"{p.name}.safetensors")
        assert max_abs_diff([got["stage1"], got["stage3"]], [want["stage1"][i], want["stage3"][i]]) < 1e-4, p.name


def _recorded(out: Path) -> list[dict]:
    return [json.loads(line) for part in (out / "manifest.parts").glob("*.jsonl")
            for line in part.read_text().splitlines() if line.endswith("}")]


def test_kill_mid_run_then_resume(weights, tmp_path):
    n = 32
    src, out, argv = _slow_export(weights, tmp_path, n)
    proc = _start_and_freeze(argv, out, n)
    os.killpg(proc.pid, signal.SIGKILL)  # the main process and its DataLoader worker
    proc.wait()
    proc.stderr.close()
    feats = out / "features"
    before = {p.name: p.stat().st_mtime_ns for p in feats.glob("*.safetensors")}
    assert 4 <= len(before) < n and not (out / "manifest.jsonl").exists()
    for p in feats.glob("*.safetensors"):  # atomic: whatever is there is complete
        assert set(load_features(p)) == {"stage1", "stage3"}
    recorded = _recorded(out)
    assert recorded, "no manifest line was flushed before the kill"

    assert cli(argv) == 0
    for r in recorded:  # recorded before the kill -> skipped, not rewritten
        name = Path(r["output"]).name
        assert (feats / name).stat().st_mtime_ns == before[name]
    _assert_complete_and_right(weights, src, out)


def test_ctrl_c_says_how_to_resume_in_one_line(weights, tmp_path, capsys):
    """SIGINT to the process group, as Ctrl-C in a terminal sends it (the DataLoader worker gets it
    too): one line saying how far it got, exit status 130, no traceback; the same command resumes."""
    n = 32
    src, out, argv = _slow_export(weights, tmp_path, n)
    proc = _start_and_freeze(argv, out, n)
    os.killpg(proc.pid, signal.SIGINT)  # delivered when the group runs again
    os.killpg(proc.pid, signal.SIGCONT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    m = re.fullmatch(r"convnext-backbone export: interrupted; run the same command again to resume \((\d+) of 32 images done\)", lines[0])
    assert m, lines
    done = len(list((out / "features").glob("*.safetensors")))  # the writes under way were finished, and recorded
    assert int(m.group(1)) == len({r["source"] for r in _recorded(out)}) == done and 4 <= done < n
    assert not (out / ".export.lock").exists()  # released on the way out

    capsys.readouterr()
    assert cli(argv) == 0
    assert f"{n} images: {n - int(m.group(1))} written, {m.group(1)} already done" in capsys.readouterr().err
    _assert_complete_and_right(weights, src, out)


def test_second_run_into_the_same_out_is_refused_and_a_killed_runs_lock_is_taken_over(weights, tmp_path, capsys):
    """Two runs into one --out at once: the second is refused, naming the first, before it touches
    anything (it used to delete the first run's temp folder from under it). After kill -9 of the
    first, its lock is free (flock dies with its process) and the next run takes it over, says so,
    and finishes a correct export."""
    n = 32
    src, out, argv = _slow_export(weights, tmp_path, n)
    first = _start_and_freeze(argv, out, n)
    try:
        partial = sorted(p.relative_to(out) for p in (out / ".partial").rglob("*"))
        capsys.readouterr()
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"convnext-backbone export: error: another export is writing into {out} "
                                                       f"(pid {first.pid} on "), err
        assert "started " in lines[0] and f" export --weights {weights} --input {src} --out {out} " in lines[0]  # its command
        assert sorted(p.relative_to(out) for p in (out / ".partial").rglob("*")) == partial  # the first run's files untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    assert (out / ".export.lock").exists()  # left behind by the killed run: a stale lock

    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert f"note: taking over {out} from an export that did not finish (pid {first.pid} on " in err
    _assert_complete_and_right(weights, src, out)


# -- torchrun -----------------------------------------------------------------------------------
def test_torchrun_two_ranks_equal_single_process(weights, folder, exported, tmp_path):
    out = tmp_path / "ddp"
    argv = export_args(weights, folder[0], out)
    argv[argv.index("--workers") + 1] = "1"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "convnext_backbone.cli", *argv],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    single, multi = manifest(exported), manifest(out)
    assert {r["rank"] for r in multi} == {0, 1}

    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("rank", "sha256", "bytes")} for r in recs]

    assert strip(multi) == strip(single)
    assert "export: 8 images: 6 written, 0 already done, 2 failed" in run.stderr
    for r in (r for r in single if r["status"] == "ok"):
        a, b = load_features(exported / r["output"]), load_features(out / r["output"])
        assert max_abs_diff([a[k] for k in ALL], [b[k] for k in ALL]) < 1e-5, r["output"]


def test_input_specs(folder, tmp_path):
    from convnext_backbone.export import list_inputs

    root, expect = folder
    images = sorted(str(root / k) for k in expect)
    assert [str(p) for p in list_inputs(root).paths] == images  # recursive, notes.txt left out
    listed = tmp_path / "list.txt"
    listed.write_text(f"# comment\n{os.path.relpath(root / 'a.jpg', tmp_path)}\n\n{root / 'sub' / 'pal.png'}\n{root / 'gone.png'}\n")
    got = list_inputs(listed)
    assert [str(p) for p in got.paths] == sorted([str(root / "a.jpg"), str(root / "sub" / "pal.png"), str(root / "gone.png")])
    assert got.relative(root / "sub" / "pal.png") == "sub/pal.png"  # outputs mirror the common root
    assert [p.name for p in list_inputs(f"{root}/**/*.png").paths] == ["gray.png", "i16.png", "pal.png", "rgba.png", "trunc.png"]
    with pytest.raises(ValueError, match="no images found"):
        list_inputs(f"{root}/*.webp")


# -- inputs reached by several paths ------------------------------------------------------------
def _looped_tree(root: Path, n_loops: int, dir_alias: bool = True) -> list[str]:
    """5 real images, ``n_loops`` directory loops, a symlinked file, a hard link and (``dir_alias``) a
    second link to a directory; -> the relative paths that must be exported (each real file once)."""
    for d in ("sub", "sub2", "sub/deep"):
        (root / d).mkdir(parents=True)
    real = ["a.png", "b.jpg", "sub/c.png", "sub/deep/d.png", "sub2/e.png"]
    for i, rel in enumerate(real):
        Image.fromarray(_picture(24 + 8 * i, 40, 20 + i)).save(root / rel)
    for d in ("sub", "sub2")[:n_loops]:
        (root / d / "up").symlink_to("..", target_is_directory=True)  # a loop back to the root
    (root / "a_link.jpg").symlink_to("b.jpg")  # sorts before its target: the real name must still win
    os.link(root / "sub" / "c.png", root / "sub2" / "hard.png")  # a hard link: the same file
    if dir_alias:
        (root / "again").symlink_to("sub", target_is_directory=True)  # a second way into sub/
    return real


_LIST = """
import json, sys
from convnext_backbone.export import list_inputs
got = list_inputs(sys.argv[1])
print(json.dumps({"paths": [got.relative(p) for p in got.paths], "notes": got.notes}))
"""


@pytest.mark.parametrize("n_loops", [1, 2])
def test_symlink_loops_and_aliases_list_each_real_file_once(n_loops, tmp_path):
    from convnext_backbone.export import list_inputs

    root = tmp_path / "tree"
    real = _looped_tree(root, n_loops)
    # in a subprocess with a time limit: the old listing ran for ever here (2^40 paths), and a
    # thread could not be stopped
    run = subprocess.run([sys.executable, "-c", _LIST, str(root)], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    assert got["paths"] == real
    notes = "\n".join(got["notes"])
    assert "a_link.jpg: same file as b.jpg" in notes and "sub2/hard.png: same file as sub/c.png" in notes
    assert "again/: directory already walked as sub/" in notes and "sub/up/: directory already walked as ./" in notes
    # a glob with ** walks the same way; a list file naming one file twice keeps one path
    assert [p.name for p in list_inputs(f"{root}/**/*.png").paths] == ["a.png", "c.png", "d.png", "e.png"]
    listed = tmp_path / "list.txt"
    listed.write_text("tree/a_link.jpg\ntree/b.jpg\ntree/again/c.png\ntree/missing.png\n")
    assert [str(p) for p in list_inputs(listed).paths] == [str(root / "again" / "c.png"), str(root / "b.jpg"), str(root / "missing.png")]


def test_symlink_loop_export_writes_each_image_once(weights, tmp_path, capsys):
    root = tmp_path / "tree"
    real = _looped_tree(root, 1, dir_alias=False)  # one loop: the 5 images -> 205 manifest lines
    out = tmp_path / "out"
    assert cli(export_args(weights, root, out, "--workers", "0", "--features", "stage4")) == 0
    records = manifest(out)
    assert [Path(r["source"]).relative_to(root).as_posix() for r in records] == real
    assert all(r["status"] == "ok" for r in records)
    assert sorted(p.relative_to(out / "features").as_posix() for p in (out / "features").rglob("*") if p.is_file()) == [
        f"{rel}.safetensors" for rel in real
    ]
    err = capsys.readouterr().err
    assert "export: 5 images: 5 written" in err and "input: a_link.jpg: same file as b.jpg" in err


# -- float and 16/32-bit images -----------------------------------------------------------------
def test_float_and_high_bit_depth_images_load_as_shown(tmp_path):
    from convnext_backbone.export import load_image

    ramp = np.linspace(0, 1, 32 * 48, dtype=np.float32).reshape(32, 48)
    want = np.rint(ramp.astype(np.float64) * 255).astype(np.uint8)
    cases = {
        "f01.tif": Image.fromarray(ramp),  # float [0, 1]: the convention of float images
        "f255.tif": Image.fromarray(want.astype(np.float32)),  # float holding 8-bit levels
        "u16.tif": Image.fromarray(np.rint(ramp * 65535).astype(np.uint16)),  # I;16: full 16-bit range
        "i32.tif": Image.fromarray(np.rint(ramp * 65535).astype(np.int32)),  # I: read as 16-bit
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        x, info = load_image(tmp_path / name)
        assert info["mode"] == im.mode and x.dtype == torch.uint8 and tuple(x.shape) == (3, 32, 48)
        assert np.abs(x[0].numpy().astype(int) - want).max() <= 1, name  # not black, not saturated
        assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])
    # a PIL image given to the API is mapped the same way
    from convnext_backbone.export import make_transform

    letterbox = make_transform("letterbox", 64)
    assert torch.equal(letterbox(Image.fromarray(ramp))[0], letterbox(Image.fromarray(want))[0])
    # a dark 16-bit image stays dark: the range is the type's, not the data's
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(tmp_path / "dark16.tif")
    assert int(load_image(tmp_path / "dark16.tif")[0].max()) == 1
    bad = {
        "neg.tif": (Image.fromarray(ramp * 2 - 1), r"values in \[-1, 1\]: expected \[0, 1\]"),
        "big.tif": (Image.fromarray(ramp * 1000), r"values in \[0, 1000\]"),
        "nan.tif": (Image.fromarray(np.where(ramp > 0.5, np.nan, ramp).astype(np.float32)), "NaN/inf"),
        "i32big.tif": (Image.fromarray((ramp * 1e6).astype(np.int32)), "outside the 16-bit range"),
    }
    for name, (im, message) in bad.items():
        im.save(tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_image(tmp_path / name)
