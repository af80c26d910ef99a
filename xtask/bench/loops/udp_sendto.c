/* sendto() of 1 byte from a UDP socket bound once, to a port of our choosing, before the clock
 * starts: the kernel never chooses a port, so this is what the send hooks cost a socket that
 * already has one. */
#include <sys/socket.h>

#include "loop.h"

#define SINK_PORT 9000
#define SENDER_PORT 9001

static int sender;
static struct sockaddr_in dest;

void loop_setup(void) {
    udp_sink(SINK_PORT);
    dest = loopback(SINK_PORT);
    sender = socket(AF_INET, SOCK_DGRAM, 0);
    if (sender < 0)
        die("socket");
    struct sockaddr_in own = loopback(SENDER_PORT);
    if (bind(sender, (struct sockaddr *)&own, sizeof own) < 0)
        die("bind");
}

void loop_step(void) {
    if (sendto(sender, "x", 1, 0, (struct sockaddr *)&dest, sizeof dest) != 1)
        die("sendto");
}
