/* The driver every bench loop shares: pin to one CPU, run loop_step() for a fixed time, print
 * how many iterations ran and how long they took (the clock starts after loop_setup()).
 *
 * usage: LOOP SECONDS CPU     (CPU -1: not pinned)
 * prints: iterations=N seconds=S waited=W   (W: seconds it was runnable but another task ran;
 *         -1 when the kernel does not say)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

/* Iterations between clock reads: keeps the clock out of the getppid() loop's cost. */
#define BATCH 16

void die(const char *what) {
    perror(what);
    exit(1);
}

struct sockaddr_in loopback(unsigned short port) {
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

int udp_sink(unsigned short port) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        die("socket");
    /* The smallest buffer: drops start at once rather than after a few hundred datagrams. */
    int one = 1;
    if (setsockopt(s, SOL_SOCKET, SO_RCVBUF, &one, sizeof one) < 0)
        die("SO_RCVBUF");
    struct sockaddr_in a = loopback(port);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0)
        die("bind sink");
    return s;
}

/* Nanoseconds this process has waited on a run queue, runnable but not running: the time other
 * work on its CPU took from it (/proc/self/schedstat, second field); -1 when unknown. */
static long long waited_ns(void) {
    FILE *f = fopen("/proc/self/schedstat", "r");
    if (!f)
        return -1;
    long long run = 0, wait = -1;
    if (fscanf(f, "%lld %lld", &run, &wait) != 2)
        wait = -1;
    fclose(f);
    return wait;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SECONDS CPU\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    int cpu = atoi(argv[2]);
    if (!(seconds > 0 && seconds <= 600)) {
        fprintf(stderr, "%s: SECONDS must be in (0, 600]\n", argv[0]);
        return 2;
    }
    /* A watchdog: a step that blocks for good ends the run instead of the bench. */
    alarm((unsigned)seconds + 30);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0)
            die("sched_setaffinity");
    }
    loop_setup();
    unsigned long long n = 0;
    long long waited_start = waited_ns();
    double start = now(), end = start + seconds, t = start;
    while (t < end) {
        for (int i = 0; i < BATCH; i++)
            loop_step();
        n += BATCH;
        t = now();
    }
    long long waited_end = waited_ns();
    double waited = waited_start < 0 || waited_end < 0 ? -1 : (waited_end - waited_start) / 1e9;
    printf("iterations=%llu seconds=%.6f waited=%.6f\n", n, t - start, waited);
    return 0;
}
