/* portlink-logshim: one container's monitor (as conmon is Podman's): it starts
 * the container, is its parent, keeps its exit status and writes its log.
 *
 * Log only (the read ends of two pipes given; tests use it alone):
 *   portlink-logshim --file PATH [--max-size BYTES] [--max-files N]
 *                    [--stdout-fd FD] [--stderr-fd FD]
 * It exits when both pipes reach EOF.
 *
 * Monitor (what the daemon starts, in a session of its own, so it outlives it):
 *   portlink-logshim --file PATH [--max-size B] [--max-files N] --dir DIR
 *                    --sync-fd FD [--tty] [--stdin]
 *                    [--mntns-fd N --root-fd R --root PATH] -- RUNC-ARGV... CID
 * It is a child subreaper, runs RUNC-ARGV (`runc ... run --detach ... CID`;
 * with --tty it puts `--console-socket S` before CID and receives the pty
 * master from runc), then writes "ok\n" or "fail\n" on FD and closes it. The
 * container's init, orphaned by runc, becomes its child: when it ends, its
 * status goes atomically to DIR/exit (one line: the exit code, or 128+signal),
 * the output left is drained (at most DRAIN_MS more), and the monitor exits;
 * the daemon watches the monitor's pid and reads DIR/exit, also after a
 * restart of its own.
 *
 * With --mntns-fd N --root-fd R --root PATH (the daemon's launch namespace and
 * the container's overlay root, a detached mount), the monitor first moves
 * into a private copy of that namespace and attaches R at PATH there, so runc
 * starts from a namespace holding the host's own mounts and this container's
 * root, not every other container's (runtime/launch_ns.py says why).
 *
 * DIR/attach.sock (mode 0600) relays the container live: any number of
 * clients; each frame, both ways, is Docker's stream header (type byte, three
 * zero bytes, 32-bit big-endian length) then the payload. To a client: 1
 * stdout, 2 stderr (a pty's output is stdout), 3 the exit code in decimal,
 * last. From a client: 0 stdin bytes (with --stdin), 4 window size (rows and
 * cols, 16-bit big-endian each; --tty), 5 end of stdin (closes the
 * container's stdin pipe; ignored with a tty). The output written before the
 * first client attached (up to REPLAY_BYTES) is sent to that client first, so
 * `run -it` does not lose the first prompt. Sockets are bound through
 * /proc/PID/fd/DIRFD/..., short whatever DIR's length.
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
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES (16 * 1024)     /* a longer line is split into P records */
#define READ_BYTES (64 * 1024)         /* one pipe's worth per read */
#define OUT_BYTES (256 * 1024)         /* records batched per write() */
#define PARTIAL_MS 200                 /* an unterminated line waits at most this long */
#define MIN_MAX_SIZE (32 * 1024)
#define MAX_FILES 100
#define HEADER_MAX 64                  /* "<30-byte timestamp> stdout F " */
#define DRAIN_MS 2000                  /* output read after the init ended, at most */
#define MAX_CLIENTS 16                 /* attach clients at once */
#define FRAME_MAX 4096                 /* a client's frame payload, at most */
#define IN_BYTES (64 * 1024)           /* stdin waiting for the container */
#define REPLAY_BYTES (64 * 1024)       /* output kept for the first client */

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

/* ---- the monitor ------------------------------------------------------------------- */

struct client {
    int fd;
    unsigned char in[8 + FRAME_MAX];   /* a frame being read */
    size_t in_len;
};

static int monitor;                    /* --dir given: start the container and watch it */
static const char *dir;
static int dir_fd = -1;
static int sync_fd = -1;
static int want_tty, want_stdin;
static char **runc_argv;
static int mntns_fd = -1, root_fd = -1;   /* --mntns-fd, --root-fd */
static const char *root_path;             /* --root */
static int runc_argc;
static int listen_fd = -1;
static char attach_path[128];
static struct client clients[MAX_CLIENTS];
static int nclients;
static int ever_attached;
static unsigned char replay[REPLAY_BYTES];
static size_t replay_len;
static unsigned char inbuf[IN_BYTES];  /* stdin from clients, for the container */
static size_t inbuf_len;
static int in_fd = -1;                 /* the stdin pipe's write end, or the pty master */
static int in_eof;                     /* a client ended stdin: close it once inbuf is out */
static int master = -1;

