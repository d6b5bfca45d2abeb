/* What one page costs the kernel, by operation (bench/page_costs.py).
 *
 * Prints "key microseconds-per-page" lines, each the mean over --pages
 * pages (or 100 calls for getppid):
 *   anon_write_fault   first store to a fresh anonymous page
 *   anon_populate      the same pages made by mmap(MAP_POPULATE): no fault
 *                      entry and exit, the same allocation, clearing, PTE
 *   anon_read_fault    first load of an anonymous page: the shared zero
 *                      page mapped, nothing allocated
 *   file_read_fault    first load of each page of a page-cached file (the
 *                      kernel's fault-around maps a few pages per fault)
 *   file_populate      the same file mapped by mmap(MAP_POPULATE)
 *   anon_unmap         munmap of the written anonymous pages (freeing)
 *   file_unmap         munmap of the file's mapped pages
 *   getppid            one trivial system call
 * The file is argv[1] (read once first, so it is in the page cache).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PS 4096L

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void report(const char *key, double seconds, long count)
{
	printf("%s %.2f\n", key, seconds / count * 1e6);
}

static char *map_anon(long pages, int extra)
{
	char *p = mmap(NULL, pages * PS, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

int main(int argc, char **argv)
{
	long pages = argc > 2 ? atol(argv[2]) : 256;
	volatile char sink = 0;
	double t;
	if (argc < 2) {
		fprintf(stderr, "usage: page-costs FILE [PAGES]\n");
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0) {
		perror(argv[1]);
		return 1;
	}
	long fpages = st.st_size / PS;
	char buf[65536];
	while (read(fd, buf, sizeof buf) > 0)
		;

	t = now();
	char *a = map_anon(pages, 0);
	for (long i = 0; i < pages; i++)
		a[i * PS] = 1;
	report("anon_write_fault", now() - t, pages);

	t = now();
	char *b = map_anon(pages, MAP_POPULATE);
	report("anon_populate", now() - t, pages);

	t = now();
	char *z = map_anon(pages, 0);
	for (long i = 0; i < pages; i++)
		sink += z[i * PS];
	report("anon_read_fault", now() - t, pages);

	t = now();
	char *c = mmap(NULL, fpages * PS, PROT_READ, MAP_PRIVATE, fd, 0);
	for (long i = 0; i < fpages; i++)
		sink += c[i * PS];
	report("file_read_fault", now() - t, fpages);

	t = now();
	char *d = mmap(NULL, fpages * PS, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
	report("file_populate", now() - t, fpages);

	t = now();
	munmap(a, pages * PS);
	report("anon_unmap", now() - t, pages);

	t = now();
	munmap(c, fpages * PS);
	report("file_unmap", now() - t, fpages);

	t = now();
	for (int i = 0; i < 100; i++)
		getppid();
	report("getppid", now() - t, 100);

	munmap(b, pages * PS);
	munmap(z, pages * PS);
	munmap(d, fpages * PS);
	close(fd);
	return 0;
}
