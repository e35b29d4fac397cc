/*
 * pagesrv: the test guest's web server for bursts of connections.
 *
 * Usage: pagesrv PORT FILE
 * Answers every HTTP request on PORT with FILE (HTTP/1.0, one request per
 * connection, a process per connection).
 *
 * Why not busybox httpd: it listens with a backlog of 9. A burst of SYNs
 * beyond that is dropped by the guest's kernel, and passt (the VMI's
 * network) does not send a SYN again, so those connections end after passt's
 * 10 s handshake timeout. Real servers listen with a backlog of hundreds
 * (nginx 511); this one asks for SOMAXCONN.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void serve(int c, const char *file) {
    char req[4096];
    size_t got = 0;
    /* Read the request head (up to the blank line), at most 4 KiB. */
    while (got < sizeof req - 1) {
        ssize_t n = read(c, req + got, sizeof req - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        req[got] = 0;
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    int fd = open(file, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        const char *nf = "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        (void)write(c, nf, strlen(nf));
        return;
    }
    char head[128];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: %lld\r\n\r\n",
                     (long long)st.st_size);
    (void)write(c, head, (size_t)h);
    char buf[16384];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write(c, buf, (size_t)n) != n)
            break;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: pagesrv PORT FILE\n");
        return 2;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, SOMAXCONN) < 0) {
        perror("pagesrv");
        return 1;
    }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        pid_t p = fork();
        if (p == 0) {
            close(s);
            serve(c, argv[2]);
            close(c);
            _exit(0);
        }
        close(c);
    }
}
