/*
 * lodger-agent: PID 1 of a Lodger sandbox guest.
 *
 * It brings the guest up (mounts, modules, job disks), then serves the host over a
 * virtio-serial port named org.lodger.agent using the framing in docs/AGENT_PROTOCOL.md:
 * runs commands, streams their output, reports exit status, delivers signals, onlines
 * hot-added vCPUs and memory (memory as online_movable so it can be unplugged again),
 * reports CPUs/memory/load and sends a heartbeat. Single-threaded poll loop: no locks.
 *
 * `lodger-agent --parse-stdin` runs only the frame parser over stdin and prints what it
 * found; tests feed it random and truncated frames on the host.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <grp.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAGIC0 0x4c
#define MAGIC1 0x47
#define VERSION 1
#define HEADER_BYTES 20
#define MAX_PAYLOAD (1u << 20)
#define PORT_NAME "org.lodger.agent"
#define MAX_JOBS 64
#define STALE_MS 500
#define HEARTBEAT_MS 1000
/* Output of a stream held until the host acknowledges it; the job blocks beyond this. */
#define OUT_CAP (4u << 20)
#define OUT_CHUNK 65536

enum {
  T_HELLO = 1, T_PING, T_PONG, T_EXEC, T_STARTED, T_STDOUT, T_STDERR, T_EXIT, T_SIGNAL,
  T_STATS_REQ, T_STATS, T_SYNC, T_SYNC_DONE, T_ERROR, T_ONLINE, T_SHUTDOWN, T_SET_CPUS, T_ACK, T_REPLAY,
  T_LAST = T_REPLAY
};

/* ---------- crc32 (IEEE, as zlib) ---------- */
static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t crc32(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  while (n--) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}
static uint32_t rd32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) { p[0] = v; p[1] = v >> 8; p[2] = v >> 16; p[3] = v >> 24; }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)v); wr32(p + 4, (uint32_t)(v >> 32)); }

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- frame parser: resynchronises on any bad byte ---------- */
struct parser {
  uint8_t *buf;
  size_t len, cap;
  uint64_t last_progress_ms;
  uint64_t discarded;
};
typedef void (*frame_fn)(int type, uint32_t id, const uint8_t *p, uint32_t n);

static void parser_skip(struct parser *ps, size_t n) {
  memmove(ps->buf, ps->buf + n, ps->len - n);
  ps->len -= n;
  ps->discarded += n;
}

/* Consume every complete frame in the buffer. */
static void parser_run(struct parser *ps, frame_fn on_frame) {
  while (ps->len >= 2) {
    uint8_t *b = ps->buf;
    if (b[0] != MAGIC0 || b[1] != MAGIC1) {
      uint8_t *m = memchr(b + 1, MAGIC0, ps->len - 1);
      parser_skip(ps, m ? (size_t)(m - b) : ps->len);
      continue;
    }
    if (ps->len < HEADER_BYTES) return;
    uint32_t n = rd32(b + 8);
    if (b[2] != VERSION || b[3] < 1 || b[3] > T_LAST || n > MAX_PAYLOAD || rd32(b + 16) != crc32(b, 16)) {
      parser_skip(ps, 1);
      continue;
    }
    if (ps->len < HEADER_BYTES + n) return;
    if (crc32(b + HEADER_BYTES, n) != rd32(b + 12)) {
      parser_skip(ps, 1);
      continue;
    }
    on_frame(b[3], rd32(b + 4), b + HEADER_BYTES, n);
    memmove(ps->buf, ps->buf + HEADER_BYTES + n, ps->len - HEADER_BYTES - n);
    ps->len -= HEADER_BYTES + n;
  }
}

/* Append bytes; a full buffer can only hold garbage (a frame fits), so drop a byte. */
static void parser_feed(struct parser *ps, const uint8_t *p, size_t n, frame_fn on_frame) {
  while (n > 0) {
    size_t room = ps->cap - ps->len;
    if (room == 0) {
      parser_skip(ps, 1);
      parser_run(ps, on_frame);
      continue;
    }
    size_t k = n < room ? n : room;
    memcpy(ps->buf + ps->len, p, k);
    ps->len += k;
    p += k;
    n -= k;
    parser_run(ps, on_frame);
  }
  ps->last_progress_ms = now_ms();
}

