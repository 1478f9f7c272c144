"""Resolve a checkpoint name: a local file or directory, or a Hugging Face Hub id
(``facebook/convnextv2-tiny-1k-224``, ``timm/convnext_tiny.fb_in1k``) downloaded to the hub cache.

Which is which, in order:

1. ``hf-hub:NAME`` (or ``hf_hub:NAME``) is always a hub id: the explicit way.
2. An existing path (``~`` expanded) is local.
3. A name that cannot be a hub id or is clearly meant as a path is local, so a typo says
   "checkpoint not found: PATH" instead of a confusing download failure: an ``os.PathLike``
   (a ``Path`` names a file, never a repository), a checkpoint file suffix (``.pth``,
   ``.pth.tar``, ``.pt``, ``.bin``, ``.safetensors``, ``.pkl``, ``.ckpt``), a leading ``./``,
   ``../``, ``/`` or ``~``, a backslash, no ``/`` or more than one (a hub id is exactly
   ``namespace/name``), a first component that exists here (``ckpt/`` is a local folder), or
   characters a hub id cannot have.
4. Anything else (``namespace/name``) goes to the hub. That needs ``huggingface_hub`` and a
   network; when either is missing the error says so and what to do instead, rather than
   hanging or guessing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["resolve_pretrained", "HubUnavailableError"]

_HUB_PREFIXES = ("hf-hub:", "hf_hub:")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".bin", ".safetensors", ".pkl", ".ckpt")
_EXAMPLE = "a hub id looks like 'facebook/convnext-tiny-224' (or write 'hf-hub:NAMESPACE/NAME')"


class HubUnavailableError(OSError):
    """A hub name was given but could not be downloaded (offline, or no huggingface_hub)."""


def _why_local(name: str) -> str | None:
    """Why ``name`` (not an existing path) is read as a local path; None if it is a hub id."""
    if name.lower().endswith(CHECKPOINT_SUFFIXES):
        return "it has a checkpoint file suffix"
    if name.startswith(("./", "../", "/", "~")) or "\\" in name:
        return "it starts like a path"
    if name.count("/") != 1:
        return "a hub id is exactly NAMESPACE/NAME"
    first = name.split("/", 1)[0]
    if os.path.lexists(first):
        return f"{first}/ exists here"
    if not _HUB_ID.match(name):
        return "it has characters a hub id cannot have"
    return None


def resolve_pretrained(name_or_path: str | os.PathLike) -> Path:
    """A local path to read the checkpoint from (see the module docstring for the rule).

    Raises ``FileNotFoundError`` ("checkpoint not found: NAME ...") for a local path that does
    not exist, ``ValueError`` for a malformed ``hf-hub:`` id, ``HubUnavailableError`` when a
    hub id cannot be downloaded.
    """
    name = os.fspath(name_or_path)
    if name.startswith(_HUB_PREFIXES):
        repo_id = name.split(":", 1)[1]
        if not _HUB_ID.match(repo_id):
            raise ValueError(f"{name!r}: not a Hugging Face Hub id; {_EXAMPLE}")
        return _download(repo_id)
    path = Path(name).expanduser()
    if path.exists():
        return path
    why = "it is a path object" if not isinstance(name_or_path, str) else _why_local(name)
    if why is not None:
        where = f" ({path.absolute()})" if str(path.absolute()) != name else ""
        raise FileNotFoundError(
            f"checkpoint not found: {name}{where}: no such file or directory (read as a local path: {why}; {_EXAMPLE})"
        )
    return _download(name)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise HubUnavailableError(
            f"{repo_id!r} looks like a Hugging Face Hub id but huggingface_hub is not installed; "
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
