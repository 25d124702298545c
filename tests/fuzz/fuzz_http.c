/* fuzz_http.c - libFuzzer target for the request framework's checks on the request line and
 * headers (server/http.c): framing (Content-Length, Transfer-Encoding), header size, routing
 * and methods, Content-Type, bearer token, request id, traceparent, body limits, streamed
 * bodies, percent-decoded path and query parameters.
 *
 * Those checks are static functions fed by libmicrohttpd from a live connection, so this target
 * runs the real server (srv_start) in-process on an ephemeral loopback port, with the API's
 * route shapes and stub handlers (no database), and sends each input as the raw bytes of one
 * connection, then half-closes it and reads every answer. A few limits are smaller than in
 * server/main.c so that short inputs reach them.
 *
 * Properties besides the sanitizers: the server closes the connection once the client has
 * finished (no hang), never answers 500 or 503 (the stubs never fail; 505 for an old HTTP
 * version is fine), and no response follows one that said "Connection: close" (a request
 * refused for its framing must not let its leftovers pass for a second request). One known
 * quirk of libmicrohttpd 0.9.75 is let through: the status line and headers of the error
 * responses it makes itself (400 for a malformed request, 413 for a huge Content-Length) are
 * sent twice before the body. */
#include "server/arena.h"
#include "server/auth.h"
#include "server/http.h"
#include "server/log.h"
#include "server/metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Tokens of the seed corpus are HS256 under this secret (fuzzing only). */
static const char SECRET[] = "fuzz-only-hs256-secret-0123456789abcdef";

enum {
    ANSWER_TIMEOUT_MS = 10000, /* far above any honest answer, even on a loaded machine */
    RESPONSE_MAX = 256 * 1024,
    SCAN_FDS = 256, /* file descriptors searched for the server's end of a connection */
};

static uint16_t port;
static struct srv *server;
static struct auth_keeper *auth;

static void die(const char *what)
{
    fprintf(stderr, "fuzz_http: %s\n", what);
    abort();
}

/* ---- stub handlers: touch what a real handler would read, reply without a database ---- */

static void h_plain(struct srv_req *req)
{
    static const char *const known[] = {"from", "to", "granularity", "limit", "cursor", NULL};
    srv_param(req, "merchant_id");
    srv_param(req, "order_id");
    srv_param(req, "customer_ref");
    srv_query(req, "from", NULL);
    bool repeated;
    srv_query(req, "to", &repeated);
    if (srv_unknown_query(req, known)) {
        srv_reply_problem(req, PROBLEM_BAD_REQUEST, "unknown query parameter");
        return;
    }
    srv_add_header(req, "Cache-Control", "no-store");
    srv_reply_json(req, 200, json_pack("{s:b}", "ok", 1));
}

static void h_json_body(struct srv_req *req)
{
    if (!srv_body_json_object(req))
        return;
    srv_param(req, "order_id");
    srv_reply_json(req, 201, json_pack("{s:b}", "ok", 1));
}

static bool h_stream_piece(struct srv_req *req, const char *data, size_t size)
{
    return size == 0 || data[0] != '!'; /* a body may stop the stream early */
}

static void h_streamed(struct srv_req *req)
{
    srv_reply_json(req, 200, json_pack("{s:i}", "accepted", 0));
}

