/*
 * toxpeer: a small scriptable c-toxcore (libtoxcore 0.2.18, Debian) client for ferry's interop
 * tests. Written for ferry (MIT OR Apache-2.0); it only calls the public tox.h and
 * toxencryptsave.h API.
 *
 * Usage:
 *   toxpeer --address-of SECRET_KEY_HEX NOSPAM_HEX
 *       Load the secret key into a Tox instance, set the nospam, print "ADDRESS <76 hex>", exit.
 *   toxpeer [--port N] [--bootstrap IP PORT DHT_KEY_HEX]... [--tcp-relay IP PORT KEY_HEX]...
 *           [--seconds S] [--load FILE [--passphrase P]] [--iterate-ms N] [--udp-disabled]
 *           [--tcp-port N] [--auto-accept | --accept] [--hole-punching]
 *           [--friend-request ADDRESS_HEX MESSAGE]... [--friend PUBLIC_KEY_HEX]...
 *       Run a Tox client on loopback (LAN discovery, IPv6 and hole punching off; a TCP relay
 *       server only with --tcp-port). --load reads a Tox save (decrypted with --passphrase when
 *       it starts with toxencryptsave's "toxEsave" magic). --iterate-ms overrides the sleep
 *       between tox_iterate calls (default tox_iteration_interval). --auto-accept accepts every
 *       friend request (--accept is the same). --friend-request adds a friend with a request at
 *       start; --friend adds one without. Runs until QUIT, until killed, or for S seconds.
 *
 * Output: one line per event on stdout, flushed at once.
 *   Start:  DHT_ID <hex> | DHTKEY <hex> | ADDRESS <76 hex> | PORT <n> | READY
 *   Events: RX <ip>:<port> <kind>          first datagram of a kind from an address
 *           CONNECTION <0|1|2>             self connection status (number, legacy form)
 *           SELF_CONNECTION <none|tcp|udp>
 *           FRIEND_REQUEST <pk> <message>
 *           FRIEND_CONNECTION <n> <none|tcp|udp>
 *           MESSAGE <n> <normal|action> <text>
 *           RECEIPT <n> <message_id>
 *           LOSSLESS <n> <hex> | LOSSY <n> <hex>   (hex includes the packet id byte)
 *           FRIEND_NAME <n> <name> | FRIEND_STATUS_MESSAGE <n> <text> | FRIEND_TYPING <n> 0|1
 *           FRIEND_STATUS <n> <none|away|busy>
 *   Texts are printed with control characters replaced by spaces.
 *
 * Commands, one per line on stdin (EOF on stdin only stops reading commands):
 *   ADD <toxid> <message>          -> FRIEND_ADDED <n> | ERROR <text>
 *   ACCEPT <pk>                    -> FRIEND_ADDED <n> | ERROR <text>
 *   DELETE <n>                     -> OK | ERROR <text>
 *   SEND <n> <text>                -> SENT <n> <message_id> | ERROR <text>
 *   ACTION <n> <text>              -> SENT <n> <message_id> | ERROR <text>
 *   LOSSLESS <n> <hex>             -> OK | ERROR <text>   (first byte 160..191)
 *   LOSSY <n> <hex>                -> OK | ERROR <text>   (first byte 200..254)
 *   NAME <text> | STATUS_MESSAGE <text> | TYPING <n> 0|1 | NOSPAM <8 hex>
 *   USER_STATUS <none|away|busy>   -> OK | ERROR <text>
 *   ADDRESS                        -> ADDRESS <76 hex>
 *   SAVE <path>                    -> SAVED <path> | ERROR <text>
 *   SAVE_ENCRYPTED <path> <pass>   -> SAVED <path> | ERROR <text>
 *   FRIENDS                        -> FRIEND <n> <pk> <none|tcp|udp> <name> ... END
 *   ADD_TCP_RELAY <ip> <port> <key>, BOOTSTRAP <ip> <port> <key> -> OK | ERROR <text>
 *   FILE_DIR / FILE_AUTO / FILE_SEND / FILE_ACCEPT / FILE_CONTROL / FILE_SEEK: see the file
 *                                     transfer block below (events FILE_RECV, FILE_DONE, …)
 *   QUIT                           -> BYE, then exit 0
 *   anything else                  -> ERROR unknown command
 *
 * The RX lines come from an interposed recvfrom(): the executable defines recvfrom, so
 * libtoxcore's calls reach it first and it forwards to libc's. That is how a test proves that two
 * c-toxcore nodes exchanged DHT packets with each other.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <time.h>
#include <tox/tox.h>
#include <tox/toxencryptsave.h>
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

static void print_text(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        putchar(b[i] < 0x20 || b[i] == 0x7f ? ' ' : b[i]);
    }
}

static void print_hex_raw(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("%02X", b[i]);
    }
}

static const char *conn_name(Tox_Connection c)
{
    switch (c) {
    case TOX_CONNECTION_TCP:
        return "tcp";
    case TOX_CONNECTION_UDP:
        return "udp";
    default:
        return "none";
    }
}

static const char *status_name(Tox_User_Status s)
{
    switch (s) {
    case TOX_USER_STATUS_AWAY:
        return "away";
    case TOX_USER_STATUS_BUSY:
        return "busy";
    default:
        return "none";
    }
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

/* ---- events ---------------------------------------------------------------------------- */

