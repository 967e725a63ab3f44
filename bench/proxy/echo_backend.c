/*
 * echo_backend: the upstream of the proxy benchmark (bench/proxy/bench.py,
 * bench/README.md).  A TCP echo in C: one thread, one epoll set, libc only,
 * so that the server every proxy relays to costs little and the same for all
 * of them.
 *
 * It listens on 127.0.0.1 (a port of its own choosing unless --port names
 * one), prints {"port":N} on standard output once it listens, and writes back
 * on each connection what it reads there.  Flow control: when the kernel takes
 * only part of an echo, the rest is kept and the connection is not read again
 * until it is written (so a client that does not read holds at most one read's
 * worth here, and then its sends back up).  A peer's EOF is answered by a
 * close, once what was pending is written.
 *
 * Bounded like every tool of the suite: it exits when its standard input
 * closes (the benchmark keeps a pipe to it) or after --lifetime seconds
 * (3600 by default), whichever comes first; the benchmark also stops it by
 * its PID.
 *
 * Build: cc -O2 -Wall -Wextra -o echo_backend echo_backend.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024) /* one read's worth, shared by every connection */
#define MAX_EVENTS 256
#define LISTEN_TAG UINT32_MAX      /* epoll tags: a connection's is its fd */
#define STDIN_TAG (UINT32_MAX - 1)
#define FILES 65536                /* the open-files limit asked for (10,000 idle pairs and more) */

struct conn {
    unsigned char *pending; /* the part of an echo the kernel has not taken yet, or NULL */
    size_t length, offset;  /* its size, and how much of it is written */
};

static int epfd;
static struct conn *conns; /* indexed by fd */
static int maxFiles;
static unsigned char buffer[READ_SIZE];

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void watch(int op, int fd, uint32_t events, uint32_t tag)
{
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    if (epoll_ctl(epfd, op, fd, &ev) != 0)
        die("epoll_ctl");
}

static void raiseFileLimit(void)
{
    struct rlimit rl = {FILES, FILES};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) { /* not root: as far as the hard limit goes */
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
            die("getrlimit");
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            die("setrlimit");
    }
    maxFiles = rl.rlim_cur > FILES ? FILES : (int)rl.rlim_cur;
}

static void closeConn(int fd)
{
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
    close(fd); /* also leaves the epoll set */
}

/* Write what is pending on fd; 1 when all of it is written, 0 when the kernel took only part, -1 on an error. */
static int flush(int fd)
{
    struct conn *c = &conns[fd];
    while (c->offset < c->length) {
        ssize_t n = write(fd, c->pending + c->offset, c->length - c->offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        c->offset += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->length = c->offset = 0;
    return 1;
}

/* Read once and echo it; keep what the kernel does not take and stop reading until it is written. */
static void readable(int fd)
{
    ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            closeConn(fd);
        return;
    }
    if (n == 0) {
        closeConn(fd);
        return;
    }
    ssize_t written = write(fd, buffer, (size_t)n);
    if (written < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            closeConn(fd);
            return;
        }
        written = 0;
    }
    if (written == n)
        return;
    struct conn *c = &conns[fd];
    c->length = (size_t)(n - written);
    c->offset = 0;
    c->pending = malloc(c->length);
    if (!c->pending)
        die("malloc");
    memcpy(c->pending, buffer + written, c->length);
    watch(EPOLL_CTL_MOD, fd, EPOLLOUT, (uint32_t)fd); /* not EPOLLIN: the peer's EOF is read once this is written */
}

static void writable(int fd)
{
    int done = flush(fd);
    if (done < 0)
        closeConn(fd);
    else if (done)
        watch(EPOLL_CTL_MOD, fd, EPOLLIN, (uint32_t)fd);
}

static void acceptAll(int listener)
{
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
                return;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "echo_backend: out of file descriptors\n");
                return;
            }
            die("accept4");
        }
        if (fd >= maxFiles) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        watch(EPOLL_CTL_ADD, fd, EPOLLIN, (uint32_t)fd);
    }
}

static double nowS(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int port = 0;
    double lifetime = 3600;
    static const struct option options[] = {
        {"port", required_argument, 0, 'p'},
        {"lifetime", required_argument, 0, 'l'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (o == 'p')
            port = atoi(optarg);
        else if (o == 'l')
            lifetime = atof(optarg);
        else {
            fprintf(stderr, "usage: echo_backend [--port N] [--lifetime SECONDS]\n");
            return 2;
        }
    }
    if (port < 0 || port > 65535 || !(lifetime > 0 && lifetime <= 86400)) {
        fprintf(stderr, "echo_backend: --port is 0-65535, --lifetime 0-86400 seconds\n");
        return 2;
    }
    raiseFileLimit();
    conns = calloc((size_t)maxFiles, sizeof *conns);
    if (!conns)
        die("calloc");

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0)
        die("socket");
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only */
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0)
        die("bind");
    if (listen(listener, 4096) != 0)
        die("listen");
    socklen_t length = sizeof address;
    if (getsockname(listener, (struct sockaddr *)&address, &length) != 0)
        die("getsockname");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    watch(EPOLL_CTL_ADD, listener, EPOLLIN, LISTEN_TAG);
    watch(EPOLL_CTL_ADD, STDIN_FILENO, EPOLLIN, STDIN_TAG);
    printf("{\"port\":%d}\n", ntohs(address.sin_port));
    fflush(stdout);

    double deadline = nowS() + lifetime;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        double left = deadline - nowS();
        if (left <= 0)
            return 0;
        int n = epoll_wait(epfd, events, MAX_EVENTS, left > 1 ? 1000 : (int)(left * 1000) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == LISTEN_TAG) {
                acceptAll(listener);
            } else if (tag == STDIN_TAG) {
                ssize_t got = read(STDIN_FILENO, buffer, sizeof buffer);
                if (got == 0 || (got < 0 && errno != EINTR && errno != EAGAIN))
                    return 0; /* the benchmark is gone */
            } else if (conns[tag].pending) {
                if (events[i].events & (EPOLLERR | EPOLLHUP))
                    closeConn((int)tag);
                else
                    writable((int)tag);
            } else {
                readable((int)tag);
            }
        }
    }
}
