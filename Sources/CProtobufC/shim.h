// protobuf-c runtime, used by the generated code in SubcenterProto.
#ifndef SUBCENTER_CPROTOBUFC_H
#define SUBCENTER_CPROTOBUFC_H
#include <protobuf-c/protobuf-c.h>
#endif
