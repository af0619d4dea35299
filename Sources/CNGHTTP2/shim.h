// libnghttp2, imported by GRPCTransport's HTTP2/ folder only.
#ifndef SUBCENTER_CNGHTTP2_H
#define SUBCENTER_CNGHTTP2_H
#include <nghttp2/nghttp2.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// A per-session cache of the small blocks nghttp2 allocates and frees on every stream
// (frames, stream objects, header buffers): a freed block goes on a free list of its
// size class and the next allocation of that class takes it back, instead of a
// malloc/free pair per block. One session is used by one thread at a time, so the lists
// need no lock. Each block has a 16-byte header before it: its class (or -1, with its
// size, for blocks too large to cache). `subcenter_pool_destroy` frees the cached blocks
// once the session is deleted.

#define SUBCENTER_POOL_CLASSES 6   // 32, 64, 128, 256, 512, 1024 bytes
#define SUBCENTER_POOL_KEEP 32     // cached blocks per class at most

typedef struct subcenter_pool_block {
  struct subcenter_pool_block *next;
} subcenter_pool_block;

typedef struct {
  subcenter_pool_block *free_list[SUBCENTER_POOL_CLASSES];
  int count[SUBCENTER_POOL_CLASSES];
} subcenter_pool;

typedef struct {
  int64_t size_class;  // -1: not cached
  int64_t size;        // usable size
} subcenter_pool_header;

static inline int subcenter_pool_class(size_t n) {
  size_t s = 32;
  for (int c = 0; c < SUBCENTER_POOL_CLASSES; c++, s <<= 1) {
    if (n <= s) return c;
  }
  return -1;
}

static inline void *subcenter_pool_malloc(size_t size, void *user) {
  subcenter_pool *p = (subcenter_pool *)user;
  int c = subcenter_pool_class(size);
  if (c >= 0 && p->free_list[c] != NULL) {
    subcenter_pool_block *b = p->free_list[c];
    p->free_list[c] = b->next;
    p->count[c]--;
    return b;
  }
  size_t usable = c >= 0 ? ((size_t)32 << c) : size;
  if (usable > SIZE_MAX - sizeof(subcenter_pool_header)) return NULL;
  subcenter_pool_header *h = (subcenter_pool_header *)malloc(sizeof(subcenter_pool_header) + usable);
  if (h == NULL) return NULL;
  h->size_class = c;
  h->size = (int64_t)usable;
  return h + 1;
}

static inline void subcenter_pool_free(void *ptr, void *user) {
  if (ptr == NULL) return;
  subcenter_pool *p = (subcenter_pool *)user;
  subcenter_pool_header *h = (subcenter_pool_header *)ptr - 1;
  int c = (int)h->size_class;
  if (c >= 0 && p->count[c] < SUBCENTER_POOL_KEEP) {
    subcenter_pool_block *b = (subcenter_pool_block *)ptr;
    b->next = p->free_list[c];
    p->free_list[c] = b;
    p->count[c]++;
    return;
  }
  free(h);
}

static inline void *subcenter_pool_calloc(size_t n, size_t size, void *user) {
  if (size != 0 && n > SIZE_MAX / size) return NULL;
  void *q = subcenter_pool_malloc(n * size, user);
  if (q != NULL) memset(q, 0, n * size);
  return q;
}

static inline void *subcenter_pool_realloc(void *ptr, size_t size, void *user) {
  if (ptr == NULL) return subcenter_pool_malloc(size, user);
  subcenter_pool_header *h = (subcenter_pool_header *)ptr - 1;
  if (size <= (size_t)h->size) return ptr;
  void *q = subcenter_pool_malloc(size, user);
  if (q == NULL) return NULL;
  memcpy(q, ptr, (size_t)h->size);
  subcenter_pool_free(ptr, user);
  return q;
}

/// Frees the cached blocks (after `nghttp2_session_del`).
static inline void subcenter_pool_destroy(subcenter_pool *p) {
  for (int c = 0; c < SUBCENTER_POOL_CLASSES; c++) {
    while (p->free_list[c] != NULL) {
      subcenter_pool_block *b = p->free_list[c];
      p->free_list[c] = b->next;
      free((subcenter_pool_header *)b - 1);
    }
    p->count[c] = 0;
  }
}

/// The allocator nghttp2 is given for a session using pool `p`.
static inline nghttp2_mem subcenter_pool_mem(subcenter_pool *p) {
  nghttp2_mem m = {p, subcenter_pool_malloc, subcenter_pool_free, subcenter_pool_calloc,
                   subcenter_pool_realloc};
  return m;
}
#endif
