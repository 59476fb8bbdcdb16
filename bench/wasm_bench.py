#!/usr/bin/env python3
"""WebAssembly start-up benchmark (bench/README.md): `ironcell run` of a
hello-world WASI module (bench/wasm/hello.c built for wasm32-wasi), with the
compiled-module cache warm and cold, beside the same program built natively
and run as a namespace container by ironcell, crun and runc. All cases are
interleaved round robin, as in run_bench.py, whose run, clean-up check and
peak-RSS method (GNU time on a second run per slot) this reuses.

  * ironcell-wasm-warm: the module's compiled code is in the cache (the state
    root's .wasm-cache) from the warm-up run on;
  * ironcell-wasm-cold: the cache is removed before every run, so each run
    compiles the module (the RSS run too);
  * ironcell, crun, runc: the native build of hello.c in a namespace
    container (the test image's rootfs plus /hello).

Every run must print the hello line and exit 0, and leave nothing behind.

    python3 bench/wasm_bench.py --wasm HELLO.wasm --native HELLO [--runs N]

`make bench-wasm` builds both programs and the release binaries first.
Python 3 standard library only. Needs root.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import benchlib
import run_bench
from benchlib import log

HELLO = b"hello from wasm\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wasm", required=True, help="hello.c built for wasm32-wasi")
    p.add_argument("--native", required=True, help="hello.c built natively (static)")
    p.add_argument("--ironcell", default="target/x86_64-unknown-linux-gnu/release/ironcell")
    p.add_argument("--crun", default="/usr/bin/crun")
    p.add_argument("--runc", default="/usr/sbin/runc")
    p.add_argument("--bundle", default=run_bench.DEFAULT_BUNDLE,
                   help="the test image's bundle (its rootfs gets /hello)")
    benchlib.add_run_args(p, "case")
    p.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    p.add_argument("--rss-tool", default="/usr/bin/time", metavar="PATH")
    a = p.parse_args(argv)
    benchlib.check_run_args(p, a)
    return a


def make_bundles(a, work):
    """(wasm bundle, native bundle) under work."""
    with open(os.path.join(a.bundle, "config.json")) as f:
        base = json.load(f)
    src_rootfs = base["root"]["path"]
    if not os.path.isabs(src_rootfs):
        src_rootfs = os.path.join(os.path.abspath(a.bundle), src_rootfs)

    def bundle(name, rootfs, args):
        d = os.path.join(work, name)
        os.makedirs(d)
        cfg = json.loads(json.dumps(base))
        cfg["root"] = {"path": rootfs, "readonly": True}
        cfg["process"]["args"] = args
        cfg["process"]["terminal"] = False
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
        return d

    wasm_rootfs = os.path.join(work, "wasm-rootfs")
    os.makedirs(wasm_rootfs)
    shutil.copyfile(a.wasm, os.path.join(wasm_rootfs, "hello.wasm"))
    native_rootfs = os.path.join(work, "native-rootfs")
    shutil.copytree(src_rootfs, native_rootfs, symlinks=True)
    shutil.copyfile(a.native, os.path.join(native_rootfs, "hello"))
    os.chmod(os.path.join(native_rootfs, "hello"), 0o755)
    return (bundle("wasm-bundle", wasm_rootfs, ["/hello.wasm"]),
            bundle("native-bundle", native_rootfs, ["/hello"]))


def do_run(case, cid, work, rss_tool):
    """One slot: a timed run, then the run under GNU time for peak RSS."""
    out_path = os.path.join(work, "last-run.log")
    rt = case["rt"]
    rec = {"id": cid, "ok": True, "errors": []}
    for what, run_id in (("timed", cid), ("rss", cid + "-m")):
        if case["cold"]:
            shutil.rmtree(os.path.join(rt["root"], ".wasm-cache"), ignore_errors=True)
        argv = run_bench.run_argv(rt, case["bundle"], run_id)
        tfile = os.path.join(work, "last-time.txt")
        if what == "rss":
            if not rss_tool:
                break
            argv = benchlib.gnu_time_argv(rss_tool, tfile, argv)
        wall, code, rss = run_bench.spawn_wait(argv, out_path)
        with open(out_path, "rb") as f:
            out = f.read()
        if code != 0 or out != HELLO:
            rec["errors"].append(f"{what} run: exit {code}, output {out[-300:]!r}")
        if what == "timed":
            rec["wall_ms"] = wall * 1000.0
            rec["maxrss_kib"] = rss
        else:
            rec["maxrss_kib"] = benchlib.gnu_time_maxrss(tfile, code)
            if rec["maxrss_kib"] is None:
                rec["errors"].append(f"RSS run failed: {run_bench.tail(tfile)!r}")
        rec["errors"] += run_bench.check_cleaned(rt, run_id)
    rec["ok"] = not rec["errors"]
    return rec


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        log("wasm_bench: warning: not root; the runtimes will most likely fail")
    for f in (a.wasm, a.native):
        if not os.path.isfile(f):
            log(f"wasm_bench: {f}: no such file (make bench-wasm builds it)")
            return 2
    rss_tool, rss_method = benchlib.resolve_rss_tool(
        "wasm_bench", a.rss_tool, "peak RSS is the timed run's own ru_maxrss")
    load1 = benchlib.check_load("wasm_bench")
    work = tempfile.mkdtemp(prefix="ironcell-wasm-bench-")
    try:
        wasm_bundle, native_bundle = make_bundles(a, work)
        cases, skipped = [], {}
        for name, path, bundle, cold in (
            ("ironcell-wasm-warm", a.ironcell, wasm_bundle, False),
            ("ironcell-wasm-cold", a.ironcell, wasm_bundle, True),
            ("ironcell-native", a.ironcell, native_bundle, False),
            ("crun-native", a.crun, native_bundle, False),
            ("runc-native", a.runc, native_bundle, False),
        ):
            real = benchlib.resolve(path)
            if real is None:
                skipped[name] = f"binary {path} not found"
                log(f"wasm_bench: SKIPPING {name}: {skipped[name]}")
                continue
            root = os.path.join(work, "state", name)
            os.makedirs(root)
            cases.append({"name": name, "bundle": bundle, "cold": cold,
                          "rt": {"name": name, "path": real, "root": root}})
        if not cases:
            return 2
        results = {c["name"]: {"path": c["rt"]["path"], "runs": [], "warmup": []}
                   for c in cases}
        tag = f"{os.getpid()}-{int(time.time())}"
        log(f"wasm_bench: {len(cases)} case(s), {a.warmup} warm-up + {a.runs} timed run(s) "
            f"each; peak RSS: {rss_method}")
        failed_any = benchlib.run_interleaved(
            "wasm_bench", cases, results, a.runs, a.warmup,
            lambda c, slot: do_run(c, f"wb-{c['name']}-{tag}-{slot}", work, rss_tool),
            run_bench.SUMMARY_COLUMNS)
        print()
        run_bench.print_table(cases, results)
        doc = {"bench": "run hello-world (wasm and native)", "host": benchlib.host_info(load1),
               "runs": a.runs, "warmup": a.warmup, "rss_method": rss_method,
               "results": results, "skipped": skipped}
        benchlib.finish("wasm_bench", f"wall time: direct runs; peak RSS: {rss_method}",
                        skipped, cases, results, a.json, doc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed_any else 0


if __name__ == "__main__":
    sys.exit(main())
