// Two containers of one pod sharing an emptyDir: `write` leaves a note in /shared,
// `read` waits for it and prints it.
#include <stdio.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "write") == 0) {
        // Write then rename, so the reader never sees a half-written note.
        FILE *f = fopen("/shared/note.tmp", "w");
        if (!f) { fprintf(stderr, "cannot write /shared/note.tmp\n"); return 1; }
        fprintf(f, "written by the writer container\n");
        fclose(f);
        if (rename("/shared/note.tmp", "/shared/note.txt") != 0) { fprintf(stderr, "cannot rename the note\n"); return 1; }
        printf("note written\n");
        return 0;
    }
    if (strcmp(mode, "read") == 0) {
        struct timespec pause = {0, 50 * 1000 * 1000};
        for (int i = 0; i < 400; i++) {
            FILE *f = fopen("/shared/note.txt", "r");
            if (f) {
                char line[128] = "";
                int got = fgets(line, sizeof line, f) != NULL;
                fclose(f);
                if (got) {
                    printf("read: %s", line);
                    return 0;
                }
            }
            nanosleep(&pause, NULL);
        }
        fprintf(stderr, "no note after 20s\n");
        return 1;
    }
    fprintf(stderr, "usage: shared-volume write|read\n");
    return 2;
}
