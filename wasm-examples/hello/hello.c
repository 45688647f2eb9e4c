// The smallest Wasm pod: greets, echoes its arguments, exits 0.
#include <stdio.h>

int main(int argc, char **argv) {
    printf("Hello from a Wasm pod on Skiff!\n");
    for (int i = 1; i < argc; i++) {
        printf("arg %d: %s\n", i, argv[i]);
    }
    return 0;
}
