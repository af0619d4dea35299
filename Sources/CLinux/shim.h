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

// The CPUs this process may run on (its affinity mask: `taskset`, a cpuset cgroup), or 0
// when the kernel does not say. sched_getaffinity is declared only under _GNU_SOURCE.
#include <sched.h>
extern int sched_getaffinity(pid_t pid, size_t cpusetsize, cpu_set_t *mask);
static inline int CLinux_affinity_cpu_count(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return __sched_cpucount(sizeof set, &set);
}

// Puts the calling thread under SCHED_BATCH (at the same nice level): it no longer
// preempts the thread running on its core when it wakes up, but waits until that thread
// blocks or its time slice ends; on an idle core it runs at once. Needs no privilege.
// Returns 0 or an errno. SCHED_BATCH is defined only under _GNU_SOURCE.
static inline int CLinux_set_batch_scheduling(void) {
  struct sched_param p = {.sched_priority = 0};
  return pthread_setschedparam(pthread_self(), 3 /* SCHED_BATCH */, &p);
}

// Names the calling thread (`top -H`, `ps -L`, perf, /proc/<pid>/task/*/comm); names
// longer than 15 bytes are cut. pthread_setname_np is declared only under _GNU_SOURCE.
extern int pthread_setname_np(pthread_t thread, const char *name);
static inline void CLinux_set_thread_name(const char *name) {
  char cut[16];
  __builtin_strncpy(cut, name, 15);
  cut[15] = 0;
  pthread_setname_np(pthread_self(), cut);
}

// Stable thread id for "am I on this loop?" checks.
static inline unsigned long CLinux_pthread_self(void) { return (unsigned long)pthread_self(); }

// CRC-32C with the crc32 instruction of SSE 4.2: `crc` is the running (inverted) state,
// as the instruction takes it. Call only when CLinux_crc32c_hardware() says the CPU has it.
#if defined(__x86_64__)
#include <cpuid.h>
#include <stddef.h>
#include <stdint.h>
static inline int CLinux_crc32c_hardware(void) {
  unsigned int a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2) != 0;
}
__attribute__((target("sse4.2")))
static inline uint32_t CLinux_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    __builtin_memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (n > 0) {
    c32 = __builtin_ia32_crc32qi(c32, *p);
    p++;
    n--;
  }
  return c32;
}
#else
#include <stddef.h>
#include <stdint.h>
static inline int CLinux_crc32c_hardware(void) { return 0; }
static inline uint32_t CLinux_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
  (void)p;
  (void)n;
  return crc;
}
#endif
#endif
