#!/usr/bin/env python3
"""Start-up benchmark: `RUNTIME run -b BUNDLE ID` of /bin/true, for several
OCI runtimes in one go, interleaved.

For each of --runs iterations, every runtime runs one container (round robin;
the starting runtime rotates each iteration so that no runtime always goes
first). Each run gets a fresh container id; each runtime has its own --root
state directory. A run counts as good only if the runtime exits 0 and the
container is gone afterwards (a foreground `run` removes it): no state dir
left under the runtime's --root, `RUNTIME state ID` fails, and no cgroup
directory named after the id is left in a mounted cgroup hierarchy.

Measured per run (each of the N runs of a runtime is a pair of containers):
  * wall time: time.perf_counter() from just before spawning the runtime
    (os.posix_spawn) to just after os.wait4() returns for it;
  * peak RSS: ru_maxrss of the runtime process as returned by wait4(). Linux
    reports the maximum resident set size over the runtime process itself
    (over all the images it exec'd) and every descendant it, or a descendant
    of it, waited for (reaped). Children reparented elsewhere and never reaped
    in the runtime's tree are not counted. It is a maximum, not a sum.

    Caveat: when a process exec()s, the kernel folds the high-water RSS of the
    memory it leaves into that process's ru_maxrss. A runtime spawned straight
    from Python (vfork/fork) therefore never reports less than this Python
    process's own RSS (about 14-16 MiB), which hides small runtimes entirely.
    So the peak RSS is taken from a second run of the same runtime in the same
    slot, spawned under GNU time (`/usr/bin/time -f "%x %M"`, Debian package
    "time"): GNU time is small, forks, execs the runtime and wait4()s for it,
    so its %M is the runtime's true ru_maxrss (floor about 1 MiB, the size of
    /bin/true). The wall time always comes from the direct, untraced run.
    With --rss-tool none, the direct run's wait4() ru_maxrss is used instead
    (and is then only an upper bound, floored at Python's RSS). The direct
    run's raw value is kept in the JSON either way ("direct_wait4_maxrss_kib").

Python 3 standard library only. Needs root (the runtimes create namespaces,
mounts and cgroups).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib
from benchlib import log

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGE_DIR = os.path.join(REPO, "build", "test-image")
DEFAULT_BUNDLE = os.path.join(DEFAULT_IMAGE_DIR, "bundle")
BUILD_SCRIPT = os.path.join(REPO, "scripts", "build-test-image.sh")
DEFAULT_RUNTIMES = [
    ("ironcell", os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "ironcell")),
    ("runc", "/usr/sbin/runc"),
    ("crun", "/usr/bin/crun"),
]


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Benchmark `RUNTIME run` of /bin/true across OCI runtimes "
        "(wall time and peak RSS), interleaved round robin.")
    p.add_argument("--runtime", action="append", metavar="NAME=PATH", default=None,
                   help="a runtime to benchmark (repeatable; the first one is the "
                   "reference for the ratios). Default: ironcell=target/x86_64-unknown-linux-gnu/release/ironcell (make build), "
                   "runc=/usr/sbin/runc, crun=/usr/bin/crun")
    p.add_argument("--bundle", default=None,
                   help="source OCI bundle; its rootfs is shared, its config.json is "
                   "copied with process.args=[/bin/true] and terminal=false. Default: "
                   "build/test-image/bundle (built with scripts/build-test-image.sh "
                   "if missing)")
    benchlib.add_run_args(p, "runtime")
    p.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    p.add_argument("--rss-tool", default="/usr/bin/time", metavar="PATH",
                   help="GNU time, used for a second run per slot that measures peak RSS "
                   "without this Python process's RSS leaking in (default /usr/bin/time); "
                   "'none' to take ru_maxrss from the timed run itself (floored at "
                   "Python's own RSS)")
    p.add_argument("--work-dir", metavar="DIR",
                   help="where to put the bench bundle and state dirs (default: a new "
                   "temp dir, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    p.add_argument("--gap-ms", type=int, default=0, metavar="MS",
                   help="idle time before each timed run (default 0: back to back). "
                        "Container starts on a node are rarely back to back; an idle gap "
                        "lets kernel state (RCU, caches) settle as it would between real starts")
    a = p.parse_args(argv)
    benchlib.check_run_args(p, a)
    runtimes = []
    if a.runtime is None:
        runtimes = list(DEFAULT_RUNTIMES)
    else:
        for spec in a.runtime:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                p.error(f"--runtime wants NAME=PATH, got {spec!r}")
            runtimes.append((name, path))
    names = [n for n, _ in runtimes]
    if len(set(names)) != len(names):
        p.error("runtime names must be distinct")
    a.runtimes = runtimes
    return a


def runtime_version(path):
    try:
        out = subprocess.run([path, "--version"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=10)
        return (out.stdout.strip().splitlines() or [""])[0]
    except (OSError, subprocess.SubprocessError):
        return ""


def prepare_bundle(src_bundle, dest):
    """A bundle in dest whose config runs /bin/true and whose root is src's rootfs."""
    with open(os.path.join(src_bundle, "config.json")) as f:
        cfg = json.load(f)
    proc = cfg.setdefault("process", {})
    proc["args"] = ["/bin/true"]
    proc["terminal"] = False
    root = cfg.setdefault("root", {"path": "rootfs", "readonly": True})
    rootfs = root.get("path", "rootfs")
    if not os.path.isabs(rootfs):
        rootfs = os.path.join(os.path.abspath(src_bundle), rootfs)
    if not os.path.isfile(os.path.join(rootfs, "bin", "true")) and \
            not os.path.islink(os.path.join(rootfs, "bin", "true")):
        raise SystemExit(f"run_bench: {rootfs} has no /bin/true")
    root["path"] = rootfs
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(dest, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return dest


def cgroup_mounts():
    """Mount points of the cgroup (v1) and cgroup2 hierarchies."""
    mounts = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype = right.split(" ", 1)[0]
                if fstype in ("cgroup", "cgroup2"):
                    mounts.append(left.split(" ")[4])
    except OSError:
        pass
    return mounts


def self_cgroup_paths():
    paths = {"/"}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                paths.add(line.rstrip("\n").split(":", 2)[2] or "/")
    except OSError:
        pass
    return paths


CGROUP_MOUNTS = cgroup_mounts()
SELF_CGROUPS = self_cgroup_paths()


def cgroup_leftovers(cid):
    """cgroup dirs named cid directly under a hierarchy's root or under the
    cgroup this benchmark runs in (where runtimes put a container that has no
    cgroupsPath)."""
    found = set()
    for m in CGROUP_MOUNTS:
        for base in SELF_CGROUPS:
            d = os.path.join(m, base.lstrip("/"), cid)
            if os.path.isdir(d):
                found.add(os.path.normpath(d))
    return sorted(found)


def spawn_wait(argv, out_path):
    """posix_spawn argv (stdin /dev/null, stdout+stderr to out_path) and wait4 it.
    Returns (wall seconds, exit code, ru_maxrss KiB)."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    return wall, os.waitstatus_to_exitcode(status), ru.ru_maxrss  # KiB on Linux


def run_argv(rt, bundle, cid):
    return [rt["path"], "--root", rt["root"], "run", "-b", bundle, cid]


def check_cleaned(rt, cid):
    """List of problems if the container was not removed after its run."""
    problems = []
    if os.path.lexists(os.path.join(rt["root"], cid)):
        problems.append(f"state dir {os.path.join(rt['root'], cid)} left behind")
    st = subprocess.run([rt["path"], "--root", rt["root"], "state", cid],
                        stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if st.returncode == 0:
        problems.append(f"`{rt['name']} state {cid}` still succeeds")
    for cg in cgroup_leftovers(cid):
        problems.append(f"cgroup {cg} left behind")
    if problems:
        # Do not leak a half-removed container into the next runs.
        subprocess.run([rt["path"], "--root", rt["root"], "delete", "--force", cid],
                       stdin=subprocess.DEVNULL, capture_output=True)
    return problems


def tail(path, n=800):
    try:
        with open(path, errors="replace") as f:
            data = f.read()
        return data[-n:].strip()
    except OSError:
        return ""


def do_run(rt, bundle, cid, work, rss_tool):
    """One slot: a timed direct run, then (with rss_tool) a run under GNU time."""
    out_path = os.path.join(work, "last-run.log")
    wall, code, rss = spawn_wait(run_argv(rt, bundle, cid), out_path)
    rec = {"id": cid, "wall_ms": wall * 1000.0, "exit": code,
           "direct_wait4_maxrss_kib": rss, "maxrss_kib": rss, "ok": True, "errors": []}
    if code != 0:
        rec["errors"].append(f"exit status {code}: {tail(out_path)}")
    rec["errors"] += check_cleaned(rt, cid)

    if rss_tool:
        rcid = cid + "-m"
        tfile = os.path.join(work, "last-time.txt")
        argv = benchlib.gnu_time_argv(rss_tool, tfile, run_argv(rt, bundle, rcid))
        _, tcode, _ = spawn_wait(argv, out_path)
        rec["rss_run"] = {"id": rcid, "exit": tcode}
        rec["maxrss_kib"] = benchlib.gnu_time_maxrss(tfile, tcode)
        if rec["maxrss_kib"] is None:
            rec["errors"].append(f"RSS run {rcid} failed (exit {tcode}, time: "
                                 f"{tail(tfile)!r}): {tail(out_path)}")
        rec["errors"] += check_cleaned(rt, rcid)

    rec["ok"] = not rec["errors"]
    return rec


# Summary keys (also in the JSON) per record field.
SUMMARY_COLUMNS = [
    ("wall_ms", {"median": "median_ms", "min": "min_ms", "max": "max_ms"}),
    ("maxrss_kib", {"median": "median_rss_kib", "max": "max_rss_kib"}),
]
TABLE_CELLS = [("median_ms", ".2f"), ("min_ms", ".2f"), ("max_ms", ".2f"),
               ("median_rss_kib", ".0f"), ("max_rss_kib", ".0f")]


def print_table(active, results):
    headers = ["runtime", "runs", "median ms", "min ms", "max ms",
               "median peak RSS KiB", "max peak RSS KiB"]
    rows = [benchlib.summary_row(rt["name"], results[rt["name"]]["summary"], TABLE_CELLS)
            for rt in active]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells))
    print(fmt(headers))
    print(fmt(["-" * w for w in widths]))
    for r in rows:
        print(fmt(r))

    ref = active[0]["name"]
    rs = results[ref]["summary"]
    others = [rt["name"] for rt in active[1:]]
    if others:
        print()
        print(f"ratios of medians, {ref} / other (below 1 means {ref} is faster / smaller):")
        for name in others:
            os_ = results[name]["summary"]
            if not rs["ok"] or not os_["ok"]:
                print(f"  {ref}/{name}: n/a (no successful runs)")
                continue
            t = rs["median_ms"] / os_["median_ms"]
            m = rs["median_rss_kib"] / os_["median_rss_kib"] if os_["median_rss_kib"] else float("nan")
            print(f"  {ref}/{name}: wall time {t:.3f}x, peak RSS {m:.3f}x")


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)

    if os.geteuid() != 0:
        log("run_bench: warning: not root; the runtimes will most likely fail")

    # Runtimes: a missing binary is reported and skipped.
    active, skipped = [], {}
    for name, path in a.runtimes:
        real = benchlib.resolve(path)
        if real is None:
            skipped[name] = f"binary {path} not found or not executable"
            log(f"run_bench: SKIPPING {name}: {skipped[name]}")
            continue
        active.append({"name": name, "path": real, "version": runtime_version(real)})
    if not active:
        log("run_bench: no runtime to benchmark")
        return 2

    # Peak RSS measurement (see the module docstring).
    rss_tool, rss_method = benchlib.resolve_rss_tool(
        "run_bench", a.rss_tool, "peak RSS falls back to the timed run's own ru_maxrss, "
        "which is floored at this Python process's RSS")

    # Bundle.
    bundle_src = a.bundle
    if bundle_src is None:
        bundle_src = DEFAULT_BUNDLE
        if not os.path.isfile(os.path.join(bundle_src, "config.json")):
            log(f"run_bench: building the test image in {DEFAULT_IMAGE_DIR}")
            subprocess.run(["bash", BUILD_SCRIPT, DEFAULT_IMAGE_DIR], check=True)
    bundle_src = os.path.abspath(bundle_src)
    if not os.path.isfile(os.path.join(bundle_src, "config.json")):
        log(f"run_bench: {bundle_src} is not a bundle (no config.json)")
        return 2

    load1 = benchlib.check_load("run_bench")

    if a.work_dir:
        work = os.path.abspath(a.work_dir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="ironcell-bench-")
    try:
        bundle = prepare_bundle(bundle_src, os.path.join(work, "bundle"))
        for rt in active:
            rt["root"] = os.path.join(work, "state", rt["name"])
            os.makedirs(rt["root"], exist_ok=True)
        results = {rt["name"]: {"path": rt["path"], "version": rt["version"],
                                "runs": [], "warmup": []} for rt in active}
        tag = f"{os.getpid()}-{int(time.time())}"

        log(f"run_bench: {len(active)} runtime(s): "
            + ", ".join(f"{rt['name']}={rt['path']}" for rt in active)
            + f"; {a.warmup} warm-up + {a.runs} timed run(s) each; bundle {bundle}; "
            + f"peak RSS: {rss_method}")

        # Container ids: bench-NAME-TAG-w<k> (warm-up), bench-NAME-TAG-<iteration>.
        failed_any = benchlib.run_interleaved(
            "run_bench", active, results, a.runs, a.warmup,
            lambda rt, slot: do_run(rt, bundle, f"bench-{rt['name']}-{tag}-{slot}", work, rss_tool),
            SUMMARY_COLUMNS, gap_ms=a.gap_ms)

        print()
        print_table(active, results)
        doc = {
            "bench": "run /bin/true",
            "started_tag": tag,
            "host": benchlib.host_info(load1),
            "bundle_source": bundle_src,
            "runs": a.runs,
            "warmup": a.warmup,
            "order": [rt["name"] for rt in active],
            "rss_method": rss_method,
            "rss_tool": rss_tool,
            "maxrss_note": "maxrss_kib: ru_maxrss from wait4() on the runtime process "
                           "(max RSS over it and the descendants it transitively "
                           "reaped, KiB), taken by GNU time on a second run so that "
                           "Python's RSS does not leak in at exec; "
                           "direct_wait4_maxrss_kib: the timed run's own value, "
                           "floored at Python's RSS",
            "results": results,
            "skipped": skipped,
        }
        benchlib.finish("run_bench", f"wall time: direct runs; peak RSS: {rss_method}",
                        skipped, active, results, a.json, doc)
    finally:
        if a.keep or a.work_dir:
            log(f"run_bench: work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
