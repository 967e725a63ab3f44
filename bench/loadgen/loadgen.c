/*
 * loadgen: the TCP load generator of netd's benchmark suite (bench/README.md).
 *
 * One thread, one epoll set, no dependency beyond libc, so that on a 2-core
 * machine the client costs as little CPU as the fastest server and is not
 * what limits the figures (a Python client would be).  It talks only to
 * loopback addresses (127.0.0.0/8, ::1) and every run is bounded both in time
 * (--duration) and in count (--count): a benchmark must never run away.
 *
 * Modes (each prints JSON lines on stdout, the last one the result):
 *
 *   rr        --connections N, one message of --size S bytes in flight on
 *             each (with --framing u32 prefixed by its 4-byte big-endian
 *             length); the exact bytes must come back before the next is
 *             sent.  Round trips per second, latency percentiles.
 *   bulk      one connection; --bytes B sent in 64 KiB writes while the echo
 *             is read back, at most --window bytes in flight.  MB/s echoed.
 *   connrate  --concurrency K connections at a time: connect, one echo of S
 *             bytes, close.  Connections per second.
 *   idle      --connections N opened (--concurrency K at a time, each proven
 *             by a one-message echo), then held for --hold seconds or until
 *             standard input closes.  Reports when all are open.
 *
 * Before the measured window starts the tool prints {"event":"start"}, so a
 * caller can sample the server's CPU time at the same moment; idle prints
 * {"event":"ready"} once every connection is open.
 *
 * Build: cc -O2 -Wall -Wextra -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SIZE (1 << 20)        /* largest --size */
#define CHUNK (64 * 1024)         /* bulk write size */
#define PATTERN 251               /* bulk bytes: offset % 251, a prime, so misplaced bytes show */
#define HIST_US 100000            /* latency histogram: 1 us buckets up to 100 ms, then overflow */
#define MAX_EVENTS 256
#define MAX_ERRORS 1000           /* connrate/idle give up after this many failed connections */
#define STDIN_TAG UINT32_MAX      /* epoll tag of standard input in idle mode */
#define CONNECT_S 10              /* rr: seconds all connections may take to be made */

enum mode { RR, BULK, CONNRATE, IDLE };
enum state { CONNECTING, SENDING, RECEIVING, OPEN, CLOSED };

struct conn {
    int fd;
    enum state state;
    size_t sent;       /* bytes of the current message written */
    size_t received;   /* bytes of its echo read */
    uint64_t began;    /* when the current message (or connection, in connrate) began, ns */
};

static struct {
    enum mode mode;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int connections, concurrency, u32;
    size_t size;
    double duration, warmup, hold;
    uint64_t count, bytes, window;
} opt = {
    .connections = 50, .concurrency = 32, .size = 64,
    .duration = 5, .hold = 30, .count = 100000000, .bytes = 1ULL << 30, .window = 4 << 20,
};

static int epfd;
static unsigned char *message;   /* what every rr/connrate/idle message is */
static size_t msglen;            /* its length, with the u32 prefix */
static uint64_t hist[HIST_US + 1];
static uint64_t latencyMax;

static uint64_t nowNs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static double cpuSeconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(const char *why)
{
    fprintf(stderr,
            "loadgen: %s\n"
            "usage: loadgen rr|bulk|connrate|idle --port P [--host 127.0.0.1|::1]\n"
            "  [--connections N] [--concurrency K] [--size S] [--framing raw|u32]\n"
            "  [--duration SECONDS] [--warmup SECONDS] [--count N] [--bytes B]\n"
            "  [--window B] [--hold SECONDS]\n",
            why);
    exit(2);
}

/* Only loopback: a benchmark must not be pointed at somebody else's host. */
static void parseAddress(const char *host, int port)
{
    struct sockaddr_in *v4 = (struct sockaddr_in *)&opt.addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&opt.addr;
    memset(&opt.addr, 0, sizeof opt.addr);
    if (port <= 0 || port > 65535)
        usage("--port must be 1-65535");
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127)
            usage("refusing a non-loopback address (only 127.0.0.0/8 and ::1)");
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        opt.addrlen = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr))
            usage("refusing a non-loopback address (only 127.0.0.0/8 and ::1)");
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        opt.addrlen = sizeof *v6;
    } else {
        usage("--host must be a numeric loopback address");
    }
}

