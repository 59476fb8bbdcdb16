/* A WASI command on wasi-libc (built by crates/cli/tests/wasm.rs with
 * Debian's clang): prints its arguments and $GREETING, reads /etc/motd from
 * the rootfs, writes /data/out through a bind mount, and exits with 5. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        printf("arg %s\n", argv[i]);
    const char *g = getenv("GREETING");
    printf("env %s\n", g ? g : "(none)");
    char line[128] = "";
    FILE *f = fopen("/etc/motd", "r");
    if (!f || !fgets(line, sizeof line, f)) {
        perror("/etc/motd");
        return 1;
    }
    fclose(f);
    printf("motd %s", line);
    FILE *o = fopen("/data/out", "w");
    if (!o) {
        perror("/data/out");
        return 2;
    }
    fputs("written by wasm\n", o);
    fclose(o);
    return 5;
}
