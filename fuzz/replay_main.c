/*
 * replay_main.c - runs saved fuzz inputs through a target without libFuzzer.
 *
 * Usage: fuzz_<target>_replay PATH...
 * Each PATH is a file or a directory; a directory's regular files (not its
 * subdirectories, not names starting with '.') are replayed in name order.
 * Every input goes through the same LLVMFuzzerTestOneInput that the
 * libFuzzer build runs, once, plus the empty input that libFuzzer always
 * tries first.  This is how `meson test` (and so `make test`) keeps every
 * seed and every crash input a fuzzer ever found passing, in the plain and
 * the sanitizer builds, with gcc, where libFuzzer is not available.
 *
 * Exit status: 0 when every input ran; 1 when a path cannot be read or a
 * directory holds no input (a corpus that silently vanished must fail the
 * test); a violated property aborts inside the target (non-zero, with the
 * report on stderr and the input's name printed just before it).
 *
 * Limits: an input file larger than REPLAY_MAX_INPUT is an error rather
 * than a large allocation; libFuzzer's own inputs are far smaller.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_MAX_INPUT (16u * 1024 * 1024)

/* Replays one file.  Returns false when it cannot be read. */
static bool replay_file(const char *path)
{
	struct stat sb;
	if (stat(path, &sb) != 0) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return false;
	}
	if ((uint64_t)sb.st_size > REPLAY_MAX_INPUT) {
		fprintf(stderr, "replay: %s: larger than %u bytes\n", path, REPLAY_MAX_INPUT);
		return false;
	}
	char *data;
	size_t len;
	if (!fs_read_file(path, &data, &len)) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return false;
	}
	/* Named before running, so that an abort inside the target is
	 * attributed to its input in the test log. */
	fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
	/* An exact-size copy: a read one past the end is caught by ASan. */
	uint8_t *copy = xmalloc(len > 0 ? len : 1);
	if (len > 0)
		memcpy(copy, data, len);
	free(data);
	LLVMFuzzerTestOneInput(copy, len);
	free(copy);
	return true;
}

static int skip_dot(const struct dirent *e)
{
	return e->d_name[0] != '.';
}

/* Replays a directory's files in name order.  *count receives the number
 * of inputs run. */
static bool replay_dir(const char *dir, size_t *count)
{
	struct dirent **names = NULL;
	int n = scandir(dir, &names, skip_dot, alphasort);
	if (n < 0) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return false;
	}
	bool ok = true;
	size_t run = 0;
	for (int i = 0; i < n; i++) {
		char *path = xasprintf("%s/%s", dir, names[i]->d_name);
		struct stat sb;
		if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) {
			if (replay_file(path))
				run++;
			else
				ok = false;
		}
		free(path);
		free(names[i]);
	}
	free(names);
	if (run == 0) {
		fprintf(stderr, "replay: %s: no input files\n", dir);
		ok = false;
	}
	*count += run;
	return ok;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE-OR-DIRECTORY...\n", argv[0]);
		return 2;
	}
	LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
	size_t count = 0;
	bool ok = true;
	for (int i = 1; i < argc; i++) {
		struct stat sb;
		if (stat(argv[i], &sb) != 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			ok = false;
		} else if (S_ISDIR(sb.st_mode)) {
			ok = replay_dir(argv[i], &count) && ok;
		} else if (replay_file(argv[i])) {
			count++;
		} else {
			ok = false;
		}
	}
	printf("replay: %zu inputs, %s\n", count, ok ? "all passed" : "some could not be read");
	return ok ? 0 : 1;
}
