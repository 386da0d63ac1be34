/* pair.c: two peers meet through a rendezvous server and talk directly.
 *
 *   cc pair.c $(pkg-config --cflags --libs rndz) -o pair && ./pair
 *
 * Everything runs in one process on loopback to keep the example short; in real use the
 * server runs on a public host (`rndz-cli server`) and alice and bob are separate programs
 * behind their own NATs. */
#include <rndz.h>

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    /* A rendezvous server on a free port, served from a background thread. */
    rndz_server_options so;
    rndz_server_options_init(&so);
    so.listen_addr = "127.0.0.1:0";
    rndz_server *srv;
    int rc = rndz_server_create(&so, &srv);
    if (rc < 0 || (rc = rndz_server_start(srv)) < 0) {
        fprintf(stderr, "server: %s\n", rndz_strerror(rc));
        return 1;
    }
    struct sockaddr_storage sa;
    char server[RNDZ_ADDRSTRLEN];
    rndz_server_local_addr(srv, &sa, NULL);
    rndz_addr_format((struct sockaddr *)&sa, server, sizeof server);
    const char *servers[] = {server};

    /* alice listens: she registers with the server and waits for peers. */
    rndz_client_options o;
    rndz_client_options_init(&o);
    o.id = "alice";
    o.servers = servers;
    o.n_servers = 1;
    rndz_udp_listener *alice;
    if ((rc = rndz_udp_listener_create(&o, &alice)) < 0 ||
        (rc = rndz_udp_listener_wait_registered(alice, 3000)) < 0) {
        fprintf(stderr, "alice: %s\n", rndz_strerror(rc));
        return 1;
    }

    /* bob asks the server for alice and gets a socket connected to her. */
    o.id = "bob";
    struct sockaddr_storage peer;
    int bob = rndz_udp_connect(&o, "alice", &peer, NULL);
    if (bob < 0) {
        fprintf(stderr, "bob: %s\n", rndz_strerror(bob));
        return 1;
    }
    char where[RNDZ_ADDRSTRLEN];
    rndz_addr_format((struct sockaddr *)&peer, where, sizeof where);
    printf("bob: alice is at %s\n", where);

    /* bob -> alice, and alice echoes it back on her peer socket. Datagrams that decode as
     * rndz messages are the protocol's punch packets, not data: skip them. */
    send(bob, "hello", 5, 0);
    int afd = rndz_udp_listener_fd(alice);
    char buf[1500];
    struct sockaddr_storage from;
    socklen_t fl;
    rndz_msg m;
    ssize_t n;
    do {
        fl = sizeof from;
        n = recvfrom(afd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
    } while (n >= 0 && rndz_msg_decode((const uint8_t *)buf, (size_t)n, 0, &m) == 0);
    if (n < 0) return 1;
    sendto(afd, buf, (size_t)n, 0, (struct sockaddr *)&from, fl);
    do {
        n = recv(bob, buf, sizeof buf, 0);
    } while (n >= 0 && rndz_msg_decode((const uint8_t *)buf, (size_t)n, 0, &m) == 0);
    if (n < 0) return 1;
    printf("bob: alice replied \"%.*s\"\n", (int)n, buf);

    close(bob);
    rndz_udp_listener_destroy(alice); /* says Bye to the server */
    rndz_server_destroy(srv);
    return n == 5 && memcmp(buf, "hello", 5) == 0 ? 0 : 1;
}
