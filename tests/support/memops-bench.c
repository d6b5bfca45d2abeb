/*
 * Guest-side costs the memory-op doorbell is meant to cut (bench/memops.py):
 * first touch of anonymous pages, read() of a page-cached file, a pipe.
 * Prints "key value" lines:
 *   fault_us     mean cost of a first touch of an anonymous page
 *   read_mbs     read() of a page-cached FILE_MIB MiB file, 64 KiB reads
 *   write_mbs    write() of that file (page cache, tmpfs or overlay upper)
 *   pipe_mbs     a pipe between two processes, 64 KiB writes
 * Usage: memops_bench [DIR [FILE_MIB [FAULT_PAGES]]]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65536

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

int main(int argc, char **argv)
{
	const char *dir = argc > 1 ? argv[1] : "/tmp";
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 16;
	size_t pages = argc > 3 ? strtoul(argv[3], NULL, 10) : 256;
	size_t size = mib << 20;
	char path[256];
	unsigned char *buf, *mem;
	double t;
	int fd, p[2];

	setvbuf(stdout, NULL, _IOLBF, 0);
	buf = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED)
		die("mmap");
	memset(buf, 0x5a, CHUNK);

	/* Anonymous page faults: one store per fresh page. */
	mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	t = now();
	for (size_t i = 0; i < pages; i++)
		mem[i * 4096] = 1;
	printf("fault_us %.1f\n", (now() - t) / pages * 1e6);
	munmap(mem, pages * 4096);

	/* Write the file (into the page cache), then read it back from there. */
	snprintf(path, sizeof(path), "%s/memops_bench.dat", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		die("open");
	t = now();
	for (size_t off = 0; off < size; off += CHUNK)
		if (write(fd, buf, CHUNK) != CHUNK)
			die("write");
	printf("write_mbs %.2f\n", size / (now() - t) / 1e6);
	t = now();
	for (size_t off = 0; off < size; off += CHUNK)
		if (pread(fd, buf, CHUNK, off) != CHUNK)
			die("read");
	printf("read_mbs %.2f\n", size / (now() - t) / 1e6);
	close(fd);
	unlink(path);

	/* Pipe: a child writes, we read. */
	if (pipe(p))
		die("pipe");
	t = now();
	if (fork() == 0) {
		close(p[0]);
		for (size_t off = 0; off < size / 4; off += CHUNK)
			if (write(p[1], buf, CHUNK) != CHUNK)
				_exit(1);
		_exit(0);
	}
	close(p[1]);
	{
		size_t got = 0;
		ssize_t k;

		while ((k = read(p[0], buf, CHUNK)) > 0)
			got += k;
		wait(NULL);
		printf("pipe_mbs %.2f\n", got / (now() - t) / 1e6);
	}
	return 0;
}
