// Uses the network as a pod's Wasm guest may, one step per argument, a line of output per
// step (errors by their wasi:sockets names):
//   tcp=IP:PORT:MSG      connect (retrying while refused), send MSG\n, print the line back
//   udp=IP:PORT:MSG      send MSG from an unbound socket until a reply comes, print it
//   udp-echo=PORT        answer the first datagram to PORT with itself
//   lookup=NAME          print NAME's addresses (wasi:sockets/ip-name-lookup)
//   refused=IP:PORT      one connection attempt, expected to be refused
//   http=HOST:PORT/PATH  GET it (wasi:http/outgoing-handler), print status and body
// Bindings are generated from world.wit; main comes through the preview 1 command adapter.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net_probe.h"

typedef wasi_sockets_network_error_code_t error_code_t;

static wasi_sockets_network_borrow_network_t net;

static const char *error_name(error_code_t e) {
  static const char *names[] = {
      "unknown", "access-denied", "not-supported", "invalid-argument", "out-of-memory",
      "timeout", "concurrency-conflict", "not-in-progress", "would-block", "invalid-state",
      "new-socket-limit", "address-not-bindable", "address-in-use", "remote-unreachable",
      "connection-refused", "connection-reset", "connection-aborted", "datagram-too-large",
      "name-unresolvable", "temporary-resolver-failure", "permanent-resolver-failure"};
  return e < sizeof(names) / sizeof(names[0]) ? names[e] : "?";
}

static void block_on(wasi_io_poll_own_pollable_t p) {
  wasi_io_poll_method_pollable_block(wasi_io_poll_borrow_pollable(p));
  wasi_io_poll_pollable_drop_own(p);
}

// Waits for `p` at most `ms` milliseconds; whether it became ready.
static int wait_for(wasi_io_poll_own_pollable_t p, uint64_t ms) {
  wasi_io_poll_own_pollable_t timer =
      wasi_clocks_monotonic_clock_subscribe_duration(ms * 1000000ull);
  wasi_io_poll_borrow_pollable_t both[2] = {wasi_io_poll_borrow_pollable(p),
                                           wasi_io_poll_borrow_pollable(timer)};
  wasi_io_poll_list_borrow_pollable_t list = {both, 2};
  net_probe_list_u32_t ready;
  wasi_io_poll_poll(&list, &ready);
  int ok = 0;
  for (size_t i = 0; i < ready.len; i++) ok |= ready.ptr[i] == 0;
  net_probe_list_u32_free(&ready);
  wasi_io_poll_pollable_drop_own(timer);
  wasi_io_poll_pollable_drop_own(p);
  return ok;
}

// "a.b.c.d:port" (port optional when `port` is NULL) into a socket address.
static int parse_addr(const char *s, wasi_sockets_network_ip_socket_address_t *out,
                      const char **rest) {
  unsigned a, b, c, d, port = 0;
  int n = 0;
  if (sscanf(s, "%u.%u.%u.%u:%u%n", &a, &b, &c, &d, &port, &n) != 5) return 0;
  out->tag = WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4;
  out->val.ipv4.port = (uint16_t)port;
  out->val.ipv4.address = (wasi_sockets_network_ipv4_address_t){a, b, c, d};
  if (rest) *rest = s + n;
  return 1;
}

static void print_ip(const wasi_sockets_network_ip_address_t *ip) {
  if (ip->tag == WASI_SOCKETS_NETWORK_IP_ADDRESS_IPV4) {
    const wasi_sockets_network_ipv4_address_t *a = &ip->val.ipv4;
    printf("%u.%u.%u.%u", a->f0, a->f1, a->f2, a->f3);
  } else {
    const wasi_sockets_network_ipv6_address_t *a = &ip->val.ipv6;
    printf("%x:%x:%x:%x:%x:%x:%x:%x", a->f0, a->f1, a->f2, a->f3, a->f4, a->f5, a->f6, a->f7);
  }
}

typedef struct {
  wasi_sockets_tcp_own_tcp_socket_t sock;
  wasi_io_streams_own_input_stream_t in;
  wasi_io_streams_own_output_stream_t out;
} conn_t;

// One TCP connection attempt; 0 or the error.
static error_code_t tcp_connect(wasi_sockets_network_ip_socket_address_t *addr, conn_t *c) {
  error_code_t err;
  if (!wasi_sockets_tcp_create_socket_create_tcp_socket(
          WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &c->sock, &err))
    return err;
  wasi_sockets_tcp_borrow_tcp_socket_t b = wasi_sockets_tcp_borrow_tcp_socket(c->sock);
  if (!wasi_sockets_tcp_method_tcp_socket_start_connect(b, net, addr, &err)) {
    wasi_sockets_tcp_tcp_socket_drop_own(c->sock);
    return err;
  }
  for (;;) {
    wasi_sockets_tcp_tuple2_own_input_stream_own_output_stream_t io;
    if (wasi_sockets_tcp_method_tcp_socket_finish_connect(b, &io, &err)) {
      c->in = io.f0;
      c->out = io.f1;
      return 0;
    }
    if (err != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) {
      wasi_sockets_tcp_tcp_socket_drop_own(c->sock);
      return err;
    }
    block_on(wasi_sockets_tcp_method_tcp_socket_subscribe(b));
  }
}

