#!/usr/bin/env python3
"""Start-up benchmark of the VMM: boot the minimal test guest `hello`
(crates/vmm/tests/guests/hello.S: prints "hello from ironcell guest" on the
serial port and resets) with 1 vCPU and 128 MiB, in ironcell-vmm and in
QEMU's microvm machine, interleaved.

For each of --runs iterations every VMM boots the guest once (round robin;
the VMM that goes first rotates from iteration to iteration). Measured per
run:
  * first byte: time.perf_counter_ns() from just before subprocess.Popen of
    the VMM to just after the first byte of its stdout (the guest's serial
    port) has been read from the pipe;
  * exit: from the same start to just after os.wait4() returned for it
    (stdout and stderr are read to EOF first);
  * peak RSS: ru_maxrss (KiB) of the VMM process from wait4().

    Caveat: at execve the kernel folds the RSS high-water mark of the memory
    being left into the process's ru_maxrss, so a VMM spawned straight from
    Python never reports less than this Python process's own RSS (~10-15
    MiB). So, as bench/run_bench.py does, each slot has a second, untimed run
    of the same VMM under GNU time (`/usr/bin/time -f "%x %M"`, Debian
    package "time"), which forks and execs the VMM from its own small
    process: its %M is the VMM's own ru_maxrss. The table shows that value;
    the timed run's raw wait4() value is kept in the JSON
    ("direct_wait4_maxrss_kib"). With --rss-tool none the table shows the raw
    value (an upper bound, floored at Python's RSS).

A run counts only if the VMM exits 0 within --timeout seconds and its stdout
contains the line "hello from ironcell guest" (the RSS run is held to the
same); failed runs are listed, left out of the statistics and make the
script exit 1.

Command lines (the guest is built with crates/vmm/tests/guests/build.sh
into a temp dir unless --kernel is given):
  ironcell-vmm --kernel hello.elf --memory 128 --vcpus 1 --serial stdout
  qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=off,
      pit=off,pic=off,acpi=off -enable-kvm -cpu host -nodefaults
      -no-user-config -display none -serial stdio -no-reboot -m 128
      -kernel hello.elf
QEMU's microvm has no i8042, so its run ends at the guest's fallback, a
triple fault, which -no-reboot turns into an exit with status 0. On the PVM
host (kvm_pvm) QEMU 7.2 aborts with `-cpu host` ("failed to set MSR 0x10a",
IA32_ARCH_CAPABILITIES): a first probe run detects that and switches to
`-cpu host,-arch-capabilities`, with a note (--qemu-cpu sets it explicitly).

Python 3 standard library only. Needs read/write access to /dev/kvm.
"""

import argparse
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST_BUILD = os.path.join(REPO, "crates", "vmm", "tests", "guests", "build.sh")
VMM_CANDIDATES = [
    os.path.join(REPO, "target", "x86_64-unknown-linux-musl", "release", "ironcell-vmm"),
    os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "ironcell-vmm"),
    os.path.join(REPO, "target", "release", "ironcell-vmm"),
]
HELLO_LINE = b"hello from ironcell guest\n"
MEMORY_MIB = 128
QEMU_MACHINE = "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off,acpi=off"
QEMU_CPU_FALLBACK = "host,-arch-capabilities"


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Boot the minimal `hello` guest in ironcell-vmm and QEMU microvm "
        "(time to the first serial byte, time to exit, peak RSS), interleaved.")
    p.add_argument("--vmm", metavar="PATH",
                   help="ironcell-vmm binary (default: the first of "
                   + ", ".join(os.path.relpath(c, REPO) for c in VMM_CANDIDATES)
                   + " that exists); skipped with a message if missing")
    p.add_argument("--qemu", default="qemu-system-x86_64", metavar="PATH",
                   help="QEMU binary (default qemu-system-x86_64 in PATH); skipped if missing")
    p.add_argument("--qemu-cpu", metavar="MODEL",
                   help="QEMU -cpu value (default: host, or host,-arch-capabilities "
                   "when a probe run shows that -cpu host aborts, as on kvm_pvm)")
    p.add_argument("--kernel", metavar="ELF",
                   help="guest ELF (default: hello.elf built by "
                   "crates/vmm/tests/guests/build.sh into a temp dir)")
    benchlib.add_run_args(p, "VMM")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds before a run is killed and counted as failed (default 10)")
    p.add_argument("--rss-tool", default="/usr/bin/time", metavar="PATH",
                   help="GNU time, for a second run per slot that measures peak RSS "
                   "without Python's RSS leaking in (default /usr/bin/time); 'none' "
                   "to use the timed run's own ru_maxrss")
    p.add_argument("--json", metavar="FILE", help="also write every run and the summaries")
    p.add_argument("--gap-ms", type=int, default=0, metavar="MS",
                   help="idle time before each timed run (default 0: back to back, each VMM "
                        "starting while the other's exit is still being torn down by the kernel)")
    a = p.parse_args(argv)
    benchlib.check_run_args(p, a)
    return a


