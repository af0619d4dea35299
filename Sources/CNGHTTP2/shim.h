// libnghttp2, imported by GRPCTransport's HTTP2/ folder only.
#ifndef SUBCENTER_CNGHTTP2_H
#define SUBCENTER_CNGHTTP2_H
#include <nghttp2/nghttp2.h>
#endif
