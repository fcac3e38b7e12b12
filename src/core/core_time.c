/*
 * core_time.c - clocks, RFC 5322 dates and message ids.
 *
 * Message ids: 48-bit wall-clock milliseconds (big-endian) followed by 80
 * random bits from libsodium.  Collisions need two ids in the same
 * millisecond with the same 80 random bits; the index's UNIQUE constraint
 * turns even that into a temporary failure, never an overwrite.
 */
#include "core.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

uint64_t time_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t time_mono_ms(void)
{
	return time_mono_us() / 1000u;
}

void time_mono_deadline(uint64_t ms, struct timespec *ts)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += (time_t)(ms / 1000);
	ts->tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

uint64_t time_wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void time_rfc5322(int64_t t, char *out, size_t outlen)
{
	time_t tt = (time_t)t;
	struct tm tm;
	localtime_r(&tt, &tm);
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	long off = tm.tm_gmtoff / 60;
	char sign = off < 0 ? '-' : '+';
	if (off < 0)
		off = -off;
	snprintf(out, outlen, "%s, %d %s %04d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday],
		 tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
		 tm.tm_sec, sign, off / 60, off % 60);
}

void random_bytes(void *buf, size_t n)
{
	randombytes_buf(buf, n);
}

void msgid_new(struct msgid *id)
{
	uint64_t ms = time_wall_ms();
	for (int i = 0; i < 6; i++)
		id->b[i] = (uint8_t)(ms >> (40 - 8 * i));
	random_bytes(id->b + 6, MSGID_BYTES - 6);
}

uint64_t msgid_time_ms(const struct msgid *id)
{
	uint64_t ms = 0;
	for (int i = 0; i < 6; i++)
		ms = (ms << 8) | id->b[i];
	return ms;
}

static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* 128 bits as 26 base32 digits, most significant first (the first digit
 * carries only the top 3 bits), so text order equals byte order. */
void msgid_format(const struct msgid *id, char out[MSGID_TEXT_LEN + 1])
{
	for (int d = 0; d < MSGID_TEXT_LEN; d++) {
		int bit = 130 - 5 * (d + 1); /* lowest bit index of this digit, in a 130-bit field */
		unsigned v = 0;
		for (int k = 4; k >= 0; k--) {
			int pos = bit + k; /* 0 = least significant bit of the 128-bit number */
			unsigned b = 0;
			if (pos < 128)
				b = (id->b[15 - pos / 8] >> (pos % 8)) & 1u;
			v = (v << 1) | b;
		}
		out[d] = crockford[v];
	}
	out[MSGID_TEXT_LEN] = '\0';
}

bool msgid_parse(const char *text, struct msgid *id)
{
	if (strlen(text) != MSGID_TEXT_LEN)
		return false;
	memset(id->b, 0, sizeof(id->b));
	for (int d = 0; d < MSGID_TEXT_LEN; d++) {
		const char *p = strchr(crockford, text[d]);
		if (p == NULL || text[d] == '\0')
			return false;
		unsigned v = (unsigned)(p - crockford);
		int bit = 130 - 5 * (d + 1);
		for (int k = 0; k < 5; k++) {
			int pos = bit + k;
			if (!((v >> k) & 1u))
				continue;
			if (pos >= 128)
				return false;
			id->b[15 - pos / 8] |= (uint8_t)(1u << (pos % 8));
		}
	}
	return true;
}
