#!/usr/bin/env python3
"""Record which functions `ironcell` executes, in first-call order, for the
linker to place them first (scripts/link-ordered.sh, used by `make build`).

Why: ironcell is a short-lived process whose resident memory is mostly its own
text. The kernel maps up to 64 KiB around each page fault on a file mapping
("fault-around"), so functions used by a run but scattered over the 3.3 MiB of
text pull in most of it. Placed together, they fit in a few hundred KiB.

How: a release binary built exactly as `make build` builds it but not
stripped (the names are needed) is traced with uprobes, one per function,
through tracefs. Unlike a debugger, uprobes follow every process the binary
becomes, including libcontainer's intermediate and init processes (clone3
children a debugger sees as threads). The workload is the lifecycle a
container engine drives: create/start/state/delete, run, exec, kill, list.

Output: crates/cli/link-order.txt, one demangled function name per line
without crate hashes (`core::fmt::Formatter::pad`, generics included, from
v0 mangling), or a C symbol name as is. Names survive rebuilds; a function
that was renamed or is new is simply not ordered. Re-run after large changes:

    sudo python3 scripts/profile-link-order.py

Needs root, tracefs (or debugfs) with uprobe_events, nm/readelf/c++filt
(binutils), and the test image (build/test-image, scripts/build-test-image.sh).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = "x86_64-unknown-linux-gnu"
OUT = os.path.join(REPO, "crates", "cli", "link-order.txt")
GROUP = "ironcell_order"


def tracefs():
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.exists(os.path.join(d, "uprobe_events")):
            return d
    sys.exit("profile-link-order: no tracefs with uprobe_events (mount tracefs or debugfs)")


def build():
    """The release binary with make build's flags, unstripped, in its own target dir."""
    env = dict(os.environ)
    flags = subprocess.run(["make", "-s", "-C", REPO, "print-rustflags"], check=True,
                           capture_output=True, text=True).stdout.strip()
    # Frame pointers: every Rust function then starts with `push %rbp`, an
    # instruction uprobes emulate (see EMULATED). The names and the set of
    # functions do not change, only prologues.
    env["RUSTFLAGS"] = flags + " -C force-frame-pointers=yes"
    env["LIBSECCOMP_LINK_TYPE"] = "static"
    env["LIBSECCOMP_LIB_PATH"] = "/usr/lib/x86_64-linux-gnu"
    env["CARGO_PROFILE_RELEASE_STRIP"] = "false"
    env["IRONCELL_LINK_ORDER"] = "off"
    tdir = os.path.join(REPO, "target", "link-order-profile")
    subprocess.run(["cargo", "build", "--release", "--target", TARGET, "-p", "ironcell-cli",
                    "--target-dir", tdir], check=True, cwd=REPO, env=env)
    return os.path.join(tdir, TARGET, "release", "ironcell")


# Instructions the kernel's x86 uprobes emulate instead of single-stepping
# them out of line: push of a register, nop, and relative call, jmp and jcc.
# PVM hosts get the single-step wrong (the traced program computes garbage),
# so probes go only on these.
EMULATED = re.compile(r"^(push\s+%|nop$|call\s+[0-9a-f]|j(?!rcxz|ecxz)[a-z]{1,3}\s+[0-9a-f])")
# Instructions after which the entry block may not go on.
BLOCK_END = re.compile(r"^(ret|repz ret|jmp|call|notrack|bnd|ud2|hlt|int3|syscall)")


def functions(exe):
    """(file offset of a probe point, mangled name) of every function of exe
    that can be probed: the first emulated instruction of its entry block,
    which runs each time the function is entered."""
    loads = []
    for line in subprocess.run(["readelf", "-lW", exe], check=True, capture_output=True,
                               text=True).stdout.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            loads.append((int(f[2], 16), int(f[1], 16), int(f[4], 16)))  # vaddr, offset, filesz
    # Only symbols with a size: LTO leaves sizeless local labels that point
    # into the middle of other functions.
    names = {}
    for line in subprocess.run(["nm", "-S", "--defined-only", exe], check=True,
                               capture_output=True, text=True).stdout.splitlines():
        f = line.split(None, 3)
        if len(f) == 4 and f[2] in "tTwW" and int(f[1], 16) > 0:
            names.setdefault(int(f[0], 16), f[3])  # aliases: one probe an address
    disasm = subprocess.run(["objdump", "-d", "-w", "--no-show-raw-insn", exe], check=True,
                            capture_output=True, text=True).stdout
    out, current, skipped = [], None, 0
    insn = re.compile(r"^\s*([0-9a-f]+):\s+(\S.*)$")
    for line in disasm.splitlines():
        m = insn.match(line)
        if not m:
            continue
        addr, text = int(m.group(1), 16), m.group(2).strip()
        if addr in names:
            if current is not None:
                skipped += 1
            current = names[addr]
        if current is None:
            continue
        if EMULATED.match(text):
            for vaddr, off, size in loads:
                if vaddr <= addr < vaddr + size:
                    out.append((addr - vaddr + off, current))
                    break
            current = None
        elif BLOCK_END.match(text):
            skipped += 1
            current = None
    print(f"profile-link-order: {len(out)} of {len(names)} functions can be probed "
          f"({skipped} have no emulated instruction in their entry block)", file=sys.stderr)
    return out


def strip_hashes(name):
    """A demangled name without crate disambiguators (v0: `core[3c1c0]`) or the
    legacy mangling's trailing hash (`::h0123456789abcdef`): what
    scripts/link-ordered.sh's sed does."""
    name = re.sub(r"\[[0-9a-f]+\]", "", name)
    return re.sub(r"::h[0-9a-f]{16}$", "", name)


