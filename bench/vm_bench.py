#!/usr/bin/env python3
"""The vm sandbox's costs, measured in one run (`make bench-vm`).

1. Memory, for one VM with one sleeping container (`sleep`), once it has
   settled (2 s after create):
   * inside the guest, from the agent's GuestDetails: MemTotal - MemAvailable
     (the guest's memory in use) and the agent's own VmRSS;
   * on the host, each process ironcell adds for the VM (the relay, and under
     QEMU the process serving its virtio-fs and vsock devices: ironcell-vmm
     by default, virtiofsd and vhost-device-vsock with
     `qemu_device_backend = "external"`), VmRSS and Pss from
     /proc/PID/smaps_rollup, summed without the hypervisor; the hypervisor's
     own line is shown for reference.
2. `ironcell run` of /bin/true, --sandbox vm against --sandbox namespace,
   interleaved, --runs each: wall time from just before spawning ironcell to
   its exit (time.perf_counter_ns), and for the VM the guest-side split from
   the agent's clock (CLOCK_BOOTTIME in the guest, recorded in vm.json):
   kernel start -> agent start (its main()), -> agent ready (serving),
   -> container created, -> container started. The VM runs use `run --keep`
   so that vm.json can be read; the container is deleted after.

Targets (issue 15): agent RSS <= 4 MiB; guest memory in use <= 32 MiB;
host-side processes added per VM besides the hypervisor <= 8 MiB RSS
together.

Python 3 standard library only; root; QEMU, virtiofsd and vhost-device-vsock
(scripts/setup.sh) and the guest image (`make guest`) for --hypervisor qemu.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

DOC = "docs/vm.md"
GUEST = "/var/cache/ironcell/guest"
TOOLS = "/var/cache/ironcell/tools/bin"
HYPERVISORS = ("qemu-system-x86_64", "qemu-system-x86", "ironcell-vmm")


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ironcell", default="target/x86_64-unknown-linux-gnu/release/ironcell")
    p.add_argument("--guest-details", default="target/x86_64-unknown-linux-gnu/release/examples/guest_details")
    p.add_argument("--bundle", default="build/test-image/bundle")
    p.add_argument("--hypervisor", choices=["qemu", "ironcell-vmm"], default="qemu")
    p.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    p.add_argument("--kernel", default=f"{GUEST}/vmlinux")
    p.add_argument("--pvm-test-kernel", metavar="VMLINUX",
                   help="ironcell-vmm on a PVM host: this pvm-test kernel, with the command line "
                        "in the `cmdline` file beside it (docs/pvm-host.md)")
    p.add_argument("--initrd", default=f"{GUEST}/initrd.img")
    p.add_argument("--memory-mib", type=int, default=256)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    for what in ("ironcell", "guest_details"):
        path = benchlib.resolve(getattr(a, what))
        if path is None:
            p.error(f"--{what.replace('_', '-')} {getattr(a, what)}: not an executable (make bench-vm builds it)")
        setattr(a, what, path)
    a.kernel_params = ""
    if a.pvm_test_kernel:
        a.hypervisor, a.kernel = "ironcell-vmm", a.pvm_test_kernel
        with open(os.path.join(os.path.dirname(a.pvm_test_kernel), "cmdline")) as f:
            a.kernel_params = f.read().strip()
    for f in (a.kernel, a.initrd):
        if not os.path.isfile(f):
            p.error(f"{f}: missing (make guest)")
    if os.geteuid() != 0:
        p.error("needs root (containers)")
    if a.runs < 1:
        p.error("--runs must be at least 1")
    return a


def write_config(dir_, a, devices="ironcell-vmm", name="config.toml"):
    hyp = f'hypervisor = "qemu"\nqemu_accel = "{a.accel}"\nqemu_device_backend = "{devices}"' \
        if a.hypervisor == "qemu" else 'hypervisor = "ironcell-vmm"'
    if a.kernel_params:
        hyp += f'\nkernel_params = "{a.kernel_params}"\npvm_guest = true\nboot_timeout_secs = 900\nagent_timeout_secs = 900'
    path = os.path.join(dir_, name)
    with open(path, "w") as f:
        f.write(f'[vm]\n{hyp}\nkernel = "{a.kernel}"\ninitrd = "{a.initrd}"\n'
                f'memory_mib = {a.memory_mib}\nrun_dir = "{dir_}/vmrun"\n')
    return path


def bundle(dir_, a, name, args):
    src = os.path.abspath(a.bundle)
    with open(os.path.join(src, "config.json")) as f:
        c = json.load(f)
    c["root"] = {"path": os.path.join(os.path.dirname(src), "rootfs"), "readonly": True}
    c["process"]["args"] = args
    c["process"]["terminal"] = False
    d = os.path.join(dir_, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    return d


def ironcell(a, cfg, root, *args, check=True):
    """Runs ironcell; its output goes through files, not pipes: a detached
    container's relay holds the stdio it was given, and a pipe would stay
    open as long as the container runs."""
    cmd = [a.ironcell, "--config", cfg, "--root", root, *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        err.seek(0)
        r.stderr = err.read().decode(errors="replace")
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def children(pid):
    """pid and every descendant."""
    kids = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(e))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def memory_of(pid):
    def field(path, key):
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0
    with open(f"/proc/{pid}/comm") as f:
        comm = f.read().strip()
    return comm, field(f"/proc/{pid}/status", "VmRSS"), field(f"/proc/{pid}/smaps_rollup", "Pss")


def measure_memory(a, cfg, dir_, root_name="state-mem"):
    root = os.path.join(dir_, root_name)
    b = bundle(dir_, a, "sleeper", ["/bin/sleep", "100000"])
    ironcell(a, cfg, root, "--sandbox", "vm", "run", "-d", "-b", b, "sleeper")
    try:
        time.sleep(2)
        with open(os.path.join(root, "sleeper", "vm.json")) as f:
            st = json.load(f)
        details = json.loads(subprocess.run(
            [a.guest_details, os.path.join(st["run_dir"], "vsock.sock")],
            check=True, stdout=subprocess.PIPE, text=True).stdout)
        procs = []
        for pid in children(st["relay_pid"]):
            comm, rss, pss = memory_of(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                devices_only = b"--vhost-user-fs" in f.read()
            name = "relay (ironcell)" if pid == st["relay_pid"] else comm
            if devices_only:
                name = f"{comm} (QEMU's virtio-fs and vsock)"
            procs.append({"pid": pid, "name": name, "rss_kib": rss, "pss_kib": pss,
                          "hypervisor": not devices_only
                          and (comm in HYPERVISORS or comm.startswith("qemu"))})
        return details, procs
    finally:
        ironcell(a, cfg, root, "delete", "--force", "sleeper", check=False)


def measure_runs(a, cfg, dir_):
    true_b = bundle(dir_, a, "true", ["/bin/true"])
    root = os.path.join(dir_, "state-runs")
    vm, ns, splits = [], [], []
    for i in range(a.runs + 1):
        for kind in ("vm", "namespace") if i % 2 == 0 else ("namespace", "vm"):
            cid = f"b-{kind}-{i}"
            args = ["--sandbox", kind, "run"] + (["--keep"] if kind == "vm" else []) + ["-b", true_b, cid]
            t0 = time.perf_counter_ns()
            r = ironcell(a, cfg, root, *args, check=False)
            ms = (time.perf_counter_ns() - t0) / 1e6
            if r.returncode != 0:
                raise SystemExit(f"run {kind} failed: {r.stderr.strip()}")
            if kind == "vm":
                with open(os.path.join(root, cid, "vm.json")) as f:
                    t = json.load(f)["guest_times"]
                ironcell(a, cfg, root, "delete", cid)
            if i == 0:
                continue  # warm-up
            if kind == "vm":
                vm.append(ms)
                splits.append(t)
            else:
                ns.append(ms)
    return vm, ns, splits


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def main():
    a = parse()
    load = benchlib.check_load("vm_bench")
    with tempfile.TemporaryDirectory(prefix="ironcell-vm-bench-") as dir_:
        cfg = write_config(dir_, a)
        details, procs = measure_memory(a, cfg, dir_)
        external = None
        if a.hypervisor == "qemu":
            # QEMU's devices from virtiofsd and vhost-device-vsock instead,
            # in the same run, for comparison.
            ext_cfg = write_config(dir_, a, "external", "config-external.toml")
            external = measure_memory(a, ext_cfg, dir_, "state-mem-external")[1]
        vm, ns, splits = measure_runs(a, cfg, dir_)

    used = details["mem_total_kib"] - details["mem_available_kib"]
    added = [p for p in procs if not p["hypervisor"]]
    rss_sum = sum(p["rss_kib"] for p in added)
    pss_sum = sum(p["pss_kib"] for p in added)
    hyp = f"{a.hypervisor}" + (f" ({a.accel})" if a.hypervisor == "qemu" else "") \
        + (" with the pvm-test kernel on PVM" if a.kernel_params else "")
    h = benchlib.host_info(load)
    print(f"# vm sandbox: {hyp}, {a.memory_mib} MiB guest; host {h['kernel']}, {h['cpus']} CPUs, "
          f"load {h['loadavg_1min_at_start']}\n")
    print("## One VM with one sleeping container\n")
    print("| what | KiB | target |")
    print("|---|---:|---|")
    print(f"| guest memory in use (MemTotal {details['mem_total_kib']} - MemAvailable "
          f"{details['mem_available_kib']}) | {used} | <= 32768 |")
    print(f"| agent VmRSS | {details['agent_rss_kib']} | <= 4096 |")
    print(f"| host processes added besides the hypervisor, VmRSS sum | {rss_sum} | <= 8192 |")
    print(f"| the same, Pss sum | {pss_sum} | |\n")
    print("| host process | pid | VmRSS KiB | Pss KiB |")
    print("|---|---:|---:|---:|")
    for p in procs:
        name = p["name"] + (" (hypervisor, not counted)" if p["hypervisor"] else "")
        print(f"| {name} | {p['pid']} | {p['rss_kib']} | {p['pss_kib']} |")
    if external:
        ext_added = [p for p in external if not p["hypervisor"]]
        print("\nThe same VM with QEMU's devices from virtiofsd and vhost-device-vsock "
              "(`qemu_device_backend = \"external\"`), measured in the same run:\n")
        print("| host process | pid | VmRSS KiB | Pss KiB |")
        print("|---|---:|---:|---:|")
        for p in external:
            name = p["name"] + (" (hypervisor, not counted)" if p["hypervisor"] else "")
            print(f"| {name} | {p['pid']} | {p['rss_kib']} | {p['pss_kib']} |")
        print(f"| **added besides the hypervisor** | | {sum(p['rss_kib'] for p in ext_added)} "
              f"| {sum(p['pss_kib'] for p in ext_added)} |")
    print(f"\n## `ironcell run` of /bin/true, {len(vm)} runs each, interleaved\n")
    print("| sandbox | median ms | min | max |")
    print("|---|---:|---:|---:|")
    for name, xs in (("vm", vm), ("namespace", ns)):
        m, lo, hi = stats(xs)
        print(f"| {name} | {m:.1f} | {lo:.1f} | {hi:.1f} |")
    print("\nGuest side of the vm runs (the agent's clock, ms since the guest kernel started):\n")
    print("| step | median ms | min | max |")
    print("|---|---:|---:|---:|")
    for key, label in (("agent_start_us", "kernel start -> agent start"),
                       ("agent_ready_us", "kernel start -> agent ready"),
                       ("created_us", "kernel start -> container created"),
                       ("started_us", "kernel start -> container started")):
        m, lo, hi = stats([s[key] / 1000 for s in splits])
        print(f"| {label} | {m:.1f} | {lo:.1f} | {hi:.1f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"guest": details, "host_processes": procs,
                       "host_processes_external_devices": external, "run_vm_ms": vm,
                       "run_namespace_ms": ns, "guest_times": splits}, f, indent=1)


if __name__ == "__main__":
    main()
