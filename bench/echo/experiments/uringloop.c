/*
 * uringloop: the smallest event loop on io_uring that still crosses into
 * Python per message, for the io_uring experiment of issue 18
 * (bench/README.md, "The C echo as the next bar"; run by uring_echo.py
 * beside this file, which builds it).
 *
 * One ring.  Each turn submits what the last turn queued and waits for one
 * completion in the same system call (io_uring_submit_and_wait), then handles
 * every completion ready: an accept queues the connection's first receive and
 * the next accept; a receive of N bytes either goes straight back (the C echo,
 * run(listener, None)) or becomes a bytes object handed to the connection's
 * protocol, protocol.dataReceived(data), whose transport.write(data) queues a
 * send (run(listener, factory), factory(transport) making the protocol) as
 * uvloop's transports do.  So 50 messages ready cost one system call where an
 * epoll loop makes a recv and a send per message.
 *
 * A probe for the cost per round trip, not a server: no flow control beyond
 * "one receive outstanding per connection", no close notification to the
 * protocol, errors close the connection.  Runs until a signal ends it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_SIZE 65536
#define ENTRIES 4096
#define MAX_FD 65536
enum { ACCEPT, RECV, SEND };

typedef struct {
    PyObject_HEAD
    int fd;
} Transport;

struct conn {
    unsigned char *buffer;
    PyObject *protocol;   /* NULL in the C echo */
    PyObject *transport;
    PyObject *sending;    /* the bytes object (Python) being sent, or NULL */
    PyObject *queue;      /* bytes written while one is being sent: a list, or NULL */
    size_t sendLength, sendOffset;
    int open;
};

static struct io_uring ring;
static struct conn *conns;
static PyObject *dataReceivedName;

static struct io_uring_sqe *sqe(void)
{
    struct io_uring_sqe *entry = io_uring_get_sqe(&ring);
    if (entry == NULL) { /* the submission queue is full: hand it to the kernel and take a fresh one */
        io_uring_submit(&ring);
        entry = io_uring_get_sqe(&ring);
    }
    return entry;
}

static void queueAccept(int listener)
{
    struct io_uring_sqe *e = sqe();
    io_uring_prep_accept(e, listener, NULL, NULL, 0);
    io_uring_sqe_set_data64(e, ACCEPT);
}

static void queueRecv(int fd)
{
    struct io_uring_sqe *e = sqe();
    io_uring_prep_recv(e, fd, conns[fd].buffer, READ_SIZE, 0);
    io_uring_sqe_set_data64(e, (uint64_t)fd << 2 | RECV);
}