static void tcp_close(conn_t *c) {
  wasi_io_streams_input_stream_drop_own(c->in);
  wasi_io_streams_output_stream_drop_own(c->out);
  wasi_sockets_tcp_tcp_socket_drop_own(c->sock);
}

// Reads from `in` until a newline, the end, or `cap` bytes; NUL-terminated.
static size_t read_some(wasi_io_streams_own_input_stream_t in, char *buf, size_t cap,
                        int line) {
  size_t got = 0;
  while (got + 1 < cap) {
    net_probe_list_u8_t chunk;
    wasi_io_streams_stream_error_t err;
    if (!wasi_io_streams_method_input_stream_blocking_read(
            wasi_io_streams_borrow_input_stream(in), cap - 1 - got, &chunk, &err))
      break;
    memcpy(buf + got, chunk.ptr, chunk.len);
    got += chunk.len;
    net_probe_list_u8_free(&chunk);
    if (line && memchr(buf, '\n', got)) break;
  }
  buf[got] = 0;
  return got;
}

static int step_tcp(const char *arg) {
  wasi_sockets_network_ip_socket_address_t addr;
  const char *msg;
  if (!parse_addr(arg, &addr, &msg) || *msg != ':') return fprintf(stderr, "bad tcp=%s\n", arg), 1;
  msg++;
  conn_t c;
  error_code_t err = 1;
  for (int i = 0; i < 100 && (err = tcp_connect(&addr, &c)); i++) usleep(100000);
  if (err) return printf("tcp: %s\n", error_name(err)), 1;
  char line[512];
  snprintf(line, sizeof line, "%s\n", msg);
  net_probe_list_u8_t data = {(uint8_t *)line, strlen(line)};
  wasi_io_streams_stream_error_t serr;
  if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(
          wasi_io_streams_borrow_output_stream(c.out), &data, &serr))
    return printf("tcp: write failed\n"), 1;
  char reply[512];
  read_some(c.in, reply, sizeof reply, 1);
  printf("tcp: %s", reply);
  tcp_close(&c);
  return 0;
}

static int step_refused(const char *arg) {
  wasi_sockets_network_ip_socket_address_t addr;
  if (!parse_addr(arg, &addr, NULL)) return fprintf(stderr, "bad refused=%s\n", arg), 1;
  conn_t c;
  error_code_t err = tcp_connect(&addr, &c);
  if (!err) {
    tcp_close(&c);
    return printf("refused: connected\n"), 1;
  }
  printf("refused: %s\n", error_name(err));
  return 0;
}

// A UDP socket bound to 0.0.0.0:port and its datagram streams (to `remote` if given).
typedef struct {
  wasi_sockets_udp_own_udp_socket_t sock;
  wasi_sockets_udp_own_incoming_datagram_stream_t in;
  wasi_sockets_udp_own_outgoing_datagram_stream_t out;
} udp_t;

static error_code_t udp_open(uint16_t port, wasi_sockets_network_ip_socket_address_t *remote,
                             udp_t *u) {
  error_code_t err;
  if (!wasi_sockets_udp_create_socket_create_udp_socket(
          WASI_SOCKETS_NETWORK_IP_ADDRESS_FAMILY_IPV4, &u->sock, &err))
    return err;
  wasi_sockets_udp_borrow_udp_socket_t b = wasi_sockets_udp_borrow_udp_socket(u->sock);
  wasi_sockets_network_ip_socket_address_t local = {.tag = WASI_SOCKETS_NETWORK_IP_SOCKET_ADDRESS_IPV4};
  local.val.ipv4.port = port;
  if (!wasi_sockets_udp_method_udp_socket_start_bind(b, net, &local, &err)) return err;
  while (!wasi_sockets_udp_method_udp_socket_finish_bind(b, &err)) {
    if (err != WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) return err;
    block_on(wasi_sockets_udp_method_udp_socket_subscribe(b));
  }
  wasi_sockets_udp_tuple2_own_incoming_datagram_stream_own_outgoing_datagram_stream_t streams;
  wasi_sockets_udp_option_ip_socket_address_t to = {remote != NULL};
  if (remote) to.val = *remote;
  if (!wasi_sockets_udp_method_udp_socket_stream(b, remote ? &to.val : NULL, &streams, &err))
    return err;
  u->in = streams.f0;
  u->out = streams.f1;
  return 0;
}

