/*
 * Lists a file tree for tests/prepare_equivalence.rs, from inside a
 * container: one line per entry under ROOT (ROOT itself as "/"), not
 * crossing into other mounts (/proc, /sys, /dev), tab-separated:
 *
 *   path type mode uid gid size nlink mtime target xattrs sha256
 *
 * type: d f l p c b s; mode: octal permission bits with setuid, setgid,
 * sticky; size, nlink and mtime are "-" for directories (they depend on
 * the filesystem, not the image); target is the symlink's, else "-";
 * xattrs: name=hexvalue pairs sorted by name, comma-separated, or "-";
 * sha256 of a regular file's content, else "-".
 * Busybox cannot read xattrs, hence this helper; it is built static
 * (gcc -static) so it needs nothing from the image, and hashes files
 * itself so the image needs no busybox (guest I/O is slow: every MB of
 * image costs many seconds to prepare).
 *
 *   tree-lister ROOT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static dev_t root_dev;

static void fail(const char *what, const char *path)
{
	fprintf(stderr, "tree-lister: %s %s: ", what, path);
	perror(NULL);
	exit(1);
}

/* SHA-256 (FIPS 180-4). Round constants: the first 32 bits of the
 * fractional parts of the cube roots of the first 64 primes. */
static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

struct sha256 {
	uint32_t h[8];
	unsigned char block[64];
	size_t used;
	uint64_t bytes;
};

static uint32_t ror(uint32_t x, int n)
{
	return (x >> n) | (x << (32 - n));
}

static void sha256_block(struct sha256 *c, const unsigned char *p)
{
	uint32_t w[64], v[8];
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, c->h, sizeof(v));
	for (int i = 0; i < 64; i++) {
		uint32_t e = v[4], a = v[0];
		uint32_t t1 = v[7] + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & v[5]) ^ (~e & v[6])) +
			      K[i] + w[i];
		uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & v[1]) ^ (a & v[2]) ^ (v[1] & v[2]));
		memmove(v + 1, v, 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		c->h[i] += v[i];
}

static void sha256_init(struct sha256 *c)
{
	/* The first 32 bits of the fractional parts of the square roots of
	 * the first 8 primes. */
	static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memcpy(c->h, h0, sizeof(h0));
	c->used = 0;
	c->bytes = 0;
}

static void sha256_update(struct sha256 *c, const unsigned char *p, size_t n)
{
	c->bytes += n;
	while (n) {
		size_t take = 64 - c->used < n ? 64 - c->used : n;
		memcpy(c->block + c->used, p, take);
		c->used += take;
		p += take;
		n -= take;
		if (c->used == 64) {
			sha256_block(c, c->block);
			c->used = 0;
		}
	}
}

static void sha256_print(struct sha256 *c)
{
	uint64_t bits = c->bytes * 8;
	unsigned char pad[72] = {0x80};
	size_t padlen = (c->used < 56 ? 56 : 120) - c->used;
	for (int i = 0; i < 8; i++)
		pad[padlen + i] = bits >> (56 - 8 * i);
	sha256_update(c, pad, padlen + 8);
	putchar('\t');
	for (int i = 0; i < 8; i++)
		printf("%08x", c->h[i]);
}

static void print_sha256(const char *path)
{
	static unsigned char buf[1 << 20];
	struct sha256 c;
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		fail("open", path);
	sha256_init(&c);
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0)
			fail("read", path);
		if (n == 0)
			break;
		sha256_update(&c, buf, n);
	}
	close(fd);
	sha256_print(&c);
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_xattrs(const char *path)
{
	static char names[65536];
	static unsigned char value[65536];
	char *list[1024];
	size_t n = 0;
	ssize_t len = llistxattr(path, names, sizeof(names));
	if (len < 0)
		fail("llistxattr", path);
	for (char *p = names; p < names + len && n < 1024; p += strlen(p) + 1)
		list[n++] = p;
	if (n == 0) {
		fputs("\t-", stdout);
		return;
	}
	qsort(list, n, sizeof(list[0]), by_name);
	for (size_t i = 0; i < n; i++) {
		ssize_t vlen = lgetxattr(path, list[i], value, sizeof(value));
		if (vlen < 0)
			fail("lgetxattr", path);
		printf("%s%s=", i ? "," : "\t", list[i]);
		for (ssize_t j = 0; j < vlen; j++)
			printf("%02x", value[j]);
	}
}

static void print_entry(const char *path, const char *shown, const struct stat *st)
{
	char type = S_ISDIR(st->st_mode)    ? 'd'
		    : S_ISREG(st->st_mode)  ? 'f'
		    : S_ISLNK(st->st_mode)  ? 'l'
		    : S_ISFIFO(st->st_mode) ? 'p'
		    : S_ISCHR(st->st_mode)  ? 'c'
		    : S_ISBLK(st->st_mode)  ? 'b'
					    : 's';
	printf("%s\t%c\t%04o\t%u\t%u", shown, type, st->st_mode & 07777, st->st_uid, st->st_gid);
	if (type == 'd')
		fputs("\t-\t-\t-", stdout);
	else
		printf("\t%lld\t%lu\t%lld", (long long)st->st_size, (unsigned long)st->st_nlink,
		       (long long)st->st_mtime);
	if (type == 'l') {
		char target[PATH_MAX + 1];
		ssize_t len = readlink(path, target, PATH_MAX);
		if (len < 0)
			fail("readlink", path);
		target[len] = 0;
		printf("\t%s", target);
	} else {
		fputs("\t-", stdout);
	}
	print_xattrs(path);
	if (type == 'f')
		print_sha256(path);
	else
		fputs("\t-", stdout);
	putchar('\n');
}

static void walk(const char *dir, const char *shown)
{
	DIR *d = opendir(dir);
	if (!d)
		fail("opendir", dir);
	size_t n = 0, cap = 64;
	char **names = malloc(cap * sizeof(*names));
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (n == cap)
			names = realloc(names, (cap *= 2) * sizeof(*names));
		names[n++] = strdup(e->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), by_name);
	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX], child[PATH_MAX];
		snprintf(path, sizeof(path), "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/",
			 names[i]);
		snprintf(child, sizeof(child), "%s/%s", strcmp(shown, "/") ? shown : "", names[i]);
		struct stat st;
		if (lstat(path, &st) < 0)
			fail("lstat", path);
		if (S_ISDIR(st.st_mode) && st.st_dev != root_dev)
			continue; /* another mount */
		print_entry(path, child, &st);
		if (S_ISDIR(st.st_mode))
			walk(path, child);
		free(names[i]);
	}
	free(names);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fputs("usage: tree-lister ROOT\n", stderr);
		return 2;
	}
	struct stat st;
	if (lstat(argv[1], &st) < 0)
		fail("lstat", argv[1]);
	root_dev = st.st_dev;
	print_entry(argv[1], "/", &st);
	walk(argv[1], "/");
	return fflush(stdout) ? 1 : 0;
}
