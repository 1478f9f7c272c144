"""Repack PyPI's ``sal-detectron2`` wheel as a pure-Python ``detectron2`` wheel.

Why: detectron2's authors publish no wheels, and its source install compiles C++ from a
repository these machines cannot reach. ``sal-detectron2==0.7.2`` ships the official
detectron2 Python tree (commit a59f0563, 2024-04-17, plus a Python 3.11 fix) inside a
CPython-3.10-only wheel. Without its ``_C`` binary the tree imports on any Python 3 and
falls back to torchvision's nms/roi_align; deformable conv, rotated boxes and the fast
COCO evaluator (everything needing ``_C``) are unavailable.

Usage: python scripts/repack_detectron2_wheel.py SAL_WHEEL OUT_DIR
"""
import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path

NAME = "detectron2"
VERSION = "0.7.2+pypi.sal"
# The upstream setup.py requires these; the sal repack dropped them.
EXTRA_REQUIRES = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.11"]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def repack(src: Path, out_dir: Path) -> Path:
    dist_info = f"{NAME}-{VERSION}.dist-info"
    out = out_dir / f"{NAME}-{VERSION}-py3-none-any.whl"
    files: dict[str, bytes] = {}
    metadata = wheel_meta = None
    with zipfile.ZipFile(src) as zin:
        for info in zin.infolist():
            name = info.filename
            if name.endswith("/"):
                continue
            top = name.split("/", 1)[0]
            if top.endswith(".dist-info"):
                base = name.split("/", 1)[1]
                if base == "METADATA":
                    metadata = zin.read(name).decode()
                elif base == "WHEEL":
                    wheel_meta = zin.read(name).decode()
                elif base in ("LICENSE", "top_level.txt"):
                    files[f"{dist_info}/{base}"] = zin.read(name)
                continue
            if top != "detectron2":  # sal also ships a top-level `tools` package
                continue
            if re.match(r"detectron2/_C\..*\.so$", name):
                continue
            files[name] = zin.read(name)
    if metadata is None or wheel_meta is None:
        raise SystemExit(f"{src} does not look like a wheel (no METADATA/WHEEL)")
    metadata = re.sub(r"(?m)^Name: .*$", f"Name: {NAME}", metadata)
    metadata = re.sub(r"(?m)^Version: .*$", f"Version: {VERSION}", metadata)
    extra = "".join(f"Requires-Dist: {r}\n" for r in EXTRA_REQUIRES)
    metadata = metadata.replace("Requires-Dist: packaging\n", "Requires-Dist: packaging\n" + extra, 1)
    files[f"{dist_info}/METADATA"] = metadata.encode()
    files[f"{dist_info}/top_level.txt"] = b"detectron2\n"
    wheel_meta = re.sub(r"(?m)^Root-Is-Purelib: .*$", "Root-Is-Purelib: true", wheel_meta)
    wheel_meta = re.sub(r"(?m)^Tag: .*$", "Tag: py3-none-any", wheel_meta)
    files[f"{dist_info}/WHEEL"] = wheel_meta.encode()
    record = [_record_line(p, d) for p, d in files.items()] + [f"{dist_info}/RECORD,,"]
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for path, data in files.items():
            zout.writestr(path, data)
    tmp.replace(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(repack(Path(sys.argv[1]), Path(sys.argv[2])))
