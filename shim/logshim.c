/* portlink-logshim: captures one container's stdout and stderr into a log file.
 *
 *   portlink-logshim --file PATH [--max-size BYTES] [--max-files N]
 *                    [--stdout-fd FD] [--stderr-fd FD]
 *
 * The daemon starts it in its own session with the read ends of two pipes
 * (stdout on fd 3, stderr on fd 4 by default); the container gets the write
 * ends. It outlives the daemon and exits when both pipes reach EOF, that is
 * when the container and everything that inherited its stdio have ended.
 *
 * Each line becomes one record in the Kubernetes CRI log format (as conmon's
 * k8s-file driver writes it):
 *
 *   2024-05-01T12:00:00.123456789Z stdout F the text of the line
 *
 * F: the line ended with a newline. P: a fragment; the next records of the
 * same stream continue it. A fragment is written when a line grows past
 * LINE_MAX bytes, when a stream ends without a final newline, and when an
 * unterminated line has waited PARTIAL_MS (a prompt, progress dots), so
 * `logs -f` never waits for a newline that may not come.
 *
 * Rotation: a record that would take PATH past --max-size first renames
 * PATH -> PATH.1 -> ... -> PATH.(N-1) (the oldest is replaced) and starts a
 * new PATH: at most N files, each at most max-size (max-size is at least
 * 32 KiB, more than one record), so the disk use is bounded by
 * max-size x N.
 *
 * Never blocking the container: the pipes are always drained. A write that
 * fails (disk full, I/O error) drops that batch of records, truncates the file
 * back to its last whole record so it stays parseable, and says so once per
 * episode on stderr (the daemon points it at logshim.log beside the log).
 * Writing resumes with the next batch that fits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES (16 * 1024)     /* a longer line is split into P records */
#define READ_BYTES (64 * 1024)         /* one pipe's worth per read */
#define OUT_BYTES (256 * 1024)         /* records batched per write() */
#define PARTIAL_MS 200                 /* an unterminated line waits at most this long */
#define MIN_MAX_SIZE (32 * 1024)
#define MAX_FILES 100
#define HEADER_MAX 64                  /* "<30-byte timestamp> stdout F " */

struct stream {
    int fd;
    const char *name;                  /* "stdout" or "stderr" */
    char line[LINE_MAX_BYTES];         /* the unterminated tail of what was read */
    size_t len;
    struct timespec since;             /* when `line` became non-empty (monotonic) */
    struct timespec since_wall;        /* the same, as the fragment's timestamp */
    int open;
};

static const char *path;
static long long max_size = 10LL * 1024 * 1024;
static int max_files = 3;
static int out_fd = -1;
static long long file_size;            /* bytes in the current file */
static char out[OUT_BYTES];
static size_t out_len;
static unsigned long long dropped;     /* bytes dropped in the current failure episode */

static void vnote(const char *fmt, va_list ap) {
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    dprintf(2, "portlink-logshim: %s\n", msg);
}

static void note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vnote(fmt, ap);
    va_end(ap);
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vnote(fmt, ap);
    va_end(ap);
    exit(1);
}

static int open_log(void) {
    int fd;
    do {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    struct stat st;
    file_size = fstat(fd, &st) == 0 ? st.st_size : 0;
    return fd;
}

/* PATH -> PATH.1 -> ... -> PATH.(max_files-1), then a fresh PATH. */
static void rotate(void) {
    char from[PATH_MAX], to[PATH_MAX];
    if (out_fd >= 0)
        close(out_fd);
    out_fd = -1;
    if (max_files == 1) {
        unlink(path);
    } else {
        for (int i = max_files - 1; i >= 1; i--) {
            if (i == 1)
                snprintf(from, sizeof from, "%s", path);
            else
                snprintf(from, sizeof from, "%s.%d", path, i - 1);
            snprintf(to, sizeof to, "%s.%d", path, i);
            if (rename(from, to) != 0 && errno != ENOENT)
                note("rotate %s -> %s: %s", from, to, strerror(errno));
        }
    }
    file_size = 0;   /* even if the open fails: no rename storm while the directory is gone */
    out_fd = open_log();
    if (out_fd < 0 && dropped == 0)
        note("open %s after rotation: %s (records are dropped until it can be opened)", path, strerror(errno));
}

/* Write the batch in full, or drop it and leave the file as it was. */
static void flush_out(void) {
    if (out_len == 0)
        return;
    if (out_fd < 0)
        out_fd = open_log();
    size_t done = 0;
    int err = out_fd < 0 ? errno : 0;
    while (!err && done < out_len) {
        ssize_t n = write(out_fd, out + done, out_len - done);
        if (n > 0)
            done += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            err = n < 0 ? errno : ENOSPC;
    }
    if (err) {
        if (done > 0 && out_fd >= 0) {
            int r;
            do {
                r = ftruncate(out_fd, file_size);   /* no half record left behind */
            } while (r < 0 && errno == EINTR);
        }
        if (dropped == 0)
            note("cannot write %s: %s; dropping output until writes succeed", path, strerror(err));
        dropped += out_len;
    } else {
        file_size += (long long)out_len;
        if (dropped) {
            note("writing %s again; %llu bytes of output were dropped", path, dropped);
            dropped = 0;
        }
    }
    out_len = 0;
}

static int timestamp(char *buf, size_t size, const struct timespec *ts) {
    struct tm tm;
    gmtime_r(&ts->tv_sec, &tm);
    size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
    return (int)n + snprintf(buf + n, size - n, ".%09ldZ", ts->tv_nsec);
}

/* One record: header, the pieces of text (a+b, either may be empty), newline. */
static void record(const struct stream *s, char tag, const struct timespec *ts,
                   const char *a, size_t alen, const char *b, size_t blen) {
    char head[HEADER_MAX];
    int h = timestamp(head, sizeof head, ts);
    h += snprintf(head + h, sizeof head - (size_t)h, " %s %c ", s->name, tag);
    size_t rec = (size_t)h + alen + blen + 1;
    if (out_len + rec > sizeof out)
        flush_out();
    if (file_size + (long long)(out_len + rec) > max_size && file_size + (long long)out_len > 0) {
        flush_out();
        rotate();
    }
    memcpy(out + out_len, head, (size_t)h);
    out_len += (size_t)h;
    memcpy(out + out_len, a, alen);
    out_len += alen;
    memcpy(out + out_len, b, blen);
    out_len += blen;
    out[out_len++] = '\n';
}

static void partial_out(struct stream *s) {
    if (s->len) {
        record(s, 'P', &s->since_wall, s->line, s->len, "", 0);
        s->len = 0;
    }
}

/* Split what was read into records; keep an unterminated tail in s->line. */
static void consume(struct stream *s, const char *data, size_t n, const struct timespec *ts,
                    const struct timespec *mono) {
    while (n > 0) {
        const char *nl = memchr(data, '\n', n);
        size_t seg = nl ? (size_t)(nl - data) : n;
        if (s->len + seg > LINE_MAX_BYTES) {
            /* fill the line buffer up to LINE_MAX and write it as a fragment */
            size_t take = LINE_MAX_BYTES - s->len;
            record(s, 'P', ts, s->line, s->len, data, take);
            s->len = 0;
            data += take;
            n -= take;
            continue;
        }
        if (nl) {
            record(s, 'F', ts, s->line, s->len, data, seg);
            s->len = 0;
            data += seg + 1;
            n -= seg + 1;
        } else {
            if (s->len == 0) {
                s->since = *mono;
                s->since_wall = *ts;
            }
            memcpy(s->line + s->len, data, seg);
            s->len += seg;
            n = 0;
        }
    }
}

static long long ms_between(const struct timespec *a, const struct timespec *b) {
    return (b->tv_sec - a->tv_sec) * 1000LL + (b->tv_nsec - a->tv_nsec) / 1000000;
}

static long long parse_num(const char *opt, const char *v, long long lo, long long hi) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *v == '\0' || *end != '\0' || x < lo || x > hi)
        die("invalid %s %s: expected a whole number from %lld to %lld", opt, v, lo, hi);
    return x;
}

