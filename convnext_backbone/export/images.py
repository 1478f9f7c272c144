"""Finding, decoding and preprocessing the images that ``convnext-backbone export`` reads.

Two preprocessing modes, both built on the core's ``ConvNextImageProcessor`` (so resizing and
normalisation are the same op everywhere):

``letterbox`` (default, for dense use): resize the long side to ``size`` keeping the aspect
ratio, place the result at the top-left of a ``size x size`` canvas and pad the rest with 0
(the mean colour after normalisation), as Detectron2/MMDetection pad. The whole image is kept
and the geometry (scale and padding) is returned, so a feature cell maps back to pixels:
``x_image = (x_cell + 0.5) * stride / scale_x - 0.5``.

``processor``: the classification preprocessing of HF ``ConvNextImageProcessor``
(``shortest_edge=size``: short-side resize and centre crop below 384, a square warp from 384).
It crops or distorts, so features cannot be mapped back to every pixel; use it to reproduce
classification-style inputs.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import stat
from pathlib import Path
from typing import Any

import torch

from ..processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, ConvNextImageProcessor, to_uint8_chw

__all__ = [
    "DEFAULT_SIZE", "IMAGE_EXTENSIONS", "RESIZE_MODES", "InputList", "Letterbox", "ProcessorResize",
    "list_inputs", "load_image", "make_transform",
]

DEFAULT_SIZE = 512
RESIZE_MODES = ("letterbox", "processor")
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_GLOB_CHARS = set("*?[")


class InputList:
    """Sorted absolute image paths (each real file once) and the ``root`` their output paths mirror.

    ``notes``: what was left out and why (a second path to a file already listed, a directory
    already walked), one line each, for the command to show.
    """

    def __init__(self, root: Path, paths: list[Path], notes: list[str] | None = None):
        self.root = root
        self.paths = paths
        self.notes = notes or []

    def relative(self, path: Path) -> str:
        return Path(os.path.relpath(path, self.root)).as_posix()


def _absolute(p: str | Path) -> Path:
    # abspath, not resolve(): a symlinked file keeps its place under the root.
    return Path(os.path.abspath(os.fspath(p)))


def _is_image(p: Path | str) -> bool:
    return os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to; None if it cannot be reached (dangling link...)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _sorted_entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise OSError(f"cannot list directory {folder}: {e.strerror or e}") from e


def _entry_identity(entry: os.DirEntry) -> tuple[int, int]:
    st = entry.stat(follow_symlinks=False)  # one lstat; a regular file or directory, not a link
    return st.st_dev, st.st_ino


def _shown(path: Path, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return rel if not rel.startswith("..") else str(path)


def _walk(root: Path, want, notes: list[str]) -> list[Path]:
    """Files under ``root`` for which ``want(path)`` holds, following symlinks, each real file once.

    A directory (device + inode) is walked once, so symlink loops (``sub/up -> ..``) and links
    to a directory already walked add nothing; a file reached by several paths (a symlink to
    it, a hard link, a directory reachable twice) is listed once. Which path is kept:
    the one that crosses the fewest symlinks, and among those the first in sorted order
    (component by component, as ``sorted`` orders ``Path`` objects). So the real tree always
    keeps its own names, and a link only adds the files that are not reachable without it.

    Walked in rounds: round k walks, without following links, from the symlinks that round
    k - 1 met (round 0: from ``root``), in sorted order, depth first with sorted entries.
    An unreadable directory is an error naming it, not a silent omission.
    """
    walker = _Walker(root, want, notes)
    starts = [root]
    while starts:
        links: list[Path] = []  # the next round's starts: each crosses one more link
        for start in sorted(starts):
            walker.walk_from(start, links)
        starts = links
    return walker.found


class _Walker:
    """The state of one ``_walk``: the directories and files met so far (by device + inode), the
    files found, in order, and a note for each thing met a second time."""

    def __init__(self, root: Path, want, notes: list[str]):
        self.root, self.want, self.notes = root, want, notes
        self.seen_dirs: dict[tuple[int, int], Path] = {}
        self.seen_files: dict[tuple[int, int], Path] = {}
        self.found: list[Path] = []

    def walk_from(self, start: Path, links: list[Path]) -> None:
        """One start of a round, links followed: a file is listed, a directory walked."""
        try:
            st = os.stat(start)
        except OSError:  # dangling or looping link: an input that will fail with its own error
            if start != self.root and self.want(start):
                self.found.append(start)
            return
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISREG(st.st_mode) and self.want(start):
                self._file(start, key)
        elif self._first_visit(start, key):
            self._tree(start, links)

    def _tree(self, top: Path, links: list[Path]) -> None:
        """Pre-order, sorted entries (paths are met in sorted order), no link followed: each symlink
        met is appended to ``links``."""
        stack = [iter(_sorted_entries(top))]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                links.append(path)
            elif entry.is_dir(follow_symlinks=False):
                if self._first_visit(path, _entry_identity(entry)):  # not: a bind mount of a directory already walked
                    stack.append(iter(_sorted_entries(path)))
            elif entry.is_file(follow_symlinks=False) and self.want(path):
                self._file(path, _entry_identity(entry))

    def _first_visit(self, path: Path, key: tuple[int, int]) -> bool:
        """Whether the directory ``key`` is new (then it is marked seen as ``path``); a note if not."""
        if key in self.seen_dirs:
            self.notes.append(f"{_shown(path, self.root)}/: directory already walked as "
                              f"{_shown(self.seen_dirs[key], self.root)}/; not walked again")
            return False
        self.seen_dirs[key] = path
        return True

    def _file(self, path: Path, key: tuple[int, int]) -> None:
        """List a wanted file the first time its ``key`` is met; a note after that."""
        if key in self.seen_files:
            self.notes.append(f"{_shown(path, self.root)}: same file as {_shown(self.seen_files[key], self.root)}; "
                              "exported once, as the latter")
        else:
            self.seen_files[key] = path
            self.found.append(path)


def _glob_parts_match(pattern: list[str], parts: list[str]) -> bool:
    """``glob`` semantics for one relative path: ``**`` = any number of directories, no hidden names
    unless the pattern component starts with a dot."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        for i in range(len(parts) + 1):
            if i and parts[i - 1].startswith("."):
                return False
            if _glob_parts_match(pattern[1:], parts[i:]):
                return True
        return False
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _glob_parts_match(pattern[1:], parts[1:])


