/* connect loop: TCP connect to a 127.0.0.1 listener this program starts (a
 * child named bw_listen), N times. The client closes with SO_LINGER 0 (RST)
 * so repeated runs do not exhaust ephemeral ports in TIME_WAIT.
 * usage: bw_conn N */
#include "common.h"
#include "net.h"

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s N\n", argv[0]);
		return 2;
	}
	long n = atol(argv[1]);
	struct sockaddr_in addr;
	pid_t l = start_listener(&addr);
	long long t0 = now_ns();
	long done = 0;
	for (long i = 0; i < n; i++) {
		if (connect_once(&addr))
			break;
		done++;
	}
	long long t1 = now_ns();
	stop_listener(l);
	printf("ops=%ld ns=%lld exec=0 open=0 connect=%ld\n", done, t1 - t0, done);
	return done == n ? 0 : 1;
}