static void put_header(unsigned char *h, int type, size_t len) {
    h[0] = (unsigned char)type;
    h[1] = h[2] = h[3] = 0;
    h[4] = (unsigned char)(len >> 24);
    h[5] = (unsigned char)(len >> 16);
    h[6] = (unsigned char)(len >> 8);
    h[7] = (unsigned char)len;
}

static void drop_client(int i) {
    close(clients[i].fd);
    clients[i] = clients[--nclients];
}

/* The whole frame or nothing: a client too slow to take it loses its connection,
 * never the container its output. */
static int send_frame(int fd, int type, const void *data, size_t len) {
    unsigned char h[8];
    put_header(h, type, len);
    struct iovec iov[2] = {{h, 8}, {(void *)data, len}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = 2};
    ssize_t n;
    do {
        n = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)(8 + len) ? 0 : -1;
}

static void relay(int type, const char *data, size_t len) {
    if (!ever_attached && replay_len + 8 + len <= sizeof replay) {
        put_header(replay + replay_len, type, len);
        memcpy(replay + replay_len + 8, data, len);
        replay_len += 8 + len;
    }
    for (int i = nclients - 1; i >= 0; i--)
        if (send_frame(clients[i].fd, type, data, len) < 0) {
            note("attach client too slow or gone: disconnected");
            drop_client(i);
        }
}

static void accept_client(void) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0)
        return;
    if (nclients == MAX_CLIENTS) {
        note("%d attach clients already: one more refused", MAX_CLIENTS);
        close(fd);
        return;
    }
    int big = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (!ever_attached) {
        ever_attached = 1;
        size_t off = 0;
        while (off < replay_len) {   /* the blocking kind: a fresh socket's buffer is empty */
            ssize_t n = send(fd, replay + off, replay_len - off, MSG_NOSIGNAL);
            if (n <= 0)
                break;
            off += (size_t)n;
        }
    }
    clients[nclients].fd = fd;
    clients[nclients].in_len = 0;
    nclients++;
}

static void handle_frame(int type, const unsigned char *p, size_t len) {
    if (type == 0 && in_fd >= 0 && !in_eof) {
        memcpy(inbuf + inbuf_len, p, len);   /* room checked before reading */
        inbuf_len += len;
    } else if (type == 4 && master >= 0 && len == 4) {
        struct winsize ws = {.ws_row = (unsigned short)(p[0] << 8 | p[1]),
                             .ws_col = (unsigned short)(p[2] << 8 | p[3])};
        ioctl(master, TIOCSWINSZ, &ws);
    } else if (type == 5 && master < 0) {
        in_eof = 1;
    }
}

/* Read what a client sent; frames handled as they complete. */
static void client_input(int i) {
    struct client *c = &clients[i];
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        drop_client(i);
        return;
    }
    if (n < 0)
        return;
    c->in_len += (size_t)n;
    for (;;) {
        if (c->in_len < 8)
            return;
        size_t len = (size_t)c->in[4] << 24 | (size_t)c->in[5] << 16 | (size_t)c->in[6] << 8 | c->in[7];
        if (len > FRAME_MAX) {
            note("attach client sent a frame of %zu bytes (at most %d): disconnected", len, FRAME_MAX);
            drop_client(i);
            return;
        }
        if (c->in_len < 8 + len)
            return;
        handle_frame(c->in[0], c->in + 8, len);
        memmove(c->in, c->in + 8 + len, c->in_len - 8 - len);
        c->in_len -= 8 + len;
    }
}

static void write_stdin(void) {
    ssize_t n = write(in_fd, inbuf, inbuf_len);
    if (n > 0) {
        memmove(inbuf, inbuf + n, inbuf_len - (size_t)n);
        inbuf_len -= (size_t)n;
    } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        inbuf_len = 0;   /* the container closed its stdin: what it did not read is gone */
        if (master < 0) {
            close(in_fd);
            in_fd = -1;
        }
    }
}

static int bind_in_dir(const char *name, char *out, size_t size, int backlog) {
    snprintf(out, size, "/proc/%d/fd/%d/%s", (int)getpid(), dir_fd, name);
    unlinkat(dir_fd, name, 0);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", out);
    mode_t old = umask(077);   /* root only: it takes the container's stdin */
    int r = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (r < 0 || listen(fd, backlog) < 0)
        die("cannot listen on %s/%s: %s", dir, name, strerror(errno));
    return fd;
}

