/*
 * Checks the guest kernel's user copies byte for byte: read/write through
 * files and pipes at every alignment and across page boundaries, buffers
 * whose tail is unmapped (EFAULT and exact partial counts), copy-on-write
 * after fork, and read() into a shared file mapping.  With hull's
 * memory-op doorbell (docs/guest-kernel.md) these copies go through the
 * VMM; the results must be exactly those of the kernel's own copy loops.
 *
 * Prints one "ok NAME ..." line per check (with the counts it saw) and
 * "memops_check: all ok" at the end; exits 1 with "FAIL ..." on the first
 * difference.  Built with gcc -static by tests/memops.rs and bench/memops.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096

static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("FAIL ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	exit(1);
}

static unsigned char pat(size_t i, unsigned seed)
{
	return (unsigned char)((i * 131 + (i >> 12) * 7 + seed) & 0xff);
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pat(i, seed);
}

static void expect(const unsigned char *p, size_t n, unsigned seed, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pat(i, seed))
			fail("%s: byte %zu is %#x, want %#x", what, i, p[i], pat(i, seed));
}

static void *map(size_t n)
{
	void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		fail("mmap: %s", strerror(errno));
	return p;
}

static int tmpfile_with(const char *path, size_t n, unsigned seed)
{
	unsigned char *buf = map(n + PAGE);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	if (fd < 0)
		fail("open %s: %s", path, strerror(errno));
	fill(buf, n, seed);
	if (write(fd, buf, n) != (ssize_t)n)
		fail("write %s", path);
	munmap(buf, n + PAGE);
	return fd;
}

/* Writes and reads back @n bytes at user offsets @woff/@roff. */
static void round_trip(const char *dir, size_t n, size_t woff, size_t roff)
{
	char path[256];
	size_t len = n + 2 * PAGE;
	unsigned char *w = map(len), *r = map(len);
	unsigned seed = (unsigned)(n + woff * 3 + roff);
	int fd;

	snprintf(path, sizeof(path), "%s/rt", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		fail("open %s: %s", path, strerror(errno));
	fill(w + woff, n, seed);
	if (pwrite(fd, w + woff, n, 0) != (ssize_t)n)
		fail("pwrite %zu at +%zu", n, woff);
	memset(r, 0xee, len);
	if (pread(fd, r + roff, n, 0) != (ssize_t)n)
		fail("pread %zu at +%zu", n, roff);
	expect(r + roff, n, seed, "round trip");
	for (size_t i = 0; i < roff; i++)
		if (r[i] != 0xee)
			fail("round trip %zu: byte before the buffer changed", n);
	for (size_t i = roff + n; i < len; i++)
		if (r[i] != 0xee)
			fail("round trip %zu at +%zu: byte %zu after the buffer changed", n, roff, i - roff - n);
	close(fd);
	munmap(w, len);
	munmap(r, len);
}

static void check_round_trips(const char *dir)
{
	static const size_t sizes[] = { 1, 63, 64, 255, 256, 257, 1000, 4095, 4096, 4097,
					8192, 12289, 65536, 65536 + 4097, 300000 };
	static const size_t offs[] = { 0, 1, 100, 4095 };

	for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
		for (size_t a = 0; a < 4; a++)
			round_trip(dir, sizes[s], offs[a], offs[3 - a]);
	printf("ok round trips (15 sizes x 4 alignments)\n");
}

/* read()/write() with a buffer whose tail is unmapped. */
static void check_unmapped_tail(const char *dir)
{
	char path[256];
	size_t n = 6 * PAGE;
	unsigned char *buf = map(4 * PAGE);
	ssize_t got;
	int fd;

	snprintf(path, sizeof(path), "%s/tail", dir);
	fd = tmpfile_with(path, n, 9);
	munmap(buf + 2 * PAGE, 2 * PAGE);
	memset(buf, 0, 2 * PAGE);

	got = pread(fd, buf + 100, n, 0);
	if (got != 2 * PAGE - 100)
		fail("read into a buffer with an unmapped tail: %zd, want %d", got, 2 * PAGE - 100);
	expect(buf + 100, got, 9, "partial read");
	printf("ok partial read %zd\n", got);

	got = pread(fd, buf + 2 * PAGE, 1000, 0);
	if (got != -1 || errno != EFAULT)
		fail("read into an unmapped buffer: %zd (%s), want EFAULT", got, strerror(errno));
	printf("ok read EFAULT\n");

	/* write() from a buffer whose tail is unmapped: the mapped part lands. */
	fill(buf, 2 * PAGE, 21);
	got = pwrite(fd, buf + 100, n, 0);
	printf("ok partial write %zd\n", got);
	if (got != 2 * PAGE - 100)
		fail("write from a buffer with an unmapped tail: %zd, want %d", got, 2 * PAGE - 100);
	{
		unsigned char *back = map(n);

		if (pread(fd, back, n, 0) != (ssize_t)n)
			fail("read back");
		for (size_t i = 0; i < (size_t)got; i++)
			if (back[i] != pat(i + 100, 21))
				fail("partial write: byte %zu", i);
		for (size_t i = got; i < n; i++)
			if (back[i] != pat(i, 9))
				fail("partial write: byte %zu past the end changed", i);
		munmap(back, n);
	}
	got = pwrite(fd, buf + 2 * PAGE, 1000, 0);
	if (got != -1 || errno != EFAULT)
		fail("write from an unmapped buffer: %zd, want EFAULT", got);
	printf("ok write EFAULT\n");

	/* A read-only destination is EFAULT too (the kernel may not write it). */
	if (mprotect(buf, PAGE, PROT_READ))
		fail("mprotect");
	got = pread(fd, buf, 1000, 0);
	if (got != -1 || errno != EFAULT)
		fail("read into a read-only buffer: %zd, want EFAULT", got);
	printf("ok read-only EFAULT\n");
	close(fd);
	munmap(buf, 2 * PAGE);
}

/* Pipe: 1 MiB through 64 KiB writes, read in odd chunks. */
static void check_pipe(void)
{
	size_t n = 1 << 20;
	unsigned char *w = map(n), *r = map(n + PAGE);
	int p[2];
	pid_t pid;
	size_t got = 0;

	fill(w, n, 5);
	if (pipe(p))
		fail("pipe");
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		for (size_t off = 0; off < n; off += 65536)
			if (write(p[1], w + off, 65536) != 65536)
				_exit(2);
		_exit(0);
	}
	close(p[1]);
	while (got < n) {
		ssize_t k = read(p[0], r + 7 + got, 50000);

		if (k <= 0)
			fail("pipe read %zd at %zu", k, got);
		got += k;
	}
	expect(r + 7, n, 5, "pipe");
	{
		int st;

		waitpid(pid, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st))
			fail("pipe writer");
	}
	close(p[0]);
	printf("ok pipe %zu bytes\n", n);
}