static void queueSend(int fd)
{
    struct conn *c = &conns[fd];
    const unsigned char *base = c->sending ? (const unsigned char *)PyBytes_AS_STRING(c->sending) : c->buffer;
    struct io_uring_sqe *e = sqe();
    io_uring_prep_send(e, fd, base + c->sendOffset, c->sendLength - c->sendOffset, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(e, (uint64_t)fd << 2 | SEND);
}

static void closeConn(int fd)
{
    struct conn *c = &conns[fd];
    if (!c->open)
        return;
    Py_CLEAR(c->protocol);
    Py_CLEAR(c->transport);
    Py_CLEAR(c->sending);
    Py_CLEAR(c->queue);
    free(c->buffer);
    memset(c, 0, sizeof *c);
    close(fd);
}

/* Transport.write(data): send it now if nothing is being sent, else queue it. */
static PyObject *transportWrite(Transport *self, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "write takes bytes");
        return NULL;
    }
    struct conn *c = &conns[self->fd];
    if (!c->open)
        Py_RETURN_NONE;
    if (c->sending == NULL) {
        Py_INCREF(data);
        c->sending = data;
        c->sendLength = (size_t)PyBytes_GET_SIZE(data);
        c->sendOffset = 0;
        queueSend(self->fd);
    } else {
        if (c->queue == NULL && (c->queue = PyList_New(0)) == NULL)
            return NULL;
        if (PyList_Append(c->queue, data) != 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef transportMethods[] = {
    {"write", (PyCFunction)transportWrite, METH_O, "Queue bytes to send."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TransportType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "uringloop.Transport",
    .tp_basicsize = sizeof(Transport),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_methods = transportMethods,
    .tp_new = NULL,
};

static int opened(int fd, PyObject *factory)
{
    if (fd >= MAX_FD) {
        close(fd);
        return 0;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = &conns[fd];
    c->buffer = malloc(READ_SIZE);
    c->open = 1;
    if (factory != Py_None) {
        Transport *t = PyObject_New(Transport, &TransportType);
        if (t == NULL)
            return -1;
        t->fd = fd;
        c->transport = (PyObject *)t;
        c->protocol = PyObject_CallOneArg(factory, c->transport);
        if (c->protocol == NULL)
            return -1;
    }
    queueRecv(fd);
    return 0;
}

static int received(int fd, int result)
{
    struct conn *c = &conns[fd];
    if (!c->open)
        return 0;
    if (result <= 0) {
        closeConn(fd);
        return 0;
    }
    if (c->protocol == NULL) { /* the C echo: send the buffer back, receive again once it is sent */
        c->sendLength = (size_t)result;
        c->sendOffset = 0;
        queueSend(fd);
        return 0;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)c->buffer, result);
    if (data == NULL)
        return -1;
    queueRecv(fd); /* the bytes are copied out: the buffer is free for the next receive */
    PyObject *done = PyObject_CallMethodOneArg(c->protocol, dataReceivedName, data);
    Py_DECREF(data);
    if (done == NULL)
        return -1;
    Py_DECREF(done);
    return 0;
}

static void sent(int fd, int result)
{
    struct conn *c = &conns[fd];
    if (!c->open)
        return;
    if (result < 0) {
        closeConn(fd);
        return;
    }
    c->sendOffset += (size_t)result;
    if (c->sendOffset < c->sendLength) {
        queueSend(fd);
        return;
    }
    if (c->protocol == NULL) {
        queueRecv(fd);
        return;
    }
    Py_CLEAR(c->sending);
    if (c->queue != NULL && PyList_GET_SIZE(c->queue) > 0) {
        PyObject *next = PyList_GET_ITEM(c->queue, 0);
        Py_INCREF(next);
        PyList_SetSlice(c->queue, 0, 1, NULL);
        c->sending = next;
        c->sendLength = (size_t)PyBytes_GET_SIZE(next);
        c->sendOffset = 0;
        queueSend(fd);
    }
}

/* run(listenerFd, factory): serve forever (until a signal's handler raises). */
static PyObject *run(PyObject *module, PyObject *args)
{
    int listener;
    PyObject *factory;
    (void)module;
    if (!PyArg_ParseTuple(args, "iO", &listener, &factory))
        return NULL;
    conns = calloc(MAX_FD, sizeof *conns);
    int error = io_uring_queue_init(ENTRIES, &ring, 0);
    if (error < 0) {
        errno = -error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    queueAccept(listener);
    for (;;) {
        io_uring_submit_and_wait(&ring, 1);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        int failed = 0;
        io_uring_for_each_cqe(&ring, head, cqe)
        {
            seen++;
            uint64_t tag = io_uring_cqe_get_data64(cqe);
            int fd = (int)(tag >> 2);
            switch (tag & 3) {
            case ACCEPT:
                if (cqe->res >= 0 && opened(cqe->res, factory) != 0)
                    failed = 1;
                queueAccept(listener);
                break;
            case RECV:
                if (received(fd, cqe->res) != 0)
                    failed = 1;
                break;
            default:
                sent(fd, cqe->res);
            }
            if (failed)
                break;
        }
        io_uring_cq_advance(&ring, seen);
        if (failed || PyErr_CheckSignals() != 0)
            return NULL;
    }
}

static PyMethodDef methods[] = {
    {"run", run, METH_VARARGS, "run(listener_fd, factory): serve on io_uring until a signal handler raises."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduleDef = {PyModuleDef_HEAD_INIT, "uringloop", NULL, -1, methods};

PyMODINIT_FUNC PyInit_uringloop(void)
{
    if (PyType_Ready(&TransportType) < 0)
        return NULL;
    dataReceivedName = PyUnicode_InternFromString("dataReceived");
    return PyModule_Create(&moduleDef);
}