static int auto_accept = 0;

static void on_friend_request(Tox *tox, const uint8_t *pk, const uint8_t *msg, size_t len, void *ud)
{
    (void)ud;
    printf("FRIEND_REQUEST ");
    print_hex_raw(pk, TOX_PUBLIC_KEY_SIZE);
    putchar(' ');
    print_text(msg, len);
    putchar('\n');
    if (auto_accept) {
        Tox_Err_Friend_Add err;
        uint32_t n = tox_friend_add_norequest(tox, pk, &err);
        if (n == UINT32_MAX) {
            printf("ERROR accept failed: %d\n", err);
        } else {
            printf("FRIEND_ADDED %u\n", n);
        }
    }
    fflush(stdout);
}

static void on_friend_connection(Tox *tox, uint32_t n, Tox_Connection c, void *ud)
{
    (void)tox;
    (void)ud;
    printf("FRIEND_CONNECTION %u %s\n", n, conn_name(c));
    fflush(stdout);
}

static void on_self_connection(Tox *tox, Tox_Connection c, void *ud)
{
    (void)tox;
    (void)ud;
    printf("SELF_CONNECTION %s\n", conn_name(c));
    fflush(stdout);
}

static void on_message(Tox *tox, uint32_t n, Tox_Message_Type type, const uint8_t *msg, size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    printf("MESSAGE %u %s ", n, type == TOX_MESSAGE_TYPE_ACTION ? "action" : "normal");
    print_text(msg, len);
    putchar('\n');
    fflush(stdout);
}

static void on_receipt(Tox *tox, uint32_t n, uint32_t id, void *ud)
{
    (void)tox;
    (void)ud;
    printf("RECEIPT %u %u\n", n, id);
    fflush(stdout);
}

static void on_lossless(Tox *tox, uint32_t n, const uint8_t *data, size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    printf("LOSSLESS %u ", n);
    print_hex_raw(data, len);
    putchar('\n');
    fflush(stdout);
}

static void on_lossy(Tox *tox, uint32_t n, const uint8_t *data, size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    printf("LOSSY %u ", n);
    print_hex_raw(data, len);
    putchar('\n');
    fflush(stdout);
}

static void on_name(Tox *tox, uint32_t n, const uint8_t *name, size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    printf("FRIEND_NAME %u ", n);
    print_text(name, len);
    putchar('\n');
    fflush(stdout);
}

static void on_status_message(Tox *tox, uint32_t n, const uint8_t *msg, size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    printf("FRIEND_STATUS_MESSAGE %u ", n);
    print_text(msg, len);
    putchar('\n');
    fflush(stdout);
}

static void on_status(Tox *tox, uint32_t n, Tox_User_Status s, void *ud)
{
    (void)tox;
    (void)ud;
    printf("FRIEND_STATUS %u %s\n", n, status_name(s));
    fflush(stdout);
}

static void on_typing(Tox *tox, uint32_t n, bool typing, void *ud)
{
    (void)tox;
    (void)ud;
    printf("FRIEND_TYPING %u %d\n", n, typing ? 1 : 0);
    fflush(stdout);
}

/* ---- commands -------------------------------------------------------------------------- */

/* Splits off the next space-separated word of *rest (NULL when none); *rest moves past it. */
static char *next_word(char **rest)
{
    char *s = *rest;
    while (*s == ' ') {
        s++;
    }
    if (*s == '\0') {
        *rest = s;
        return NULL;
    }
    char *w = s;
    while (*s != '\0' && *s != ' ') {
        s++;
    }
    if (*s == ' ') {
        *s++ = '\0';
    }
    *rest = s;
    return w;
}

static int parse_friend(const char *w, uint32_t *out)
{
    if (w == NULL || *w == '\0') {
        return -1;
    }
    char *end;
    unsigned long v = strtoul(w, &end, 10);
    if (*end != '\0' || v > UINT32_MAX) {
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* Hex of any even length up to cap bytes; returns the length or -1. */
static long parse_hex_var(const char *w, uint8_t *out, size_t cap)
{
    if (w == NULL) {
        return -1;
    }
    size_t l = strlen(w);
    if (l % 2 != 0 || l / 2 > cap) {
        return -1;
    }
    if (hex_to_bytes(w, out, l / 2)) {
        return -1;
    }
    return (long)(l / 2);
}

static int write_file(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return -1;
    }
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len) {
        return -1;
    }
    return 0;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0) {
            break;
        }
        n += r;
    }
    fclose(f);
    *len = n;
    return buf;
}