def _glob(spec: str, notes: list[str]) -> list[Path]:
    """Files matching ``spec``. A ``**`` pattern walks its fixed leading folder with ``_walk`` (loop-safe,
    each real file once; ``glob.glob`` would follow a loop ~40 levels deep, and two loops for ever)."""
    parts = spec.split("/")
    if spec.endswith("/"):
        return []  # a pattern for directories; inputs are files
    if "**" not in parts:
        return _unique_files([_absolute(m) for m in glob.glob(spec) if os.path.isfile(m)], notes)
    fixed = 0
    while fixed < len(parts) and not (_GLOB_CHARS & set(parts[fixed])):
        fixed += 1
    base = "/".join(parts[:fixed]) or ("/" if spec.startswith("/") else ".")
    pattern = [q for q in parts[fixed:] if q]
    if not os.path.isdir(base):
        return []
    root = _absolute(base)
    return _walk(root, lambda p: _glob_parts_match(pattern, list(p.relative_to(root).parts)), notes)


def _links_on(path: Path) -> int:
    """How many components of ``path`` are symlinks."""
    return sum(os.path.islink(q) for q in (path, *path.parents))


def _unique_files(paths: list[Path], notes: list[str]) -> list[Path]:
    """One path per real file (device + inode): the one with the fewest symlinks, then the first
    in sorted order (the rule ``_walk`` follows). Unreachable paths are all kept (they fail later
    with their own error)."""
    groups: dict[tuple[int, int], list[Path]] = {}
    kept = []
    for p in sorted(set(paths)):
        key = _identity(p)
        if key is None:
            kept.append(p)
        else:
            groups.setdefault(key, []).append(p)
    for group in groups.values():
        best = group[0] if len(group) == 1 else min(group, key=lambda q: (_links_on(q), q))
        kept.append(best)
        notes += [f"{q}: same file as {best}; exported once, as the latter" for q in group if q != best]
    return sorted(kept)


