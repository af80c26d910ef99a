/* The floor of the cgroup hook set: a program that does nothing ("return 1", or 0 for the raw
 * tracepoint) on every attach point port-trace's cgroup set uses by default. What it costs a
 * loop is what the kernel charges for running programs there at all, before any of port-trace's
 * work: no tracer using these hooks can cost less.
 *
 * usage: floor CGROUP2_DIR   prints "ready" once everything is attached, then holds the programs
 *                            until its standard input closes or SIGINT/SIGTERM (exit 0).
 *        FLOOR_SKIP=sock_ops,connect4 floor CGROUP2_DIR   leaves those attach points out: what
 *                            one hook's dispatch costs, by difference (not used by the bench).
 *
 * Raw bpf(2) calls (include/uapi/linux/bpf.h), so it needs no library: two instructions per
 * program. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct hook {
    const char *name;
    enum bpf_prog_type type;
    enum bpf_attach_type attach;
    int ret;
};

/* The default cgroup set (port-trace-common/src/program.rs, without the opt-in sendmsg hooks). */
static const struct hook HOOKS[] = {
    {"sock_create", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE, 1},
    {"sock_release", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_RELEASE, 1},
    {"connect4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT, 1},
    {"connect6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT, 1},
    {"bind4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_BIND, 1},
    {"bind6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_BIND, 1},
    {"post_bind4", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET4_POST_BIND, 1},
    {"post_bind6", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND, 1},
    {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS, 1},
    {"inet_sock_set_state", BPF_PROG_TYPE_RAW_TRACEPOINT, 0, 0},
};
#define NHOOKS (sizeof HOOKS / sizeof HOOKS[0])

static long bpf(int cmd, union bpf_attr *attr) {
    return syscall(SYS_bpf, cmd, attr, sizeof *attr);
}

/* "r0 = ret; exit". */
static int load(const struct hook *h) {
    struct bpf_insn insns[2];
    memset(insns, 0, sizeof insns);
    insns[0].code = BPF_ALU64 | BPF_MOV | BPF_K;
    insns[0].dst_reg = BPF_REG_0;
    insns[0].imm = h->ret;
    insns[1].code = BPF_JMP | BPF_EXIT;
    static char log[4096];
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.prog_type = h->type;
    a.expected_attach_type = h->attach;
    a.insns = (uint64_t)(uintptr_t)insns;
    a.insn_cnt = 2;
    a.license = (uint64_t)(uintptr_t) "GPL";
    a.log_buf = (uint64_t)(uintptr_t)log;
    a.log_size = sizeof log;
    a.log_level = 1;
    int fd = (int)bpf(BPF_PROG_LOAD, &a);
    if (fd < 0)
        fprintf(stderr, "floor: loading %s: %s\n%s", h->name, strerror(errno), log);
    return fd;
}

/* The links go with the process: leaving is all that detaching takes. */
static void leave(int sig) {
    (void)sig;
    _exit(0);
}

/* Marks in `skip` the hooks named in `list` (comma-separated); 0, or -1 after naming one that
 * is not a hook of HOOKS. */
static int parse_skip(const char *list, int skip[NHOOKS]) {
    static char buf[512];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *name = strtok_r(buf, ",", &save); name;
         name = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < NHOOKS && strcmp(HOOKS[i].name, name) != 0)
            i++;
        if (i == NHOOKS) {
            fprintf(stderr, "floor: FLOOR_SKIP names %s, which is not one of its hooks\n", name);
            return -1;
        }
        skip[i] = 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGINT, leave);
    signal(SIGTERM, leave);
    if (argc != 2) {
        fprintf(stderr, "usage: floor CGROUP2_DIR\n");
        return 2;
    }
    int cg = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (cg < 0) {
        fprintf(stderr, "floor: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    int skip[NHOOKS] = {0};
    const char *list = getenv("FLOOR_SKIP");
    if (list && parse_skip(list, skip) < 0)
        return 2;
    for (size_t i = 0; i < NHOOKS; i++) {
        const struct hook *h = &HOOKS[i];
        if (skip[i])
            continue;
        int fd = load(h);
        if (fd < 0)
            return 1;
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        long r;
        if (h->type == BPF_PROG_TYPE_RAW_TRACEPOINT) {
            a.raw_tracepoint.name = (uint64_t)(uintptr_t)h->name;
            a.raw_tracepoint.prog_fd = fd;
            r = bpf(BPF_RAW_TRACEPOINT_OPEN, &a);
        } else {
            /* A link, not BPF_PROG_ATTACH: it goes when this process does, however it ends. */
            a.link_create.prog_fd = fd;
            a.link_create.target_fd = cg;
            a.link_create.attach_type = h->attach;
            r = bpf(BPF_LINK_CREATE, &a);
        }
        if (r < 0) {
            fprintf(stderr, "floor: attaching %s: %s\n", h->name, strerror(errno));
            return 1;
        }
    }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;
    return 0;
}
