// Exec storm generator for test/bench/exec-storm.ts: fork+execs a program (default /bin/true) COUNT
// times from WORKERS parallel loops as fast as the machine allows, then prints one JSON line with
// what it did and the CPU it and its children used.
//   exec-storm COUNT [WORKERS] [PROGRAM [ARG...]]
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static long long ns_of(struct timeval tv) { return tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL; }

static long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One worker: n sequential fork+exec+wait; returns the failures. */
static long run(long n, char **argv)
{
	long failed = 0;
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			execve(argv[0], argv, environ);
			_exit(127);
		}
		int status;
		if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	return failed;
}

int main(int argc, char **argv)
{
	long count = argc > 1 ? atol(argv[1]) : 10000;
	long workers = argc > 2 ? atol(argv[2]) : 2;
	char *def[] = {"/bin/true", NULL};
	char **prog = argc > 3 ? argv + 3 : def;
	long long start = now_ns();
	long failed = 0;

	if (count < 1 || workers < 1) {
		fprintf(stderr, "usage: exec-storm COUNT [WORKERS] [PROGRAM [ARG...]]\n");
		return 2;
	}
	for (long w = 0; w < workers; w++) {
		long n = count / workers + (w < count % workers ? 1 : 0);
		if (fork() == 0)
			_exit(run(n, prog) > 0 ? 1 : 0);
	}
	for (long w = 0; w < workers; w++) {
		int status;
		if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	long long elapsed = now_ns() - start;
	struct rusage self, children;
	getrusage(RUSAGE_SELF, &self);
	getrusage(RUSAGE_CHILDREN, &children);
	printf("{\"execs\":%ld,\"workers\":%ld,\"failedWorkers\":%ld,\"elapsedNs\":%lld,"
	       "\"cpuUserNs\":%lld,\"cpuSysNs\":%lld}\n",
	       count, workers, failed, elapsed, ns_of(self.ru_utime) + ns_of(children.ru_utime),
	       ns_of(self.ru_stime) + ns_of(children.ru_stime));
	return failed ? 1 : 0;
}
