/* socket()+sendto()+close() of a fresh UDP socket: the kernel autobinds a port every iteration. */
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"

#define SINK_PORT 9000

static struct sockaddr_in dest;

void loop_setup(void) {
    udp_sink(SINK_PORT);
    dest = loopback(SINK_PORT);
}

void loop_step(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        die("socket");
    if (sendto(s, "x", 1, 0, (struct sockaddr *)&dest, sizeof dest) != 1)
        die("sendto");
    close(s);
}
