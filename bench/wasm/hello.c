/* The benchmark's hello-world: a WASI command in C on wasi-libc, built by
 * `make bench-wasm` with Debian's clang (--target=wasm32-wasi), and the same
 * source built natively for the namespace-container comparison. */
#include <stdio.h>

int main(void) {
    puts("hello from wasm");
    return 0;
}
