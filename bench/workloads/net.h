/* The loopback listener and one connect, shared by connect.c and mixed.c. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t start_listener(struct sockaddr_in *addr)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	memset(addr, 0, sizeof(*addr));
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)addr, sizeof(*addr)) || listen(s, 4096)) {
		perror("listen");
		exit(1);
	}
	socklen_t len = sizeof(*addr);
	getsockname(s, (struct sockaddr *)addr, &len);
	pid_t p = fork();
	if (p == 0) {
		prctl(PR_SET_NAME, "bw_listen");
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;) {
			int c = accept(s, NULL, NULL);
			if (c >= 0)
				close(c);
		}
	}
	close(s);
	return p;
}

static void stop_listener(pid_t p)
{
	kill(p, SIGKILL);
	waitpid(p, NULL, 0);
}

static int connect_once(const struct sockaddr_in *addr)
{
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0) {
		perror("socket");
		return 1;
	}
	if (connect(c, (const struct sockaddr *)addr, sizeof(*addr))) {
		perror("connect");
		close(c);
		return 1;
	}
	struct linger lg = { 1, 0 };
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(c);
	return 0;
}