/* The sender stalled mid-frame: give up on the held frame's first byte and rescan. */
static void parser_expire(struct parser *ps, frame_fn on_frame) {
  if (ps->len == 0 || now_ms() - ps->last_progress_ms < STALE_MS) return;
  parser_skip(ps, 1);
  parser_run(ps, on_frame);
  ps->last_progress_ms = now_ms();
}

/* ---------- host channel ---------- */
static int port_fd = -1;
/* Whether a host is there to read. A write to a port with no host connected would wait
 * for one; the agent stops sending instead (output is held until a host asks for it
 * again with Replay) and starts again when a frame arrives. */
static int host_up = 1;

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        poll(&pf, 1, 100);
        if ((pf.revents & POLLHUP) && !(pf.revents & POLLOUT)) return -1; /* no host connected */
        continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Sends a frame whose payload is `pre` (may be empty) followed by `payload`. */
static int send_frame2(int type, uint32_t id, const void *pre, uint32_t npre, const void *payload, uint32_t n) {
  static uint8_t frame[HEADER_BYTES + 8 + OUT_CHUNK];
  if (port_fd < 0 || !host_up || npre + n > sizeof frame - HEADER_BYTES) return -1;
  uint8_t *h = frame;
  if (npre) memcpy(h + HEADER_BYTES, pre, npre);
  if (n) memcpy(h + HEADER_BYTES + npre, payload, n);
  h[0] = MAGIC0; h[1] = MAGIC1; h[2] = VERSION; h[3] = (uint8_t)type;
  wr32(h + 4, id);
  wr32(h + 8, npre + n);
  wr32(h + 12, crc32(h + HEADER_BYTES, npre + n));
  wr32(h + 16, crc32(h, 16));
  if (write_all(port_fd, h, HEADER_BYTES + npre + n) == 0) return 0;
  host_up = 0;
  return -1;
}

static int send_frame(int type, uint32_t id, const void *payload, uint32_t n) {
  return send_frame2(type, id, NULL, 0, payload, n);
}

static void send_error(uint32_t id, int err, const char *msg) {
  uint8_t p[256];
  wr32(p, (uint32_t)err);
  size_t m = strnlen(msg, sizeof p - 4);
  memcpy(p + 4, msg, m);
  send_frame(T_ERROR, id, p, (uint32_t)(4 + m));
}

/* ---------- guest state ---------- */
static int write_file(const char *path, const char *val) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t w = write(fd, val, strlen(val));
  int e = w < 0 ? -errno : 0;
  close(fd);
  return e;
}

static ssize_t read_file(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t r = read(fd, buf, cap - 1);
  close(fd);
  if (r < 0) return -1;
  buf[r] = 0;
  return r;
}

/* Count CPUs in a list such as "0-3,5". */
static uint32_t count_cpu_list(const char *s) {
  uint32_t n = 0;
  while (*s && *s != '\n') {
    char *end;
    long a = strtol(s, &end, 10);
    if (end == s) break;
    long b = a;
    if (*end == '-') b = strtol(end + 1, &end, 10);
    if (b >= a) n += (uint32_t)(b - a + 1);
    s = *end == ',' ? end + 1 : end;
  }
  return n;
}