static int recv_fd(int sock) {
    char byte;
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&byte, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    /* runc sends the pty's name with it: one read is enough for the descriptor */
    char name[256];
    iov.iov_base = name;
    iov.iov_len = sizeof name;
    if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) < 0)
        return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int fd;
            memcpy(&fd, CMSG_DATA(c), sizeof fd);
            return fd;
        }
    return -1;
}

/* The exit file's blocks are taken at start (exit.tmp, spaces): on a disk full by
 * the time the init ends, writing the code over them and renaming still works. */
static int exit_fd = -1;

static void prepare_exit(void) {
    unlinkat(dir_fd, "exit", 0);
    exit_fd = openat(dir_fd, "exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (exit_fd < 0 || write(exit_fd, "                \n", 17) != 17)
        note("cannot prepare %s/exit.tmp: %s (tried again at the end)", dir, strerror(errno));
}

static void write_exit(int code) {
    char text[16];
    int n = snprintf(text, sizeof text, "%d\n", code);
    if (exit_fd < 0)
        exit_fd = openat(dir_fd, "exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (exit_fd < 0 || pwrite(exit_fd, text, (size_t)n, 0) != n || ftruncate(exit_fd, n) != 0) {
        note("cannot write %s/exit.tmp: %s (the exit code %d is lost)", dir, strerror(errno), code);
        return;
    }
    fsync(exit_fd);
    close(exit_fd);
    exit_fd = -1;
    if (renameat(dir_fd, "exit.tmp", dir_fd, "exit") != 0)
        note("cannot rename %s/exit.tmp: %s (the exit code %d is lost)", dir, strerror(errno), code);
}

static void tell_daemon(const char *what) {
    if (sync_fd >= 0) {
        ssize_t r = write(sync_fd, what, strlen(what));
        (void)r;
        close(sync_fd);
        sync_fd = -1;
    }
}

#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif

/* Into a private copy of the launch namespace, the container's root attached in it.
 * A failure ends the monitor before runc: the daemon reports this message. */
static void enter_launch_namespace(void) {
    if (setns(mntns_fd, CLONE_NEWNS) != 0)
        die("cannot enter the launch mount namespace: setns: %s", strerror(errno));
    if (unshare(CLONE_NEWNS) != 0)
        die("cannot copy the launch mount namespace: unshare: %s", strerror(errno));
    if (chdir("/") != 0)
        die("chdir /: %s", strerror(errno));
    if (syscall(SYS_move_mount, root_fd, "", AT_FDCWD, root_path, MOVE_MOUNT_F_EMPTY_PATH) != 0)
        die("cannot attach the container's root at %s: move_mount: %s", root_path, strerror(errno));
    close(mntns_fd);
    close(root_fd);
    mntns_fd = root_fd = -1;
}

/* Start runc with the container's stdio; returns the init's pid, or -1 (runc failed). */
static int start_container(struct stream *streams, sigset_t *oldmask) {
    int out[2] = {-1, -1}, err[2] = {-1, -1}, in[2] = {-1, -1}, console = -1;
    char console_path[128];
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null < 0)
        die("open /dev/null: %s", strerror(errno));
    if (want_tty) {
        console = bind_in_dir("console.sock", console_path, sizeof console_path, 1);
    } else {
        if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || (want_stdin && pipe2(in, O_CLOEXEC)))
            die("pipe: %s", strerror(errno));
    }
    char **argv = calloc((size_t)runc_argc + 3, sizeof *argv);
    int k = 0;
    for (int i = 0; i < runc_argc - 1; i++)
        argv[k++] = runc_argv[i];
    if (want_tty) {
        argv[k++] = "--console-socket";
        argv[k++] = console_path;
    }
    argv[k++] = runc_argv[runc_argc - 1];
    pid_t runc = fork();
    if (runc < 0)
        die("fork: %s", strerror(errno));
    if (runc == 0) {
        sigprocmask(SIG_SETMASK, oldmask, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        dup2(in[0] >= 0 ? in[0] : null, 0);
        dup2(out[1] >= 0 ? out[1] : null, 1);
        dup2(err[1] >= 0 ? err[1] : null, 2);
        execv(argv[0], argv);
        dprintf(2, "portlink-logshim: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(argv);
    close(null);
    int st = 0;
    while (waitpid(runc, &st, 0) < 0 && errno == EINTR)
        ;
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (want_tty) {
        unlinkat(dir_fd, "console.sock", 0);
        if (ok) {
            /* runc connected and sent the master before it exited: it waits in the backlog */
            int fl = fcntl(console, F_GETFL);
            fcntl(console, F_SETFL, fl | O_NONBLOCK);
            int conn = accept4(console, NULL, NULL, SOCK_CLOEXEC);
            master = conn < 0 ? -1 : recv_fd(conn);
            if (conn >= 0)
                close(conn);
            if (master < 0) {
                note("runc started the container but handed over no console");
                ok = 0;
            }
        }
        close(console);
        streams[0].fd = master;
        streams[1].fd = -1;
        in_fd = master >= 0 ? dup(master) : -1;
        if (in_fd >= 0)
            fcntl(in_fd, F_SETFD, FD_CLOEXEC);
    } else {
        close(out[1]);
        close(err[1]);
        streams[0].fd = out[0];
        streams[1].fd = err[0];
        if (in[0] >= 0) {
            close(in[0]);
            in_fd = in[1];
        }
    }
    if (in_fd >= 0)
        fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
    if (!ok)
        return -1;
    char pidfile_text[32] = "";
    int pidfile = openat(dir_fd, "bundle/pid", O_RDONLY | O_CLOEXEC);
    ssize_t n = pidfile < 0 ? -1 : read(pidfile, pidfile_text, sizeof pidfile_text - 1);
    if (pidfile >= 0)
        close(pidfile);
    int pid = n > 0 ? atoi(pidfile_text) : 0;
    if (pid <= 0) {
        note("runc wrote no pid to %s/bundle/pid", dir);
        return -1;
    }
    return pid;
}

int main(int argc, char **argv) {
    struct stream streams[2] = {{.fd = 3, .name = "stdout"}, {.fd = 4, .name = "stderr"}};
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "--")) {
            runc_argv = argv + i + 1;
            runc_argc = argc - i - 1;
            break;
        }
        if (!strcmp(opt, "--tty")) {
            want_tty = 1;
            continue;
        }
        if (!strcmp(opt, "--stdin")) {
            want_stdin = 1;
            continue;
        }
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
        else if (!strcmp(opt, "--dir"))
            dir = v;
        else if (!strcmp(opt, "--sync-fd"))
            sync_fd = (int)parse_num(opt, v, 0, INT_MAX);
        else if (!strcmp(opt, "--mntns-fd"))
            mntns_fd = (int)parse_num(opt, v, 0, INT_MAX);
        else if (!strcmp(opt, "--root-fd"))
            root_fd = (int)parse_num(opt, v, 0, INT_MAX);
        else if (!strcmp(opt, "--root"))
            root_path = v;
        else
            die("unknown option %s", opt);
    }
    if (!path)
        die("no --file PATH given");
    if (strlen(path) + 8 >= PATH_MAX)
        die("log path too long: %s", path);
    monitor = dir != NULL;
    if (monitor && runc_argc < 2)
        die("--dir needs the runc command after --, the container id last");
    if ((mntns_fd >= 0) != (root_fd >= 0) || (root_fd >= 0) != (root_path != NULL))
        die("--mntns-fd, --root-fd and --root go together");
    if (root_fd >= 0 && !monitor)
        die("--root-fd needs --dir (the monitor)");
    /* A reader that went away must not kill us; a stop request is the only signal we act on. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);

    int sfd = -1, init_pid = -1, init_done = 0, code = -1;
    struct timespec drain_until = {0};
    if (monitor) {
        if (sync_fd >= 0)
            fcntl(sync_fd, F_SETFD, FD_CLOEXEC);
        if (root_fd >= 0)
            enter_launch_namespace();
        if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0)
            die("prctl(PR_SET_CHILD_SUBREAPER): %s", strerror(errno));
        dir_fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (dir_fd < 0)
            die("open %s: %s", dir, strerror(errno));
        prepare_exit();
        listen_fd = bind_in_dir("attach.sock", attach_path, sizeof attach_path, 16);
        fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
        sigset_t chld, oldmask;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, &oldmask);
        sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
        if (sfd < 0)
            die("signalfd: %s", strerror(errno));
        init_pid = start_container(streams, &oldmask);
        tell_daemon(init_pid > 0 ? "ok\n" : "fail\n");
        if (init_pid <= 0) {
            init_done = 1;
            clock_gettime(CLOCK_MONOTONIC, &drain_until);
            drain_until.tv_sec += DRAIN_MS / 1000;
        }
    }
    for (int i = 0; i < 2; i++) {
        if (streams[i].fd < 0)
            continue;
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
    /* pfd: the two streams, then (monitor) the signalfd, the attach socket, stdin, the clients */
    enum { P_SIG = 2, P_LISTEN, P_IN, P_CLIENTS };
    for (;;) {
        int streams_open = streams[0].open || streams[1].open;
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (!monitor && !streams_open)
            break;
        if (monitor && init_done && (!streams_open || ms_between(&now, &drain_until) <= 0))
            break;
        struct pollfd pfd[P_CLIENTS + MAX_CLIENTS];
        int npfd = monitor ? P_CLIENTS + nclients : 2;
        int timeout = -1;
        for (int i = 0; i < 2; i++) {
            pfd[i].fd = streams[i].open ? streams[i].fd : -1;
            pfd[i].events = POLLIN;
            if (streams[i].open && streams[i].len) {
                long long left = PARTIAL_MS - ms_between(&streams[i].since, &now);
                int t = left < 0 ? 0 : (int)left;
                if (timeout < 0 || t < timeout)
                    timeout = t;
            }
        }
        if (monitor) {
            if (init_done) {
                long long left = ms_between(&now, &drain_until);
                int t = left < 0 ? 0 : (int)left;
                if (timeout < 0 || t < timeout)
                    timeout = t;
            }
            pfd[P_SIG] = (struct pollfd){.fd = sfd, .events = POLLIN};
            pfd[P_LISTEN] = (struct pollfd){.fd = listen_fd, .events = POLLIN};
            pfd[P_IN] = (struct pollfd){.fd = inbuf_len && in_fd >= 0 ? in_fd : -1, .events = POLLOUT};
            int room = sizeof inbuf - inbuf_len >= sizeof clients[0].in;
            for (int i = 0; i < nclients; i++)
                pfd[P_CLIENTS + i] = (struct pollfd){.fd = room ? clients[i].fd : -1, .events = POLLIN};
        }
        for (int i = 0; i < npfd; i++)
            pfd[i].revents = 0;
        int r = poll(pfd, (nfds_t)npfd, timeout);
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
                if (monitor)
                    relay(i + 1, buf, (size_t)n);
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                /* EOF (or the pipe broke; EIO: a pty's last holder is gone): what is
                 * left is a line without its newline */
                partial_out(s);
                close(s->fd);
                s->open = 0;
            }
        }
        if (monitor && r > 0) {
            if (pfd[P_SIG].revents) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof si) > 0)
                    ;
                int st;
                pid_t p;
                while ((p = waitpid(-1, &st, WNOHANG)) > 0)
                    if (p == init_pid) {
                        code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                        write_exit(code);
                        init_done = 1;
                        drain_until = now;
                        drain_until.tv_sec += DRAIN_MS / 1000;
                    }
            }
            if (pfd[P_LISTEN].revents)
                accept_client();
            if (pfd[P_IN].revents && in_fd >= 0 && inbuf_len)
                write_stdin();
            for (int i = nclients - 1; i >= 0; i--)
                if (pfd[P_CLIENTS + i].fd >= 0 && pfd[P_CLIENTS + i].fd == clients[i].fd && pfd[P_CLIENTS + i].revents)
                    client_input(i);
            if (in_eof && !inbuf_len && in_fd >= 0) {
                close(in_fd);
                in_fd = -1;
            }
        }
        /* unterminated lines that waited long enough go out as fragments */
        clock_gettime(CLOCK_MONOTONIC, &now);
        for (int i = 0; i < 2; i++)
            if (streams[i].len && ms_between(&streams[i].since, &now) >= PARTIAL_MS)
                partial_out(&streams[i]);
        flush_out();
    }
    for (int i = 0; i < 2; i++)
        if (streams[i].open)
            partial_out(&streams[i]);
    flush_out();
    if (monitor) {
        unlinkat(dir_fd, "attach.sock", 0);
        if (code >= 0) {
            char text[16];
            int n = snprintf(text, sizeof text, "%d", code);
            for (int i = 0; i < nclients; i++)
                send_frame(clients[i].fd, 3, text, (size_t)n);
        }
        while (nclients)
            drop_client(0);
        if (exit_fd >= 0)   /* no init, or it was never seen to end */
            unlinkat(dir_fd, "exit.tmp", 0);
        return init_pid > 0 ? 0 : 1;
    }
    return 0;
}
