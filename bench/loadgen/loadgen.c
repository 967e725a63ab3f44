/*
 * loadgen: the TCP load generator of netd's benchmark suite (bench/README.md).
 *
 * One thread, one epoll set, no dependency beyond libc and (for the TLS
 * modes) OpenSSL's libssl, so that on a 2-core machine the client costs as
 * little CPU as the fastest server and is not what limits the figures (a
 * Python client would be).  It talks only to loopback addresses (127.0.0.0/8,
 * ::1) and every run is bounded both in time (--duration) and in count
 * (--count): a benchmark must never run away.
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
 * The same through TLS (a full handshake on every connection: no session is
 * ever reused; the server's certificate is not verified unless --ca names the
 * CA to verify it and the name "localhost" against; --tls-version pins 1.2 or
 * 1.3, else the newest both speak):
 *
 *   tls-handshake  as connrate: --concurrency K at a time, connect, full
 *             handshake, one echo of S bytes, close_notify, close
 *             (--size 0: no echo, closed once the handshake is done).
 *             Handshakes per second.
 *   tls-rr    as rr, each connection's handshake made before the warm-up.
 *   tls-bulk  as bulk, after the handshake.
 *   tls-idle  as idle, each connection's handshake made before its echo.
 *
 * Stalled connections, for a server's memory per half-open connection (held
 * as idle holds them, "ready" once all are in place):
 *
 *   stall     --connections N TCP connections opened, nothing sent.  (Ready
 *             once connected: the caller checks the server has accepted them.)
 *   tls-stall --connections N, each sends its ClientHello and nothing more:
 *             in place once the server's first flight has arrived (not read).
 *
 * The TLS modes' result also names the version and cipher suite negotiated
 * (of the first connection).
 *
 * Before the measured window starts the tool prints {"event":"start"}, so a
 * caller can sample the server's CPU time at the same moment; idle prints
 * {"event":"ready"} once every connection is open.
 *
 * Build: cc -O2 -Wall -Wextra -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
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

enum mode { RR, BULK, CONNRATE, IDLE, STALL };
enum state { CONNECTING, HANDSHAKING, SENDING, RECEIVING, OPEN, CLOSED, HELLO };

struct conn {
    int fd;
    SSL *ssl;          /* the TLS modes' connection, NULL in the plain ones */
    enum state state;
    uint32_t interest; /* the epoll events watched */
    size_t sent;       /* bytes of the current message written */
    size_t received;   /* bytes of its echo read */
    uint64_t began;    /* when the current message (or connection, in connrate) began, ns */
};

static struct {
    enum mode mode;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int connections, concurrency, u32, tlsVersion;
    size_t size;
    const char *ca;
    double duration, warmup, hold;
    uint64_t count, bytes, window;
} opt = {
    .connections = 50, .concurrency = 32, .size = 64,
    .duration = 5, .hold = 30, .count = 100000000, .bytes = 1ULL << 30, .window = 4 << 20,
};

static int epfd;
static const char *modeName;     /* the mode as given, for the result line */
static SSL_CTX *tls;             /* the TLS modes' settings; NULL in the plain ones */
static char negotiated[128];     /* the TLS version and cipher of the first handshake */
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

static void dieTLS(const char *what)
{
    fprintf(stderr, "loadgen: %s: ", what);
    ERR_print_errors_fp(stderr);
    fprintf(stderr, "\n");
    exit(1);
}

