"""`ninja` as seen by mmcv's setup.py while scripts/build_mmcv_wheel.sh builds mmcv's ops.

torch.utils.cpp_extension writes build.ninja (one `compile` edge per source) and runs
`ninja -v -j N` in that build directory. build_mmcv_wheel.sh puts a `ninja` shim running
this script first on PATH; it edits build.ninja, then runs the real ninja:

- `-g0` is appended to the compile flags: no debug info (nothing uses it; it doubles the
  compile time). -g does not change the generated code, only adds the DWARF sections.
- mmcv's common header `pytorch_cpp_helper.hpp` (torch/types.h, <vector>, `using namespace
  at`, CHECK_* macros) is precompiled by the exact command ninja runs for one source (the
  same tokens, the source swapped for the header), and every source except pybind.cpp gets
  `-include <that header> -Winvalid-pch -Werror=invalid-pch`. 63 of the 77 sources include
  it first anyway; 13 include <iostream>, <queue>, ATen or box_iou_rotated_utils.hpp before
  it. The linked _ext .so is the same as without (byte for byte once the debug info of the
  old -g build is stripped, apart from the build id and the temporary source path).
- gcc silently skips a precompiled header whose flags differ in what it checks (-D/-U,
  -std, -fPIC, ...; -O and -g it accepts), hence the exact command; and before any source
  uses it, a check edge compiles pytorch/nms.cpp with `-H` and requires gcc's "! ...gch"
  line (= loaded). -Werror=invalid-pch turns any later rejection into a compile error.
  Precompiling runs as a ninja edge next to pybind.cpp (the longest source; first include
  <torch/extension.h>, which must come before the standard headers: left alone).
- If the header cannot be precompiled or is not used, or the build with it fails, the
  build falls back to the plain (-g0) build and says so.
- One progress line per finished object goes to stdout, e.g.
  `[mmcv 12/77] roi_align.cpp compiled, 35 s in, ~60 s left`, and a summary at the end
  (compile times from .ninja_log).

Environment: MMCV_REAL_NINJA (the real ninja; required), MMCV_PCH=0 (plain -g0 build).
The check edge runs this file with the interpreter running it: --check-pch GCH STAMP -- CMD...
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
    if not path or not os.access(path, os.X_OK):
        sys.exit(f"mmcv_ninja.py: MMCV_REAL_NINJA={path!r} is not an executable ninja")
    return path


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
    edges = [(i, BUILD_RE.match(line)) for i, line in enumerate(lines)]
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
    body = [line for i, line in enumerate(lines) if i not in idx]
    ordered = [lines[e[0]] for e in slow + rest]
    lines = body[:first] + ordered + body[first:]
    return "\n".join(lines) + "\n", [(o, s) for _, o, s in slow + rest]


def compile_command(ninja, build_file, obj):
    """The exact command line ninja runs for `obj`, as tokens."""
    out = subprocess.run([ninja, "-f", build_file, "-t", "commands", obj], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()
    return shlex.split(out[-1])


def without_depfile(cmd):
    """`cmd` without gcc's -MMD -MF FILE (the dependency file ninja reads for its edge)."""
    out, skip = [], False
    for tok in cmd:
        if skip:
            skip = False
        elif tok == "-MF":
            skip = True
        elif tok != "-MMD":
            out.append(tok)
    return out


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

    # precompile: the same tokens minus the dependency file, the header for the source
    base = without_depfile(cmd)
    pch_cmd = [gch if t == obj else t for t in base]
    if pch_cmd.count(gch) != 1 or pch_cmd.count(src) != 1:
        raise RuntimeError(f"unexpected compile command: {shlex.join(cmd)}")
    pch_cmd[pch_cmd.index(src):pch_cmd.index(src) + 1] = ["-x", "c++-header", header]
    use = ["-include", header, "-Winvalid-pch", "-Werror=invalid-pch"]
    # check: the same compile with the header pre-included, its object elsewhere
    check_cmd = [os.path.join(pch_dir, "check.o") if t == obj else t for t in base] + use + ["-H"]

    def q(tokens):
        return " ".join(ninja_escape(shlex.quote(t)) for t in tokens)

    checker = [sys.executable, os.path.abspath(__file__), "--check-pch", gch, stamp, "--"]
    rules = (
        f"rule mmcv_pch\n  command = {q(pch_cmd)}\n\n"
        f"rule mmcv_pch_check\n  command = {q(checker + check_cmd)}\n\n"
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
    used = any(line.strip() == f"! {gch}" for line in r.stderr.splitlines())
    if r.returncode or not used:
        sys.stdout.write(r.stderr[-3000:])
        print(f"[mmcv] the precompiled header {gch} is not used "
              f"(compiler exit {r.returncode}; no '! {gch}' line in gcc -H output)")
        return 1
    with open(stamp, "w") as f:
        f.write("precompiled header used\n")
    return 0


def run_ninja(ninja, args, n_objects, label):
    """Run the real ninja, passing its output through and adding one progress line per
    finished object. Returns its exit status."""
    t0 = time.monotonic()
    log_start = log_lines()
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
        out = re.search(r" -o (\S+)", cmd)
        if "--check-pch" in cmd:
            if not os.path.exists(cmd.split(" -- ")[0].split()[-1]):  # the stamp: check failed
                continue
            what = f"checked that gcc uses the precompiled {HEADER}"
            t_ref, done_ref = now, done
        elif not out or not os.path.exists(out.group(1)):  # failed (ninja prints FAILED next)
            continue
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
    say(f"[mmcv] {label}: ninja {'finished' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s"
        + (f"; {log_summary(log_start)}" if rc == 0 else ""))
    return rc


def log_lines():
    try:
        with open(".ninja_log") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def log_summary(skip):
    """Compile times of this run (the .ninja_log lines after the first `skip`: start and end
    in ms per output), for the build log."""
    try:
        with open(".ninja_log") as f:
            rows = [line.rstrip("\n").split("\t") for line in list(f)[skip:] if not line.startswith("#")]
        times = {r[3]: (int(r[1]) - int(r[0])) / 1000 for r in rows if len(r) >= 4}
    except (OSError, ValueError):
        return "no .ninja_log"
    objs = sorted(((t, os.path.basename(o)) for o, t in times.items() if o.endswith(".o")), reverse=True)
    if not objs:
        return "no objects in .ninja_log"
    other = ", ".join(f"{os.path.basename(o)} {t:.1f} s" for o, t in times.items() if not o.endswith(".o"))
    med = objs[len(objs) // 2][0]
    return (f"compiler time {sum(t for t, _ in objs):.0f} s over {len(objs)} objects (median {med:.1f} s, "
            f"slowest {', '.join(f'{n} {t:.1f} s' for t, n in objs[:3])})" + (f", {other}" if other else ""))


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
            n_pch = sum(os.path.basename(src) not in NO_PCH for _, src in edges)
            say(f"[mmcv] precompiling {HEADER}; compiling {n} sources with -g0, {n_pch} of them "
                f"with the precompiled header (ninja {shlex.join(args)})")
            if run_ninja(ninja, args, n, "with the precompiled header") == 0:
                say(f"[mmcv] compiled {n} objects in {time.monotonic() - t0:.0f} s (precompiled header: used)")
                return 0
            say("[mmcv] the build with the precompiled header failed (see the build log); "
                "falling back to the plain -g0 build")
    with open("build.ninja", "w") as f:
        f.write(plain)
    say(f"[mmcv] compiling {n} sources with -g0, no precompiled header (ninja {shlex.join(args)})")
    rc = run_ninja(ninja, args, n, "plain -g0 build")
    if rc == 0:
        say(f"[mmcv] compiled {n} objects in {time.monotonic() - t0:.0f} s (precompiled header: not used)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