/* Room for N sockets: raise the soft limit, and the hard one when allowed. */
static void raiseFileLimit(int wanted)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        die("getrlimit");
    if (rl.rlim_cur >= (rlim_t)wanted)
        return;
    rl.rlim_cur = rl.rlim_max >= (rlim_t)wanted ? (rlim_t)wanted : rl.rlim_max;
    if (rl.rlim_max < (rlim_t)wanted) {
        struct rlimit more = {(rlim_t)wanted, (rlim_t)wanted};
        if (setrlimit(RLIMIT_NOFILE, &more) == 0)
            return;
    }
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < (rlim_t)wanted) {
        fprintf(stderr, "loadgen: need %d file descriptors, the limit is %llu\n", wanted, (unsigned long long)rl.rlim_cur);
        exit(1);
    }
}

static void watch(int op, int fd, uint32_t events, uint32_t tag)
{
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    if (epoll_ctl(epfd, op, fd, &ev) != 0)
        die("epoll_ctl");
}

/* A non-blocking socket connecting to the target; -1 (errno set) if that failed at once. */
static int startConnect(void)
{
    int one = 1;
    int fd = socket(opt.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&opt.addr, opt.addrlen) != 0 && errno != EINPROGRESS) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static void recordLatency(uint64_t ns)
{
    uint64_t us = ns / 1000;
    hist[us < HIST_US ? us : HIST_US]++;
    if (us > latencyMax)
        latencyMax = us;
}

/* The latency (us) below which the given share of the recorded ones fall. */
static uint64_t percentile(double share)
{
    uint64_t total = 0, seen = 0;
    for (int i = 0; i <= HIST_US; i++)
        total += hist[i];
    if (total == 0)
        return 0;
    uint64_t rank = (uint64_t)(share * (double)total);
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen > rank)
            return i < HIST_US ? (uint64_t)i : latencyMax;
    }
    return latencyMax;
}

/*
 * The per-connection state machine of rr, connrate and idle.  Returns 1 when
 * the echo of the current message is complete, 0 while it is not, -1 when
 * the connection failed (closed by the peer, reset, wrong bytes).
 */