/* The API's route shapes (server/main.c), with stub handlers. */
static const struct srv_route routes[] = {
    {SRV_GET, "/livez", false, 0, SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_GET, "/metrics", false, 0, SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_PUT, "/v1/merchants/{merchant_id}", true, AUTH_SCOPE_MERCHANTS_ADMIN, SRV_BODY_JSON,
     64 * 1024, h_json_body, NULL},
    {SRV_GET, "/v1/merchants/{merchant_id}", true,
     AUTH_SCOPE_MERCHANTS_ADMIN | AUTH_SCOPE_METRICS_READ, SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders", true, AUTH_SCOPE_ORDERS_WRITE, SRV_BODY_JSON,
     256 * 1024, h_json_body, NULL},
    {SRV_GET, "/v1/merchants/{merchant_id}/orders", true, AUTH_SCOPE_ORDERS_READ, SRV_BODY_NONE, 0,
     h_plain, NULL},
    {SRV_POST, "/v1/merchants/{merchant_id}/order-batches", true, AUTH_SCOPE_ORDERS_WRITE,
     SRV_BODY_JSON | SRV_BODY_NDJSON, 256, h_streamed, h_stream_piece},
    {SRV_GET, "/v1/merchants/{merchant_id}/orders/{order_id}", true, AUTH_SCOPE_ORDERS_READ,
     SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders/{order_id}/cancel", true,
     AUTH_SCOPE_ORDERS_WRITE, SRV_BODY_JSON, 64, h_json_body, NULL},
    {SRV_POST, "/v1/merchants/{merchant_id}/orders/{order_id}/delivery-events", true,
     AUTH_SCOPE_DELIVERIES_WRITE, SRV_BODY_JSON, 64 * 1024, h_json_body, NULL},
    {SRV_GET, "/v1/merchants/{merchant_id}/metrics/sales", true, AUTH_SCOPE_METRICS_READ,
     SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_GET, "/v1/admin/jobs/{job_id}", true, AUTH_SCOPE_ADMIN, SRV_BODY_NONE, 0, h_plain, NULL},
    {SRV_DELETE, "/v1/merchants/{merchant_id}/customers/{customer_ref}", true,
     AUTH_SCOPE_CUSTOMERS_ERASE, SRV_BODY_NONE, 0, h_plain, NULL},
};

/* ---- the server ---- */

/* srv_start was told port 0: find the listening socket it opened among this process's. */
static uint16_t listening_port(void)
{
    for (int fd = 3; fd < 1024; fd++) {
        int listening = 0;
        socklen_t len = sizeof(listening);
        struct sockaddr_in addr;
        socklen_t alen = sizeof(addr);
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening &&
            getsockname(fd, (struct sockaddr *)&addr, &alen) == 0 && addr.sin_family == AF_INET)
            return ntohs(addr.sin_port);
    }
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[512];
    log_set_level(LOG_ERROR); /* no access log line per input */
    auth = auth_keeper_new(&(struct auth_config){.hs256_secret = SECRET, .leeway_seconds = 30}, err,
                           sizeof(err));
    if (!auth)
        die(err);
    size_t n = sizeof(routes) / sizeof(routes[0]);
    metrics_init(routes, n);
    struct srv_options opt = {.host = "127.0.0.1",
                              .port = "0",
                              .threads = 1,
                              .max_connections = 64,
                              .max_connections_per_ip = 0,
                              .connection_timeout_s = 3,
                              .auth = auth};
    server = srv_start(&opt, routes, n, err, sizeof(err));
    if (!server)
        die(err);
    port = listening_port();
    if (!port)
        die("cannot find the server's port");
    return 0;
}

/* ---- one connection ---- */

/* Connects, retrying briefly: over tens of thousands of short connections a new one may meet
 * a port pair still in TIME_WAIT on the server's side and be refused once; a server that has
 * really stopped listening still fails every attempt. */
static int connect_loopback(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int attempt = 0; attempt < 100; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            return fd;
        int why = errno;
        if (fd >= 0)
            close(fd);
        if (attempt == 99) {
            fprintf(stderr, "fuzz_http: connect: %s\n", strerror(why));
            die("cannot connect to the server");
        }
        usleep(10000);
    }
    return -1;
}

