"""Resolve a hub name (``facebook/convnextv2-tiny-1k-224``, ``timm/convnext_tiny.fb_in1k``) to files.

Local paths are returned as they are. Hub names need ``huggingface_hub`` and a network; when
either is missing the error says so and what to do instead, rather than hanging or guessing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["resolve_pretrained", "HubUnavailableError"]

_HUB_ID = re.compile(r"^(hf-hub:|hf_hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubUnavailableError(OSError):
    """A hub name was given but could not be downloaded (offline, or no huggingface_hub)."""


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"checkpoint not found: {name} (not a file, a directory or a hub id like 'facebook/convnext-tiny-224')")
    repo_id = name.split(":", 1)[-1]
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise HubUnavailableError(
            f"{name!r} looks like a Hugging Face Hub id but huggingface_hub is not installed; "
            "`pip install huggingface_hub` or pass a local checkpoint path"
        ) from e
    try:
        local = snapshot_download(
            repo_id,
            allow_patterns=["config.json", "preprocessor_config.json", "*.safetensors", "pytorch_model.bin", "*.pth"],
        )
    except Exception as e:  # offline, DNS failure, 404, gated repo: one clear message
        raise HubUnavailableError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "If this machine is offline, download the checkpoint elsewhere and pass its local path "
            "(a file or directory in any supported format)."
        ) from e
    return Path(local)
