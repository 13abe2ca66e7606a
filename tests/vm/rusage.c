/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * rusage CMD [ARGS...]: run CMD, pass its stdout through, then print
 * "cpu_ns=<user+sys of CMD>" on a line of its own. A benchmark loop's own
 * CPU time includes the BPF programs that ran in its syscalls but not the
 * daemon draining the events, which wall time on one vCPU also counts
 * (tests/vm/fentry-bench.sh reports both). Static, for the guest.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct rusage ru;
	int status;
	pid_t pid;

	if (argc < 2) {
		fprintf(stderr, "usage: %s CMD [ARGS...]\n", argv[0]);
		return 2;
	}
	pid = fork();
	if (pid == 0) {
		execvp(argv[1], argv + 1);
		perror(argv[1]);
		_exit(127);
	}
	if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) {
		perror("rusage");
		return 2;
	}
	fflush(stdout);
	printf("cpu_ns=%lld\n", (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000LL +
				      (long long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
