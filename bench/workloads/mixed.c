/* mixed: per iteration one fork+execve(TARGET), 20 open+close of PATH and
 * 2 loopback connects — roughly a shell script's mix.
 * usage: bw_mixed N TARGET PATH */
#include "common.h"
#include "net.h"
#include <fcntl.h>

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s N TARGET PATH\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]);
	char *target = argv[2];
	const char *path = argv[3];
	char *args[] = { target, NULL };
	char *env[] = { NULL };
	struct sockaddr_in addr;
	pid_t l = start_listener(&addr);
	long execs = 0, opens = 0, conns = 0;
	long long t0 = now_ns();
	for (long i = 0; i < n; i++) {
		pid_t p = fork();
		if (p == 0) {
			execve(target, args, env);
			_exit(127);
		}
		int st;
		if (p < 0 || waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
			fprintf(stderr, "child failed\n");
			return 1;
		}
		execs++;
		for (int k = 0; k < 20; k++) {
			int fd = open(path, O_RDONLY);
			if (fd < 0) {
				perror("open");
				return 1;
			}
			close(fd);
			opens++;
		}
		for (int k = 0; k < 2; k++) {
			if (connect_once(&addr))
				return 1;
			conns++;
		}
	}
	long long t1 = now_ns();
	stop_listener(l);
	printf("ops=%ld ns=%lld exec=%ld open=%ld connect=%ld\n", execs + opens + conns, t1 - t0,
	       execs, opens, conns);
	return 0;
}