static uint64_t meminfo_kib(const char *text, const char *key) {
  const char *p = strstr(text, key);
  return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

static void send_stats(uint32_t id) {
  char buf[4096];
  uint8_t p[48] = {0};
  if (read_file("/sys/devices/system/cpu/online", buf, sizeof buf) > 0) wr32(p, count_cpu_list(buf));
  if (read_file("/sys/devices/system/cpu/present", buf, sizeof buf) > 0) wr32(p + 4, count_cpu_list(buf));
  if (read_file("/proc/meminfo", buf, sizeof buf) > 0) {
    wr64(p + 8, meminfo_kib(buf, "MemTotal:"));
    wr64(p + 16, meminfo_kib(buf, "MemAvailable:"));
  }
  if (read_file("/proc/loadavg", buf, sizeof buf) > 0) {
    double l1 = 0, l5 = 0, l15 = 0;
    sscanf(buf, "%lf %lf %lf", &l1, &l5, &l15);
    wr32(p + 24, (uint32_t)(l1 * 100 + 0.5));
    wr32(p + 28, (uint32_t)(l5 * 100 + 0.5));
    wr32(p + 32, (uint32_t)(l15 * 100 + 0.5));
  }
  if (read_file("/proc/uptime", buf, sizeof buf) > 0) wr64(p + 40, (uint64_t)(strtod(buf, NULL) * 1000));
  send_frame(T_STATS, id, p, sizeof p);
}

/* How many CPUs the host wants online (-1: all present). Kept so that a CPU hot-add
 * event does not bring back CPUs the host has taken offline. */
static int cpu_target = -1;

static int cpu_is_online(int n) {
  char path[96], buf[8];
  if (n == 0) return 1; /* cpu0 has no online file: it cannot go */
  snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/online", n);
  return read_file(path, buf, sizeof buf) > 0 && buf[0] == '1';
}

static int cpu_set_online(int n, int on) {
  char path[96];
  snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/online", n);
  return write_file(path, on ? "1" : "0") == 0;
}

/* Bring the online CPU count to cpu_target: online the lowest offline CPUs, offline
 * the highest online ones (never cpu0). */
static int apply_cpu_target(void) {
  int present[1024], n = 0, online = 0, changed = 0;
  DIR *d = opendir("/sys/devices/system/cpu");
  struct dirent *e;
  while (d && (e = readdir(d)) && n < 1024) {
    if (strncmp(e->d_name, "cpu", 3) || e->d_name[3] < '0' || e->d_name[3] > '9') continue;
    present[n++] = atoi(e->d_name + 3);
  }
  if (d) closedir(d);
  for (int i = 1; i < n; i++) /* sort ascending */
    for (int j = i; j > 0 && present[j - 1] > present[j]; j--) { int t = present[j]; present[j] = present[j - 1]; present[j - 1] = t; }
  for (int i = 0; i < n; i++) online += cpu_is_online(present[i]);
  int want = cpu_target < 0 || cpu_target > n ? n : cpu_target;
  for (int i = 0; i < n && online < want; i++)
    if (!cpu_is_online(present[i]) && cpu_set_online(present[i], 1)) { online++; changed = 1; }
  for (int i = n - 1; i > 0 && online > want; i--)
    if (cpu_is_online(present[i]) && cpu_set_online(present[i], 0)) { online--; changed = 1; }
  return changed;
}

/* Online hot-added CPUs (up to the host's target) and memory blocks (as movable, so
 * they can be unplugged again). */
static int online_all(void) {
  int changed = apply_cpu_target();
  char path[300], buf[64];
  DIR *d;
  struct dirent *e;
  /* Where the kernel onlines hot-added memory itself (memhp_default_state), leave memory
   * alone: onlining a block the virtio-mem driver is taking away would fight it. */
  if (read_file("/sys/devices/system/memory/auto_online_blocks", buf, sizeof buf) > 0 && strncmp(buf, "offline", 7))
    return changed;
  d = opendir("/sys/devices/system/memory");
  while (d && (e = readdir(d))) {
    if (strncmp(e->d_name, "memory", 6) || e->d_name[6] < '0' || e->d_name[6] > '9') continue;
    snprintf(path, sizeof path, "/sys/devices/system/memory/%s/state", e->d_name);
    if (read_file(path, buf, sizeof buf) > 0 && !strncmp(buf, "offline", 7) && write_file(path, "online_movable") == 0)
      changed = 1;
  }
  if (d) closedir(d);
  return changed;
}

/* ---------- jobs ---------- */
/* A job's stdout or stderr: bytes [base, base + len) are held until the host
 * acknowledges them; those before `sent` have been sent once. */
struct stream {
  int fd;
  uint8_t *buf;
  size_t len, cap;
  uint64_t base, sent;
};
struct job {
  int used;
  uint32_t id;
  pid_t pid;
  struct stream s[2]; /* stdout, stderr */
  int exited, status, synced, exit_sent;
};
static struct job jobs[MAX_JOBS];

static struct job *job_by_pid(pid_t pid) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (jobs[i].used && jobs[i].pid == pid) return &jobs[i];
  return NULL;
}

