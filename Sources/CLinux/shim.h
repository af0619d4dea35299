// Linux system headers that Glibc's Swift module does not expose.
#ifndef SUBCENTER_CLINUX_H
#define SUBCENTER_CLINUX_H
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <signal.h>
#include <pthread.h>

// accept4 is declared only under _GNU_SOURCE.
extern int accept4(int sockfd, struct sockaddr *addr, socklen_t *addrlen, int flags);

// Stable thread id for "am I on this loop?" checks.
static inline unsigned long CLinux_pthread_self(void) { return (unsigned long)pthread_self(); }
#endif
