/*
 * core_alloc.c - allocation that never returns NULL.
 *
 * Memory exhaustion and size overflow are treated as unrecoverable: the
 * process aborts with a message instead of limping on with a NULL pointer.
 * Per-connection memory is bounded by protocol limits elsewhere, so running
 * out here means the host is out of memory, not that a client misbehaved.
 */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void ATTR_NORETURN out_of_memory(size_t n)
{
	fprintf(stderr, "strata: out of memory allocating %zu bytes\n", n);
	abort();
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL)
		out_of_memory(n);
	return p;
}

void *xcalloc(size_t count, size_t size)
{
	void *p = calloc(count ? count : 1, size ? size : 1);
	if (p == NULL)
		out_of_memory(count * size);
	return p;
}

void *xreallocarray(void *p, size_t count, size_t size)
{
	size_t total;
	if (__builtin_mul_overflow(count, size, &total))
		panic("allocation size overflow (%zu x %zu)", count, size);
	void *np = realloc(p, total ? total : 1);
	if (np == NULL)
		out_of_memory(total);
	return np;
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *p = xmalloc(len + 1);
	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

char *xvasprintf(const char *fmt, va_list ap)
{
	char *out;
	if (vasprintf(&out, fmt, ap) < 0)
		out_of_memory(0);
	return out;
}

char *xasprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *out = xvasprintf(fmt, ap);
	va_end(ap);
	return out;
}