/* Copy-on-write after fork: read() into a page shared with the parent. */
static void check_cow(const char *dir)
{
	char path[256];
	size_t n = 8 * PAGE;
	unsigned char *buf = map(n);
	int fd, st;
	pid_t pid;

	snprintf(path, sizeof(path), "%s/cow", dir);
	fd = tmpfile_with(path, n, 77);
	fill(buf, n, 3);
	pid = fork();
	if (pid == 0) {
		/* The child's pages are write-protected, shared with the parent. */
		expect(buf, n, 3, "child before");
		if (pread(fd, buf + 10, n - 20, 0) != (ssize_t)(n - 20))
			_exit(2);
		for (size_t i = 0; i < n - 20; i++)
			if (buf[10 + i] != pat(i, 77))
				_exit(3);
		/* And the parent reads the same file into its copy. */
		_exit(0);
	}
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		fail("cow child status %#x", st);
	expect(buf, n, 3, "parent after the child wrote its copy");
	if (pread(fd, buf + 1, n - 2, 0) != (ssize_t)(n - 2))
		fail("cow parent read");
	expect(buf + 1, n - 2, 77, "parent read");
	close(fd);
	munmap(buf, n);
	printf("ok copy-on-write\n");
}

/* read() into a shared file mapping: the data must reach the file. */
static void check_shared_mapping(const char *dir)
{
	char src[256], dst[256];
	size_t n = 4 * PAGE;
	unsigned char *m, *back = map(n);
	int fs, fd;

	snprintf(src, sizeof(src), "%s/src", dir);
	snprintf(dst, sizeof(dst), "%s/dst", dir);
	fs = tmpfile_with(src, n, 44);
	fd = tmpfile_with(dst, n, 1);
	m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		fail("mmap shared");
	expect(m, n, 1, "shared mapping before");	/* clean, read-faulted */
	if (pread(fs, m, n, 0) != (ssize_t)n)
		fail("read into shared mapping");
	if (msync(m, n, MS_SYNC))
		fail("msync");
	munmap(m, n);
	if (pread(fd, back, n, 0) != (ssize_t)n)
		fail("read back dst");
	expect(back, n, 44, "file behind the shared mapping");
	close(fs);
	close(fd);
	munmap(back, n);
	printf("ok shared mapping\n");
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";

	setvbuf(stdout, NULL, _IOLBF, 0);
	check_round_trips(dir);
	check_unmapped_tail(dir);
	check_pipe();
	check_cow(dir);
	check_shared_mapping(dir);
	printf("memops_check: all ok\n");
	return 0;
}
