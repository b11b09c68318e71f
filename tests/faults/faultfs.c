/*
 * faultfs: an LD_PRELOAD shim that makes fsync/fdatasync/write calls on chosen files fail or
 * slow down, for tidelog's fault tests (tests/faults.py builds it and writes its rules).
 *
 * Rules come from the file named by $TIDELOG_FAULTS, one per line ('#' starts a comment):
 *
 *     fail  <op> <ERRNO name or number> <times> <path glob>
 *     delay <op> <milliseconds>         <times> <path glob>
 *
 * <op> is "fsync" (fsync and fdatasync), "fdatasync", or "write" (write, pwrite, pwrite64,
 * pwritev, pwritev64, pwritev2, pwritev64v2, writev). <times> is how many matching calls the
 * rule affects; -1 means forever. The glob is fnmatch(3)ed (no flags: '*' crosses '/')
 * against the fd's path from /proc/self/fd/N and runs to the end of the line. The first
 * active matching rule wins. A "delay" sleeps, then performs the real call.
 *
 * Only regular files are affected: sockets, pipes and ttys always pass through. With
 * $TIDELOG_FAULTS unset, or the file missing or empty, every call passes straight through.
 *
 * The file is re-read whenever its inode, size or mtime changes (checked with stat on each
 * intercepted call), so rules take effect at once in a running process; write it atomically
 * (temp file + rename). On a re-read, a rule whose line text is unchanged keeps its remaining
 * count (an exhausted "fail ... 1 ..." is not revived by adding another rule); new or edited
 * lines start with their full count.
 *
 * The hot path allocates nothing: rules live in a fixed table, the file is read into a fixed
 * buffer. A mutex guards the table (the server writes from a background thread too).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_RULES 64
#define MAX_LINE 512
#define MAX_FILE (MAX_RULES * MAX_LINE)

enum op { OP_FSYNC = 1, OP_FDATASYNC = 2, OP_WRITE = 4 };
enum action { ACT_FAIL, ACT_DELAY };

struct rule {
    char text[MAX_LINE]; /* the line as written, to carry counts over a re-read */
    char glob[MAX_LINE];
    int ops;             /* bit set of enum op this rule applies to */
    enum action action;
    int value;           /* errno for fail, milliseconds for delay */
    long remaining;      /* -1: forever */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct rule rules[MAX_RULES];
static int n_rules;
static int any_ops; /* union of ops over rules, so unaffected calls skip fstat/readlink */
static struct rule scratch[MAX_RULES];
static char filebuf[MAX_FILE + 1];
static const char *rules_path;
static int rules_path_checked;
static ino_t seen_ino;
static dev_t seen_dev;
static off_t seen_size = -1;
static struct timespec seen_mtime;