static void usage(const char *why)
{
    fprintf(stderr,
            "loadgen: %s\n"
            "usage: loadgen rr|bulk|connrate|idle|stall|tls-handshake|tls-rr|tls-bulk|tls-idle|tls-stall --port P\n"
            "  [--host 127.0.0.1|::1] [--connections N] [--concurrency K] [--size S]\n"
            "  [--framing raw|u32] [--duration SECONDS] [--warmup SECONDS] [--count N]\n"
            "  [--bytes B] [--window B] [--hold SECONDS] [--tls-version 1.2|1.3] [--ca FILE]\n",
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

/* Watch a connection for these events, with an epoll_ctl only when they change. */
static void want(struct conn *c, uint32_t events, uint32_t tag)
{
    if (c->interest != events) {
        watch(EPOLL_CTL_MOD, c->fd, events, tag);
        c->interest = events;
    }
}

/* The client settings of the TLS modes: no session reuse, verification only with --ca. */
static void setUpTLS(void)
{
    tls = SSL_CTX_new(TLS_client_method());
    if (!tls)
        dieTLS("SSL_CTX_new");
    SSL_CTX_set_session_cache_mode(tls, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(tls, SSL_MODE_ENABLE_PARTIAL_WRITE);
    if (opt.tlsVersion) {
        SSL_CTX_set_min_proto_version(tls, opt.tlsVersion);
        SSL_CTX_set_max_proto_version(tls, opt.tlsVersion);
    }
    if (opt.ca) {
        if (SSL_CTX_load_verify_locations(tls, opt.ca, NULL) != 1)
            dieTLS("--ca");
        SSL_CTX_set_verify(tls, SSL_VERIFY_PEER, NULL);
    }
}

/* A TLS client connection on a connected socket, its handshake not yet begun. */
static SSL *newTLS(int fd)
{
    SSL *ssl = SSL_new(tls);
    if (!ssl || SSL_set_fd(ssl, fd) != 1 || SSL_set_tlsext_host_name(ssl, "localhost") != 1)
        dieTLS("SSL_new");
    if (opt.ca && SSL_set1_host(ssl, "localhost") != 1)
        dieTLS("SSL_set1_host");
    SSL_set_connect_state(ssl);
    return ssl;
}

/*
 * What a TLS call's failure means: -1 with errno EAGAIN and *events what to
 * wait for (WANT_READ, WANT_WRITE), 0 for the end of the stream (close_notify
 * or EOF), -1 with another errno for an error (OpenSSL's printed).
 */
static ssize_t tlsFailure(SSL *ssl, int result, uint32_t *events)
{
    switch (SSL_get_error(ssl, result)) {
    case SSL_ERROR_WANT_READ: *events = EPOLLIN; errno = EAGAIN; return -1;
    case SSL_ERROR_WANT_WRITE: *events = EPOLLOUT; errno = EAGAIN; return -1;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0 && ERR_peek_error() == 0)
            return 0; /* EOF without close_notify */
        if (errno == 0)
            errno = EPROTO;
        ERR_print_errors_fp(stderr);
        return -1;
    default:
        ERR_print_errors_fp(stderr);
        errno = EPROTO;
        return -1;
    }
}

/* write(2), or SSL_write on a TLS connection; on EAGAIN *events says what to wait for. */
static ssize_t connWrite(struct conn *c, const void *buffer, size_t length, uint32_t *events)
{
    *events = EPOLLOUT;
    if (!c->ssl)
        return write(c->fd, buffer, length);
    int n = SSL_write(c->ssl, buffer, (int)length);
    return n > 0 ? n : tlsFailure(c->ssl, n, events);
}

/* read(2), or SSL_read on a TLS connection; on EAGAIN *events says what to wait for. */
static ssize_t connRead(struct conn *c, void *buffer, size_t length, uint32_t *events)
{
    *events = EPOLLIN;
    if (!c->ssl)
        return read(c->fd, buffer, length);
    int n = SSL_read(c->ssl, buffer, (int)length);
    return n > 0 ? n : tlsFailure(c->ssl, n, events);
}

/* Drive a TLS handshake: 1 done, 0 waiting (c->interest set), -1 failed. */
static int handshake(struct conn *c, uint32_t tag)
{
    uint32_t events;
    int result = SSL_do_handshake(c->ssl);
    if (result == 1) {
        if (!negotiated[0])
            snprintf(negotiated, sizeof negotiated, "%s %s", SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl));
        return 1;
    }
    if (tlsFailure(c->ssl, result, &events) < 0 && errno == EAGAIN) {
        want(c, events, tag);
        return 0;
    }
    if (errno == 0)
        errno = ECONNRESET; /* closed by the server mid-handshake */
    return -1;
}

/* Close a connection: a TLS one with its close_notify (not waiting for the server's). */
static void closeConn(struct conn *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
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
 * stall and tls-stall: a stalled connection held from now on, watched only
 * for the server closing it (its first flight, if any, left unread).
 */
static int holdStalled(struct conn *c, uint32_t events, uint32_t tag)
{
    if (events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
        errno = ECONNRESET; /* closed by the server before it was in place */
        return -1;
    }
    c->state = OPEN;
    want(c, EPOLLRDHUP, tag);
    return 1;
}

/* stall: in place once connected; tls-stall: once its ClientHello is sent (then HELLO waits for the answer). */
static int stallAt(struct conn *c, uint32_t tag)
{
    if (!tls)
        return holdStalled(c, 0, tag);
    c->ssl = newTLS(c->fd);
    c->state = HELLO;
    int done = handshake(c, tag); /* writes the ClientHello; nothing to read yet */
    if (done < 0)
        return -1;
    want(c, c->interest | EPOLLIN, tag);
    return 0;
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
        c->sent = c->received = 0;
        if (opt.mode != CONNRATE)
            c->began = nowNs();
        if (opt.mode == STALL)
            return stallAt(c, tag);
        if (tls) {
            c->ssl = newTLS(c->fd);
            c->state = HANDSHAKING;
        } else {
            c->state = SENDING;
        }
    }
    if (c->state == HELLO) {
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
            return holdStalled(c, events, tag);
        if ((events & EPOLLOUT) && handshake(c, tag) < 0) /* the ClientHello not yet all written */
            return -1;
        return 0;
    }
    if (c->state == HANDSHAKING) {
        int done = handshake(c, tag);
        if (done <= 0)
            return done;
        if (msglen == 0)
            return 1; /* tls-handshake --size 0: the handshake is the whole exchange */
        c->state = SENDING;
    }
    if (c->state == SENDING) {
        uint32_t events;
        ssize_t n = connWrite(c, message + c->sent, msglen - c->sent, &events);
        if (n < 0 && errno != EAGAIN)
            return -1;
        if (n > 0)
            c->sent += (size_t)n;
        if (c->sent == msglen) {
            c->state = RECEIVING;
            want(c, EPOLLIN, tag);
        } else {
            want(c, EPOLLIN | events, tag);
        }
        return 0;
    }
    if (c->state == RECEIVING) {
        for (;;) { /* TLS may hold decrypted bytes that epoll does not announce */
            uint32_t events;
            ssize_t n = connRead(c, buffer + c->received, msglen - c->received, &events);
            if (n == 0)
                errno = 0; /* closed by the server */
            if (n == 0 || (n < 0 && errno != EAGAIN))
                return -1;
            if (n < 0) {
                want(c, EPOLLIN | events, tag);
                return 0;
            }
            if (memcmp(buffer + c->received, message + c->received, (size_t)n) != 0) {
                fprintf(stderr, "loadgen: the echo differs from what was sent\n");
                return -1;
            }
            c->received += (size_t)n;
            if (c->received == msglen) {
                want(c, EPOLLIN, tag);
                return 1;
            }
            if (!c->ssl || SSL_pending(c->ssl) == 0)
                return 0;
        }
    }
    if (c->state == OPEN && (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)))
        return -1; /* an idle connection the server closed (or wrote to) */
    return 0;
}