static struct job *job_by_id(uint32_t id) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (jobs[i].used && jobs[i].id == id) return &jobs[i];
  return NULL;
}

/* Read what the job wrote into its stream; closes the fd at end of file, or once the
 * job has exited and nothing more is waiting (a background grandchild may hold the pipe). */
static void pump(struct job *j, struct stream *s) {
  for (;;) {
    if (s->fd < 0 || s->len >= OUT_CAP) return; /* a full stream waits for the host's ack */
    if (s->cap - s->len < OUT_CHUNK && s->cap < OUT_CAP) {
      size_t cap = s->cap ? s->cap * 2 : 2 * OUT_CHUNK;
      uint8_t *b = realloc(s->buf, cap > OUT_CAP ? OUT_CAP : cap);
      if (!b) return;
      s->buf = b;
      s->cap = cap > OUT_CAP ? OUT_CAP : cap;
    }
    size_t room = s->cap - s->len;
    ssize_t r = read(s->fd, s->buf + s->len, room < OUT_CHUNK ? room : OUT_CHUNK);
    if (r > 0) {
      s->len += (size_t)r;
      if (!j->exited) return; /* give other fds a turn while it runs */
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN && !j->exited) return;
    close(s->fd);
    s->fd = -1;
    return;
  }
}

/* Send what the host has not been sent yet, then the exit status once all output is out. */
static void flush_job(struct job *j) {
  for (int k = 0; k < 2; k++) {
    struct stream *s = &j->s[k];
    while (s->sent < s->base + s->len) {
      uint64_t n = s->base + s->len - s->sent;
      if (n > OUT_CHUNK) n = OUT_CHUNK;
      uint8_t off[8];
      wr64(off, s->sent);
      if (send_frame2(k ? T_STDERR : T_STDOUT, j->id, off, 8, s->buf + (s->sent - s->base), (uint32_t)n)) return;
      s->sent += n;
    }
  }
  if (!j->exited || j->s[0].fd >= 0 || j->s[1].fd >= 0 || j->exit_sent) return;
  if (!j->synced) {
    sync(); /* the host reads /output from the disk image once it sees EXIT */
    j->synced = 1;
  }
  uint8_t p[8];
  wr32(p, (uint32_t)(WIFEXITED(j->status) ? WEXITSTATUS(j->status) : -1));
  wr32(p + 4, (uint32_t)(WIFSIGNALED(j->status) ? WTERMSIG(j->status) : 0));
  if (send_frame(T_EXIT, j->id, p, sizeof p) == 0) j->exit_sent = 1;
}

static void flush_jobs(void) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (jobs[i].used) flush_job(&jobs[i]);
}

/* The host has stored the stream up to `upto`: forget it. */
static void trim(struct stream *s, uint64_t upto) {
  if (upto <= s->base) return;
  if (upto > s->base + s->len) upto = s->base + s->len;
  size_t n = (size_t)(upto - s->base);
  memmove(s->buf, s->buf + n, s->len - n);
  s->len -= n;
  s->base = upto;
  if (s->sent < s->base) s->sent = s->base;
}

static void job_free(struct job *j) {
  for (int k = 0; k < 2; k++) {
    if (j->s[k].fd >= 0) close(j->s[k].fd);
    free(j->s[k].buf);
  }
  memset(j, 0, sizeof *j);
}

