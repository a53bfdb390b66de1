/*
 * toxpeer: a small c-toxcore (libtoxcore 0.2.18, Debian) peer for ferry's interop tests.
 *
 * Usage:
 *   toxpeer --address-of SECRET_KEY_HEX NOSPAM_HEX
 *       Load the secret key into a Tox instance, set the nospam, print "ADDRESS <76 hex>", exit.
 *   toxpeer [--port N] [--bootstrap IP PORT DHT_KEY_HEX]... [--seconds S]
 *           [--friend-request ADDRESS_HEX MESSAGE]... [--friend PUBLIC_KEY_HEX]... [--accept]
 *       Run a UDP-only DHT node on loopback (LAN discovery, IPv6 and TCP off). Prints
 *       "DHT_ID <hex>", "PORT <n>", "ADDRESS <76 hex>", "READY" at start, then one
 *       "RX <ip>:<port> <kind>" line the first time a datagram of a given kind arrives from a
 *       given address, and "CONNECTION <0|1|2>" when the connection status changes. Runs until
 *       killed or S seconds.
 *       --friend-request adds a friend with a request (sent by onion once found);
 *       --friend adds one without; --accept accepts every friend request. Received requests
 *       print "FRIEND_REQUEST <pk hex> <message>", friend connection changes
 *       "FRIEND_CONNECTION <friend number> <0|1|2>".
 *
 * The RX lines come from an interposed recvfrom(): the executable defines recvfrom, so
 * libtoxcore's calls reach it first and it forwards to libc's. That is how a test proves that two
 * c-toxcore nodes exchanged DHT packets with each other.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <tox/tox.h>
#include <unistd.h>

#define MAX_SEEN 512
static struct { char addr[64]; uint8_t kind; } seen[MAX_SEEN];
static int n_seen = 0;

static void record(const struct sockaddr *src, uint8_t kind)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    char addr[64];
    uint16_t port = 0;
    if (src->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)src;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        port = ntohs(a->sin_port);
    } else if (src->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)src;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        port = ntohs(a->sin6_port);
    }
    snprintf(addr, sizeof addr, "%s:%u", ip, port);
    for (int i = 0; i < n_seen; i++) {
        if (seen[i].kind == kind && strcmp(seen[i].addr, addr) == 0) {
            return;
        }
    }
    if (n_seen < MAX_SEEN) {
        snprintf(seen[n_seen].addr, sizeof seen[n_seen].addr, "%s", addr);
        seen[n_seen].kind = kind;
        n_seen++;
        printf("RX %s %u\n", addr, kind);
        fflush(stdout);
    }
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *src, socklen_t *alen)
{
    static ssize_t (*real)(int, void *, size_t, int, struct sockaddr *, socklen_t *) = NULL;
    if (real == NULL) {
        real = (ssize_t (*)(int, void *, size_t, int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "recvfrom");
        if (real == NULL) {
            return -1;
        }
    }
    ssize_t n = real(fd, buf, len, flags, src, alen);
    if (n > 0 && src != NULL) {
        record(src, ((const uint8_t *)buf)[0]);
    }
    return n;
}

static int hex_to_bytes(const char *hex, uint8_t *out, size_t n)
{
    if (strlen(hex) != 2 * n) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
            return -1;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

static void print_hex(const char *label, const uint8_t *b, size_t n)
{
    printf("%s ", label);
    for (size_t i = 0; i < n; i++) {
        printf("%02X", b[i]);
    }
    printf("\n");
}

static struct Tox_Options *loopback_options(uint16_t port)
{
    struct Tox_Options *o = tox_options_new(NULL);
    tox_options_set_ipv6_enabled(o, false);
    tox_options_set_udp_enabled(o, true);
    tox_options_set_local_discovery_enabled(o, false);
    tox_options_set_hole_punching_enabled(o, false);
    tox_options_set_tcp_port(o, 0);
    tox_options_set_start_port(o, port);
    tox_options_set_end_port(o, port);
    return o;
}

static int address_of(const char *sk_hex, const char *nospam_hex)
{
    uint8_t sk[TOX_SECRET_KEY_SIZE];
    uint8_t ns[4];
    if (hex_to_bytes(sk_hex, sk, sizeof sk) || hex_to_bytes(nospam_hex, ns, sizeof ns)) {
        fprintf(stderr, "bad hex\n");
        return 2;
    }
    struct Tox_Options *o = loopback_options(0);
    tox_options_set_udp_enabled(o, false);
    tox_options_set_savedata_type(o, TOX_SAVEDATA_TYPE_SECRET_KEY);
    tox_options_set_savedata_data(o, sk, sizeof sk);
    Tox_Err_New err;
    Tox *tox = tox_new(o, &err);
    tox_options_free(o);
    if (tox == NULL) {
        fprintf(stderr, "tox_new failed: %d\n", err);
        return 1;
    }
    uint32_t nospam = ((uint32_t)ns[0] << 24) | ((uint32_t)ns[1] << 16) | ((uint32_t)ns[2] << 8) | ns[3];
    tox_self_set_nospam(tox, nospam);
    uint8_t address[TOX_ADDRESS_SIZE];
    tox_self_get_address(tox, address);
    print_hex("ADDRESS", address, sizeof address);
    tox_kill(tox);
    return 0;
}

static int accept_requests = 0;

static void on_friend_request(Tox *tox, const uint8_t *pk, const uint8_t *msg, size_t len, void *user)
{
    (void)user;
    if (accept_requests) {
        tox_friend_add_norequest(tox, pk, NULL);
    }
    printf("FRIEND_REQUEST ");
    for (size_t i = 0; i < TOX_PUBLIC_KEY_SIZE; i++) {
        printf("%02X", pk[i]);
    }
    printf(" %.*s\n", (int)len, (const char *)msg);
}

static void on_friend_connection(Tox *tox, uint32_t friend_number, Tox_Connection status, void *user)
{
    (void)tox;
    (void)user;
    printf("FRIEND_CONNECTION %u %d\n", friend_number, (int)status);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "--address-of") == 0) {
        return address_of(argv[2], argv[3]);
    }
    uint16_t port = 0;
    long seconds = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = (uint16_t)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atol(argv[++i]);
        } else if (strcmp(argv[i], "--bootstrap") == 0 && i + 3 < argc) {
            i += 3;
        } else if (strcmp(argv[i], "--friend-request") == 0 && i + 2 < argc) {
            i += 2;
        } else if (strcmp(argv[i], "--friend") == 0 && i + 1 < argc) {
            i += 1;
        } else if (strcmp(argv[i], "--accept") == 0) {
            accept_requests = 1;
        } else {
            fprintf(stderr, "usage: toxpeer [--port N] [--bootstrap IP PORT KEY]... [--seconds S] [--friend-request ADDRESS MSG]... [--friend PK]... [--accept] | --address-of SK NOSPAM\n");
            return 2;
        }
    }
    struct Tox_Options *o = loopback_options(port);
    Tox_Err_New err;
    Tox *tox = tox_new(o, &err);
    tox_options_free(o);
    if (tox == NULL) {
        fprintf(stderr, "tox_new failed: %d\n", err);
        return 1;
    }
    uint8_t dht_id[TOX_PUBLIC_KEY_SIZE];
    tox_self_get_dht_id(tox, dht_id);
    print_hex("DHT_ID", dht_id, sizeof dht_id);
    printf("PORT %u\n", tox_self_get_udp_port(tox, NULL));
    uint8_t address[TOX_ADDRESS_SIZE];
    tox_self_get_address(tox, address);
    print_hex("ADDRESS", address, sizeof address);
    tox_callback_friend_request(tox, on_friend_request);
    tox_callback_friend_connection_status(tox, on_friend_connection);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--bootstrap") == 0 && i + 3 < argc) {
            uint8_t key[TOX_PUBLIC_KEY_SIZE];
            if (hex_to_bytes(argv[i + 3], key, sizeof key)) {
                fprintf(stderr, "bad bootstrap key\n");
                return 2;
            }
            Tox_Err_Bootstrap berr;
            if (!tox_bootstrap(tox, argv[i + 1], (uint16_t)atoi(argv[i + 2]), key, &berr)) {
                fprintf(stderr, "tox_bootstrap failed: %d\n", berr);
                return 1;
            }
            i += 3;
        } else if (strcmp(argv[i], "--friend-request") == 0 && i + 2 < argc) {
            uint8_t addr[TOX_ADDRESS_SIZE];
            if (hex_to_bytes(argv[i + 1], addr, sizeof addr)) {
                fprintf(stderr, "bad friend address\n");
                return 2;
            }
            const char *msg = argv[i + 2];
            Tox_Err_Friend_Add ferr;
            if (tox_friend_add(tox, addr, (const uint8_t *)msg, strlen(msg), &ferr) == UINT32_MAX) {
                fprintf(stderr, "tox_friend_add failed: %d\n", ferr);
                return 1;
            }
            i += 2;
        } else if (strcmp(argv[i], "--friend") == 0 && i + 1 < argc) {
            uint8_t pk[TOX_PUBLIC_KEY_SIZE];
            if (hex_to_bytes(argv[i + 1], pk, sizeof pk)) {
                fprintf(stderr, "bad friend key\n");
                return 2;
            }
            Tox_Err_Friend_Add ferr;
            if (tox_friend_add_norequest(tox, pk, &ferr) == UINT32_MAX) {
                fprintf(stderr, "tox_friend_add_norequest failed: %d\n", ferr);
                return 1;
            }
            i += 1;
        }
    }
    printf("READY\n");
    time_t start = time(NULL);
    Tox_Connection last = TOX_CONNECTION_NONE;
    while (seconds == 0 || time(NULL) - start < seconds) {
        tox_iterate(tox, NULL);
        Tox_Connection c = tox_self_get_connection_status(tox);
        if (c != last) {
            printf("CONNECTION %d\n", (int)c);
            last = c;
        }
        usleep(tox_iteration_interval(tox) * 1000);
    }
    tox_kill(tox);
    return 0;
}