int main(int argc, char **argv) {
    struct stream streams[2] = {{.fd = 3, .name = "stdout"}, {.fd = 4, .name = "stderr"}};
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            die("%s needs a value (usage: portlink-logshim --file PATH [--max-size BYTES] [--max-files N])", opt);
        const char *v = argv[++i];
        if (!strcmp(opt, "--file"))
            path = v;
        else if (!strcmp(opt, "--max-size"))
            max_size = parse_num(opt, v, MIN_MAX_SIZE, LLONG_MAX / 2);
        else if (!strcmp(opt, "--max-files"))
            max_files = (int)parse_num(opt, v, 1, MAX_FILES);
        else if (!strcmp(opt, "--stdout-fd"))
            streams[0].fd = (int)parse_num(opt, v, 0, INT_MAX);
        else if (!strcmp(opt, "--stderr-fd"))
            streams[1].fd = (int)parse_num(opt, v, 0, INT_MAX);
        else
            die("unknown option %s", opt);
    }
    if (!path)
        die("no --file PATH given");
    if (strlen(path) + 8 >= PATH_MAX)
        die("log path too long: %s", path);
    /* A reader that went away must not kill us; a stop request is the only signal we act on. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    for (int i = 0; i < 2; i++) {
        int fl = fcntl(streams[i].fd, F_GETFL);
        if (fl < 0)
            die("fd %d (%s) is not open: the daemon passes the pipes' read ends", streams[i].fd, streams[i].name);
        fcntl(streams[i].fd, F_SETFL, fl | O_NONBLOCK);
        fcntl(streams[i].fd, F_SETFD, FD_CLOEXEC);
        streams[i].open = 1;
    }
    out_fd = open_log();
    if (out_fd < 0)
        note("cannot open %s: %s (output is dropped until it can be opened)", path, strerror(errno));

    static char buf[READ_BYTES];
    while (streams[0].open || streams[1].open) {
        struct pollfd pfd[2];
        struct timespec now;
        int timeout = -1;
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (int i = 0; i < 2; i++) {
            pfd[i].fd = streams[i].open ? streams[i].fd : -1;
            pfd[i].events = POLLIN;
            pfd[i].revents = 0;
            if (streams[i].open && streams[i].len) {
                long long left = PARTIAL_MS - ms_between(&streams[i].since, &now);
                int t = left < 0 ? 0 : (int)left;
                if (timeout < 0 || t < timeout)
                    timeout = t;
            }
        }
        int r = poll(pfd, 2, timeout);
        if (r < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        struct timespec wall;
        clock_gettime(CLOCK_REALTIME, &wall);
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (int i = 0; r > 0 && i < 2; i++) {
            struct stream *s = &streams[i];
            if (!s->open || !pfd[i].revents)
                continue;
            ssize_t n = read(s->fd, buf, sizeof buf);
            if (n > 0) {
                consume(s, buf, (size_t)n, &wall, &now);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                /* EOF (or the pipe broke): what is left is a line without its newline */
                partial_out(s);
                close(s->fd);
                s->open = 0;
            }
        }
        /* unterminated lines that waited long enough go out as fragments */
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (int i = 0; i < 2; i++)
            if (streams[i].len && ms_between(&streams[i].since, &now) >= PARTIAL_MS)
                partial_out(&streams[i]);
        flush_out();
    }
    flush_out();
    return 0;
}