/* Ack: the host stored output up to these offsets (and, with flag 1, the exit status).
 * Replay: the same, and the host wants everything after them again (it reconnected). */
static void do_ack(int type, uint32_t id, const uint8_t *p, uint32_t n) {
  if (n < 20) return send_error(id, EINVAL, "ack payload too short");
  struct job *j = job_by_id(id);
  if (!j) {
    if (type == T_REPLAY) send_error(id, ESRCH, "replay: no such exec");
    return;
  }
  uint64_t off[2] = {rd64(p), rd64(p + 8)};
  for (int k = 0; k < 2; k++) {
    trim(&j->s[k], off[k]);
    if (type == T_REPLAY) j->s[k].sent = off[k] < j->s[k].base ? j->s[k].base : off[k] > j->s[k].base + j->s[k].len ? j->s[k].base + j->s[k].len : off[k];
  }
  if (type == T_REPLAY) j->exit_sent = 0;
  if ((rd32(p + 16) & 1) && j->exit_sent && j->s[0].len == 0 && j->s[1].len == 0) job_free(j);
  else flush_job(j);
}

static const char *default_env[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
                                    "LODGER_OUTPUT=/output", NULL};

static void do_exec(uint32_t id, const uint8_t *p, uint32_t n) {
  if (n < 12) return send_error(id, EINVAL, "exec payload too short");
  uint32_t flags = rd32(p), argc = rd32(p + 4), envc = rd32(p + 8);
  if (argc == 0 || argc > 4096 || envc > 4096) return send_error(id, EINVAL, "exec: bad argc/envc");
  /* Bit 1: a u32 uid and gid follow the counts; the command runs as them, with no other groups. */
  uint32_t head = (flags & 2) ? 20 : 12;
  if (n < head) return send_error(id, EINVAL, "exec payload too short");
  uid_t uid = (flags & 2) ? (uid_t)rd32(p + 12) : 0;
  gid_t gid = (flags & 2) ? (gid_t)rd32(p + 16) : 0;
  /* Strings: cwd, argv..., env..., each NUL-terminated, all inside the payload. */
  uint32_t want = 1 + argc + envc;
  char **strs = calloc(want + 2, sizeof(char *));
  if (!strs) return send_error(id, ENOMEM, "exec: out of memory");
  const char *s = (const char *)p + head, *end = (const char *)p + n;
  for (uint32_t i = 0; i < want; i++) {
    const char *z = memchr(s, 0, (size_t)(end - s));
    if (!z) { free(strs); return send_error(id, EINVAL, "exec: strings not NUL-terminated"); }
    strs[i] = (char *)s;
    s = z + 1;
  }
  struct job *j = NULL;
  for (int i = 0; i < MAX_JOBS; i++)
    if (!jobs[i].used) { j = &jobs[i]; break; }
  if (!j) { free(strs); return send_error(id, EBUSY, "exec: too many jobs"); }
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) { free(strs); return send_error(id, errno, "exec: pipe"); }
  char *cwd = strs[0];
  char **argv = strs + 1; /* strs[1+argc] is overwritten below: copy env first */
  char **envp = calloc(envc + 4, sizeof(char *));
  size_t k = 0;
  for (uint32_t i = 0; i < envc; i++) envp[k++] = strs[1 + argc + i];
  for (const char **d = default_env; *d; d++) {
    size_t klen = strchr(*d, '=') - *d + 1;
    int have = 0;
    for (size_t i = 0; i < k; i++) if (!strncmp(envp[i], *d, klen)) have = 1;
    if (!have) envp[k++] = (char *)*d;
  }
  envp[k] = NULL;
  argv[argc] = NULL;
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    setsid();
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    if ((flags & 1) && (chroot("/rootfs") || chdir("/"))) {
      dprintf(2, "lodger-agent: chroot /rootfs: %s\n", strerror(errno));
      _exit(126);
    }
    if ((flags & 2) && (setgroups(0, NULL) || setgid(gid) || setuid(uid))) {
      dprintf(2, "lodger-agent: user %u:%u: %s\n", (unsigned)uid, (unsigned)gid, strerror(errno));
      _exit(126);
    }
    if (chdir(cwd)) {
      dprintf(2, "lodger-agent: chdir %s: %s\n", cwd, strerror(errno));
      _exit(126);
    }
    for (char **e = envp; *e; e++) putenv(*e);
    execvpe(argv[0], argv, envp);
    dprintf(2, "lodger-agent: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  int e = errno;
  close(out[1]);
  close(err[1]);
  free(envp);
  free(strs);
  if (pid < 0) {
    close(out[0]);
    close(err[0]);
    return send_error(id, e, "exec: fork");
  }
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  *j = (struct job){.used = 1, .id = id, .pid = pid, .s = {{.fd = out[0]}, {.fd = err[0]}}};
  uint8_t pp[4];
  wr32(pp, (uint32_t)pid);
  send_frame(T_STARTED, id, pp, 4);
}

