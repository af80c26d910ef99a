/* A bare syscall that touches no socket: what any syscall tracepoint costs every syscall. */
#include <sys/syscall.h>
#include <unistd.h>

#include "loop.h"

void loop_setup(void) {}

void loop_step(void) {
    /* syscall(), not getppid(): no libc wrapper may answer without entering the kernel. */
    syscall(SYS_getppid);
}
