// OpenSSL 3, imported by GRPCTransport's TLS/ folder (and crypto helpers).
// Each wrapper exists because Swift cannot import the macro it stands for.
#ifndef SUBCENTER_CTLS_H
#define SUBCENTER_CTLS_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>
#include <openssl/rand.h>

// SSL_CTX_set_min/max_proto_version are macros over SSL_CTX_ctrl.
static inline int CTLS_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int v) {
  return (int)SSL_CTX_set_min_proto_version(ctx, v);
}
static inline int CTLS_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int v) {
  return (int)SSL_CTX_set_max_proto_version(ctx, v);
}
// SSL_CTX_set_mode is a macro; mode bits import as UInt32 while it takes long.
static inline long CTLS_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
// Modes we set: smaller idle connections, partial writes allowed.
static const long CTLS_MODE_RELEASE_BUFFERS = SSL_MODE_RELEASE_BUFFERS;
static const long CTLS_MODE_ENABLE_PARTIAL_WRITE = SSL_MODE_ENABLE_PARTIAL_WRITE;
static const long CTLS_MODE_ACCEPT_MOVING_WRITE_BUFFER = SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER;
// SSL_set_mode and SSL_clear_mode are macros (a session's buffers kept or released).
static inline long CTLS_SSL_set_mode(SSL *ssl, long mode) { return SSL_set_mode(ssl, mode); }
static inline long CTLS_SSL_clear_mode(SSL *ssl, long mode) { return SSL_clear_mode(ssl, mode); }
// SSL_OP_* constants are built with a macro Swift cannot see.
static const uint64_t CTLS_OP_NO_COMPRESSION = SSL_OP_NO_COMPRESSION;
static const uint64_t CTLS_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;
static const uint64_t CTLS_OP_CIPHER_SERVER_PREFERENCE = SSL_OP_CIPHER_SERVER_PREFERENCE;
static const uint64_t CTLS_OP_NO_TICKET = SSL_OP_NO_TICKET;
// SSL_CTX_set_session_cache_mode is a macro.
static inline long CTLS_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long m) {
  return SSL_CTX_set_session_cache_mode(ctx, m);
}
static const long CTLS_SESS_CACHE_OFF = SSL_SESS_CACHE_OFF;
// SSL_CTX_set1_groups_list is a macro.
static inline int CTLS_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
  return (int)SSL_CTX_set1_groups_list(ctx, list);
}
// SSL_set_tlsext_host_name is a macro (client SNI).
static inline int CTLS_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
  return (int)SSL_set_tlsext_host_name(ssl, name);
}
// BIO_set_mem_eof_return is a macro: -1 makes an empty memory BIO "retry", not EOF.
static inline void CTLS_BIO_set_mem_eof_return(BIO *b, int v) { (void)BIO_set_mem_eof_return(b, v); }
// BIO_clear_retry_flags and BIO_set_retry_read are macros (a BIO of our own's read).
static inline void CTLS_BIO_clear_retry_flags(BIO *b) { BIO_clear_retry_flags(b); }
static inline void CTLS_BIO_set_retry_read(BIO *b) { BIO_set_retry_read(b); }
// OPENSSL_free is a macro.
static inline void CTLS_OPENSSL_free(void *p) { OPENSSL_free(p); }
// ALPN select: SSL_select_next_proto takes `unsigned char **`, the callback's out is const.
static inline int CTLS_select_h2(const unsigned char **out, unsigned char *outlen,
                                 const unsigned char *in, unsigned int inlen) {
  static const unsigned char h2[] = {2, 'h', '2'};
  unsigned char *o = NULL;
  int r = SSL_select_next_proto(&o, outlen, h2, sizeof h2, in, inlen);
  if (r != OPENSSL_NPN_NEGOTIATED) return 0;
  *out = o;
  return 1;
}
#endif