static void print_friends(Tox *tox)
{
    size_t count = tox_self_get_friend_list_size(tox);
    uint32_t *list = malloc((count + 1) * sizeof *list);
    tox_self_get_friend_list(tox, list);
    for (size_t i = 0; i < count; i++) {
        uint8_t pk[TOX_PUBLIC_KEY_SIZE];
        tox_friend_get_public_key(tox, list[i], pk, NULL);
        printf("FRIEND %u ", list[i]);
        print_hex_raw(pk, sizeof pk);
        printf(" %s ", conn_name(tox_friend_get_connection_status(tox, list[i], NULL)));
        size_t nl = tox_friend_get_name_size(tox, list[i], NULL);
        uint8_t *name = malloc(nl + 1);
        tox_friend_get_name(tox, list[i], name, NULL);
        print_text(name, nl);
        free(name);
        putchar('\n');
    }
    printf("END\n");
    free(list);
}

static int add_node(Tox *tox, int tcp, const char *ip, const char *port, const char *key_hex)
{
    uint8_t key[TOX_PUBLIC_KEY_SIZE];
    if (ip == NULL || port == NULL || key_hex == NULL || hex_to_bytes(key_hex, key, sizeof key)) {
        printf("ERROR usage: IP PORT KEY\n");
        return -1;
    }
    Tox_Err_Bootstrap err;
    bool ok = tcp ? tox_add_tcp_relay(tox, ip, (uint16_t)atoi(port), key, &err)
                  : tox_bootstrap(tox, ip, (uint16_t)atoi(port), key, &err);
    if (!ok) {
        printf("ERROR %s failed: %d\n", tcp ? "tox_add_tcp_relay" : "tox_bootstrap", err);
        return -1;
    }
    return 0;
}

/* ---- file transfer (tox.h file API) ------------------------------------------------------
 *
 * Commands:
 *   FILE_DIR <dir>                 -> OK                 directory received files are written to
 *   FILE_AUTO 0|1                  -> OK                 accept every offered file at once
 *   FILE_SEND <n> <path>           -> FILE_SENDING <n> <f> | ERROR <text>
 *   FILE_ACCEPT <n> <f>            -> OK | ERROR <text>   (writes <dir>/<f>-<name>)
 *   FILE_CONTROL <n> <f> resume|pause|cancel -> OK | ERROR <text>
 *   FILE_SEEK <n> <f> <pos>        -> OK | ERROR <text>
 * Events:
 *   FILE_RECV <n> <f> <kind> <size> <file_id hex> <name>
 *   FILE_CONTROL_RECV <n> <f> <resume|pause|cancel>
 *   FILE_DONE <n> <f> <bytes> <path>   incoming complete (file closed; hash it)
 *   FILE_SENT <n> <f> <bytes>          outgoing complete (friend has every chunk)
 *   FILE_ERROR <n> <f> <text>
 */

#define MAX_FILES 600
struct file_slot {
    int used;
    uint32_t friend_number;
    uint32_t file_number;
    FILE *fp;
    uint64_t bytes;
    char path[1024];
    char name[256];
};
static struct file_slot file_slots[MAX_FILES];
static char file_dir[900] = "/tmp";
static int file_auto = 0;

static struct file_slot *file_find(uint32_t n, uint32_t f, int create)
{
    for (int i = 0; i < MAX_FILES; i++) {
        if (file_slots[i].used && file_slots[i].friend_number == n && file_slots[i].file_number == f) {
            return &file_slots[i];
        }
    }
    if (!create) {
        return NULL;
    }
    for (int i = 0; i < MAX_FILES; i++) {
        if (!file_slots[i].used) {
            memset(&file_slots[i], 0, sizeof file_slots[i]);
            file_slots[i].used = 1;
            file_slots[i].friend_number = n;
            file_slots[i].file_number = f;
            return &file_slots[i];
        }
    }
    return NULL;
}

static void file_free(struct file_slot *s)
{
    if (s->fp != NULL) {
        fclose(s->fp);
    }
    s->fp = NULL;
    s->used = 0;
}

static int file_accept(Tox *tox, uint32_t n, uint32_t f)
{
    struct file_slot *s = file_find(n, f, 0);
    if (s == NULL) {
        printf("ERROR no such file\n");
        return -1;
    }
    snprintf(s->path, sizeof s->path, "%s/%u-%s", file_dir, f, s->name[0] ? s->name : "file");
    s->fp = fopen(s->path, "w+b");
    if (s->fp == NULL) {
        printf("ERROR open %s: %s\n", s->path, strerror(errno));
        return -1;
    }
    Tox_Err_File_Control err;
    if (!tox_file_control(tox, n, f, TOX_FILE_CONTROL_RESUME, &err)) {
        printf("ERROR tox_file_control failed: %d\n", err);
        return -1;
    }
    return 0;
}

