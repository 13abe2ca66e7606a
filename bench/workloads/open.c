/* open loop: open(PATH, O_RDONLY) + close, N times, optionally paced to RATE
 * opens per second (0 = flat out). usage: bw_open N PATH [RATE] */
#include "common.h"
#include <fcntl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s N PATH [RATE]\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]);
	const char *path = argv[2];
	double rate = argc > 3 ? atof(argv[3]) : 0;
	long long t0 = now_ns();
	long done = 0;
	for (long i = 0; i < n; i++) {
		/* Pace in batches of 64 so the sleep syscall does not dominate. */
		if (rate > 0 && (i & 63) == 0)
			pace_until(t0 + (long long)(i / rate * 1e9));
		int fd = open(path, O_RDONLY);
		if (fd < 0) {
			perror("open");
			return 1;
		}
		close(fd);
		done++;
	}
	long long t1 = now_ns();
	printf("ops=%ld ns=%lld exec=0 open=%ld connect=0\n", done, t1 - t0, done);
	return 0;
}