/* Start the next message on a connection whose echo is complete. */
static void sendNext(struct conn *c, uint32_t tag)
{
    uint32_t events;
    c->state = SENDING;
    c->sent = c->received = 0;
    c->began = nowNs();
    ssize_t n = connWrite(c, message, msglen, &events);
    if (n > 0)
        c->sent = (size_t)n;
    if (c->sent == msglen)
        c->state = RECEIVING; /* still watched for EPOLLIN only: no epoll_ctl per message */
    else
        want(c, EPOLLIN | events, tag);
}

/* The TLS modes' version and cipher suite, as a JSON field. */
static void printNegotiated(void)
{
    if (tls)
        printf(",\"tls\":\"%s\"", negotiated);
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
        conns[i].interest = EPOLLOUT;
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
            int wasConnecting = c->state == CONNECTING || c->state == HANDSHAKING;
            int done = advance(c, events[k].events, i, buffers + (size_t)i * msglen);
            if (done < 0) {
                fprintf(stderr, "loadgen: connection %u failed (%s)\n", i, errno ? strerror(errno) : "closed");
                return 1;
            }
            if (wasConnecting && c->state != CONNECTING && c->state != HANDSHAKING)
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
    printf("{\"mode\":\"%s\",\"connections\":%d,\"size\":%zu,\"framing\":\"%s\",\"count\":%llu,"
           "\"elapsed_s\":%.6f,\"rate\":%.1f,\"cpu_s\":%.6f",
           tls ? "tls-rr" : "rr", opt.connections, opt.size, opt.u32 ? "u32" : "raw", (unsigned long long)trips, elapsed,
           trips / elapsed, cpu);
    printLatencies();
    printNegotiated();
    printf("}\n");
    return 0;
}