def demangle(names):
    res = subprocess.run(["c++filt"], input="\n".join(names) + "\n", check=True,
                         capture_output=True, text=True).stdout.splitlines()
    return [strip_hashes(n) for n in res]


def workload(exe, bundle_src, work):
    """The commands a container engine runs, each checked."""
    root = os.path.join(work, "root")
    bundle = os.path.join(work, "bundle")
    os.makedirs(bundle)
    with open(os.path.join(bundle_src, "config.json")) as f:
        cfg = json.load(f)
    cfg["root"]["path"] = os.path.join(os.path.abspath(bundle_src), cfg["root"]["path"])
    cfg["process"]["terminal"] = False

    def write(args):
        cfg["process"]["args"] = args
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(cfg, f)

    def ic(*args):
        # stderr to a file, not a pipe: the container's init inherits it and
        # keeps a pipe open until the container ends.
        with tempfile.TemporaryFile(mode="w+") as err:
            r = subprocess.run([exe, "--root", root, *args], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=err)
            if r.returncode != 0:
                err.seek(0)
                sys.exit(f"profile-link-order: ironcell {' '.join(args)}: {err.read().strip()}")

    write(["/bin/true"])
    for i in range(3):
        ic("run", "--bundle", bundle, f"prof-run-{i}")
    write(["/bin/sleep", "30"])
    ic("create", "--bundle", bundle, "prof-life")
    ic("state", "prof-life")
    ic("start", "prof-life")
    ic("list")
    ic("ps", "prof-life")
    ic("exec", "prof-life", "/bin/true")
    ic("kill", "prof-life", "KILL")
    time.sleep(0.2)
    ic("delete", "prof-life")


def main():
    tfs = tracefs()
    bundle_src = os.path.join(REPO, "build", "test-image", "bundle")
    if not os.path.isdir(bundle_src):
        subprocess.run(["bash", os.path.join(REPO, "scripts", "build-test-image.sh"),
                        os.path.join(REPO, "build", "test-image")], check=True)
    exe = build()
    funcs = functions(exe)
    # Probes on a copy, so that a rebuild meanwhile cannot race the probes.
    work = tempfile.mkdtemp(prefix="ironcell-link-order-")
    probed = os.path.join(work, "ironcell")
    shutil.copy2(exe, probed)

    def tw(path, text, mode="w"):
        with open(os.path.join(tfs, path), mode) as f:
            f.write(text)

    by_event, buffer_kb = {}, None
    try:
        tw("tracing_on", "0")
        tw("trace", "")
        with open(os.path.join(tfs, "buffer_size_kb")) as f:
            buffer_kb = f.read().split()[0]
        tw("buffer_size_kb", "65536")
        # One write per probe: the kernel parses each write on its own.
        fd = os.open(os.path.join(tfs, "uprobe_events"), os.O_WRONLY | os.O_APPEND)
        try:
            for i, (off, name) in enumerate(funcs):
                ev = f"f{i}"
                try:
                    os.write(fd, f"p:{GROUP}/{ev} {probed}:0x{off:x}\n".encode())
                    by_event[ev] = name
                except OSError as e:
                    print(f"profile-link-order: no probe on {name}: {e}", file=sys.stderr)
        finally:
            os.close(fd)
        tw(f"events/{GROUP}/enable", "1")
        tw("tracing_on", "1")
        workload(probed, bundle_src, work)
        tw("tracing_on", "0")
        order, seen = [], set()
        with open(os.path.join(tfs, "trace")) as f:
            for line in f:
                # "   ironcell-21960 [000] ... 9579.152367: f7318: (0x7fe2d8bf0060)"
                m = re.search(r"\s(f\d+): \(", line)
                if not m:
                    continue
                ev = m.group(1)
                if ev not in seen:
                    seen.add(ev)
                    order.append(by_event[ev])
    finally:
        tw("tracing_on", "0")
        if os.path.isdir(os.path.join(tfs, "events", GROUP)):
            tw(f"events/{GROUP}/enable", "0")
        with open(os.path.join(tfs, "uprobe_events")) as f:
            ours = [l.split()[0].split(":", 1)[1] for l in f if f":{GROUP}/" in l]
        if ours and len(ours) == len(open(os.path.join(tfs, "uprobe_events")).readlines()):
            # Only ours: truncating removes them all at once (one by one
            # takes minutes).
            os.close(os.open(os.path.join(tfs, "uprobe_events"), os.O_WRONLY | os.O_TRUNC))
        else:
            fd = os.open(os.path.join(tfs, "uprobe_events"), os.O_WRONLY | os.O_APPEND)
            for ev in ours:
                os.write(fd, f"-:{ev}\n".encode())
            os.close(fd)
        if buffer_kb:
            tw("buffer_size_kb", buffer_kb)
        subprocess.run([exe, "--root", os.path.join(work, "root"), "delete", "--force",
                        "prof-life"], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    if not order:
        sys.exit("profile-link-order: no function was traced")
    names, out, dup = demangle(order), [], set()
    for n in names:
        if n not in dup:
            dup.add(n)
            out.append(n)
    with open(OUT, "w") as f:
        f.write("# Functions `ironcell` runs, in first-call order: the linker places them first\n")
        f.write("# (scripts/link-ordered.sh). Generated by scripts/profile-link-order.py.\n")
        f.write("\n".join(out) + "\n")
    print(f"profile-link-order: {len(out)} of {len(funcs)} functions ran; wrote {OUT}")


if __name__ == "__main__":
    main()
