/*
 * /init of the Linux test initramfs for the pvm-test guest kernel
 * (guest/kernel/pvm-test/, crates/vmm/tests/vm.rs). A static C program
 * (gcc -static), so the initramfs needs nothing else.
 *
 * As pid 1 it reports the kernel's uptime when it started, mounts proc,
 * devtmpfs, sysfs, tmpfs and cgroup2, times getppid(2) and
 * fork+exec+wait, then runs the checks named in the environment variable
 * pvm_init_checks (comma-separated; `pvm_init_checks=rng,vsock` on the
 * kernel command line, which hands unknown `name=value` parameters to init
 * as its environment; ironcell-vmm appends its virtio_mmio.device=
 * parameters, so init's arguments cannot be used):
 *
 *   rng     read /dev/hwrng (virtio-rng)
 *   vsock   listen on AF_VSOCK port 1024, answer one connection: the line
 *           it reads, upper-cased, then close
 *
 * and ends the VM with reboot(RB_AUTOBOOT) (with `reboot=k` the kernel
 * resets through the i8042, and ironcell-vmm exits 0). Every line starts
 * with "pvm-init: "; "pvm-init: FAIL ..." marks a failed check, and the
 * last line is "IRONCELL-PVM-INIT DONE failures=N".
 *
 * Run as `init child N` (what the fork+exec test executes) it exits with
 * status N at once.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int failures;

static void say(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "pvm-init: ");
	va_list ap;

	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	if (write(1, buf, n) < 0) {
		/* no console yet: nothing to report to */
	}
}

#define FAIL(...)                                                          \
	do {                                                               \
		failures++;                                                \
		say("FAIL " __VA_ARGS__);                                  \
	} while (0)