static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off_t, int);

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve(void) {
    real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    real_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    real_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
    real_writev = (ssize_t(*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    real_pwritev = (ssize_t(*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "pwritev");
    real_pwritev64 = (ssize_t(*)(int, const struct iovec *, int, off_t))dlsym(RTLD_NEXT, "pwritev64");
    real_pwritev2 = (ssize_t(*)(int, const struct iovec *, int, off_t, int))dlsym(RTLD_NEXT, "pwritev2");
    real_pwritev64v2 =
        (ssize_t(*)(int, const struct iovec *, int, off_t, int))dlsym(RTLD_NEXT, "pwritev64v2");
}

/* A fork while another thread holds the lock would leave the child's copy locked forever (and
 * a child between fork and exec may still write, e.g. Python's subprocess error pipe). */
static void before_fork(void) { pthread_mutex_lock(&lock); }
static void after_fork(void) { pthread_mutex_unlock(&lock); }

__attribute__((constructor)) static void faultfs_init(void) {
    pthread_once(&resolved, resolve);
    pthread_atfork(before_fork, after_fork, after_fork);
}

static int errno_from_name(const char *s) {
    static const struct { const char *name; int value; } names[] = {
        {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS},
        {"EFBIG", EFBIG},   {"EINTR", EINTR},   {"EAGAIN", EAGAIN}, {"ENOMEM", ENOMEM},
        {"EBADF", EBADF},   {"EPERM", EPERM},   {"EACCES", EACCES}, {"EINVAL", EINVAL},
        {"ENOSYS", ENOSYS}, {"EFAULT", EFAULT},
    };
    char *end;
    long v = strtol(s, &end, 10);
    if (end != s && *end == '\0' && v > 0) return (int)v;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) return names[i].value;
    return 0;
}

static int ops_from_name(const char *s) {
    if (strcmp(s, "fsync") == 0) return OP_FSYNC | OP_FDATASYNC;
    if (strcmp(s, "fdatasync") == 0) return OP_FDATASYNC;
    if (strcmp(s, "write") == 0) return OP_WRITE;
    return 0;
}

/* Parse one line into r; 0 when it is blank, a comment, or malformed (then it is ignored). */
static int parse_rule(const char *line, struct rule *r) {
    char action[16], op[16], value[32];
    long times;
    int glob_at = 0;
    while (*line == ' ' || *line == '\t') line++;
    if (*line == '\0' || *line == '#') return 0;
    if (strlen(line) >= MAX_LINE) return 0;
    if (sscanf(line, "%15s %15s %31s %ld %n", action, op, value, &times, &glob_at) != 4 || !glob_at)
        return 0;
    if (line[glob_at] == '\0') return 0;
    memset(r, 0, sizeof *r);
    strcpy(r->text, line);
    strcpy(r->glob, line + glob_at);
    r->ops = ops_from_name(op);
    r->remaining = times < 0 ? -1 : times;
    if (!r->ops) return 0;
    if (strcmp(action, "fail") == 0) {
        r->action = ACT_FAIL;
        r->value = errno_from_name(value);
        if (!r->value) return 0;
    } else if (strcmp(action, "delay") == 0) {
        char *end;
        r->action = ACT_DELAY;
        r->value = (int)strtol(value, &end, 10);
        if (*end != '\0' || r->value < 0) return 0;
    } else {
        return 0;
    }
    return 1;
}

/* Read and parse the rules file into the table. Called with the lock held. */
static void reload(void) {
    int fd = open(rules_path, O_RDONLY | O_CLOEXEC);
    ssize_t got = 0;
    int n = 0;
    if (fd >= 0) {
        ssize_t r;
        while (got < MAX_FILE && (r = read(fd, filebuf + got, MAX_FILE - got)) > 0) got += r;
        close(fd);
    }
    filebuf[got] = '\0';
    char *save = NULL;
    for (char *line = strtok_r(filebuf, "\n", &save); line && n < MAX_RULES;
         line = strtok_r(NULL, "\n", &save)) {
        size_t len = strlen(line);
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = '\0';
        if (parse_rule(line, &scratch[n])) n++;
    }
    /* Carry over the remaining count of each old rule whose text is unchanged. */
    static char taken[MAX_RULES];
    memset(taken, 0, sizeof taken);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n_rules; j++)
            if (!taken[j] && strcmp(scratch[i].text, rules[j].text) == 0) {
                scratch[i].remaining = rules[j].remaining;
                taken[j] = 1;
                break;
            }
    any_ops = 0;
    for (int i = 0; i < n; i++) {
        rules[i] = scratch[i];
        any_ops |= rules[i].ops;
    }
    n_rules = n;
}

/* Re-read the rules if the file changed. Called with the lock held. */
static void refresh(void) {
    struct stat st;
    if (!rules_path_checked) {
        rules_path = getenv("TIDELOG_FAULTS");
        if (rules_path && !*rules_path) rules_path = NULL;
        rules_path_checked = 1;
    }
    if (!rules_path) return;
    if (stat(rules_path, &st) != 0) {
        if (seen_size != -1 || n_rules) {
            n_rules = 0;
            any_ops = 0;
            seen_size = -1;
        }
        return;
    }
    if (st.st_ino == seen_ino && st.st_dev == seen_dev && st.st_size == seen_size &&
        st.st_mtim.tv_sec == seen_mtime.tv_sec && st.st_mtim.tv_nsec == seen_mtime.tv_nsec)
        return;
    seen_ino = st.st_ino;
    seen_dev = st.st_dev;
    seen_size = st.st_size;
    seen_mtime = st.st_mtim;
    reload();
}

/*
 * Decide what to do with a call of `op` on fd: 0 pass through, >0 an errno to fail with.
 * A delay is slept here (outside the lock) and then reported as pass-through.
 */
static int decide(int fd, int op) {
    struct stat st;
    char link[32], path[4096];
    int verdict = 0, delay_ms = 0;

    pthread_once(&resolved, resolve);
    if (rules_path_checked && !rules_path) return 0; /* unset: pure pass-through */
    int saved = errno;
    pthread_mutex_lock(&lock);
    refresh();
    int wanted = any_ops & op;
    pthread_mutex_unlock(&lock);
    if (!wanted) goto out;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) goto out;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) goto out;
    path[n] = '\0';

    pthread_mutex_lock(&lock);
    for (int i = 0; i < n_rules; i++) {
        struct rule *r = &rules[i];
        if (!(r->ops & op) || r->remaining == 0) continue;
        if (fnmatch(r->glob, path, 0) != 0) continue;
        if (r->remaining > 0) r->remaining--;
        if (r->action == ACT_FAIL)
            verdict = r->value;
        else
            delay_ms = r->value;
        break;
    }
    pthread_mutex_unlock(&lock);

    if (delay_ms > 0) {
        struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
out:
    errno = saved;
    return verdict;
}

#define MISSING(fn)           \
    do {                      \
        if (!(fn)) {          \
            errno = ENOSYS;   \
            return -1;        \
        }                     \
    } while (0)

#define INJECT(fd, op)             \
    do {                           \
        int e_ = decide((fd), (op)); \
        if (e_) {                  \
            errno = e_;            \
            return -1;             \
        }                          \
    } while (0)

int fsync(int fd) {
    INJECT(fd, OP_FSYNC);
    MISSING(real_fsync);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    INJECT(fd, OP_FDATASYNC);
    MISSING(real_fdatasync);
    return real_fdatasync(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
    INJECT(fd, OP_WRITE);
    MISSING(real_write);
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwrite);
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwrite64);
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    INJECT(fd, OP_WRITE);
    MISSING(real_writev);
    return real_writev(fd, iov, iovcnt);
}

ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwritev);
    return real_pwritev(fd, iov, iovcnt, offset);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t offset) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwritev64);
    return real_pwritev64(fd, iov, iovcnt, offset);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwritev2);
    return real_pwritev2(fd, iov, iovcnt, offset, flags);
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t offset, int flags) {
    INJECT(fd, OP_WRITE);
    MISSING(real_pwritev64v2);
    return real_pwritev64v2(fd, iov, iovcnt, offset, flags);
}