static void do_signal(uint32_t id, const uint8_t *p, uint32_t n) {
  if (n < 4) return send_error(id, EINVAL, "signal payload too short");
  struct job *j = job_by_id(id);
  if (j && !j->exited) {
    kill(-j->pid, (int)rd32(p)); /* its whole process group */
    return;
  }
  send_error(id, ESRCH, "signal: no such job");
}

static void shutdown_guest(void) {
  for (int i = 0; i < MAX_JOBS; i++)
    if (jobs[i].used && !jobs[i].exited) kill(-jobs[i].pid, SIGKILL);
  sync();
  umount2("/output", MNT_DETACH);
  reboot(RB_POWER_OFF);
}

static void on_frame(int type, uint32_t id, const uint8_t *p, uint32_t n) {
  switch (type) {
  case T_PING: send_frame(T_PONG, id, p, n); break;
  case T_EXEC: do_exec(id, p, n); break;
  case T_SIGNAL: do_signal(id, p, n); break;
  case T_STATS_REQ: send_stats(id); break;
  case T_ONLINE: online_all(); send_stats(id); break;
  case T_SET_CPUS:
    if (n < 4) { send_error(id, EINVAL, "set-cpus payload too short"); break; }
    cpu_target = (int)rd32(p) == 0 ? 1 : (int)rd32(p);
    apply_cpu_target();
    send_stats(id);
    break;
  case T_SYNC: {
    sync();
    uint8_t r[4] = {0};
    send_frame(T_SYNC_DONE, id, r, 4);
    break;
  }
  case T_SHUTDOWN: shutdown_guest(); break;
  case T_ACK:
  case T_REPLAY: do_ack(type, id, p, n); break;
  default: send_error(id, ENOTSUP, "unexpected frame type"); break;
  }
}

/* ---------- boot ---------- */
static void load_modules(void) {
  char list[8192];
  if (read_file("/etc/lodger/modules", list, sizeof list) <= 0) return;
  for (char *line = strtok(list, "\n"); line; line = strtok(NULL, "\n")) {
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { dprintf(2, "lodger-agent: open %s: %s\n", line, strerror(errno)); continue; }
    if (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST)
      dprintf(2, "lodger-agent: load %s: %s\n", line, strerror(errno));
    close(fd);
  }
}

/* Find /dev/vportNpM whose name is PORT_NAME; the port shows up asynchronously. */
static int open_port(void) {
  for (int tries = 0; tries < 2000; tries++) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.') continue;
      char path[300], name[64];
      snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
      if (read_file(path, name, sizeof name) <= 0 || strncmp(name, PORT_NAME, strlen(PORT_NAME))) continue;
      snprintf(path, sizeof path, "/dev/%s", e->d_name);
      int fd = open(path, O_RDWR | O_CLOEXEC);
      if (fd >= 0) { closedir(d); return fd; }
    }
    if (d) closedir(d);
    usleep(1000);
  }
  return -1;
}