/* bulk: --bytes through one connection, the echo read while sending, at most --window in flight. */
static int runBulk(void)
{
    static unsigned char out[CHUNK + PATTERN], in[4 * CHUNK];
    for (size_t i = 0; i < sizeof out; i++)
        out[i] = (unsigned char)(i % PATTERN);
    struct conn c = {.fd = startConnect(), .state = CONNECTING, .interest = EPOLLOUT};
    if (c.fd < 0)
        die("connect");
    struct epoll_event events[4];
    watch(EPOLL_CTL_ADD, c.fd, EPOLLOUT, 0);
    uint64_t deadline = nowNs() + (uint64_t)(opt.duration * 1e9);
    while (c.state != SENDING) { /* wait for the connection (and its handshake) */
        int n = epoll_wait(epfd, events, 4, 100);
        if (n > 0 && c.state == CONNECTING) {
            int error = 0;
            socklen_t len = sizeof error;
            getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &error, &len);
            if (error) {
                errno = error;
                die("connect");
            }
            c.state = tls ? HANDSHAKING : SENDING;
            if (tls)
                c.ssl = newTLS(c.fd);
        }
        if (n > 0 && c.state == HANDSHAKING) {
            int done = handshake(&c, 0);
            if (done < 0)
                die("TLS handshake");
            if (done == 1)
                c.state = SENDING;
        }
        if (nowNs() > deadline) {
            fprintf(stderr, "loadgen: connect timed out\n");
            return 1;
        }
    }
    uint64_t total = opt.bytes, sent = 0, received = 0; /* --bytes is bulk's count */
    uint32_t readWants = EPOLLIN, writeWants = EPOLLOUT; /* what TLS waits for (a read may need to write) */
    want(&c, EPOLLIN | EPOLLOUT, 0);
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
        /* Read until the socket (and TLS) has nothing more; check the first 64 KiB of
           each read: cheap beside the copy, enough to catch a wrong echo. */
        for (int reads = 0; reads < 64; reads++) {
            ssize_t got = connRead(&c, in, sizeof in, &readWants);
            if (got == 0 || (got < 0 && errno != EAGAIN)) {
                fprintf(stderr, "loadgen: the server closed the connection after %llu bytes\n", (unsigned long long)received);
                return 1;
            }
            if (got < 0)
                break;
            readWants = EPOLLIN;
            if ((uint64_t)got > sent - received || memcmp(in, out + received % PATTERN, (size_t)got > CHUNK ? CHUNK : (size_t)got) != 0) {
                fprintf(stderr, "loadgen: the echo differs from what was sent at byte %llu\n", (unsigned long long)received);
                return 1;
            }
            received += (uint64_t)got;
        }
        /* Write whole chunks only, so that a TLS write retried after WANT_* has the same arguments. */
        uint64_t chunk = total - sent < CHUNK ? total - sent : CHUNK;
        if (sent < total && sent - received + chunk <= opt.window) {
            ssize_t put = connWrite(&c, out + sent % PATTERN, chunk, &writeWants);
            if (put < 0 && errno != EAGAIN)
                die("write");
            if (put > 0) {
                sent += (uint64_t)put;
                writeWants = EPOLLOUT;
            }
        }
        /* Stop asking to write while the window is full or everything is sent. */
        chunk = total - sent < CHUNK ? total - sent : CHUNK;
        want(&c, readWants | (sent < total && sent - received + chunk <= opt.window ? writeWants : 0), 0);
    }
    double elapsed = (nowNs() - started) / 1e9;
    double cpu = cpuSeconds() - cpuStart;
    printf("{\"mode\":\"%s\",\"bytes\":%llu,\"complete\":%s,\"elapsed_s\":%.6f,\"rate\":%.3f,\"cpu_s\":%.6f",
           tls ? "tls-bulk" : "bulk", (unsigned long long)received, received == total ? "true" : "false", elapsed,
           received / elapsed / 1e6, cpu);
    printNegotiated();
    printf("}\n");
    closeConn(&c);
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
    c->interest = EPOLLOUT;
    c->began = nowNs();
    watch(EPOLL_CTL_ADD, c->fd, EPOLLOUT, i);
    return 0;
}

/*
 * connrate (and tls-handshake): K at a time, connect, (handshake,) one echo,
 * close; for --duration or --count connections.
 */