def ironcell_argv(vmm, kernel):
    return [vmm, "--kernel", kernel, "--memory", str(MEMORY_MIB), "--vcpus", "1",
            "--serial", "stdout"]


def qemu_argv(qemu, kernel, cpu):
    return [qemu, "-M", QEMU_MACHINE, "-enable-kvm", "-cpu", cpu, "-nodefaults",
            "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-m", str(MEMORY_MIB), "-kernel", kernel]


def timed_run(argv, timeout):
    """Popen argv (stdin /dev/null, stdout and stderr piped), read both to EOF,
    wait4 it. Times in ns from just before Popen."""
    t0 = time.perf_counter_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t_first = None
    out, err = bytearray(), bytearray()
    timed_out = False
    sel = selectors.DefaultSelector()
    fd_out, fd_err = p.stdout.fileno(), p.stderr.fileno()
    sel.register(fd_out, selectors.EVENT_READ)
    sel.register(fd_err, selectors.EVENT_READ)
    deadline = t0 + int(timeout * 1e9)
    try:
        while sel.get_map():
            left = (deadline - time.perf_counter_ns()) / 1e9
            if left <= 0:
                timed_out = True
                p.kill()
                break
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if key.fd == fd_out and data and t_first is None:
                    t_first = time.perf_counter_ns()
                if not data:
                    sel.unregister(key.fd)
                elif key.fd == fd_out:
                    out += data
                else:
                    err += data
    finally:
        sel.close()
    _, status, ru = os.wait4(p.pid, 0)
    t_exit = time.perf_counter_ns()
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    p.stdout.close()
    p.stderr.close()
    return {
        "first_byte_ms": (t_first - t0) / 1e6 if t_first is not None else None,
        "exit_ms": (t_exit - t0) / 1e6,
        "exit": p.returncode,
        "timed_out": timed_out,
        "direct_wait4_maxrss_kib": ru.ru_maxrss,
        "stdout": bytes(out),
        "stderr": bytes(err),
    }