/* Job disks are found by their virtio-blk serial. */
static void mount_disk(const char *serial, const char *target, unsigned long flags) {
  DIR *d = opendir("/sys/block");
  struct dirent *e;
  while (d && (e = readdir(d))) {
    char path[300], buf[64];
    snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
    if (read_file(path, buf, sizeof buf) <= 0 || strncmp(buf, serial, strlen(serial))) continue;
    snprintf(path, sizeof path, "/dev/%s", e->d_name);
    mkdir(target, 0755);
    if (mount(path, target, "ext4", flags, NULL))
      dprintf(2, "lodger-agent: mount %s on %s: %s\n", path, target, strerror(errno));
  }
  if (d) closedir(d);
}

/* Guest uptime (ms) at the agent's boot phases, reported in the hello frame. */
static uint64_t t_start, t_modules, t_port;
static uint64_t uptime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The host's vCPU target at boot (lodger.vcpus=N on the kernel command line): CPUs
 * cold-plugged beyond it stay offline until the host asks for them. */
static void read_boot_cpu_target(void) {
  char cmdline[4096];
  if (read_file("/proc/cmdline", cmdline, sizeof cmdline) <= 0) return;
  const char *p = strstr(cmdline, "lodger.vcpus=");
  if (p) cpu_target = atoi(p + strlen("lodger.vcpus="));
  if (cpu_target == 0) cpu_target = 1;
}

static void boot(void) {
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  mkdir("/tmp", 01777);
  mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
  int con = open("/dev/console", O_RDWR | O_CLOEXEC);
  if (con >= 0) { dup2(con, 1); dup2(con, 2); close(con); }
  read_boot_cpu_target();
  load_modules();
  t_modules = uptime_ms();
  mkdir("/output", 0755);
  mount_disk("lodger-output", "/output", 0);
  mount_disk("lodger-rootfs", "/rootfs", MS_RDONLY);
  /* The job's own root: give it the kernel filesystems, scratch space and /output. */
  if (access("/rootfs/.", F_OK) == 0) {
    mount("proc", "/rootfs/proc", "proc", 0, NULL);
    mount("sysfs", "/rootfs/sys", "sysfs", 0, NULL);
    mount("/dev", "/rootfs/dev", NULL, MS_BIND, NULL);
    mount("tmpfs", "/rootfs/tmp", "tmpfs", 0, "mode=1777");
    mount("/output", "/rootfs/output", NULL, MS_BIND, NULL);
  }
  online_all();
}

/* ---------- host-side parser test mode ---------- */
static unsigned long test_frames;
static void print_frame(int type, uint32_t id, const uint8_t *p, uint32_t n) {
  (void)p;
  test_frames++;
  printf("frame type=%d id=%u len=%u\n", type, id, n);
}

static int parse_stdin(void) {
  struct parser ps = {.buf = malloc(MAX_PAYLOAD + HEADER_BYTES), .cap = MAX_PAYLOAD + HEADER_BYTES};
  uint8_t buf[4096];
  ssize_t r;
  while ((r = read(0, buf, sizeof buf)) > 0) parser_feed(&ps, buf, (size_t)r, print_frame);
  /* End of input stands for a stalled sender: rescan whatever is held. */
  while (ps.len > 0) {
    ps.last_progress_ms = 0;
    parser_expire(&ps, print_frame);
  }
  printf("frames=%lu discarded=%llu\n", test_frames, (unsigned long long)ps.discarded);
  return 0;
}