static int runConnrate(void)
{
    int slots = opt.concurrency;
    struct conn *conns = calloc((size_t)slots, sizeof *conns);
    unsigned char *buffers = malloc((size_t)slots * msglen + 1);
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
            closeConn(c);
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
    printf("{\"mode\":\"%s\",\"concurrency\":%d,\"size\":%zu,\"count\":%llu,\"elapsed_s\":%.6f,"
           "\"rate\":%.1f,\"cpu_s\":%.6f,\"errors\":%llu",
           tls ? "tls-handshake" : "connrate", slots, msglen ? opt.size : 0, (unsigned long long)done, elapsed, done / elapsed, cpu, (unsigned long long)errors);
    printLatencies();
    printNegotiated();
    printf("}\n");
    return errors >= MAX_ERRORS;
}

/*
 * idle (and tls-idle): open N connections, K at a time, each proven by one
 * echo (so the server has accepted it and made its per-connection state),
 * then hold them; stall and tls-stall the same, each left where it stalls.
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
    printf("{\"mode\":\"%s\",\"connections\":%d,\"open\":%d,\"lost\":%d,\"errors\":%llu,\"open_s\":%.3f,\"rate\":%.1f}\n",
           modeName, opt.connections, open, lost, (unsigned long long)errors, (opened - started) / 1e9,
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
        {"tls-version", required_argument, 0, 'V'}, {"ca", required_argument, 0, 'C'},
        {0, 0, 0, 0},
    };
    const char *host = "127.0.0.1";
    int port = 0, o, useTLS = 1, sizeZero = 0;
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
    else if (!strcmp(argv[1], "tls-rr"))
        opt.mode = RR;
    else if (!strcmp(argv[1], "tls-bulk"))
        opt.mode = BULK;
    else if (!strcmp(argv[1], "tls-handshake"))
        opt.mode = CONNRATE;
    else if (!strcmp(argv[1], "tls-idle"))
        opt.mode = IDLE;
    else if (!strcmp(argv[1], "stall") || !strcmp(argv[1], "tls-stall"))
        opt.mode = STALL;
    else
        usage("the mode is one of rr, bulk, connrate, idle, stall, tls-handshake, tls-rr, tls-bulk, tls-idle, tls-stall");
    useTLS = !strncmp(argv[1], "tls-", 4);
    modeName = argv[1];
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
        case 'V':
            if (strcmp(optarg, "1.2") && strcmp(optarg, "1.3"))
                usage("--tls-version is 1.2 or 1.3");
            opt.tlsVersion = !strcmp(optarg, "1.2") ? TLS1_2_VERSION : TLS1_3_VERSION;
            break;
        case 'C': opt.ca = optarg; break;
        default: usage("unknown option");
        }
    }
    parseAddress(host, port);
    if ((opt.tlsVersion || opt.ca) && !useTLS)
        usage("--tls-version and --ca are for the tls-* modes");
    sizeZero = useTLS && opt.mode == CONNRATE && opt.size == 0; /* tls-handshake --size 0: handshakes only */
    if (sizeZero)
        opt.size = 1;
    if (opt.duration <= 0 || opt.duration > 3600 || opt.count == 0 || opt.hold < 0 || opt.hold > 3600 || opt.warmup < 0)
        usage("--duration (0-3600 s), --count (> 0), --hold (0-3600 s) and --warmup (>= 0) bound every run");
    if (opt.size == 0 || opt.size > MAX_SIZE || opt.connections < 1 || opt.connections > 1000000 ||
        opt.concurrency < 1 || opt.concurrency > 100000 || opt.window < CHUNK || opt.bytes == 0)
        usage("--size 1-1048576, --connections 1-1000000, --concurrency 1-100000, --window >= 65536, --bytes > 0");
    signal(SIGPIPE, SIG_IGN);
    raiseFileLimit((opt.mode == CONNRATE ? opt.concurrency : opt.connections) + 64);

    /* The message: its u32 length prefix (if framed), then bytes 'a'..'z' repeated. */
    msglen = sizeZero ? 0 : opt.size + (opt.u32 ? 4 : 0);
    message = malloc(opt.size + 4);
    if (!message)
        die("malloc");
    if (opt.u32) {
        uint32_t prefix = htonl((uint32_t)opt.size);
        memcpy(message, &prefix, 4);
    }
    for (size_t i = 0; i < opt.size && msglen; i++)
        message[msglen - opt.size + i] = (unsigned char)('a' + i % 26);
    if (useTLS)
        setUpTLS();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");
    switch (opt.mode) {
    case RR: return runRR();
    case BULK: return runBulk();
    case CONNRATE: return runConnrate();
    case IDLE:
    case STALL: return runIdle();
    }
    return 2;
}