def rss_run(argv, rss_tool, timeout, work):
    """argv under GNU time: (KiB or None, error or None)."""
    tfile = os.path.join(work, "time.txt")
    ofile = os.path.join(work, "rss-run.out")
    with open(ofile, "wb") as out:
        try:
            r = subprocess.run(benchlib.gnu_time_argv(rss_tool, tfile, argv),
                               stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"RSS run timed out after {timeout} s"
    with open(ofile, "rb") as f:
        output = f.read()
    kib = benchlib.gnu_time_maxrss(tfile, r.returncode)
    if kib is None:
        return None, f"RSS run failed (exit {r.returncode}): {short(output)}"
    if HELLO_LINE not in output:
        return None, f"RSS run: no hello line in the output: {short(output)}"
    return kib, None


def short(b, n=300):
    s = b.decode(errors="replace").strip()
    return repr(s if len(s) <= n else s[:n] + "...")


def do_run(vm, kernel, timeout, rss_tool, work):
    r = timed_run(vm["argv"], timeout)
    errors = []
    if r["timed_out"]:
        errors.append(f"killed after {timeout} s")
    elif r["exit"] != 0:
        errors.append(f"exit status {r['exit']}")
    if HELLO_LINE not in r["stdout"]:
        errors.append("no 'hello from ironcell guest' line in the output")
    if errors:
        errors.append(f"stdout {short(r['stdout'])}, stderr {short(r['stderr'])}")
    rec = {k: v for k, v in r.items() if k not in ("stdout", "stderr")}
    rec["maxrss_kib"] = r["direct_wait4_maxrss_kib"]
    if rss_tool and not errors:
        kib, err = rss_run(vm["argv"], rss_tool, timeout, work)
        rec["maxrss_kib"] = kib
        if err:
            errors.append(err)
    rec["errors"] = errors
    rec["ok"] = not errors
    return rec


def probe_qemu_cpu(qemu, kernel, timeout):
    """-cpu host, or the fallback when QEMU aborts setting MSR 0x10a (kvm_pvm)."""
    r = timed_run(qemu_argv(qemu, kernel, "host"), timeout)
    if r["exit"] == 0 and HELLO_LINE in r["stdout"]:
        return "host"
    if b"failed to set MSR" in r["stderr"]:
        log("vmm_bench: NOTE: QEMU aborts with `-cpu host` on this host "
            f"({short(r['stderr'], 120)}); using `-cpu {QEMU_CPU_FALLBACK}` (kvm_pvm "
            "rejects IA32_ARCH_CAPABILITIES)")
        return QEMU_CPU_FALLBACK
    log(f"vmm_bench: warning: QEMU probe run failed (exit {r['exit']}, stderr "
        f"{short(r['stderr'])}); keeping -cpu host")
    return "host"


# Summary keys (also in the JSON) per record field.
SUMMARY_COLUMNS = [
    ("first_byte_ms", {"median": "first_byte_median_ms", "min": "first_byte_min_ms",
                       "max": "first_byte_max_ms"}),
    ("exit_ms", {"median": "exit_median_ms", "min": "exit_min_ms", "max": "exit_max_ms"}),
    ("maxrss_kib", {"median": "rss_median_kib", "max": "rss_max_kib"}),
]
TABLE_CELLS = [("first_byte_median_ms", ".2f"), ("first_byte_min_ms", ".2f"),
               ("first_byte_max_ms", ".2f"), ("exit_median_ms", ".2f"),
               ("exit_min_ms", ".2f"), ("exit_max_ms", ".2f"),
               ("rss_median_kib", ".0f"), ("rss_max_kib", ".0f")]


def print_table(active, results):
    headers = ["VMM", "runs ok", "first byte ms median", "min", "max",
               "exit ms median", "min", "max", "peak RSS KiB median", "max"]
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    for vm in active:
        row = benchlib.summary_row(vm["name"], results[vm["name"]]["summary"], TABLE_CELLS)
        print("| " + " | ".join(row) + " |")
    names = [vm["name"] for vm in active]
    if "ironcell" in names and "QEMU" in names:
        a, b = results["ironcell"]["summary"], results["QEMU"]["summary"]
        print()
        if a["ok"] and b["ok"]:
            print("Ratios of medians ironcell/QEMU (below 1: ironcell is faster / smaller): "
                  f"first byte {a['first_byte_median_ms'] / b['first_byte_median_ms']:.3f}x, "
                  f"exit {a['exit_median_ms'] / b['exit_median_ms']:.3f}x, "
                  f"peak RSS {a['rss_median_kib'] / b['rss_median_kib']:.3f}x")
        else:
            print("Ratios ironcell/QEMU: n/a (no successful runs)")


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("vmm_bench: /dev/kvm is missing or not accessible (run as root)")
        return 2

    # VMMs: a missing binary is reported loudly and skipped.
    skipped = {}
    vmm = None
    for cand in ([a.vmm] if a.vmm else VMM_CANDIDATES):
        vmm = benchlib.resolve(cand)
        if vmm:
            break
    if vmm is None:
        why = (f"{a.vmm} not found or not executable" if a.vmm else
               "no ironcell-vmm binary at " + " or ".join(
                   os.path.relpath(c, REPO) for c in VMM_CANDIDATES) + " (build it, or pass --vmm PATH)")
        skipped["ironcell"] = why
        log("vmm_bench: " + "!" * 60)
        log(f"vmm_bench: SKIPPING ironcell-vmm: {why}")
        log("vmm_bench: " + "!" * 60)
    qemu = benchlib.resolve(a.qemu)
    if qemu is None:
        skipped["QEMU"] = f"{a.qemu} not found (Debian package qemu-system-x86)"
        log(f"vmm_bench: SKIPPING QEMU: {skipped['QEMU']}")
    if vmm is None and qemu is None:
        log("vmm_bench: no VMM to benchmark")
        return 2

    rss_tool, rss_method = benchlib.resolve_rss_tool(
        "vmm_bench", a.rss_tool, "peak RSS is the timed run's own ru_maxrss, floored at "
        "this Python process's RSS")

    load1 = benchlib.check_load("vmm_bench")

    work = tempfile.mkdtemp(prefix="ironcell-vmm-bench-")
    try:
        kernel = a.kernel
        if kernel is None:
            gdir = os.path.join(work, "guests")
            t = time.perf_counter()
            subprocess.run(["sh", GUEST_BUILD, gdir], check=True)
            log(f"vmm_bench: built the test guests in {time.perf_counter() - t:.2f} s")
            kernel = os.path.join(gdir, "hello.elf")
        kernel = os.path.abspath(kernel)
        if not os.path.isfile(kernel):
            log(f"vmm_bench: no guest kernel {kernel}")
            return 2

        active = []
        if vmm:
            active.append({"name": "ironcell", "path": vmm, "argv": ironcell_argv(vmm, kernel)})
        if qemu:
            cpu = a.qemu_cpu or probe_qemu_cpu(qemu, kernel, a.timeout)
            active.append({"name": "QEMU", "path": qemu, "argv": qemu_argv(qemu, kernel, cpu)})
        for vm in active:
            log(f"vmm_bench: {vm['name']}: {' '.join(vm['argv'])}")
        log(f"vmm_bench: {a.warmup} warm-up + {a.runs} timed run(s) each; peak RSS: {rss_method}")

        results = {vm["name"]: {"argv": vm["argv"], "runs": [], "warmup": []} for vm in active}
        failed_any = benchlib.run_interleaved(
            "vmm_bench", active, results, a.runs, a.warmup,
            lambda vm, slot: do_run(vm, kernel, a.timeout, rss_tool, work), SUMMARY_COLUMNS,
            gap_ms=a.gap_ms)

        print()
        print(f"Guest `hello` ({os.path.basename(kernel)}), 1 vCPU, {MEMORY_MIB} MiB, "
              f"{a.runs} runs per VMM, interleaved"
              + (f", {a.gap_ms} ms idle before each:" if a.gap_ms else ":"))
        print()
        print_table(active, results)
        print()
        doc = {
            "bench": "boot the hello guest",
            "kernel": kernel,
            "host": benchlib.host_info(load1),
            "runs": a.runs,
            "warmup": a.warmup,
            "timeout_s": a.timeout,
            "rss_method": rss_method,
            "results": results,
            "skipped": skipped,
        }
        benchlib.finish("vmm_bench",
                        f"first byte and exit: from just before Popen; peak RSS: {rss_method}",
                        skipped, active, results, a.json, doc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