static error_code_t udp_send(udp_t *u, const char *msg, size_t len,
                             wasi_sockets_network_ip_socket_address_t *to) {
  wasi_sockets_udp_borrow_outgoing_datagram_stream_t out =
      wasi_sockets_udp_borrow_outgoing_datagram_stream(u->out);
  uint64_t permits = 0;
  error_code_t err;
  while (wasi_sockets_udp_method_outgoing_datagram_stream_check_send(out, &permits, &err) &&
         permits == 0)
    block_on(wasi_sockets_udp_method_outgoing_datagram_stream_subscribe(out));
  if (!permits) return err;
  wasi_sockets_udp_outgoing_datagram_t dg = {{(uint8_t *)msg, len}, {to != NULL}};
  if (to) dg.remote_address.val = *to;
  wasi_sockets_udp_list_outgoing_datagram_t list = {&dg, 1};
  uint64_t sent;
  if (!wasi_sockets_udp_method_outgoing_datagram_stream_send(out, &list, &sent, &err)) return err;
  return 0;
}

// Receives one datagram within `ms`; 1 if one came (its data and sender filled in).
static int udp_receive(udp_t *u, uint64_t ms, char *buf, size_t cap,
                       wasi_sockets_network_ip_socket_address_t *from) {
  wasi_sockets_udp_borrow_incoming_datagram_stream_t in =
      wasi_sockets_udp_borrow_incoming_datagram_stream(u->in);
  for (int tries = 0; tries < 2; tries++) {
    wasi_sockets_udp_list_incoming_datagram_t got;
    error_code_t err;
    if (wasi_sockets_udp_method_incoming_datagram_stream_receive(in, 1, &got, &err) &&
        got.len > 0) {
      size_t n = got.ptr[0].data.len < cap - 1 ? got.ptr[0].data.len : cap - 1;
      memcpy(buf, got.ptr[0].data.ptr, n);
      buf[n] = 0;
      if (from) *from = got.ptr[0].remote_address;
      wasi_sockets_udp_list_incoming_datagram_free(&got);
      return 1;
    }
    if (!wait_for(wasi_sockets_udp_method_incoming_datagram_stream_subscribe(in), ms)) return 0;
  }
  return 0;
}

static void udp_close(udp_t *u) {
  wasi_sockets_udp_incoming_datagram_stream_drop_own(u->in);
  wasi_sockets_udp_outgoing_datagram_stream_drop_own(u->out);
  wasi_sockets_udp_udp_socket_drop_own(u->sock);
}

static int step_udp(const char *arg) {
  wasi_sockets_network_ip_socket_address_t addr;
  const char *msg;
  if (!parse_addr(arg, &addr, &msg) || *msg != ':') return fprintf(stderr, "bad udp=%s\n", arg), 1;
  msg++;
  // Until the echo is up, datagrams go unanswered (or bounce): a fresh socket each try.
  for (int i = 0; i < 50; i++) {
    udp_t u;
    error_code_t err = udp_open(0, &addr, &u);
    if (err) return printf("udp: %s\n", error_name(err)), 1;
    char reply[512];
    int got = !udp_send(&u, msg, strlen(msg), NULL) &&
              udp_receive(&u, 200, reply, sizeof reply, NULL);
    udp_close(&u);
    if (got) return printf("udp: %s\n", reply), 0;
  }
  return printf("udp: no reply\n"), 1;
}

static int step_udp_echo(const char *arg) {
  udp_t u;
  error_code_t err = udp_open((uint16_t)atoi(arg), NULL, &u);
  if (err) return printf("udp-echo: %s\n", error_name(err)), 1;
  char buf[512];
  wasi_sockets_network_ip_socket_address_t from;
  while (!udp_receive(&u, 60000, buf, sizeof buf, &from)) {
  }
  err = udp_send(&u, buf, strlen(buf), &from);
  printf("udp-echo: %s %s\n", buf, err ? error_name(err) : "answered");
  udp_close(&u);
  return err != 0;
}

static int step_lookup(const char *name) {
  net_probe_string_t s;
  net_probe_string_set(&s, name);
  wasi_sockets_ip_name_lookup_own_resolve_address_stream_t stream;
  error_code_t err;
  if (!wasi_sockets_ip_name_lookup_resolve_addresses(net, &s, &stream, &err))
    return printf("lookup %s: %s\n", name, error_name(err)), 1;
  wasi_sockets_ip_name_lookup_borrow_resolve_address_stream_t b =
      wasi_sockets_ip_name_lookup_borrow_resolve_address_stream(stream);
  int found = 0;
  for (;;) {
    wasi_sockets_ip_name_lookup_option_ip_address_t next;
    if (!wasi_sockets_ip_name_lookup_method_resolve_address_stream_resolve_next_address(b, &next, &err)) {
      if (err == WASI_SOCKETS_NETWORK_ERROR_CODE_WOULD_BLOCK) {
        block_on(wasi_sockets_ip_name_lookup_method_resolve_address_stream_subscribe(b));
        continue;
      }
      printf("lookup %s: %s\n", name, error_name(err));
      break;
    }
    if (!next.is_some) break;
    printf("lookup %s: ", name);
    print_ip(&next.val);
    printf("\n");
    found++;
  }
  wasi_sockets_ip_name_lookup_resolve_address_stream_drop_own(stream);
  return found == 0;
}

