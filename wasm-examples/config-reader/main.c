// Reads its configuration from the environment and from a configMap volume, and writes
// a report to a writable volume: what a typical edge workload does at start.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int read_file(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = 0;
    return 0;
}

int main(void) {
    const char *greeting = getenv("GREETING");
    const char *pod = getenv("POD_NAME");
    char message[256] = "";
    if (read_file("/config/message", message, sizeof message) != 0) {
        fprintf(stderr, "cannot read /config/message\n");
        return 2;
    }
    printf("greeting=%s pod=%s message=%s\n", greeting ? greeting : "", pod ? pod : "", message);
    FILE *out = fopen("/data/report.txt", "w");
    if (!out) {
        fprintf(stderr, "cannot write /data/report.txt\n");
        return 3;
    }
    fprintf(out, "%s, %s\n", greeting ? greeting : "", message);
    fclose(out);
    // The configMap volume is read-only.
    FILE *ro = fopen("/config/message", "w");
    printf("config volume writable: %s\n", ro ? "yes" : "no");
    if (ro) fclose(ro);
    return 0;
}
