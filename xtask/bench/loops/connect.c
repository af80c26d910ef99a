/* TCP connect()+accept()+close() to a listener on loopback: one port chosen per iteration.
 * SO_LINGER 0 closes with RST, so no TIME_WAIT socket keeps a port and the range never fills. */
#include <sys/socket.h>
#include <unistd.h>

#include "loop.h"

#define PORT 5000

static int listener;
static struct sockaddr_in dest;

void loop_setup(void) {
    dest = loopback(PORT);
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    if (setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("SO_REUSEADDR");
    if (bind(listener, (struct sockaddr *)&dest, sizeof dest) < 0)
        die("bind");
    if (listen(listener, 128) < 0)
        die("listen");
}

void loop_step(void) {
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0)
        die("socket");
    struct linger rst = {.l_onoff = 1, .l_linger = 0};
    if (setsockopt(c, SOL_SOCKET, SO_LINGER, &rst, sizeof rst) < 0)
        die("SO_LINGER");
    if (connect(c, (struct sockaddr *)&dest, sizeof dest) < 0)
        die("connect");
    int s = accept(listener, NULL, NULL);
    if (s < 0)
        die("accept");
    close(c);
    close(s);
}