static double now_us(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* Without /dev/console in the initramfs the kernel gave us no stdio. */
static void ensure_console(void)
{
	int fd;

	if (fcntl(1, F_GETFD) >= 0)
		return;
	mkdir("/dev", 0755);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	fd = open("/dev/console", O_RDWR);
	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

static void do_mount(const char *fs, const char *dir)
{
	mkdir(dir, 0755);
	if (mount(fs, dir, fs, 0, NULL) != 0 && errno != EBUSY)
		FAIL("mount -t %s %s: %s", fs, dir, strerror(errno));
	else
		say("mounted %s on %s", fs, dir);
}

static int read_file(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = 0;
	return n;
}

static void filesystems(void)
{
	char buf[256];
	int fd;

	do_mount("proc", "/proc");
	do_mount("devtmpfs", "/dev");
	do_mount("sysfs", "/sys");
	do_mount("tmpfs", "/tmp");
	do_mount("cgroup2", "/sys/fs/cgroup");

	fd = open("/tmp/probe", O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0 || write(fd, "tmpfs works", 11) != 11)
		FAIL("write /tmp/probe: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
	if (read_file("/tmp/probe", buf, sizeof(buf)) != 11 || strcmp(buf, "tmpfs works"))
		FAIL("read back /tmp/probe");
	else
		say("tmpfs: wrote and read back a file");

	if (read_file("/sys/fs/cgroup/cgroup.controllers", buf, sizeof(buf)) < 0)
		FAIL("read cgroup.controllers: %s", strerror(errno));
	else
		say("cgroup2 controllers: %s", buf);
	if (mkdir("/sys/fs/cgroup/pvm-test", 0755) != 0)
		FAIL("mkdir a cgroup: %s", strerror(errno));
	else if (read_file("/sys/fs/cgroup/pvm-test/cgroup.procs", buf, sizeof(buf)) < 0)
		FAIL("read a new cgroup's cgroup.procs: %s", strerror(errno));
	else
		say("cgroup2: created a cgroup");
	if (read_file("/proc/version", buf, sizeof(buf)) < 0)
		FAIL("read /proc/version: %s", strerror(errno));
	else
		say("%s", buf);
}

static void getppid_loop(int n)
{
	double t0 = now_us(CLOCK_MONOTONIC);
	int i;

	for (i = 0; i < n; i++) {
		/* the raw system call: glibc does not cache getppid */
		if (syscall(SYS_getppid) != 0) {
			FAIL("getppid of pid 1 is not 0");
			return;
		}
	}
	say("getppid x%d: %.1f us each", n, (now_us(CLOCK_MONOTONIC) - t0) / n);
}

static void fork_exec_wait(const char *self, int n)
{
	double t0 = now_us(CLOCK_MONOTONIC);
	int i;

	for (i = 0; i < n; i++) {
		int status;
		char code[8];
		pid_t pid;

		snprintf(code, sizeof(code), "%d", 40 + i);
		pid = fork();
		if (pid < 0) {
			FAIL("fork: %s", strerror(errno));
			return;
		}
		if (pid == 0) {
			char *argv[] = { (char *)self, "child", code, NULL };
			char *envp[] = { NULL };

			execve(self, argv, envp);
			_exit(127);
		}
		if (waitpid(pid, &status, 0) != pid) {
			FAIL("waitpid: %s", strerror(errno));
			return;
		}
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 40 + i) {
			FAIL("child %d: status 0x%x, expected exit %d", pid, status, 40 + i);
			return;
		}
	}
	say("fork+exec+wait x%d: %.0f us each", n, (now_us(CLOCK_MONOTONIC) - t0) / n);
}

static void rng(void)
{
	unsigned char b[32];
	char cur[64] = "?";
	int fd = open("/dev/hwrng", O_RDONLY), i, nonzero = 0;
	ssize_t n;

	if (fd < 0) {
		FAIL("open /dev/hwrng: %s", strerror(errno));
		return;
	}
	n = read(fd, b, sizeof(b));
	close(fd);
	if (n != (ssize_t)sizeof(b)) {
		FAIL("read /dev/hwrng: %zd (%s)", n, strerror(errno));
		return;
	}
	for (i = 0; i < (int)sizeof(b); i++)
		nonzero |= b[i];
	read_file("/sys/class/misc/hw_random/rng_current", cur, sizeof(cur));
	if (!nonzero)
		FAIL("rng: 32 zero bytes");
	else
		say("rng: read %zd bytes from /dev/hwrng (%s)", n, cur);
}

static void vsock(void)
{
	struct sockaddr_vm addr = {
		.svm_family = AF_VSOCK,
		.svm_cid = VMADDR_CID_ANY,
		.svm_port = 1024,
	};
	struct pollfd p;
	char line[128];
	unsigned int cid = 0;
	int l, c, fd, i;
	ssize_t n = 0, r;

	fd = open("/dev/vsock", O_RDONLY);
	if (fd >= 0) {
		if (ioctl(fd, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &cid) != 0)
			cid = 0;
		close(fd);
	}
	l = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (l < 0) {
		FAIL("vsock socket: %s", strerror(errno));
		return;
	}
	if (bind(l, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(l, 1) != 0) {
		FAIL("vsock bind/listen: %s", strerror(errno));
		close(l);
		return;
	}
	say("vsock: cid %u listening on port 1024", cid);
	p.fd = l;
	p.events = POLLIN;
	if (poll(&p, 1, 30000) != 1) {
		FAIL("vsock: no connection within 30 s");
		close(l);
		return;
	}
	c = accept(l, NULL, NULL);
	close(l);
	if (c < 0) {
		FAIL("vsock accept: %s", strerror(errno));
		return;
	}
	while (n < (ssize_t)sizeof(line) - 1) {
		r = read(c, line + n, sizeof(line) - 1 - n);
		if (r <= 0)
			break;
		n += r;
		if (line[n - 1] == '\n')
			break;
	}
	line[n] = 0;
	for (i = 0; i < n; i++)
		line[i] = toupper((unsigned char)line[i]);
	if (n == 0 || write(c, line, n) != n)
		FAIL("vsock: echo failed: %s", strerror(errno));
	else
		say("vsock: answered %zd bytes", n);
	close(c);
}

int main(int argc, char **argv)
{
	double start_boot = now_us(CLOCK_BOOTTIME), start = now_us(CLOCK_MONOTONIC);
	cpu_set_t cpus;
	char *checks, *check;

	if (argc == 3 && !strcmp(argv[1], "child"))
		return atoi(argv[2]);

	ensure_console();
	CPU_ZERO(&cpus);
	sched_getaffinity(0, sizeof(cpus), &cpus);
	say("init started: pid %d, uptime %.3f s, %d cpus", getpid(), start_boot / 1e6,
	    CPU_COUNT(&cpus));
	if (getpid() != 1)
		FAIL("init is pid %d, not 1", getpid());

	filesystems();
	getppid_loop(1000);
	fork_exec_wait(argv[0][0] == '/' ? argv[0] : "/init", 3);

	checks = getenv("pvm_init_checks");
	for (check = strtok(checks ? checks : "", ","); check; check = strtok(NULL, ",")) {
		if (!strcmp(check, "rng"))
			rng();
		else if (!strcmp(check, "vsock"))
			vsock();
		else
			FAIL("unknown check %s", check);
	}

	say("init ran %.0f ms", (now_us(CLOCK_MONOTONIC) - start) / 1e3);
	printf("IRONCELL-PVM-INIT DONE failures=%d\n", failures);
	fflush(stdout);
	reboot(RB_AUTOBOOT);
	say("reboot: %s", strerror(errno));
	return 1;
}