static int advance(struct conn *c, uint32_t events, uint32_t tag, unsigned char *buffer)
{
    if (c->state == CONNECTING) {
        int error = 0;
        socklen_t len = sizeof error;
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return 0;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
        if (error != 0) {
            errno = error;
            return -1;
        }
        c->state = SENDING;
        c->sent = c->received = 0;
        if (opt.mode != CONNRATE)
            c->began = nowNs();
    }
    if (c->state == SENDING) {
        ssize_t n = write(c->fd, message + c->sent, msglen - c->sent);
        if (n < 0 && errno != EAGAIN)
            return -1;
        if (n > 0)
            c->sent += (size_t)n;
        if (c->sent == msglen) {
            c->state = RECEIVING;
            watch(EPOLL_CTL_MOD, c->fd, EPOLLIN, tag);
        } else {
            watch(EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLOUT, tag);
        }
        return 0;
    }
    if (c->state == RECEIVING) {
        ssize_t n = read(c->fd, buffer + c->received, msglen - c->received);
        if (n == 0)
            errno = 0; /* closed by the server */
        if (n == 0 || (n < 0 && errno != EAGAIN))
            return -1;
        if (n < 0)
            return 0;
        if (memcmp(buffer + c->received, message + c->received, (size_t)n) != 0) {
            fprintf(stderr, "loadgen: the echo differs from what was sent\n");
            return -1;
        }
        c->received += (size_t)n;
        return c->received == msglen;
    }
    if (c->state == OPEN && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return -1; /* an idle connection the server closed (or wrote to) */
    return 0;
}

/* Start the next message on a connection whose echo is complete. */
static void sendNext(struct conn *c, uint32_t tag)
{
    c->state = SENDING;
    c->sent = c->received = 0;
    c->began = nowNs();
    ssize_t n = write(c->fd, message, msglen);
    if (n > 0)
        c->sent = (size_t)n;
    if (c->sent == msglen)
        c->state = RECEIVING; /* still watched for EPOLLIN only: no epoll_ctl per message */
    else
        watch(EPOLL_CTL_MOD, c->fd, EPOLLIN | EPOLLOUT, tag);
}

static void printLatencies(void)
{
    printf(",\"p50_us\":%llu,\"p90_us\":%llu,\"p99_us\":%llu,\"p999_us\":%llu,\"max_us\":%llu",
           (unsigned long long)percentile(0.50), (unsigned long long)percentile(0.90),
           (unsigned long long)percentile(0.99), (unsigned long long)percentile(0.999),
           (unsigned long long)latencyMax);
}

static void event(const char *name)
{
    printf("{\"event\":\"%s\"}\n", name);
    fflush(stdout);
}

/* rr: N connections, one message in flight on each, for --duration or --count round trips. */
static int runRR(void)
{
    struct conn *conns = calloc((size_t)opt.connections, sizeof *conns);
    unsigned char *buffers = malloc((size_t)opt.connections * msglen);
    struct epoll_event events[MAX_EVENTS];
    int connected = 0;
    if (!conns || !buffers)
        die("malloc");
    for (int i = 0; i < opt.connections; i++) {
        conns[i].fd = startConnect();
        if (conns[i].fd < 0)
            die("connect");
        conns[i].state = CONNECTING;
        watch(EPOLL_CTL_ADD, conns[i].fd, EPOLLOUT, (uint32_t)i);
    }
    uint64_t warmEnd = nowNs() + (uint64_t)(opt.warmup * 1e9), end = 0, started = 0;
    uint64_t trips = 0;
    double cpuStart = 0;
    int measuring = 0;
    for (;;) {
        uint64_t now = nowNs();
        if (!measuring && connected == opt.connections && now >= warmEnd) {
            memset(hist, 0, sizeof hist);
            latencyMax = 0;
            trips = 0;
            measuring = 1;
            event("start");
            cpuStart = cpuSeconds();
            started = nowNs();
            end = started + (uint64_t)(opt.duration * 1e9);
        }
        if (measuring && (now >= end || trips >= opt.count))
            break;
        if (!measuring && now >= warmEnd + CONNECT_S * 1000000000ULL) {
            fprintf(stderr, "loadgen: only %d of %d connections were made\n", connected, opt.connections);
            return 1;
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            uint32_t i = events[k].data.u32;
            struct conn *c = &conns[i];
            int wasConnecting = c->state == CONNECTING;
            int done = advance(c, events[k].events, i, buffers + (size_t)i * msglen);
            if (done < 0) {
                fprintf(stderr, "loadgen: connection %u failed (%s)\n", i, errno ? strerror(errno) : "closed");
                return 1;
            }
            if (wasConnecting && c->state != CONNECTING)
                connected++;
            if (done == 1) {
                if (measuring) {
                    trips++;
                    recordLatency(nowNs() - c->began);
                }
                sendNext(c, i);
            }
        }
    }
    double elapsed = (nowNs() - started) / 1e9;
    double cpu = cpuSeconds() - cpuStart;
    printf("{\"mode\":\"rr\",\"connections\":%d,\"size\":%zu,\"framing\":\"%s\",\"count\":%llu,"
           "\"elapsed_s\":%.6f,\"rate\":%.1f,\"cpu_s\":%.6f",
           opt.connections, opt.size, opt.u32 ? "u32" : "raw", (unsigned long long)trips, elapsed,
           trips / elapsed, cpu);
    printLatencies();
    printf("}\n");
    return 0;
}

/* bulk: --bytes through one connection, the echo read while sending, at most --window in flight. */
static int runBulk(void)
{
    static unsigned char out[CHUNK + PATTERN], in[4 * CHUNK];
    for (size_t i = 0; i < sizeof out; i++)
        out[i] = (unsigned char)(i % PATTERN);
    int fd = startConnect();
    if (fd < 0)
        die("connect");
    struct epoll_event events[4];
    watch(EPOLL_CTL_ADD, fd, EPOLLOUT, 0);
    uint64_t deadline = nowNs() + (uint64_t)(opt.duration * 1e9);
    for (;;) { /* wait for the connection */
        int n = epoll_wait(epfd, events, 4, 100);
        if (n > 0) {
            int error = 0;
            socklen_t len = sizeof error;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
            if (error) {
                errno = error;
                die("connect");
            }
            break;
        }
        if (nowNs() > deadline) {
            fprintf(stderr, "loadgen: connect timed out\n");
            return 1;
        }
    }
    uint64_t total = opt.bytes, sent = 0, received = 0; /* --bytes is bulk's count */
    uint32_t interest = EPOLLIN | EPOLLOUT;
    watch(EPOLL_CTL_MOD, fd, interest, 0);
    event("start");
    double cpuStart = cpuSeconds();
    uint64_t started = nowNs();
    deadline = started + (uint64_t)(opt.duration * 1e9);
    while (received < total && nowNs() < deadline) {
        int n = epoll_wait(epfd, events, 4, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        if (n <= 0)
            continue;
        if (events[0].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            ssize_t got = read(fd, in, sizeof in);
            if (got == 0 || (got < 0 && errno != EAGAIN)) {
                fprintf(stderr, "loadgen: the server closed the connection after %llu bytes\n", (unsigned long long)received);
                return 1;
            }
            if (got > 0) {
                /* Check the first 64 KiB of each read: cheap beside the copy, enough to catch a wrong echo. */
                if ((uint64_t)got > sent - received || memcmp(in, out + received % PATTERN, (size_t)got > CHUNK ? CHUNK : (size_t)got) != 0) {
                    fprintf(stderr, "loadgen: the echo differs from what was sent at byte %llu\n", (unsigned long long)received);
                    return 1;
                }
                received += (uint64_t)got;
            }
        }
        uint64_t room = sent - received < opt.window ? opt.window - (sent - received) : 0;
        if ((events[0].events & EPOLLOUT) && sent < total && room > 0) {
            uint64_t want = total - sent < CHUNK ? total - sent : CHUNK;
            ssize_t put = write(fd, out + sent % PATTERN, want < room ? want : room);
            if (put < 0 && errno != EAGAIN)
                die("write");
            if (put > 0)
                sent += (uint64_t)put;
        }
        /* Stop asking for EPOLLOUT while the window is full or everything is sent. */
        uint32_t wanted = EPOLLIN | (sent < total && sent - received < opt.window ? EPOLLOUT : 0);
        if (wanted != interest) {
            interest = wanted;
            watch(EPOLL_CTL_MOD, fd, interest, 0);
        }
    }
    double elapsed = (nowNs() - started) / 1e9;
    double cpu = cpuSeconds() - cpuStart;
    printf("{\"mode\":\"bulk\",\"bytes\":%llu,\"complete\":%s,\"elapsed_s\":%.6f,\"rate\":%.3f,\"cpu_s\":%.6f}\n",
           (unsigned long long)received, received == total ? "true" : "false", elapsed, received / elapsed / 1e6, cpu);
    close(fd);
    return 0;
}

/* Open a connection in slot i, counting a failure to even start one. */
static int openSlot(struct conn *c, uint32_t i, uint64_t *errors)
{
    c->fd = startConnect();
    if (c->fd < 0) {
        (*errors)++;
        c->state = CLOSED;
        return -1;
    }
    c->state = CONNECTING;
    c->began = nowNs();
    watch(EPOLL_CTL_ADD, c->fd, EPOLLOUT, i);
    return 0;
}

/* connrate: K at a time, connect, one echo, close; for --duration or --count connections. */
static int runConnrate(void)
{
    int slots = opt.concurrency;
    struct conn *conns = calloc((size_t)slots, sizeof *conns);
    unsigned char *buffers = malloc((size_t)slots * msglen);
    struct epoll_event events[MAX_EVENTS];
    uint64_t done = 0, errors = 0;
    if (!conns || !buffers)
        die("malloc");
    event("start");
    double cpuStart = cpuSeconds();
    uint64_t started = nowNs(), end = started + (uint64_t)(opt.duration * 1e9);
    for (int i = 0; i < slots; i++)
        openSlot(&conns[i], (uint32_t)i, &errors);
    while (nowNs() < end && done < opt.count && errors < MAX_ERRORS) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            uint32_t i = events[k].data.u32;
            struct conn *c = &conns[i];
            int result = advance(c, events[k].events, i, buffers + (size_t)i * msglen);
            if (result == 0)
                continue;
            if (result == 1) {
                done++;
                recordLatency(nowNs() - c->began);
            } else {
                errors++;
            }
            close(c->fd);
            c->state = CLOSED;
            if (done + (uint64_t)slots <= opt.count)
                openSlot(c, i, &errors);
        }
        for (int i = 0; i < slots; i++) /* retry slots whose socket could not be made */
            if (conns[i].state == CLOSED && errors < MAX_ERRORS && done + (uint64_t)slots <= opt.count)
                openSlot(&conns[i], (uint32_t)i, &errors);
    }
    double elapsed = (nowNs() - started) / 1e9;
    double cpu = cpuSeconds() - cpuStart;
    printf("{\"mode\":\"connrate\",\"concurrency\":%d,\"size\":%zu,\"count\":%llu,\"elapsed_s\":%.6f,"
           "\"rate\":%.1f,\"cpu_s\":%.6f,\"errors\":%llu",
           slots, opt.size, (unsigned long long)done, elapsed, done / elapsed, cpu, (unsigned long long)errors);
    printLatencies();
    printf("}\n");
    return errors >= MAX_ERRORS;
}

