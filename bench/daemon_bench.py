#!/usr/bin/env python3
"""ironcelld against containerd's runc shim v2, through a private containerd
(Debian's 1.6) started by this script:

1. start latency: `ctr run --rm IMAGE ID /bin/true` with the runtime
   io.containerd.ironcell.v2 and with io.containerd.runc.v2, interleaved;
2. management-plane memory with 1, 10 and 50 running tasks (each `ctr run -d`
   task is its own pod for the runc shim: one shim process each): the PSS
   (/proc/PID/smaps_rollup) of ironcelld plus any ironcell shim process left,
   against the summed PSS of every containerd-shim-runc-v2 process. The
   containers' own processes are not counted.

Run as root after `make build image`:
    python3 bench/daemon_bench.py [--runs 30] [--pods 1,10,50]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

PROG = "daemon_bench"
IMAGE = "localhost/ironcell-test:latest"
RUNTIMES = {"ironcell": "io.containerd.ironcell.v2", "runc": "io.containerd.runc.v2"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_run_args(p, "runtime")
    p.add_argument("--bin-dir", default=None,
                   help="directory with ironcelld and containerd-shim-ironcell-v2 "
                        "(default: the release build, else the debug build)")
    p.add_argument("--pods", default="1,10,50", help="task counts for the memory table")
    p.add_argument("--image", default=os.path.join(ROOT, "build/test-image/ironcell-test.docker.tar"),
                   help="image archive to import")
    p.add_argument("--settle", type=float, default=15.0,
                   help="idle seconds before each memory reading (default 15: the steady state "
                        "of a node whose pods are running; ironcelld trims its memory after 5 s idle)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    a = p.parse_args()
    benchlib.check_run_args(p, a)
    try:
        a.pods = [int(x) for x in a.pods.split(",") if x]
    except ValueError:
        p.error("--pods: comma-separated numbers")
    if not a.bin_dir:
        for d in ("target/x86_64-unknown-linux-gnu/release", "target/release", "target/debug"):
            if os.path.exists(os.path.join(ROOT, d, "ironcelld")):
                a.bin_dir = os.path.join(ROOT, d)
                break
    if not a.bin_dir or not os.path.exists(os.path.join(a.bin_dir, "containerd-shim-ironcell-v2")):
        p.error("no ironcelld build found: run `make build` or pass --bin-dir")
    return a


class Containerd:
    def __init__(self, bin_dir):
        self.dir = tempfile.mkdtemp(prefix="ironcell-bench-ctrd-")
        self.sock = os.path.join(self.dir, "c.sock")
        self.icd_root = os.path.join(self.dir, "icd")
        cfg = os.path.join(self.dir, "config.toml")
        with open(cfg, "w") as f:
            f.write(f'version = 2\nroot = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
                    'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                    f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n')
        env = dict(os.environ, PATH=bin_dir + ":" + os.environ.get("PATH", ""),
                   IRONCELLD_ROOT=self.icd_root)
        self.log = open(os.path.join(self.dir, "containerd.log"), "w")
        self.proc = subprocess.Popen(["containerd", "--config", cfg], env=env,
                                     stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while self.ctr(["version"], check=False).returncode != 0:
            if time.time() > deadline:
                raise SystemExit(f"{PROG}: containerd did not start; see {self.dir}/containerd.log")
            time.sleep(0.1)

    def ctr(self, args, check=True):
        r = subprocess.run(["ctr", "--address", self.sock] + args, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
        return r

    def stop(self):
        for tid in self.ctr(["task", "ls", "-q"], check=False).stdout.split():
            self.ctr(["task", "kill", "-s", "SIGKILL", tid], check=False)
        time.sleep(0.5)
        for tid in self.ctr(["task", "ls", "-q"], check=False).stdout.split():
            self.ctr(["task", "delete", "-f", tid], check=False)
        for cid in self.ctr(["container", "ls", "-q"], check=False).stdout.split():
            self.ctr(["container", "rm", cid], check=False)
        self.proc.terminate()
        self.proc.wait()
        # The daemon first (SIGTERM, a stop on purpose: its keeper does not
        # start it again), then the keeper, which a running daemon would
        # replace.
        for keeper, sig in ((False, 15), (True, 9)):
            deadline = time.time() + 10
            while time.time() < deadline:
                pids = ironcelld_pids(self.icd_root, keeper=keeper)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
        subprocess.run(f"grep -o ' {self.dir}[^ ]*' /proc/self/mountinfo | sort -r | "
                       "xargs -r -n1 umount -l", shell=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def procs():
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/comm") as f:
                    comm = f.read().strip()
                with open(f"/proc/{e}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            yield int(e), comm, cmd


def ironcelld_pids(root, keeper=None):
    """The daemons and keepers of `root`; only the keepers (keeper=True) or
    only the daemons (keeper=False)."""
    return [p for p, comm, cmd in procs()
            if comm in ("ironcelld", "ironcelld-keepe") and f"--root {root}" in cmd
            and (keeper is None or (" keeper " in f" {cmd} ") == keeper)]


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def management_pids(c, runtime):
    if runtime == "ironcell":
        shims = [p for p, comm, cmd in procs()
                 if comm.startswith("containerd-shim") and "ironcell" in cmd]
        return ironcelld_pids(c.icd_root) + shims
    return [p for p, comm, cmd in procs()
            if comm.startswith("containerd-shim") and "runc" in cmd and c.sock in cmd]


def measure_memory(c, runtime, counts, settle):
    rows = []
    started = 0
    for n in counts:
        while started < n:
            c.ctr(["run", "-d", "--runtime", RUNTIMES[runtime], IMAGE,
                   f"mem-{runtime}-{started}", "sleep", "100000"])
            started += 1
        time.sleep(settle)  # the steady state, not the burst of starts
        pids = management_pids(c, runtime)
        total = sum(pss_kib(p) for p in pids)
        rows.append({"pods": n, "processes": len(pids), "pss_kib": total})
        benchlib.log(f"{PROG}: {runtime}: {n} tasks, {len(pids)} management processes, "
                     f"PSS {total} KiB")
    for i in range(started):
        c.ctr(["task", "kill", "-s", "SIGKILL", f"mem-{runtime}-{i}"], check=False)
    time.sleep(1)
    for i in range(started):
        c.ctr(["task", "delete", "-f", f"mem-{runtime}-{i}"], check=False)
        c.ctr(["container", "rm", f"mem-{runtime}-{i}"], check=False)
    return rows


def main():
    a = parse_args()
    if os.geteuid() != 0:
        raise SystemExit(f"{PROG}: needs root (containers)")
    load1 = benchlib.check_load(PROG)
    c = Containerd(a.bin_dir)
    try:
        c.ctr(["images", "import", a.image])
        results = {name: {"warmup": [], "runs": []} for name in RUNTIMES}
        active = [{"name": name} for name in RUNTIMES]
        counter = [0]

        def run_one(item, slot):
            counter[0] += 1
            cid = f"lat-{item['name']}-{counter[0]}"
            t0 = time.perf_counter()
            r = c.ctr(["run", "--rm", "--runtime", RUNTIMES[item["name"]], IMAGE, cid, "/bin/true"],
                      check=False)
            ms = (time.perf_counter() - t0) * 1000
            ok = r.returncode == 0
            return {"id": cid, "ok": ok, "ms": ms,
                    "errors": [] if ok else [r.stderr.strip()]}

        columns = [("ms", {"median": "median", "min": "min", "max": "max"})]
        benchlib.run_interleaved(PROG, active, results, a.runs, a.warmup, run_one, columns)
        memory = {name: measure_memory(c, name, a.pods, a.settle) for name in RUNTIMES}
    finally:
        c.stop()

    print("\n`ctr run --rm IMAGE ID /bin/true` through containerd 1.6, interleaved\n")
    print("| runtime | runs ok | median ms | min | max |")
    print("|---|---:|---:|---:|---:|")
    for item in active:
        row = benchlib.summary_row(item["name"], results[item["name"]]["summary"],
                                   [("median", ".1f"), ("min", ".1f"), ("max", ".1f")])
        print("| " + " | ".join(row) + " |")
    si, sr = results["ironcell"]["summary"], results["runc"]["summary"]
    if si["ok"] and sr["ok"]:
        print(f"\nratio of medians ironcell/runc: {si['median'] / sr['median']:.2f}x")

    print(f"\nManagement-plane PSS with N running tasks, {a.settle:g} s after the last start "
          "(ironcelld + its keeper + ironcell shims left; every containerd-shim-runc-v2)\n")
    print("| tasks | ironcell processes | ironcell PSS KiB | runc shims | runc shims PSS KiB | "
          "ironcell/runc |")
    print("|---:|---:|---:|---:|---:|---:|")
    for ri, rr in zip(memory["ironcell"], memory["runc"]):
        ratio = ri["pss_kib"] / rr["pss_kib"] if rr["pss_kib"] else float("nan")
        print(f"| {ri['pods']} | {ri['processes']} | {ri['pss_kib']} | {rr['processes']} | "
              f"{rr['pss_kib']} | {ratio:.4f} |")
    benchlib.finish(PROG, "latency: wall time of ctr from spawn to exit; PSS: smaps_rollup",
                    {}, active, results, a.json,
                    {"host": benchlib.host_info(load1), "latency": results, "memory": memory})


if __name__ == "__main__":
    main()
