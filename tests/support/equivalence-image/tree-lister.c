/*
 * Lists a file tree for tests/prepare_equivalence.rs, from inside a
 * container: one line per entry under ROOT (ROOT itself as "/"), not
 * crossing into other mounts (/proc, /sys, /dev), tab-separated:
 *
 *   path type mode uid gid size nlink mtime target xattrs
 *
 * type: d f l p c b s; mode: octal permission bits with setuid, setgid,
 * sticky; size, nlink and mtime are "-" for directories (they depend on
 * the filesystem, not the image); target is the symlink's, else "-";
 * xattrs: name=hexvalue pairs sorted by name, comma-separated, or "-".
 * Busybox cannot read xattrs, hence this helper; it is built static
 * (gcc -static) so it needs nothing from the image.
 *
 *   tree-lister ROOT
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static dev_t root_dev;

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void fail(const char *what, const char *path)
{
	fprintf(stderr, "tree-lister: %s %s: ", what, path);
	perror(NULL);
	exit(1);
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
