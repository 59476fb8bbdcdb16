"""Shared parts of bench/run_bench.py and bench/vmm_bench.py: argument
checks, executable lookup, the GNU time peak-RSS run, the load-average note,
the interleaved round-robin loop, the statistics and the report's tail.

Python 3 standard library only. The scripts import it from their own
directory (`python3 bench/X.py` puts bench/ first on sys.path).
"""

import json
import os
import platform
import shutil
import statistics
import sys
import time

RSS_METHOD_GNU_TIME = "GNU time %M of a second run per slot"
RSS_METHOD_DIRECT = "ru_maxrss of the timed run (floored at Python's own RSS)"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# Arguments.

def add_run_args(p, unit):
    """--runs and --warmup, counted per `unit` (runtime, VMM)."""
    p.add_argument("--runs", type=int, default=30, help=f"timed runs per {unit} (default 30)")
    p.add_argument("--warmup", type=int, default=1,
                   help=f"untimed runs per {unit} before timing (default 1)")


def check_run_args(p, a):
    if a.runs < 1:
        p.error("--runs must be at least 1")
    if a.warmup < 0:
        p.error("--warmup must be >= 0")


def resolve(path):
    """Absolute path of an executable, or None. A bare name is looked up in PATH."""
    if os.sep not in path:
        return shutil.which(path)
    path = os.path.abspath(path)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


# Peak RSS under GNU time: at execve the kernel folds the RSS high-water mark of
# the memory being left into ru_maxrss, so a process spawned straight from Python
# never reports less than Python's own RSS. GNU time forks and execs from its own
# small process, so its %M is the measured program's own ru_maxrss.

def resolve_rss_tool(prog, spec, fallback):
    """(GNU time path or None, description of the RSS method) for --rss-tool
    `spec`; warns, ending with `fallback`, when GNU time is missing."""
    rss_tool = None
    if spec != "none":
        rss_tool = resolve(spec)
        if rss_tool is None:
            log(f"{prog}: WARNING: {spec} (GNU time, Debian package 'time') not "
                f"found: {fallback}")
    return rss_tool, (RSS_METHOD_GNU_TIME if rss_tool else RSS_METHOD_DIRECT)


def gnu_time_argv(rss_tool, tfile, argv):
    """argv under GNU time, which writes "EXIT MAXRSS_KIB" to tfile."""
    return [rss_tool, "-f", "%x %M", "-o", tfile] + argv


def gnu_time_maxrss(tfile, code):
    """The %M (KiB) GNU time wrote to tfile, or None if it exited `code` != 0
    or the file's last line is not "EXIT MAXRSS"."""
    try:
        with open(tfile, errors="replace") as f:
            fields = (f.read().strip().splitlines() or [""])[-1].split()
    except OSError:
        fields = []
    if code != 0 or len(fields) != 2 or not all(x.isdigit() for x in fields):
        return None
    return int(fields[1])


# Host.

def check_load(prog):
    """The 1-minute load average (None if unknown); a note when it is high."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    if load1 is not None and load1 > 0.5 * (os.cpu_count() or 1):
        log(f"{prog}: note: load average is {load1:.2f} on {os.cpu_count()} CPU(s); "
            "timings will be noisy (is a build running?)")
    return load1


def host_info(load1):
    return {"kernel": platform.release(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_1min_at_start": load1}


# Runs and statistics.

STATS = {"median": statistics.median, "min": min, "max": max}


def summarize(runs, columns):
    """Counts of runs, plus statistics over the good ones. columns is a list
    of (record field, {"median"|"min"|"max": summary key}), in output order."""
    good = [r for r in runs if r["ok"]]
    s = {"runs": len(runs), "ok": len(good), "failed": len(runs) - len(good)}
    if good:
        for field, keys in columns:
            values = [r[field] for r in good]
            for stat, key in keys.items():
                s[key] = STATS[stat](values)
    return s


def run_interleaved(prog, active, results, runs, warmup, run_one, columns, gap_ms=0):
    """Warm-up runs, then `runs` iterations in which every item of `active`
    runs once, round robin, the first item rotating from one iteration to the
    next. run_one(item, slot) does one run and returns its record (with "ok",
    "errors" and optionally "id"); slot is "w<k>" for the k-th warm-up run and
    the iteration number for a timed one. Records go to
    results[name]["warmup"] / ["runs"], the summary (see summarize) to
    results[name]["summary"]. Returns True if a timed run failed."""
    for w in range(warmup):
        for item in active:
            rec = run_one(item, f"w{w}")
            results[item["name"]]["warmup"].append(rec)
            if not rec["ok"]:
                log(f"{prog}: {item['name']} warm-up run failed: " + "; ".join(rec["errors"]))

    failed_any = False
    shown = set()
    n = len(active)
    for i in range(runs):
        for item in active[i % n:] + active[:i % n]:
            if gap_ms > 0:
                time.sleep(gap_ms / 1000)
            rec = run_one(item, i)
            rec["iteration"] = i
            results[item["name"]]["runs"].append(rec)
            if not rec["ok"]:
                failed_any = True
                if item["name"] not in shown:
                    shown.add(item["name"])
                    where = f" ({rec['id']})" if "id" in rec else ""
                    log(f"{prog}: {item['name']} run {i}{where} FAILED: "
                        + "; ".join(rec["errors"]))
        if (i + 1) % 10 == 0 or i + 1 == runs:
            log(f"{prog}: {i + 1}/{runs} iterations done")

    for item in active:
        results[item["name"]]["summary"] = summarize(results[item["name"]]["runs"], columns)
    return failed_any


# Report.

def summary_row(name, s, cells):
    """A table row: name, ok/runs, then each (summary key, format) of cells,
    or "-" for each when no run succeeded."""
    row = [name, f"{s['ok']}/{s['runs']}"]
    if s["ok"]:
        row += [format(s[key], fmt) for key, fmt in cells]
    else:
        row += ["-"] * len(cells)
    return row


def print_footer(note, skipped, active, results):
    """The lines under the table: how it was measured, what was skipped,
    what failed."""
    print(f"({note})")
    for name, why in skipped.items():
        print(f"skipped: {name} ({why})")
    for item in active:
        s = results[item["name"]]["summary"]
        if s["failed"]:
            print(f"FAILED: {item['name']}: {s['failed']} of {s['runs']} runs failed "
                  "(not counted in the table)")


def finish(prog, note, skipped, active, results, json_path, doc):
    """The lines under the table (see print_footer), then, if json_path is
    set, doc written there as JSON."""
    print_footer(note, skipped, active, results)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        log(f"{prog}: raw results written to {json_path}")