static void on_file_recv(Tox *tox, uint32_t n, uint32_t f, uint32_t kind, uint64_t size,
                         const uint8_t *name, size_t name_len, void *ud)
{
    (void)ud;
    struct file_slot *s = file_find(n, f, 1);
    if (s == NULL) {
        tox_file_control(tox, n, f, TOX_FILE_CONTROL_CANCEL, NULL);
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < name_len && k + 1 < sizeof s->name; i++) {
        char c = (char)name[i];
        s->name[k++] = (c == '/' || c == ' ' || (unsigned char)c < 32) ? '_' : c;
    }
    s->name[k] = '\0';
    uint8_t id[TOX_FILE_ID_LENGTH];
    tox_file_get_file_id(tox, n, f, id, NULL);
    printf("FILE_RECV %u %u %u %llu ", n, f, kind, (unsigned long long)size);
    for (size_t i = 0; i < sizeof id; i++) {
        printf("%02X", id[i]);
    }
    printf(" %s\n", s->name);
    if (file_auto) {
        if (file_accept(tox, n, f) != 0) {
            printf("FILE_ERROR %u %u auto-accept failed\n", n, f);
        }
    }
    fflush(stdout);
}

static void on_file_chunk(Tox *tox, uint32_t n, uint32_t f, uint64_t pos, const uint8_t *data,
                          size_t len, void *ud)
{
    (void)tox;
    (void)ud;
    struct file_slot *s = file_find(n, f, 0);
    if (s == NULL || s->fp == NULL) {
        return;
    }
    if (len == 0) {
        fclose(s->fp);
        s->fp = NULL;
        printf("FILE_DONE %u %u %llu %s\n", n, f, (unsigned long long)s->bytes, s->path);
        fflush(stdout);
        file_free(s);
        return;
    }
    if (fseeko(s->fp, (off_t)pos, SEEK_SET) != 0 || fwrite(data, 1, len, s->fp) != len) {
        printf("FILE_ERROR %u %u write failed\n", n, f);
        fflush(stdout);
        return;
    }
    s->bytes = pos + len;
}

static void on_file_chunk_request(Tox *tox, uint32_t n, uint32_t f, uint64_t pos, size_t len, void *ud)
{
    (void)ud;
    struct file_slot *s = file_find(n, f, 0);
    if (s == NULL || s->fp == NULL) {
        return;
    }
    if (len == 0) {
        printf("FILE_SENT %u %u %llu\n", n, f, (unsigned long long)pos);
        fflush(stdout);
        file_free(s);
        return;
    }
    uint8_t buf[TOX_MAX_CUSTOM_PACKET_SIZE];
    if (len > sizeof buf || fseeko(s->fp, (off_t)pos, SEEK_SET) != 0 || fread(buf, 1, len, s->fp) != len) {
        printf("FILE_ERROR %u %u read failed\n", n, f);
        fflush(stdout);
        return;
    }
    Tox_Err_File_Send_Chunk err;
    if (!tox_file_send_chunk(tox, n, f, pos, buf, len, &err)) {
        printf("FILE_ERROR %u %u send_chunk %d\n", n, f, err);
        fflush(stdout);
    }
}

static void on_file_control(Tox *tox, uint32_t n, uint32_t f, Tox_File_Control c, void *ud)
{
    (void)tox;
    (void)ud;
    const char *w = c == TOX_FILE_CONTROL_RESUME ? "resume" : c == TOX_FILE_CONTROL_PAUSE ? "pause" : "cancel";
    printf("FILE_CONTROL_RECV %u %u %s\n", n, f, w);
    fflush(stdout);
    if (c == TOX_FILE_CONTROL_CANCEL) {
        struct file_slot *s = file_find(n, f, 0);
        if (s != NULL) {
            file_free(s);
        }
    }
}

static void register_file_callbacks(Tox *tox)
{
    tox_callback_file_recv(tox, on_file_recv);
    tox_callback_file_recv_chunk(tox, on_file_chunk);
    tox_callback_file_chunk_request(tox, on_file_chunk_request);
    tox_callback_file_recv_control(tox, on_file_control);
}

