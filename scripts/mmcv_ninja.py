"""`ninja` as seen by mmcv's setup.py while scripts/build_mmcv_wheel.sh builds mmcv's ops.

torch.utils.cpp_extension writes build.ninja (one `compile` edge per source) and runs
`ninja -v -j N` in that build directory. build_mmcv_wheel.sh puts a `ninja` shim running
this script first on PATH; it edits build.ninja, then runs the real ninja:

- `-g0` is appended to the compile flags: no debug info (nothing uses it; it doubles the
  compile time). -g does not change the generated code, only adds the DWARF sections.
- mmcv's common header `pytorch_cpp_helper.hpp` (torch/types.h plus a few macros) is
  precompiled by the exact command ninja runs for one source (the same tokens, the source
  swapped for the header), and every source except pybind.cpp gets
  `-include <that header> -Winvalid-pch -Werror=invalid-pch`. A precompiled header built
  with other flags would be silently skipped, so before any source uses it a check compiles
  nms.cpp with `-H` and requires gcc's "! ...gch" line (= loaded). -Werror=invalid-pch turns
  any later rejection into a compile error. Precompiling runs as a ninja edge, next to
  pybind.cpp (the longest source, which does not use the header).
- If the header cannot be precompiled or is not used, or the build with it fails, the
  build falls back to the plain (-g0) build and says so.
- One progress line per finished object goes to stdout:
  `[mmcv k/N] compiled roi_align.cpp (1.6 s), ~40 s left`, and a summary at the end.

Environment: MMCV_REAL_NINJA (the real ninja), MMCV_PCH=0 (skip the precompiled header),
PYTHON running this script is the one that runs the check edge (sys.executable).
Usage as a check edge: mmcv_ninja.py --check-pch GCH STAMP -- COMPILE_COMMAND...
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

HEADER = "pytorch_cpp_helper.hpp"  # the header (nearly) all sources include first
CHECK_SOURCE = "/pytorch/nms.cpp"  # compiled with -H to prove the precompiled header is loaded
NO_PCH = ("pybind.cpp",)  # first include is <torch/extension.h> (Python.h must come first)
PCH_DIR = "mmcv_pch"
BUILD_RE = re.compile(r"^build (\S+): compile (\S+)$")


def say(msg):
    print(msg, flush=True)


def real_ninja():
    path = os.environ.get("MMCV_REAL_NINJA")
    if path:
        return path
    me = os.path.dirname(os.path.abspath(sys.argv[0]))
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if os.path.abspath(d or ".") != me]
    found = shutil.which("ninja", path=os.pathsep.join(dirs))
    if not found:
        sys.exit("mmcv_ninja.py: no real ninja on PATH (set MMCV_REAL_NINJA)")
    return found


def ninja_escape(s):
    return s.replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def set_var(text, name, value):
    """Replace the top-level `name = ...` line of build.ninja."""
    new, n = re.subn(rf"^{name} = .*$", lambda _: f"{name} = {value}", text, count=1, flags=re.M)
    if n != 1:
        raise RuntimeError(f"build.ninja has no '{name} = ' line")
    return new


def get_var(text, name):
    m = re.search(rf"^{name} = (.*)$", text, flags=re.M)
    if not m:
        raise RuntimeError(f"build.ninja has no '{name} = ' line")
    return m.group(1)


def plain_ninja(text):
    """build.ninja with -g0 added and pybind.cpp's edge first (it takes the longest: start it
    first so it does not run alone at the end). Returns (text, [(obj, src)])."""
    text = set_var(text, "post_cflags", get_var(text, "post_cflags") + " -g0")
    lines = text.splitlines()
    edges = [(i, BUILD_RE.match(l)) for i, l in enumerate(lines)]
    edges = [(i, m.group(1), m.group(2)) for i, m in edges if m]
    if not edges:
        raise RuntimeError("build.ninja has no compile edges")
    first = edges[0][0]
    slow = [e for e in edges if os.path.basename(e[2]) in NO_PCH]
    rest = [e for e in edges if e not in slow]
    idx = {e[0] for e in edges}
    # compile edges carry no indented variables in torch's build.ninja: each is one line
    if any(i + 1 < len(lines) and lines[i + 1].startswith(" ") for i in idx):
        raise RuntimeError("unexpected build.ninja layout (indented lines after a compile edge)")
    body = [l for i, l in enumerate(lines) if i not in idx]
    ordered = [lines[e[0]] for e in slow + rest]
    lines = body[:first] + ordered + body[first:]
    return "\n".join(lines) + "\n", [(o, s) for _, o, s in slow + rest]


def compile_command(ninja, build_file, obj):
    """The exact command line ninja runs for `obj`, as tokens."""
    out = subprocess.run([ninja, "-f", build_file, "-t", "commands", obj], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    return shlex.split(out[-1])


def pch_ninja(text, edges, ninja, build_dir):
    """Add the precompile + check edges to the plain build.ninja `text`; every source but
    NO_PCH gets -include. Returns the new text."""
    check = [(o, s) for o, s in edges if s.endswith(CHECK_SOURCE)]
    if not check:
        raise RuntimeError(f"{CHECK_SOURCE} is not among the sources")
    obj, src = check[0]
    tmp = os.path.join(build_dir, "build.ninja.plain")
    with open(tmp, "w") as f:
        f.write(text)
    cmd = compile_command(ninja, tmp, obj)
    os.unlink(tmp)
    found = [t[2:] for t in cmd if t.startswith("-I") and os.path.isfile(os.path.join(t[2:], HEADER))]
    if not found:
        raise RuntimeError(f"{HEADER} is in none of the -I directories")
    header_src = os.path.join(found[0], HEADER)
    pch_dir = os.path.join(build_dir, PCH_DIR)
    os.makedirs(pch_dir, exist_ok=True)
    header = os.path.join(pch_dir, HEADER)  # a copy: the .gch must sit next to the -include path
    shutil.copyfile(header_src, header)
    gch = header + ".gch"
    stamp = os.path.join(pch_dir, "check.stamp")

    # precompile: the same tokens, minus the dependency-file options, source -> header
    pch_cmd, skip = [], 0
    for i, tok in enumerate(cmd):
        if skip:
            skip -= 1
        elif tok == "-MMD":
            pass
        elif tok == "-MF":
            skip = 1
        elif tok == src:
            pch_cmd += ["-x", "c++-header", header]
        elif tok == obj:
            pch_cmd.append(gch)
        else:
            pch_cmd.append(tok)
    if header not in pch_cmd or gch not in pch_cmd:
        raise RuntimeError(f"could not derive the precompile command from: {shlex.join(cmd)}")
    use = ["-include", header, "-Winvalid-pch", "-Werror=invalid-pch"]
    check_cmd, skip = [], 0  # the same compile, its output elsewhere, no dependency file
    for tok in cmd:
        if skip:
            skip -= 1
        elif tok == "-MF":
            skip = 1
        elif tok != "-MMD":
            check_cmd.append(os.path.join(pch_dir, "check.o") if tok == obj else tok)
    check_cmd += use + ["-H"]

    def q(tokens):
        return " ".join(ninja_escape(shlex.quote(t)) for t in tokens)

    rules = (
        f"rule mmcv_pch\n  command = {q(pch_cmd)}\n\n"
        f"rule mmcv_pch_check\n  command = {q([sys.executable, os.path.abspath(__file__), '--check-pch', gch, stamp, '--'] + check_cmd)}\n\n"
        f"build {ninja_escape(gch)}: mmcv_pch {ninja_escape(header)}\n"
        f"build {ninja_escape(stamp)}: mmcv_pch_check | {ninja_escape(gch)}\n\n"
    )
    out = []
    for line in text.splitlines():
        m = BUILD_RE.match(line)
        if m and os.path.basename(m.group(2)) not in NO_PCH:
            line += f" | {ninja_escape(stamp)}\n  post_cflags = $post_cflags {q(use)}"
        out.append(line)
    text = "\n".join(out) + "\n"
    at = text.index("rule compile")
    return text[:at] + rules + text[at:]


def check_pch(argv):
    """Check edge: run the compile with -H; gcc prints '! GCH' when it loads the precompiled
    header ('x GCH' when it rejects it; nothing when it does not find it)."""
    gch, stamp, sep, *cmd = argv
    assert sep == "--"
    r = subprocess.run(cmd, capture_output=True, text=True)
    used = any(l.strip() == f"! {gch}" for l in r.stderr.splitlines())
    if r.returncode or not used:
        sys.stdout.write(r.stderr[-3000:])
        print(f"mmcv_ninja.py: the precompiled header {gch} is not used "
              f"(compiler exit {r.returncode}; no '! {gch}' line in gcc -H output)")
        return 1
    with open(stamp, "w") as f:
        f.write("precompiled header used\n")
    return 0


def run_ninja(ninja, args, n_objects, label):
    """Run the real ninja, passing its output through and adding one progress line per
    finished object. Returns its exit status."""
    t0 = time.monotonic()
    t_ref, done_ref = t0, 0  # the time-left estimate counts from when the header is ready
    done = 0
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    p = subprocess.Popen([ninja] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, errors="replace", env=env)
    for line in p.stdout:
        sys.stdout.write(line)
        m = re.match(r"^\[\d+/\d+\] (.*)", line)
        if not m:
            continue
        now = time.monotonic()
        cmd = m.group(1)
        if "--check-pch" in cmd:
            what = f"checked that gcc uses the precompiled {HEADER}"
            t_ref, done_ref = now, done
        elif "c++-header" in cmd:
            what = f"precompiled {HEADER}"
        else:
            src = re.search(r" -c (\S+\.cpp)\b", cmd)
            if not src:
                continue
            done += 1
            what = src.group(1).split("/csrc/pytorch/")[-1] + " compiled"
        left = ""
        if done > done_ref and done < n_objects:
            left = f", ~{(now - t_ref) / (done - done_ref) * (n_objects - done):.0f} s left"
        say(f"[mmcv {done}/{n_objects}] {what}, {now - t0:.0f} s in{left}")
    rc = p.wait()
    say(f"[mmcv] {label}: ninja {'finished' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s")
    return rc


def main():
    if sys.argv[1:2] == ["--check-pch"]:
        return check_pch(sys.argv[2:])
    args = sys.argv[1:]
    ninja = real_ninja()
    if "-t" in args or "--version" in args or not os.path.isfile("build.ninja"):
        os.execv(ninja, [ninja] + args)  # queries (torch runs `ninja --version`): pass through
    build_dir = os.getcwd()
    with open("build.ninja") as f:
        original = f.read()
    with open("build.ninja.orig", "w") as f:
        f.write(original)
    plain, edges = plain_ninja(original)
    n = len(edges)
    t0 = time.monotonic()
    if os.environ.get("MMCV_PCH", "1") != "0":
        try:
            text = pch_ninja(plain, edges, ninja, build_dir)
        except Exception as e:  # noqa: BLE001 - any problem: plain build
            say(f"[mmcv] cannot set up the precompiled header ({e}); plain -g0 build")
        else:
            with open("build.ninja", "w") as f:
                f.write(text)
            say(f"[mmcv] compiling {n} sources with -g0 and a precompiled {HEADER} ({args})")
            if run_ninja(ninja, args, n, "with the precompiled header") == 0:
                say(f"[mmcv] compiled {n} objects in {time.monotonic() - t0:.0f} s (precompiled header: used)")
                return 0
            say("[mmcv] the build with the precompiled header failed (above); "
                "falling back to the plain -g0 build")
    with open("build.ninja", "w") as f:
        f.write(plain)
    say(f"[mmcv] compiling {n} sources with -g0, no precompiled header ({args})")
    rc = run_ninja(ninja, args, n, "plain -g0 build")
    if rc == 0:
        say(f"[mmcv] compiled {n} objects in {time.monotonic() - t0:.0f} s (precompiled header: not used)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