/*
 * idle: open N connections, K at a time, each proven by one echo (so the
 * server has accepted it and made its per-connection state), then hold them.
 */
static int runIdle(void)
{
    struct conn *conns = calloc((size_t)opt.connections, sizeof *conns);
    unsigned char *buffer = malloc(msglen);
    struct epoll_event events[MAX_EVENTS];
    int next = 0, pending = 0, open = 0, lost = 0;
    uint64_t errors = 0;
    char byte;
    if (!conns || !buffer)
        die("malloc");
    uint64_t started = nowNs(), end = started + (uint64_t)(opt.duration * 1e9), opened = 0;
    while (open < opt.connections && nowNs() < end && errors < MAX_ERRORS) {
        while (pending < opt.concurrency && next < opt.connections) {
            if (openSlot(&conns[next], (uint32_t)next, &errors) == 0) {
                pending++;
                next++;
            } else if (errors >= MAX_ERRORS) {
                break;
            }
        }
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            uint32_t i = events[k].data.u32;
            struct conn *c = &conns[i];
            int wasOpen = c->state == OPEN;
            int result = advance(c, events[k].events, i, buffer);
            if (result == 1) {
                c->state = OPEN;
                pending--;
                open++;
            } else if (result < 0) {
                close(c->fd);
                c->state = CLOSED;
                if (wasOpen) {
                    open--;
                    lost++;
                } else {
                    pending--;
                    errors++;
                }
            }
        }
    }
    opened = nowNs();
    int ok = open == opt.connections;
    if (ok)
        printf("{\"event\":\"ready\",\"open\":%d,\"open_s\":%.3f}\n", open, (opened - started) / 1e9);
    fflush(stdout);
    /* Hold: until --hold passes or standard input closes (the caller is done measuring). */
    if (ok) /* fails (EPERM) when standard input is a file or /dev/null: then only --hold ends it */
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &(struct epoll_event){.events = EPOLLIN, .data.u32 = STDIN_TAG});
    uint64_t holdEnd = nowNs() + (uint64_t)(opt.hold * 1e9);
    while (ok && nowNs() < holdEnd) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int k = 0; k < n; k++) {
            uint32_t i = events[k].data.u32;
            if (i == STDIN_TAG) {
                if (read(0, &byte, 1) <= 0)
                    holdEnd = 0;
                continue;
            }
            if (conns[i].state == OPEN && advance(&conns[i], events[k].events, i, buffer) < 0) {
                close(conns[i].fd);
                conns[i].state = CLOSED;
                open--;
                lost++;
            }
        }
    }
    printf("{\"mode\":\"idle\",\"connections\":%d,\"open\":%d,\"lost\":%d,\"errors\":%llu,\"open_s\":%.3f,\"rate\":%.1f}\n",
           opt.connections, open, lost, (unsigned long long)errors, (opened - started) / 1e9,
           (open + lost) / ((opened - started) / 1e9));
    return !ok;
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},        {"port", required_argument, 0, 'p'},
        {"connections", required_argument, 0, 'n'}, {"concurrency", required_argument, 0, 'k'},
        {"size", required_argument, 0, 's'},        {"framing", required_argument, 0, 'f'},
        {"duration", required_argument, 0, 'd'},    {"warmup", required_argument, 0, 'w'},
        {"count", required_argument, 0, 'c'},       {"bytes", required_argument, 0, 'b'},
        {"window", required_argument, 0, 'W'},      {"hold", required_argument, 0, 'H'},
        {0, 0, 0, 0},
    };
    const char *host = "127.0.0.1";
    int port = 0, o;
    if (argc < 2)
        usage("which mode?");
    if (!strcmp(argv[1], "rr"))
        opt.mode = RR;
    else if (!strcmp(argv[1], "bulk"))
        opt.mode = BULK;
    else if (!strcmp(argv[1], "connrate"))
        opt.mode = CONNRATE;
    else if (!strcmp(argv[1], "idle"))
        opt.mode = IDLE;
    else
        usage("the mode is one of rr, bulk, connrate, idle");
    optind = 2;
    while ((o = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (o) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': opt.connections = atoi(optarg); break;
        case 'k': opt.concurrency = atoi(optarg); break;
        case 's': opt.size = strtoull(optarg, NULL, 10); break;
        case 'f':
            if (strcmp(optarg, "raw") && strcmp(optarg, "u32"))
                usage("--framing is raw or u32");
            opt.u32 = !strcmp(optarg, "u32");
            break;
        case 'd': opt.duration = atof(optarg); break;
        case 'w': opt.warmup = atof(optarg); break;
        case 'c': opt.count = strtoull(optarg, NULL, 10); break;
        case 'b': opt.bytes = strtoull(optarg, NULL, 10); break;
        case 'W': opt.window = strtoull(optarg, NULL, 10); break;
        case 'H': opt.hold = atof(optarg); break;
        default: usage("unknown option");
        }
    }
    parseAddress(host, port);
    if (opt.duration <= 0 || opt.duration > 3600 || opt.count == 0 || opt.hold < 0 || opt.hold > 3600 || opt.warmup < 0)
        usage("--duration (0-3600 s), --count (> 0), --hold (0-3600 s) and --warmup (>= 0) bound every run");
    if (opt.size == 0 || opt.size > MAX_SIZE || opt.connections < 1 || opt.connections > 1000000 ||
        opt.concurrency < 1 || opt.concurrency > 100000 || opt.window < CHUNK || opt.bytes == 0)
        usage("--size 1-1048576, --connections 1-1000000, --concurrency 1-100000, --window >= 65536, --bytes > 0");
    signal(SIGPIPE, SIG_IGN);
    raiseFileLimit((opt.mode == CONNRATE ? opt.concurrency : opt.connections) + 64);

    /* The message: its u32 length prefix (if framed), then bytes 'a'..'z' repeated. */
    msglen = opt.size + (opt.u32 ? 4 : 0);
    message = malloc(msglen);
    if (!message)
        die("malloc");
    if (opt.u32) {
        uint32_t prefix = htonl((uint32_t)opt.size);
        memcpy(message, &prefix, 4);
    }
    for (size_t i = 0; i < opt.size; i++)
        message[msglen - opt.size + i] = (unsigned char)('a' + i % 26);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    switch (opt.mode) {
    case RR: return runRR();
    case BULK: return runBulk();
    case CONNRATE: return runConnrate();
    case IDLE: return runIdle();
    }
    return 2;
}