def list_inputs(spec: str | os.PathLike) -> InputList:
    """``DIR`` (recursive, image extensions only), a ``GLOB``, a ``LIST.txt`` or one image file.

    Each real file (device + inode) is listed once, under one of the paths that reach it:
    directories are walked following symlinks but never twice (see ``_walk`` for which path
    is kept: the fewest symlinks crossed, then the first in sorted order); a list file or a
    glob without ``**`` keeps, of the paths it names to one file, the one with the fewest
    symlinks, then the first in sorted order. What was left out is in ``InputList.notes``.

    A list file names one path per line (blank lines and ``#`` comments skipped); relative
    lines are relative to the list file's directory. Every listed path is an input, so a
    missing or unreadable one is reported, not silently dropped.
    """
    spec = os.fspath(spec)
    p = Path(spec)
    root: Path | None = None
    notes: list[str] = []
    if p.is_dir():
        root = _absolute(p)
        paths = _walk(root, _is_image, notes)
    elif p.is_file() and p.suffix.lower() == ".txt":
        base = _absolute(p).parent
        listed = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                listed.append(_absolute(base / line))
        paths = _unique_files(listed, notes)
    elif p.is_file():
        if not _is_image(p):
            raise ValueError(
                f"--input {spec}: not a directory, a .txt list or an image file "
                f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        paths = [_absolute(p)]
    elif _GLOB_CHARS & set(spec):
        paths = _glob(spec, notes)
    else:
        raise FileNotFoundError(f"--input {spec}: no such directory, list file, image or glob pattern")
    paths = sorted(set(paths))
    if not paths:
        raise ValueError(f"--input {spec}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if root is None:
        root = Path(os.path.commonpath([str(q.parent) for q in paths]))
    return InputList(root, paths, notes)


def load_image(path: str | os.PathLike) -> tuple[torch.Tensor, dict[str, Any]]:
    """Decode fully (truncation raises here, not later), apply EXIF orientation, -> 3xHxW uint8.

    Converted by the core's ``to_uint8_chw``: float (mode ``F``) and 16/32-bit integer images are
    mapped to 8 bits as a viewer shows them, or raise ``ValueError`` where no display is right;
    grayscale is replicated, alpha dropped, palettes expanded.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        mode = im.mode
        im.load()
        im = ImageOps.exif_transpose(im)
        x = to_uint8_chw(im)
    return x, {"mode": mode, "hw": [int(x.shape[-2]), int(x.shape[-1])]}


class Letterbox:
    """Aspect-preserving resize of the long side to ``size``, zero padding at the bottom/right."""

    method = "letterbox"

    def __init__(self, size: int = DEFAULT_SIZE, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, resample: int = 3):
        self.size = int(size)
        self.mean, self.std, self.resample = list(mean), list(std), resample

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "size": self.size, "mean": self.mean, "std": self.std, "resample": self.resample}

    def __call__(self, image: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x = to_uint8_chw(image)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        scale = self.size / max(h, w)
        rh, rw = max(1, min(self.size, round(h * scale))), max(1, min(self.size, round(w * scale)))
        proc = ConvNextImageProcessor(
            do_resize=(rh, rw) != (h, w), size={"height": rh, "width": rw}, resample=self.resample,
            image_mean=self.mean, image_std=self.std,
        )
        content = proc.preprocess_one(x)
        out = content.new_zeros(3, self.size, self.size)
        out[:, :rh, :rw] = content
        geometry = {
            "image_hw": [h, w], "resized_hw": [rh, rw], "scale_hw": [rh / h, rw / w],
            "pad_tlbr": [0, 0, self.size - rh, self.size - rw],
        }
        return out, geometry


class ProcessorResize:
    """The core ``ConvNextImageProcessor`` with ``shortest_edge=size`` and ImageNet mean/std."""

    method = "processor"

    def __init__(self, size: int = DEFAULT_SIZE, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, resample: int = 3):
        self.size = int(size)
        self.processor = ConvNextImageProcessor(
            size={"shortest_edge": self.size}, resample=resample, image_mean=list(mean), image_std=list(std)
        )

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "size": self.size, "processor": self.processor.to_dict()}

    def __call__(self, image: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        x = to_uint8_chw(image)
        return self.processor.preprocess_one(x), {"image_hw": [int(x.shape[-2]), int(x.shape[-1])]}


def make_transform(resize: str = "letterbox", size: int = DEFAULT_SIZE, mean=IMAGENET_DEFAULT_MEAN,
                   std=IMAGENET_DEFAULT_STD) -> Letterbox | ProcessorResize:
    """The preprocessing of ``resize`` at ``size``, normalising with ``mean``/``std`` (0..1 pixels, RGB:
    the weights' own, see ``export.features.normalisation``)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not isinstance(size, int) or size < 32 or size % 32:
        raise ValueError(f"size must be a positive multiple of 32 (the stride of stage4), got {size!r}")
    return (Letterbox if resize == "letterbox" else ProcessorResize)(size, mean=mean, std=std)
