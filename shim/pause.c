/* portlink-pause: the process of a hosted ambassador container (the host
 * forwarder, runtime/host_forwarder.py, does its forwarding): it only holds
 * the container's namespaces, its address and its name, as Kubernetes' pause
 * container does for a pod.
 *
 *   portlink-pause
 *
 * It is PID 1 of its pid namespace, where the kernel delivers no signal
 * without a handler: SIGTERM and SIGINT get one and end it at once (exit 0);
 * nothing else does. As an init it also reaps what `exec` leaves orphaned.
 *
 * Built static with musl (scripts/build-logshim): about 20 KiB of RSS, bound
 * read-only into the container (runtime/plan.py), whatever its image holds.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
    (void)sig;
    _exit(0);
}

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

int main(int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        static const char usage[] = "usage: portlink-pause (no arguments: it waits for SIGTERM or SIGINT)\n";
        (void)!write(2, usage, sizeof usage - 1);
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigfillset(&sa.sa_mask);
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = reap;
    sa.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t want;          /* a mask inherited from whoever started it must not hold them back */
    sigemptyset(&want);
    sigaddset(&want, SIGTERM);
    sigaddset(&want, SIGINT);
    sigaddset(&want, SIGCHLD);
    sigprocmask(SIG_UNBLOCK, &want, NULL);
    for (;;)
        pause();
}
