/* exec loop: fork + execve(TARGET) + waitpid, N times.
 * usage: bw_exec N TARGET   (TARGET is a copy of /bin/true with its own comm) */
#include "common.h"
#include <unistd.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s N TARGET\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]);
	char *target = argv[2];
	char *args[] = { target, NULL };
	char *env[] = { NULL };
	long long t0 = now_ns();
	long done = 0;
	for (long i = 0; i < n; i++) {
		pid_t p = fork();
		if (p < 0) {
			perror("fork");
			return 1;
		}
		if (p == 0) {
			execve(target, args, env);
			_exit(127);
		}
		int st;
		if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "child failed\n");
			return 1;
		}
		done++;
	}
	long long t1 = now_ns();
	printf("ops=%ld ns=%lld exec=%ld open=0 connect=0\n", done, t1 - t0, done);
	return 0;
}