/* Returns 1 when `cmd` is a file command (and runs it). */
static int file_command(Tox *tox, const char *cmd, char *rest)
{
    if (strcmp(cmd, "FILE_DIR") == 0) {
        snprintf(file_dir, sizeof file_dir, "%s", rest);
        printf("OK\n");
    } else if (strcmp(cmd, "FILE_AUTO") == 0) {
        file_auto = atoi(rest) != 0;
        printf("OK\n");
    } else if (strcmp(cmd, "FILE_SEND") == 0) {
        char *w = next_word(&rest);
        while (*rest == ' ') {
            rest++;
        }
        if (w == NULL || *rest == '\0') {
            printf("ERROR usage: FILE_SEND <n> <path>\n");
            return 1;
        }
        uint32_t n = (uint32_t)atoi(w);
        FILE *fp = fopen(rest, "rb");
        if (fp == NULL) {
            printf("ERROR open %s: %s\n", rest, strerror(errno));
            return 1;
        }
        fseeko(fp, 0, SEEK_END);
        uint64_t size = (uint64_t)ftello(fp);
        const char *base = strrchr(rest, '/');
        base = base != NULL ? base + 1 : rest;
        Tox_Err_File_Send err;
        uint32_t f = tox_file_send(tox, n, TOX_FILE_KIND_DATA, size, NULL, (const uint8_t *)base, strlen(base), &err);
        if (f == UINT32_MAX) {
            fclose(fp);
            printf("ERROR tox_file_send failed: %d\n", err);
            return 1;
        }
        struct file_slot *s = file_find(n, f, 1);
        if (s == NULL) {
            fclose(fp);
            printf("ERROR too many files\n");
            return 1;
        }
        s->fp = fp;
        snprintf(s->path, sizeof s->path, "%s", rest);
        printf("FILE_SENDING %u %u\n", n, f);
    } else if (strcmp(cmd, "FILE_ACCEPT") == 0) {
        char *a = next_word(&rest);
        char *b = next_word(&rest);
        if (a == NULL || b == NULL) {
            printf("ERROR usage: FILE_ACCEPT <n> <f>\n");
        } else if (file_accept(tox, (uint32_t)atoi(a), (uint32_t)strtoul(b, NULL, 10)) == 0) {
            printf("OK\n");
        }
    } else if (strcmp(cmd, "FILE_CONTROL") == 0) {
        char *a = next_word(&rest);
        char *b = next_word(&rest);
        char *c = next_word(&rest);
        if (a == NULL || b == NULL || c == NULL) {
            printf("ERROR usage: FILE_CONTROL <n> <f> resume|pause|cancel\n");
            return 1;
        }
        Tox_File_Control ctl = strcmp(c, "pause") == 0    ? TOX_FILE_CONTROL_PAUSE
                               : strcmp(c, "cancel") == 0 ? TOX_FILE_CONTROL_CANCEL
                                                          : TOX_FILE_CONTROL_RESUME;
        Tox_Err_File_Control err;
        if (tox_file_control(tox, (uint32_t)atoi(a), (uint32_t)strtoul(b, NULL, 10), ctl, &err)) {
            printf("OK\n");
        } else {
            printf("ERROR tox_file_control failed: %d\n", err);
        }
    } else if (strcmp(cmd, "FILE_SEEK") == 0) {
        char *a = next_word(&rest);
        char *b = next_word(&rest);
        char *c = next_word(&rest);
        Tox_Err_File_Seek err;
        if (a == NULL || b == NULL || c == NULL) {
            printf("ERROR usage: FILE_SEEK <n> <f> <pos>\n");
        } else if (tox_file_seek(tox, (uint32_t)atoi(a), (uint32_t)strtoul(b, NULL, 10), strtoull(c, NULL, 10), &err)) {
            printf("OK\n");
        } else {
            printf("ERROR tox_file_seek failed: %d\n", err);
        }
    } else {
        return 0;
    }
    return 1;
}

/* ---- end of file transfer block ------------------------------------------------------------ */

