"""export-onnx run in onnxruntime against PyTorch, the torch.export path, and the `show` figure."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageDraw

from convnext_backbone import ConvNextBackbone, ConvNextV2Config
from convnext_backbone.cli import main as cli
from convnext_backbone.export.show import pca_rgb

from helpers import randomize_

ALL = ["stem", "stage1", "stage2", "stage3", "stage4"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = randomize_(ConvNextBackbone(ConvNextV2Config.from_preset("atto", out_features=ALL)), seed=7)
    return model.save_pretrained(tmp_path_factory.mktemp("w") / "atto")


def test_onnx_matches_pytorch_at_two_sizes(weights, tmp_path, capsys):
    path = tmp_path / "backbone.onnx"
    assert cli(["export-onnx", "--weights", str(weights), "--features", "all", "--out", str(path),
                "--torch-export", str(tmp_path / "backbone.pt2")]) == 0
    printed = capsys.readouterr().out
    assert printed.count(" ok ") == 2 and (tmp_path / "backbone.pt2").is_file()

    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["strides"]) == [4, 4, 8, 16, 32]

    model = ConvNextBackbone.from_pretrained(weights, out_features=ALL).eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ALL
    g = torch.Generator().manual_seed(1)
    # the second is larger than the exporter's 224x224 trace sample (and than the core's GRN chunk size)
    for shape in [(2, 3, 64, 96), (1, 3, 384, 448)]:
        x = torch.randn(*shape, generator=g)
        got = session.run(None, {"pixel_values": x.numpy()})
        with torch.inference_mode():
            want = model(x).feature_maps
        for name, a, b in zip(ALL, got, want):
            assert a.shape == tuple(b.shape), (name, shape)
            assert np.abs(a - b.numpy()).max() <= 1e-4, (name, shape)


def test_float16_onnx_matches_float32_pytorch_at_two_sizes(weights, tmp_path, capsys):
    path = tmp_path / "backbone-fp16.onnx"
    assert cli(["export-onnx", "--weights", str(weights), "--features", "all", "--out", str(path), "--dtype", "float16"]) == 0
    assert capsys.readouterr().out.count(" ok ") == 2
    proto = onnx.load(path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    nodes = {n.name: n for n in proto.graph.node}
    producers = {out: n for n in proto.graph.node for out in n.output}
    norms = [n for n in proto.graph.node if n.op_type == "ReduceL2"]  # GRN's statistic: on a float32 cast
    assert norms and all(producers[n.input[0]].op_type == "Cast" and producers[n.input[0]].attribute[0].i == onnx.TensorProto.FLOAT
                         for n in norms)
    layer_norms = [n for n in nodes.values() if n.op_type == "LayerNormalization"]
    assert layer_norms and all({a.name: a.i for a in n.attribute}.get("stash_type", 1) == 1 for n in layer_norms)

    model = ConvNextBackbone.from_pretrained(weights, out_features=ALL).eval()  # float32 reference
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(2)
    for shape in [(2, 3, 64, 96), (1, 3, 384, 448)]:
        x = torch.randn(*shape, generator=g)
        got = session.run(None, {"pixel_values": x.numpy().astype(np.float16)})
        with torch.inference_mode():
            want = model(x).feature_maps
        for name, a, b in zip(ALL, got, want):
            assert a.dtype == np.float16 and np.isfinite(a).all()
            rel = np.abs(a.astype(np.float32) - b.numpy()).max() / np.abs(b.numpy()).max()
            assert rel <= 1e-2, (name, shape, rel)  # float16 has 11 bits of mantissa; stats in float32


def test_pca_rgb_separates_regions():
    feat = torch.zeros(16, 8, 8)
    feat[:, :, :4] = torch.randn(16, 1, 1)
    feat[:, :, 4:] = torch.randn(16, 1, 1)
    rgb, explained = pca_rgb(feat + 0.01 * torch.randn(16, 8, 8))
    assert rgb.shape == (8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1 and explained > 0.9
    assert np.abs(rgb[:, :4].mean((0, 1)) - rgb[:, 4:].mean((0, 1))).max() > 0.5  # two regions, two colours


def test_show_writes_a_readable_figure(weights, tmp_path):
    im = Image.new("RGB", (160, 120), (120, 170, 230))
    d = ImageDraw.Draw(im)
    d.rectangle([0, 80, 160, 120], fill=(70, 140, 60))
    d.ellipse([110, 10, 140, 40], fill=(250, 220, 60))
    im.convert("RGBA").save(tmp_path / "scene.png")
    out = tmp_path / "fig.png"
    assert cli(["show", str(tmp_path / "scene.png"), "--weights", str(weights), "--features", "all",
                "--size", "128", "--out", str(out)]) == 0
    fig = np.asarray(Image.open(out).convert("RGB")).astype(float)
    h, w, _ = fig.shape
    assert w > 4 * h  # image + 5 panels side by side
    assert fig.std() > 20  # not blank


def test_export_onnx_and_show_never_write_over_their_inputs(weights, tmp_path, capsys):
    image = tmp_path / "scene.png"
    Image.new("RGB", (64, 48), (120, 170, 230)).save(image)
    (tmp_path / "link.onnx").symlink_to(weights / "model.safetensors")
    before = {p: p.read_bytes() for p in [*sorted(weights.iterdir()), image]}
    w, onnx_out = str(weights), str(tmp_path / "ok.onnx")
    cases = [
        (["export-onnx", "--weights", w, "--out", f"{w}/model.safetensors"], f"{w}/model.safetensors is the input file"),
        (["export-onnx", "--weights", w, "--out", w], f"{w} is the input {w}"),
        (["export-onnx", "--weights", w, "--out", onnx_out, "--torch-export", f"{w}/config.json"], f"{w}/config.json is the input file"),
        (["export-onnx", "--weights", f"{w}/model.safetensors", "--out", str(tmp_path / "link.onnx")],
         f"{tmp_path / 'link.onnx'} is the input {w}/model.safetensors (both are"),
        (["show", str(image), "--weights", w, "--out", str(image)], f"{image} is the input {image}"),
        (["show", str(image), "--weights", w, "--out", f"{w}/model.safetensors"], f"{w}/model.safetensors is the input file"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert {p: p.read_bytes() for p in [*sorted(weights.iterdir()), image]} == before
    assert not (tmp_path / "ok.onnx").exists()


def test_export_onnx_without_onnx_installed_says_which_extra_in_one_line(weights, tmp_path):
    import os
    import subprocess
    import sys

    blocker = tmp_path / "blocked"
    blocker.mkdir()
    (blocker / "onnx.py").write_text("raise ImportError('No module named onnx')\n")  # as if it were not installed
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "convnext_backbone.cli", "export-onnx", "--weights", str(weights),
                          "--out", str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "pip install 'convnext-backbone[export]'" in run.stderr
    assert not (tmp_path / "m.onnx").exists()