int main(int argc, char **argv) {
  crc_init();
  if (argc > 1 && !strcmp(argv[1], "--parse-stdin")) return parse_stdin();

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

  t_start = uptime_ms();
  if (getpid() == 1) boot();
  port_fd = open_port();
  t_port = uptime_ms();
  if (port_fd < 0) {
    dprintf(2, "lodger-agent: no virtio port %s\n", PORT_NAME);
    if (getpid() == 1) reboot(RB_POWER_OFF);
    return 1;
  }
  int ue = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_KOBJECT_UEVENT);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1};
  if (ue >= 0 && bind(ue, (struct sockaddr *)&sa, sizeof sa)) { close(ue); ue = -1; }
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  struct itimerspec its = {.it_interval = {HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000000},
                           .it_value = {HEARTBEAT_MS / 1000, (HEARTBEAT_MS % 1000) * 1000000}};
  timerfd_settime(tfd, 0, &its, NULL);

  struct parser ps = {.buf = malloc(MAX_PAYLOAD + HEADER_BYTES), .cap = MAX_PAYLOAD + HEADER_BYTES};
  /* The host connects a moment after boot: wait for it, so the hello is not lost. */
  for (int i = 0; i < 3000; i++) {
    struct pollfd pf = {.fd = port_fd, .events = POLLOUT};
    if (poll(&pf, 1, 10) > 0 && !(pf.revents & POLLHUP)) break;
  }
  fcntl(port_fd, F_SETFL, O_NONBLOCK);
  send_stats(0);
  char hello[128];
  int hn = snprintf(hello, sizeof hello, "lodger-agent/1 start=%llu modules=%llu port=%llu", (unsigned long long)t_start,
                    (unsigned long long)t_modules, (unsigned long long)t_port);
  send_frame(T_HELLO, 0, hello, (uint32_t)hn);

  for (;;) {
    struct pollfd pf[4 + 2 * MAX_JOBS];
    struct job *owner[4 + 2 * MAX_JOBS];
    int n = 0;
    pf[n++] = (struct pollfd){.fd = port_fd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = tfd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = ue, .events = POLLIN};
    struct stream *src[4 + 2 * MAX_JOBS];
    for (int i = 0; i < MAX_JOBS; i++) {
      if (!jobs[i].used) continue;
      for (int k = 0; k < 2; k++) {
        struct stream *s = &jobs[i].s[k];
        if (s->fd < 0 || s->len >= OUT_CAP) continue; /* full: wait for the host's ack */
        owner[n] = &jobs[i];
        src[n] = s;
        pf[n++] = (struct pollfd){.fd = s->fd, .events = POLLIN};
      }
    }
    if (poll(pf, (nfds_t)n, ps.len ? STALE_MS : HEARTBEAT_MS) < 0 && errno != EINTR) continue;

    if (pf[0].revents & POLLIN) {
      static uint8_t rb[65536];
      ssize_t r = read(port_fd, rb, sizeof rb);
      if (r > 0) {
        host_up = 1; /* a host is there: what it has not been sent goes out below */
        parser_feed(&ps, rb, (size_t)r, on_frame);
      }
    } else if (pf[0].revents & POLLHUP) {
      host_up = 0;
      usleep(10000); /* no host connected: don't spin */
    }
    parser_expire(&ps, on_frame);

    if (pf[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == sizeof si) {}
      int st;
      pid_t pid;
      while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        struct job *j = job_by_pid(pid);
        if (!j) continue; /* an orphan re-parented to us */
        j->exited = 1;
        j->status = st;
        pump(j, &j->s[0]);
        pump(j, &j->s[1]);
      }
    }
    if (pf[2].revents & POLLIN) {
      uint64_t ticks;
      if (read(tfd, &ticks, sizeof ticks) > 0) send_stats(0); /* heartbeat */
    }
    if (ue >= 0 && (pf[3].revents & POLLIN)) {
      char ev[4096];
      int relevant = 0;
      ssize_t r;
      while ((r = recv(ue, ev, sizeof ev - 1, 0)) > 0) {
        ev[r] = 0;
        if (strstr(ev, "/devices/system/cpu/") || strstr(ev, "/devices/system/memory/")) relevant = 1;
      }
      /* Hot-added CPUs come up offline; tell the host as soon as the count moves. */
      if (relevant) { online_all(); send_stats(0); }
    }
    for (int i = 4; i < n; i++) {
      if (!(pf[i].revents & (POLLIN | POLLHUP)) || !owner[i]->used) continue;
      pump(owner[i], src[i]);
    }
    flush_jobs();
  }
}
