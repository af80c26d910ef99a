/* What each bench loop provides to main.c: setup once, then one iteration per call. */
#ifndef PT_BENCH_LOOP_H
#define PT_BENCH_LOOP_H

#include <netinet/in.h>

/* Runs once, before the clock starts. */
void loop_setup(void);
/* One iteration; exits the process on any error, so a count is never of failed calls. */
void loop_step(void);

/* perror + exit(1). */
void die(const char *what);
/* 127.0.0.1:port. */
struct sockaddr_in loopback(unsigned short port);
/* A UDP socket bound to 127.0.0.1:port that is never read: its buffer fills and the kernel
 * drops what arrives, so a sender never waits and no ICMP port-unreachable is made. */
int udp_sink(unsigned short port);

#endif
