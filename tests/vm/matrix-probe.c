/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * Guest-side workload of the kernel matrix (tests/vm/matrix.sh): one process
 * whose every action has a known answer. The init script copies it to a
 * unique name and runs it; it prints its own ground truth (pid, ppid,
 * namespaces, cgroup) as key=value lines, then opens one file with each of
 * openat (glibc's open), open and openat2 (OPEN_PATH, OPEN_PATH.open,
 * OPEN_PATH.openat2: the three programs, tracepoint or fexit, of the open
 * family), connects one TCP socket over loopback and exits with a chosen
 * status, so the checker can compare the stored exec/open/connect/exit rows
 * field by field. Before it exits it also unlinks OPEN_PATH.open, signals
 * itself with 0, fails an exec and, last, drops to uid 65534 with
 * setresuid: one syscall of each other hook family, each of which has its
 * own programs (tracepoint pair, or fexit; setresuid fentry and fexit).
 *
 * Static (gcc -static) so the initramfs needs no extra libraries for it.
 *
 *   matrix-probe OPEN_PATH EXIT_CODE [ARGS...]
 */
#define _GNU_SOURCE /* setresuid */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

/* "mnt:[4026531841]" -> 4026531841 */
static unsigned long ns_inode(const char *which)
{
	char path[64], buf[64];
	ssize_t n;
	char *p;

	snprintf(path, sizeof(path), "/proc/self/ns/%s", which);
	n = readlink(path, buf, sizeof(buf) - 1);
	if (n < 0)
		return 0;
	buf[n] = 0;
	p = strchr(buf, '[');
	return p ? strtoul(p + 1, NULL, 10) : 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd, lfd, cfd, rc;

	if (argc < 3) {
		fprintf(stderr, "usage: %s OPEN_PATH EXIT_CODE [ARGS...]\n", argv[0]);
		return 2;
	}
	printf("pid=%d\nppid=%d\nuid=%u\ngid=%u\nmnt_ns=%lu\npid_ns=%lu\n",
	       getpid(), getppid(), getuid(), getgid(), ns_inode("mnt"),
	       ns_inode("pid"));
	fflush(stdout);

	/* Flags and mode the checker knows: O_WRONLY|O_CREAT|O_TRUNC, 0640. */
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0640);
	printf("open_fd=%d\n", fd);
	if (fd >= 0)
		close(fd);

	/* The plain open syscall (glibc never uses it): O_RDONLY|O_CREAT, 0600. */
	{
		char p2[4096];
		struct {
			unsigned long long flags, mode, resolve;
		} how = { O_WRONLY | O_CREAT | O_CLOEXEC, 0600, 0 };

		snprintf(p2, sizeof(p2), "%s.open", argv[1]);
		fd = syscall(SYS_open, p2, O_RDONLY | O_CREAT, 0600);
		printf("open2_fd=%d\n", fd);
		if (fd >= 0)
			close(fd);
		/* openat2 (5.6+; -1 ENOSYS before): the flags come from a struct. */
		snprintf(p2, sizeof(p2), "%s.openat2", argv[1]);
		fd = syscall(437 /* SYS_openat2 */, AT_FDCWD, p2, &how, sizeof(how));
		printf("openat2_fd=%d\n", fd);
		if (fd >= 0)
			close(fd);
	}

	/* A listener on an ephemeral port, then one connect to it: the
	 * connect succeeds and its port is known. */
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
	    listen(lfd, 1) != 0 || getsockname(lfd, (struct sockaddr *)&sa, &len) != 0) {
		perror("listener");
		return 3;
	}
	cfd = socket(AF_INET, SOCK_STREAM, 0);
	rc = connect(cfd, (struct sockaddr *)&sa, sizeof(sa));
	printf("connect_port=%u\nconnect_rc=%d\n", ntohs(sa.sin_port), rc);
	fflush(stdout);
	close(cfd);
	close(lfd);
	{
		char p2[4096];
		/* 100 arguments: more than a bounded loop's 32 slots (5.10),
		 * within bpf_loop's 1024 (execfail.argc in matrix-init.sh). */
		static char num[99][8];
		char *nargv[101] = { "matrix-no-such-program" };
		for (int i = 1; i < 100; i++) {
			snprintf(num[i - 1], sizeof(num[0]), "a%d", i);
			nargv[i] = num[i - 1];
		}
		nargv[100] = NULL;
		snprintf(p2, sizeof(p2), "%s.open", argv[1]);
		printf("unlink_rc=%d\n", unlink(p2));
		printf("kill_rc=%d\n", kill(getpid(), 0));
		execve("/nonexistent/matrix-no-such-program", nargv, NULL);
		printf("execfail_errno=%d\n", errno);
		/* Last: the record's uid must be the caller's (0), not 65534. */
		printf("setuid_rc=%d\n", setresuid(65534, 65534, 65534));
	}
	fflush(stdout);
	return atoi(argv[2]);
}
