// A wasi:http/proxy handler: answers every request with a greeting naming its method and
// path, and logs the request to stderr. Built as a reactor module and made a component with
// the proxy adapter (see ../build.sh); bindings are generated from world.wit.
#include <stdio.h>
#include <string.h>

#include "http_hello.h"

static const char *method_name(const wasi_http_types_method_t *m) {
  static const char *names[] = {"GET", "HEAD", "POST", "PUT", "DELETE",
                                "CONNECT", "OPTIONS", "TRACE", "PATCH"};
  if (m->tag < sizeof(names) / sizeof(names[0])) return names[m->tag];
  return "OTHER";
}

static void set_header(wasi_http_types_own_fields_t headers, const char *name,
                       const char *value) {
  wasi_http_types_field_name_t n;
  http_hello_string_set(&n, name);
  wasi_http_types_field_value_t v = {(uint8_t *)value, strlen(value)};
  wasi_http_types_header_error_t err;
  wasi_http_types_method_fields_append(wasi_http_types_borrow_fields(headers), &n, &v, &err);
}

void exports_wasi_http_incoming_handler_handle(
    exports_wasi_http_incoming_handler_own_incoming_request_t request,
    exports_wasi_http_incoming_handler_own_response_outparam_t response_out) {
  wasi_http_types_borrow_incoming_request_t req =
      wasi_http_types_borrow_incoming_request(request);
  wasi_http_types_method_t method;
  wasi_http_types_method_incoming_request_method(req, &method);
  http_hello_string_t path = {0};
  wasi_http_types_method_incoming_request_path_with_query(req, &path);

  char body[512];
  int len = snprintf(body, sizeof body, "Hello from a Wasm HTTP handler on Skiff: %s %.*s\n",
                     method_name(&method), (int)path.len, (const char *)path.ptr);
  if (len < 0) len = 0;
  if ((size_t)len >= sizeof body) len = sizeof body - 1;
  fprintf(stderr, "%s %.*s\n", method_name(&method), (int)path.len, (const char *)path.ptr);
  http_hello_string_free(&path);
  wasi_http_types_incoming_request_drop_own(request);

  wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
  set_header(headers, "content-type", "text/plain; charset=utf-8");
  wasi_http_types_own_outgoing_response_t response =
      wasi_http_types_constructor_outgoing_response(headers);
  wasi_http_types_method_outgoing_response_set_status_code(
      wasi_http_types_borrow_outgoing_response(response), 200);
  wasi_http_types_own_outgoing_body_t out_body;
  wasi_http_types_method_outgoing_response_body(
      wasi_http_types_borrow_outgoing_response(response), &out_body);

  wasi_http_types_result_own_outgoing_response_error_code_t result = {.is_err = false};
  result.val.ok = response;
  wasi_http_types_static_response_outparam_set(response_out, &result);

  wasi_http_types_own_output_stream_t stream;
  if (wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(out_body),
                                                 &stream)) {
    http_hello_list_u8_t bytes = {(uint8_t *)body, (size_t)len};
    wasi_io_streams_stream_error_t err;
    wasi_io_streams_method_output_stream_blocking_write_and_flush(
        wasi_io_streams_borrow_output_stream(stream), &bytes, &err);
    wasi_io_streams_output_stream_drop_own(stream);
  }
  wasi_http_types_error_code_t finish_err;
  wasi_http_types_static_outgoing_body_finish(out_body, NULL, &finish_err);
}