/* Sends what the server will take; it may close early (413, 400), which is fine. */
static void send_all(int fd, const uint8_t *data, size_t size)
{
    while (size > 0) {
        ssize_t n = send(fd, data, size, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        data += n;
        size -= (size_t)n;
    }
}

/* The server's end of a connection: the socket of this process whose peer is the client. */
static int server_end(int client)
{
    struct sockaddr_in local, peer;
    socklen_t len = sizeof(local);
    if (getsockname(client, (struct sockaddr *)&local, &len) != 0)
        return -1;
    for (int tries = 0; tries < 10000; tries++) { /* until libmicrohttpd has accepted it */
        for (int fd = 3; fd < SCAN_FDS; fd++) {
            len = sizeof(peer);
            if (fd != client && getpeername(fd, (struct sockaddr *)&peer, &len) == 0 &&
                peer.sin_family == AF_INET && peer.sin_port == local.sin_port)
                return fd;
        }
        usleep(100);
    }
    return -1;
}

/* Waits until the server has read every byte sent and is idle or waiting for more.
 * libmicrohttpd 0.9.75 (epoll, edge-triggered) misses a FIN that arrives while it is still
 * busy with the bytes before it and keeps the connection until its timeout, so the client
 * half-closes only once the server has caught up. Partial requests keep a request in flight,
 * so after a while an empty socket is taken as "waiting for more". */
static void wait_until_server_caught_up(int server_fd)
{
    int quiet = 0;
    for (int i = 0; server_fd >= 0 && i < 20000; i++) {
        int unread = 0;
        if (ioctl(server_fd, FIONREAD, &unread) != 0)
            return; /* already closed by the server */
        quiet = unread == 0 ? quiet + 1 : 0;
        if (quiet >= (srv_in_flight(server) == 0 ? 2 : 10))
            return;
        usleep(100);
    }
}

/* Reads until the server closes; returns the bytes kept (at most cap). */
static size_t read_answers(int fd, char *buf, size_t cap)
{
    size_t len = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, ANSWER_TIMEOUT_MS) == 0)
            die("the server kept the connection open after the client had finished");
        char chunk[4096];
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return len;
        size_t take = (size_t)n < cap - len ? (size_t)n : cap - len;
        memcpy(buf + len, chunk, take);
        len += take;
    }
}

/* Closes with a reset, so that no TIME_WAIT piles up over millions of connections. */
static void close_abortively(int fd)
{
    struct linger hard = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
    close(fd);
}

/* ---- the answers ---- */

static const char *header_value(const char *head, size_t len, const char *name)
{
    size_t name_len = strlen(name);
    for (const char *p = head; p && p < head + len;) {
        const char *eol = memchr(p, '\n', (size_t)(head + len - p));
        if ((size_t)(head + len - p) > name_len + 1 && strncasecmp(p, name, name_len) == 0 &&
            p[name_len] == ':')
            return p + name_len + 1;
        p = eol ? eol + 1 : NULL;
    }
    return NULL;
}

static bool starts_response(const char *p, size_t left)
{
    return left >= 7 && memcmp(p, "HTTP/1.", 7) == 0;
}

/* Walks the responses: none is a 500 or 503, and one that closes the connection is the last. */
static void check_answers(const char *buf, size_t len)
{
    size_t at = 0;
    while (starts_response(buf + at, len - at)) {
        const char *end = memmem(buf + at, len - at, "\r\n\r\n", 4);
        if (!end)
            return;
        size_t head_len = (size_t)(end - (buf + at));
        const char *cl = header_value(buf + at, head_len, "Content-Length");
        const char *conn = header_value(buf + at, head_len, "Connection");
        size_t body = cl ? strtoul(cl, NULL, 10) : 0;
        size_t next = at + head_len + 4;
        if (!starts_response(buf + next, len - next)) /* HEAD: headers only */
            next += body;
        if (next > len)
            return;
        bool closes = conn && strncasecmp(conn + strspn(conn, " "), "close", 5) == 0;
        if (head_len > 12 &&
            (memcmp(buf + at + 9, "500", 3) == 0 || memcmp(buf + at + 9, "503", 3) == 0)) {
            fprintf(stderr, "answers:\n%.*s\n", (int)(len > 8192 ? 8192 : len), buf);
            die("a 500 or 503 answer: the stubs never fail, so the framework did");
        }
        if (closes && len - next >= head_len + 4 &&
            memcmp(buf + at, buf + next, head_len + 4) == 0) {
            at = next; /* libmicrohttpd 0.9.75 sends the head of its own errors twice */
            continue;
        }
        if (closes && starts_response(buf + next, len - next)) {
            fprintf(stderr, "answers:\n%.*s\n", (int)(len > 8192 ? 8192 : len), buf);
            die("a response followed one that closed the connection");
        }
        at = next;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char answers[RESPONSE_MAX];
    int fd = connect_loopback();
    int server_fd = server_end(fd);
    send_all(fd, data, size);
    wait_until_server_caught_up(server_fd);
    shutdown(fd, SHUT_WR);
    size_t len = read_answers(fd, answers, sizeof(answers));
    close_abortively(fd);
    check_answers(answers, len);
    return 0;
}