static int step_http(const char *arg) {
  const char *slash = strchr(arg, '/');
  if (!slash) return fprintf(stderr, "bad http=%s\n", arg), 1;
  char authority[256];
  snprintf(authority, sizeof authority, "%.*s", (int)(slash - arg), arg);
  for (int attempt = 0; attempt < 100; attempt++) {
    wasi_http_types_own_outgoing_request_t req =
        wasi_http_types_constructor_outgoing_request(wasi_http_types_constructor_fields());
    wasi_http_types_borrow_outgoing_request_t rb = wasi_http_types_borrow_outgoing_request(req);
    wasi_http_types_method_t get = {WASI_HTTP_TYPES_METHOD_GET};
    wasi_http_types_scheme_t http = {WASI_HTTP_TYPES_SCHEME_HTTP};
    net_probe_string_t auth, path;
    net_probe_string_set(&auth, authority);
    net_probe_string_set(&path, slash);
    wasi_http_types_method_outgoing_request_set_method(rb, &get);
    wasi_http_types_method_outgoing_request_set_scheme(rb, &http);
    wasi_http_types_method_outgoing_request_set_authority(rb, &auth);
    wasi_http_types_method_outgoing_request_set_path_with_query(rb, &path);
    wasi_http_outgoing_handler_own_future_incoming_response_t future;
    wasi_http_outgoing_handler_error_code_t herr;
    if (!wasi_http_outgoing_handler_handle(req, NULL, &future, &herr))
      return printf("http: request refused (%u)\n", herr.tag), 1;
    wasi_http_types_borrow_future_incoming_response_t fb =
        wasi_http_types_borrow_future_incoming_response(future);
    wasi_http_types_result_result_own_incoming_response_error_code_void_t result;
    while (!wasi_http_types_method_future_incoming_response_get(fb, &result))
      block_on(wasi_http_types_method_future_incoming_response_subscribe(fb));
    wasi_http_types_future_incoming_response_drop_own(future);
    if (result.is_err || result.val.ok.is_err) {
      // Not up yet (connection refused): again shortly.
      usleep(100000);
      continue;
    }
    wasi_http_types_own_incoming_response_t resp = result.val.ok.val.ok;
    wasi_http_types_borrow_incoming_response_t respb = wasi_http_types_borrow_incoming_response(resp);
    unsigned status = wasi_http_types_method_incoming_response_status(respb);
    wasi_http_types_own_incoming_body_t body;
    wasi_http_types_own_input_stream_t stream;
    char text[1024] = "";
    if (wasi_http_types_method_incoming_response_consume(respb, &body)) {
      if (wasi_http_types_method_incoming_body_stream(wasi_http_types_borrow_incoming_body(body), &stream)) {
        read_some(stream, text, sizeof text, 0);
        wasi_io_streams_input_stream_drop_own(stream);
      }
      wasi_http_types_incoming_body_drop_own(body);
    }
    wasi_http_types_incoming_response_drop_own(resp);
    printf("http %u: %s", status, text);
    return status != 200;
  }
  return printf("http: no answer\n"), 1;
}

int main(int argc, char **argv) {
  wasi_sockets_instance_network_own_network_t own = wasi_sockets_instance_network_instance_network();
  net = wasi_sockets_network_borrow_network(own);
  int failed = 0;
  for (int i = 1; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq) return fprintf(stderr, "usage: net-probe KIND=ARG...\n"), 2;
    *eq = 0;
    const char *kind = argv[i], *arg = eq + 1;
    if (!strcmp(kind, "tcp")) failed |= step_tcp(arg);
    else if (!strcmp(kind, "udp")) failed |= step_udp(arg);
    else if (!strcmp(kind, "udp-echo")) failed |= step_udp_echo(arg);
    else if (!strcmp(kind, "refused")) failed |= step_refused(arg);
    else if (!strcmp(kind, "lookup")) failed |= step_lookup(arg);
    else if (!strcmp(kind, "http")) failed |= step_http(arg);
    else return fprintf(stderr, "unknown step %s\n", kind), 2;
    fflush(stdout);
  }
  wasi_sockets_network_network_drop_own(own);
  return failed;
}
