"""Converter failure modes and the ``convert`` command."""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from convnext_backbone import CheckpointError, ConvNextBackbone, ConvNextForImageClassification, build_backbone, load_checkpoint
from convnext_backbone.cli import main as cli_main
from convnext_backbone.hub import HubUnavailableError

from helpers import max_abs_diff, randomize_


@pytest.fixture(scope="module")
def atto_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("atto")
    randomize_(build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])).save_pretrained(d)
    return d


def test_corrupt_and_truncated_files(tmp_path, atto_dir):
    (tmp_path / "garbage.pth").write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ConvNextBackbone.from_pretrained(tmp_path / "garbage.pth")
    data = (atto_dir / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable checkpoint"):
        ConvNextBackbone.from_pretrained(tmp_path / "cut.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected one of"):
        ConvNextBackbone.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        ConvNextBackbone.from_pretrained(tmp_path / "nope.pth")


def test_other_architecture_is_rejected(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match="unrecognised checkpoint.*conv1.weight"):
        ConvNextBackbone.from_pretrained(tmp_path / "resnet18.pth")


def test_wrong_size_names_key_and_both_shapes(atto_dir):
    femto = build_backbone("convnextv2_femto", out_indices=[1, 2, 3, 4])
    with pytest.raises(CheckpointError, match=r"shape mismatch for downsample_layers\.0\.0\.weight: checkpoint \[40, 3, 4, 4\] vs model \[48, 3, 4, 4\]"):
        load_checkpoint(femto, atto_dir)
    before = {k: v.clone() for k, v in femto.state_dict().items()}
    report = load_checkpoint(femto, atto_dir, strict=False)
    assert not report.ok and len(report.mismatched) > 10 and not report.loaded
    assert all(torch.equal(before[k], v) for k, v in femto.state_dict().items())  # nothing half-loaded


def test_missing_and_unexpected_keys(tmp_path, atto_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(atto_dir / "model.safetensors")
    del state["stages.2.5.pwconv1.weight"]
    state["stages.0.0.mystery"] = torch.zeros(3)
    save_file(state, tmp_path / "edited.safetensors")
    model = build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, tmp_path / "edited.safetensors")
    assert "missing from checkpoint: stages.2.5.pwconv1.weight" in str(err.value)
    assert "unexpected key in checkpoint: stages.0.0.mystery" in str(err.value)
    report = load_checkpoint(model, tmp_path / "edited.safetensors", strict=False)
    assert report.missing == ["stages.2.5.pwconv1.weight"] and report.unexpected == ["stages.0.0.mystery"]


def test_v1_checkpoint_into_v2_model_is_an_error(tmp_path):
    randomize_(build_backbone("convnext_tiny")).save_pretrained(tmp_path)
    v2 = build_backbone("convnextv2_tiny")
    with pytest.raises(CheckpointError, match=r"missing from checkpoint: stages\.0\.0\.grn\.gamma"):
        load_checkpoint(v2, tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/convnext_pwned",))


def test_pickles_that_run_code_are_refused(tmp_path):
    torch.save({"model": {"x": _Evil()}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ConvNextBackbone.from_pretrained(tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": _Evil()}}, f)
    with pytest.raises(CheckpointError, match="refusing to unpickle posix.system"):
        ConvNextBackbone.from_pretrained(tmp_path / "evil.pkl")
    assert not os.path.exists("/tmp/convnext_pwned")


def test_non_convnext_config_json_is_rejected(tmp_path, atto_dir):
    (tmp_path / "model.safetensors").write_bytes((atto_dir / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(CheckpointError, match="model_type 'resnet' is not a ConvNeXt"):
        ConvNextBackbone.from_pretrained(tmp_path)


def test_hub_name_offline_fails_clearly():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    code = "from convnext_backbone import ConvNextBackbone; ConvNextBackbone.from_pretrained('facebook/convnextv2-tiny-1k-224')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "HubUnavailableError: could not fetch 'facebook/convnextv2-tiny-1k-224' from the Hugging Face Hub" in proc.stderr
    assert "pass its local path" in proc.stderr
    assert issubclass(HubUnavailableError, OSError)


def test_convert_command_timm_classifier_to_backbone_and_classifier(tmp_path, capsys):
    ref = randomize_(timm.create_model("convnextv2_atto", pretrained=False, num_classes=4)).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    assert cli_main(["convert", str(tmp_path / "timm.pth"), str(tmp_path / "bb")]) == 0
    out = capsys.readouterr().out
    assert "source format: timm" in out and "dropped head.weight: classification head" in out
    assert "initialized fresh (not in SRC): ['norm0', 'norm1', 'norm2', 'norm3']" in out
    bb = ConvNextBackbone.from_pretrained(tmp_path / "bb", norm_outputs=False).eval()
    assert bb.out_features == ["stage1", "stage2", "stage3", "stage4"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_abs_diff(ref.forward_intermediates(x, intermediates_only=True), bb(x).feature_maps) <= 1e-5
    assert cli_main(["convert", str(tmp_path / "timm.pth"), str(tmp_path / "cls"), "--to", "classifier"]) == 0
    cls = ConvNextForImageClassification.from_pretrained(tmp_path / "cls").eval()
    with torch.no_grad():
        assert max_abs_diff(ref(x), cls(x).logits) <= 1e-5


def test_convert_command_reports_failure(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r.pth")
    assert cli_main(["convert", str(tmp_path / "r.pth"), str(tmp_path / "out")]) == 2
    assert "convert failed: unrecognised checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_convert_refuses_an_existing_dst_file_before_loading(tmp_path, atto_dir, capsys, monkeypatch):
    import convnext_backbone.convert.command as convert_cmd

    def no_loading(*a, **k):
        raise AssertionError("the checkpoint was opened before DST was checked")

    monkeypatch.setattr(convert_cmd, "open_checkpoint", no_loading)
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"keep me")
    for target, message in [(dst, f"{dst} exists and is not a directory"),
                            (dst / "sub", f"{dst} is a file, so {dst / 'sub'} cannot be created as a directory")]:
        capsys.readouterr()
        assert cli_main(["convert", str(atto_dir), str(target)]) == 2
        out = capsys.readouterr().err
        assert out.startswith(f"convert failed: {message}") and out.count("\n") == 1, out
    assert dst.read_bytes() == b"keep me"


def test_mistyped_local_paths_say_not_found_and_only_hub_ids_go_to_the_hub(tmp_path, monkeypatch):
    """Offline: a stand-in huggingface_hub records what would be downloaded."""
    import types

    from convnext_backbone.hub import resolve_pretrained

    asked: list[str] = []

    def snapshot_download(repo_id, **kwargs):
        asked.append(repo_id)
        raise OSError("offline (test stand-in)")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    local = ["ckpt/nonexist.pth", "ckpt/nonexist", "runs/model.safetensors", "runs/a/b", "./model", "../model",
             "/nonexistent/model", "~/nonexistent-ckpt", "model.pth.tar", "convnext_tiny", "bad name/x", "weights.ckpt"]
    for name in local:
        with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {re.escape(name)}"):
            resolve_pretrained(name)
    with pytest.raises(FileNotFoundError, match="checkpoint not found: facebook/convnext-tiny-224"):
        resolve_pretrained(Path("facebook/convnext-tiny-224"))  # a Path names a file, never a repository
    with pytest.raises(FileNotFoundError, match=r"read as a local path: ckpt/ exists here"):
        resolve_pretrained("ckpt/nonexist")
    assert asked == []
    for name, repo in [("facebook/convnext-tiny-224", None), ("timm/convnext_tiny.fb_in1k", None),
                       ("hf-hub:timm/convnext_tiny.fb_in1k", "timm/convnext_tiny.fb_in1k"),
                       ("hf_hub:facebook/convnextv2-atto-1k-224", "facebook/convnextv2-atto-1k-224")]:
        with pytest.raises(HubUnavailableError, match=re.escape(f"could not fetch {repo or name!r}")):
            resolve_pretrained(name)
        assert asked[-1] == (repo or name)
    with pytest.raises(ValueError, match="not a Hugging Face Hub id"):
        resolve_pretrained("hf-hub:a/b/c")
    # what exists is used as it is, even when it could be a hub id
    (tmp_path / "facebook" / "convnext-tiny-224").mkdir(parents=True)
    assert resolve_pretrained("facebook/convnext-tiny-224") == Path("facebook/convnext-tiny-224")
    assert len(asked) == 4
    # through the model API and the convert command, the same message
    with pytest.raises(FileNotFoundError, match="checkpoint not found: ckpt/nonexist.pth"):
        ConvNextBackbone.from_pretrained("ckpt/nonexist.pth")


def test_convert_never_writes_over_its_source(tmp_path, capsys):
    """``convert cls_dir cls_dir`` replaced the classifier with a backbone and exited 0; every way of
    naming the source as DST (itself, ``dir/.``, the folder of SRC's file, a symlink, a hard link in DST)
    is now one line, exit 2, and the source keeps every byte."""
    import transformers

    ours, hf = tmp_path / "cls", tmp_path / "hf_cls"
    randomize_(ConvNextForImageClassification.from_preset("convnextv2_atto", depths=[1, 1, 1, 1], num_labels=3)).save_pretrained(ours)
    transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=3)).save_pretrained(hf)
    (tmp_path / "link").symlink_to(ours, target_is_directory=True)
    (tmp_path / "hard").mkdir()
    os.link(ours / "model.safetensors", tmp_path / "hard" / "model.safetensors")
    before = {p: p.read_bytes() for d in (ours, hf, tmp_path / "hard") for p in sorted(d.iterdir())}
    cases = [
        (ours, ours, f"{ours} is the input {ours}: the output would replace it"),
        (hf, hf, f"{hf} is the input {hf}"),
        (ours, f"{ours}/.", f"{ours}/. is the input {ours}"),
        (ours / "model.safetensors", ours, f"{ours} is the directory that holds the input {ours / 'model.safetensors'}"),
        (hf / "model.safetensors", hf, f"{hf} is the directory that holds the input"),
        (tmp_path / "link", ours, f"is the input {tmp_path / 'link'} (both are {ours.resolve()})"),
        (ours, tmp_path / "link", f"{tmp_path / 'link'} is the input {ours} (both are"),
        (ours, tmp_path / "hard", f"{tmp_path / 'hard' / 'model.safetensors'} is the input file {(ours / 'model.safetensors').resolve()} (a link to it)"),
    ]
    for src, dst, message in cases:
        capsys.readouterr()
        assert cli_main(["convert", str(src), str(dst)]) == 2, (src, dst)
        out = capsys.readouterr().err
        assert out.startswith("convert failed: ") and message in out and out.count("\n") == 1, out
    assert {p: p.read_bytes() for d in (ours, hf, tmp_path / "hard") for p in sorted(d.iterdir())} == before
    # a new directory, also one inside the source's, is fine
    assert cli_main(["convert", str(ours), str(ours / "backbone")]) == 0
    assert ConvNextBackbone.from_pretrained(ours / "backbone").config.depths == [1, 1, 1, 1]


def test_a_deeper_or_longer_checkpoint_is_another_architecture(tmp_path):
    """Backbone keys the model lacks (blocks of a deeper stage, a fifth stage) are errors naming both
    architectures, as mis-shaped ones are; only a classifier head and unused output norms may go unused."""
    atto = build_backbone("convnextv2_atto", out_indices=[1, 2, 3, 4])
    build_backbone("convnextv2_atto", depths=[2, 2, 8, 2], out_indices=[1, 2, 3, 4]).save_pretrained(tmp_path / "deeper")
    build_backbone("convnextv2_atto", num_stages=5, depths=[2, 2, 6, 2, 1], hidden_sizes=[40, 80, 160, 320, 640],
                   out_indices=[1, 2, 3, 4, 5]).save_pretrained(tmp_path / "five")
    for name, arch, key in [("deeper", r"depths=\[2, 2, 8, 2\], hidden_sizes=\[40, 80, 160, 320\]", r"stages\.2\.6\."),
                            ("five", r"depths=\[2, 2, 6, 2, 1\], hidden_sizes=\[40, 80, 160, 320, 640\]", r"(stages|downsample_layers)\.4\.")]:
        with pytest.raises(CheckpointError, match=rf"(?s)checkpoint is convnextv2\({arch}\), model is convnextv2_atto\..*unexpected key in checkpoint: {key}"):
            load_checkpoint(atto, tmp_path / name)
        with pytest.raises(CheckpointError, match=r"unexpected key in checkpoint"):
            ConvNextBackbone.from_pretrained(tmp_path / name, depths=[2, 2, 6, 2], hidden_sizes=[40, 80, 160, 320], num_stages=4,
                                             out_indices=[1, 2, 3, 4])
        assert not load_checkpoint(atto, tmp_path / name, strict=False).ok  # asked for: loads what fits, reports the rest
