/* Shared by the bench workloads: a monotonic clock and the result line
 * bench/run.sh parses ("ops=N ns=T" plus per-kind counts). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static inline long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Sleep until `deadline` (monotonic ns); a no-op when already past it, so a
 * workload that cannot keep the asked rate simply runs flat out. */
static inline void pace_until(long long deadline)
{
	long long d = deadline - now_ns();
	if (d > 0) {
		struct timespec ts = { d / 1000000000LL, d % 1000000000LL };
		nanosleep(&ts, NULL);
	}
}