/* Runs one command line; returns 1 on QUIT. */
static int run_command(Tox *tox, char *line)
{
    char *rest = line;
    char *cmd = next_word(&rest);
    if (cmd == NULL) {
        return 0;
    }
    while (*rest == ' ') {
        rest++;
    }
    if (strcmp(cmd, "QUIT") == 0) {
        printf("BYE\n");
        return 1;
    } else if (strcmp(cmd, "ADD") == 0) {
        char *id = next_word(&rest);
        uint8_t address[TOX_ADDRESS_SIZE];
        if (id == NULL || hex_to_bytes(id, address, sizeof address)) {
            printf("ERROR usage: ADD <76 hex> <message>\n");
            return 0;
        }
        Tox_Err_Friend_Add err;
        uint32_t n = tox_friend_add(tox, address, (const uint8_t *)rest, strlen(rest), &err);
        if (n == UINT32_MAX) {
            printf("ERROR tox_friend_add failed: %d\n", err);
        } else {
            printf("FRIEND_ADDED %u\n", n);
        }
    } else if (strcmp(cmd, "ACCEPT") == 0) {
        char *w = next_word(&rest);
        uint8_t pk[TOX_PUBLIC_KEY_SIZE];
        if (w == NULL || hex_to_bytes(w, pk, sizeof pk)) {
            printf("ERROR usage: ACCEPT <64 hex>\n");
            return 0;
        }
        Tox_Err_Friend_Add err;
        uint32_t n = tox_friend_add_norequest(tox, pk, &err);
        if (n == UINT32_MAX) {
            printf("ERROR tox_friend_add_norequest failed: %d\n", err);
        } else {
            printf("FRIEND_ADDED %u\n", n);
        }
    } else if (strcmp(cmd, "DELETE") == 0) {
        uint32_t n;
        Tox_Err_Friend_Delete err;
        if (parse_friend(next_word(&rest), &n)) {
            printf("ERROR usage: DELETE <n>\n");
        } else if (!tox_friend_delete(tox, n, &err)) {
            printf("ERROR tox_friend_delete failed: %d\n", err);
        } else {
            printf("OK\n");
        }
    } else if (strcmp(cmd, "SEND") == 0 || strcmp(cmd, "ACTION") == 0) {
        uint32_t n;
        if (parse_friend(next_word(&rest), &n)) {
            printf("ERROR usage: %s <n> <text>\n", cmd);
            return 0;
        }
        Tox_Message_Type type = strcmp(cmd, "ACTION") == 0 ? TOX_MESSAGE_TYPE_ACTION : TOX_MESSAGE_TYPE_NORMAL;
        Tox_Err_Friend_Send_Message err;
        uint32_t id = tox_friend_send_message(tox, n, type, (const uint8_t *)rest, strlen(rest), &err);
        if (err != TOX_ERR_FRIEND_SEND_MESSAGE_OK) {
            printf("ERROR tox_friend_send_message failed: %d\n", err);
        } else {
            printf("SENT %u %u\n", n, id);
        }
    } else if (strcmp(cmd, "LOSSLESS") == 0 || strcmp(cmd, "LOSSY") == 0) {
        uint32_t n;
        uint8_t data[TOX_MAX_CUSTOM_PACKET_SIZE];
        if (parse_friend(next_word(&rest), &n)) {
            printf("ERROR usage: %s <n> <hex>\n", cmd);
            return 0;
        }
        long len = parse_hex_var(next_word(&rest), data, sizeof data);
        if (len <= 0) {
            printf("ERROR bad hex\n");
            return 0;
        }
        Tox_Err_Friend_Custom_Packet err;
        bool ok = strcmp(cmd, "LOSSY") == 0 ? tox_friend_send_lossy_packet(tox, n, data, (size_t)len, &err)
                                            : tox_friend_send_lossless_packet(tox, n, data, (size_t)len, &err);
        if (!ok) {
            printf("ERROR send failed: %d\n", err);
        } else {
            printf("OK\n");
        }
    } else if (strcmp(cmd, "NAME") == 0 || strcmp(cmd, "STATUS_MESSAGE") == 0) {
        Tox_Err_Set_Info err;
        bool ok = strcmp(cmd, "NAME") == 0
                      ? tox_self_set_name(tox, (const uint8_t *)rest, strlen(rest), &err)
                      : tox_self_set_status_message(tox, (const uint8_t *)rest, strlen(rest), &err);
        if (!ok) {
            printf("ERROR set failed: %d\n", err);
        } else {
            printf("OK\n");
        }
    } else if (strcmp(cmd, "USER_STATUS") == 0) {
        char *w = next_word(&rest);
        if (w != NULL && strcmp(w, "none") == 0) {
            tox_self_set_status(tox, TOX_USER_STATUS_NONE);
        } else if (w != NULL && strcmp(w, "away") == 0) {
            tox_self_set_status(tox, TOX_USER_STATUS_AWAY);
        } else if (w != NULL && strcmp(w, "busy") == 0) {
            tox_self_set_status(tox, TOX_USER_STATUS_BUSY);
        } else {
            printf("ERROR usage: USER_STATUS <none|away|busy>\n");
            return 0;
        }
        printf("OK\n");
    } else if (strcmp(cmd, "TYPING") == 0) {
        uint32_t n;
        char *w;
        Tox_Err_Set_Typing err;
        if (parse_friend(next_word(&rest), &n) || (w = next_word(&rest)) == NULL) {
            printf("ERROR usage: TYPING <n> 0|1\n");
        } else if (!tox_self_set_typing(tox, n, strcmp(w, "1") == 0, &err)) {
            printf("ERROR tox_self_set_typing failed: %d\n", err);
        } else {
            printf("OK\n");
        }
    } else if (strcmp(cmd, "NOSPAM") == 0) {
        uint8_t ns[4];
        char *w = next_word(&rest);
        if (w == NULL || hex_to_bytes(w, ns, sizeof ns)) {
            printf("ERROR usage: NOSPAM <8 hex>\n");
            return 0;
        }
        tox_self_set_nospam(tox, ((uint32_t)ns[0] << 24) | ((uint32_t)ns[1] << 16) | ((uint32_t)ns[2] << 8) | ns[3]);
        printf("OK\n");
    } else if (strcmp(cmd, "ADDRESS") == 0) {
        uint8_t address[TOX_ADDRESS_SIZE];
        tox_self_get_address(tox, address);
        print_hex("ADDRESS", address, sizeof address);
    } else if (strcmp(cmd, "SAVE") == 0 || strcmp(cmd, "SAVE_ENCRYPTED") == 0) {
        char *path = next_word(&rest);
        int enc = strcmp(cmd, "SAVE_ENCRYPTED") == 0;
        if (path == NULL || (enc && *rest == '\0')) {
            printf("ERROR usage: SAVE <path> | SAVE_ENCRYPTED <path> <passphrase>\n");
            return 0;
        }
        size_t len = tox_get_savedata_size(tox);
        uint8_t *data = malloc(len + TOX_PASS_ENCRYPTION_EXTRA_LENGTH);
        tox_get_savedata(tox, data);
        if (enc) {
            uint8_t *out = malloc(len + TOX_PASS_ENCRYPTION_EXTRA_LENGTH);
            Tox_Err_Encryption err;
            if (!tox_pass_encrypt(data, len, (const uint8_t *)rest, strlen(rest), out, &err)) {
                printf("ERROR tox_pass_encrypt failed: %d\n", err);
                free(out);
                free(data);
                return 0;
            }
            free(data);
            data = out;
            len += TOX_PASS_ENCRYPTION_EXTRA_LENGTH;
        }
        if (write_file(path, data, len)) {
            printf("ERROR writing %s: %s\n", path, strerror(errno));
        } else {
            printf("SAVED %s\n", path);
        }
        free(data);
    } else if (strcmp(cmd, "FRIENDS") == 0) {
        print_friends(tox);
    } else if (strcmp(cmd, "ADD_TCP_RELAY") == 0 || strcmp(cmd, "BOOTSTRAP") == 0) {
        char *ip = next_word(&rest);
        char *port = next_word(&rest);
        char *key = next_word(&rest);
        if (add_node(tox, strcmp(cmd, "ADD_TCP_RELAY") == 0, ip, port, key) == 0) {
            printf("OK\n");
        }
    } else if (file_command(tox, cmd, rest)) {
        /* handled in the file transfer block */
    } else {
        printf("ERROR unknown command %s\n", cmd);
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: toxpeer [--port N] [--bootstrap IP PORT KEY]... [--tcp-relay IP PORT KEY]... [--seconds S]\n"
            "               [--load FILE [--passphrase P]] [--iterate-ms N] [--udp-disabled] [--tcp-port N]\n"
            "               [--auto-accept] [--hole-punching] [--friend-request ADDRESS MESSAGE]... [--friend PK]...\n"
            "       toxpeer --address-of SK NOSPAM\n");
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "--address-of") == 0) {
        return address_of(argv[2], argv[3]);
    }
    uint16_t port = 0;
    uint16_t tcp_port = 0;
    long seconds = 0;
    long iterate_ms = 0;
    int udp_disabled = 0;
    int hole_punching = 0;
    const char *load = NULL;
    const char *passphrase = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            port = (uint16_t)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--tcp-port") == 0 && i + 1 < argc) {
            tcp_port = (uint16_t)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
            seconds = atol(argv[++i]);
        } else if (strcmp(argv[i], "--iterate-ms") == 0 && i + 1 < argc) {
            iterate_ms = atol(argv[++i]);
        } else if (strcmp(argv[i], "--load") == 0 && i + 1 < argc) {
            load = argv[++i];
        } else if (strcmp(argv[i], "--passphrase") == 0 && i + 1 < argc) {
            passphrase = argv[++i];
        } else if (strcmp(argv[i], "--udp-disabled") == 0) {
            udp_disabled = 1;
        } else if (strcmp(argv[i], "--hole-punching") == 0) {
            hole_punching = 1;
        } else if (strcmp(argv[i], "--auto-accept") == 0 || strcmp(argv[i], "--accept") == 0) {
            auto_accept = 1;
        } else if (strcmp(argv[i], "--friend-request") == 0 && i + 2 < argc) {
            i += 2;
        } else if (strcmp(argv[i], "--friend") == 0 && i + 1 < argc) {
            i += 1;
        } else if ((strcmp(argv[i], "--bootstrap") == 0 || strcmp(argv[i], "--tcp-relay") == 0) && i + 3 < argc) {
            i += 3;
        } else {
            usage();
            return 2;
        }
    }
    struct Tox_Options *o = loopback_options(port);
    if (udp_disabled) {
        tox_options_set_udp_enabled(o, false);
    }
    if (hole_punching) {
        tox_options_set_hole_punching_enabled(o, true);
    }
    tox_options_set_tcp_port(o, tcp_port);
    uint8_t *save = NULL;
    size_t save_len = 0;
    if (load != NULL) {
        save = read_file(load, &save_len);
        if (save == NULL) {
            fprintf(stderr, "cannot read %s: %s\n", load, strerror(errno));
            return 1;
        }
        if (save_len >= TOX_PASS_ENCRYPTION_EXTRA_LENGTH && tox_is_data_encrypted(save)) {
            if (passphrase == NULL) {
                fprintf(stderr, "%s is encrypted: give --passphrase\n", load);
                return 1;
            }
            uint8_t *plain = malloc(save_len);
            Tox_Err_Decryption derr;
            if (!tox_pass_decrypt(save, save_len, (const uint8_t *)passphrase, strlen(passphrase), plain, &derr)) {
                fprintf(stderr, "tox_pass_decrypt failed: %d\n", derr);
                return 1;
            }
            free(save);
            save = plain;
            save_len -= TOX_PASS_ENCRYPTION_EXTRA_LENGTH;
        }
        tox_options_set_savedata_type(o, TOX_SAVEDATA_TYPE_TOX_SAVE);
        tox_options_set_savedata_data(o, save, save_len);
    }
    Tox_Err_New err;
    Tox *tox = tox_new(o, &err);
    tox_options_free(o);
    free(save);
    if (tox == NULL) {
        fprintf(stderr, "tox_new failed: %d\n", err);
        return 1;
    }
    tox_callback_friend_request(tox, on_friend_request);
    tox_callback_friend_connection_status(tox, on_friend_connection);
    tox_callback_self_connection_status(tox, on_self_connection);
    tox_callback_friend_message(tox, on_message);
    tox_callback_friend_read_receipt(tox, on_receipt);
    tox_callback_friend_lossless_packet(tox, on_lossless);
    tox_callback_friend_lossy_packet(tox, on_lossy);
    tox_callback_friend_name(tox, on_name);
    tox_callback_friend_status_message(tox, on_status_message);
    tox_callback_friend_status(tox, on_status);
    tox_callback_friend_typing(tox, on_typing);
    register_file_callbacks(tox);

    uint8_t dht_id[TOX_PUBLIC_KEY_SIZE];
    tox_self_get_dht_id(tox, dht_id);
    print_hex("DHT_ID", dht_id, sizeof dht_id);
    print_hex("DHTKEY", dht_id, sizeof dht_id);
    uint8_t address[TOX_ADDRESS_SIZE];
    tox_self_get_address(tox, address);
    print_hex("ADDRESS", address, sizeof address);
    printf("PORT %u\n", tox_self_get_udp_port(tox, NULL));
    if (tcp_port != 0) {
        printf("TCP_PORT %u\n", tox_self_get_tcp_port(tox, NULL));
    }
    for (int i = 1; i < argc; i++) {
        int tcp = strcmp(argv[i], "--tcp-relay") == 0;
        if ((tcp || strcmp(argv[i], "--bootstrap") == 0) && i + 3 < argc) {
            if (add_node(tox, tcp, argv[i + 1], argv[i + 2], argv[i + 3])) {
                fprintf(stderr, "bad --bootstrap/--tcp-relay\n");
                return 1;
            }
            i += 3;
        } else if (strcmp(argv[i], "--friend-request") == 0 && i + 2 < argc) {
            uint8_t addr[TOX_ADDRESS_SIZE];
            Tox_Err_Friend_Add ferr;
            if (hex_to_bytes(argv[i + 1], addr, sizeof addr) != 0 ||
                tox_friend_add(tox, addr, (const uint8_t *)argv[i + 2], strlen(argv[i + 2]), &ferr) == UINT32_MAX) {
                fprintf(stderr, "bad --friend-request\n");
                return 1;
            }
            i += 2;
        } else if (strcmp(argv[i], "--friend") == 0 && i + 1 < argc) {
            uint8_t pk[TOX_PUBLIC_KEY_SIZE];
            Tox_Err_Friend_Add ferr;
            if (hex_to_bytes(argv[i + 1], pk, sizeof pk) != 0 ||
                tox_friend_add_norequest(tox, pk, &ferr) == UINT32_MAX) {
                fprintf(stderr, "bad --friend\n");
                return 1;
            }
            i += 1;
        }
    }
    printf("READY\n");
    fflush(stdout);
    time_t start = time(NULL);
    Tox_Connection last = TOX_CONNECTION_NONE;
    int stdin_open = 1;
    char buf[8192];
    size_t used = 0;
    int quit = 0;
    while (!quit && (seconds == 0 || time(NULL) - start < seconds)) {
        tox_iterate(tox, NULL);
        Tox_Connection c = tox_self_get_connection_status(tox);
        if (c != last) {
            printf("CONNECTION %d\n", (int)c);
            fflush(stdout);
            last = c;
        }
        long wait_ms = iterate_ms > 0 ? iterate_ms : (long)tox_iteration_interval(tox);
        struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
        fd_set fds;
        FD_ZERO(&fds);
        if (stdin_open) {
            FD_SET(0, &fds);
        }
        int r = select(stdin_open ? 1 : 0, &fds, NULL, NULL, &tv);
        if (r > 0 && FD_ISSET(0, &fds)) {
            ssize_t got = read(0, buf + used, sizeof buf - 1 - used);
            if (got <= 0) {
                stdin_open = 0;
                continue;
            }
            used += (size_t)got;
            char *nl;
            while (!quit && (nl = memchr(buf, '\n', used)) != NULL) {
                *nl = '\0';
                if (nl > buf && nl[-1] == '\r') {
                    nl[-1] = '\0';
                }
                quit = run_command(tox, buf);
                fflush(stdout);
                size_t consumed = (size_t)(nl - buf) + 1;
                memmove(buf, nl + 1, used - consumed);
                used -= consumed;
            }
            if (used == sizeof buf - 1) {
                printf("ERROR line too long\n");
                fflush(stdout);
                used = 0;
            }
        }
    }
    tox_kill(tox);
    return 0;
}
