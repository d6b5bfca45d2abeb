/*
 * avx-check: does a guest give user space vector state it can trust?
 *
 * Built static with gcc by tests/guest_cpu.rs and run inside a guest. It
 * decides between an AVX2 and an SSE code path from CPUID and XGETBV itself,
 * the way Go's runtime or a numeric library does (not through glibc), then
 * runs that path in two processes at once, pinned to one CPU so that they
 * interleave: each holds its own values in vector registers across
 * sched_yield() and checks them afterwards. A kernel that does not preserve
 * the registers the program was told it may use shows up as a wrong result.
 *
 * Output, one "key=value ..." line each:
 *   cpuid ...        what user-mode CPUID and XGETBV report
 *   cpuid_cost ns=N  the mean cost of one user-mode CPUID
 *   nocpuid ...      whether arch_prctl(ARCH_SET_CPUID, 0) still makes
 *                    CPUID raise SIGSEGV (the task asked for it)
 *   child ...        per process: the path, iterations, first wrong lane
 * Exit status 0 only when both processes saw only right results.
 *
 *   avx-check [ITERATIONS]         path chosen from CPUID (OSXSAVE, XCR0,
 *                                  AVX, AVX2), as Go's runtime does
 *   avx-check --lax [ITERATIONS]   the same without the OSXSAVE check
 *   avx-check --force-avx2 [ITER]  AVX2 path whatever CPUID says (shows what
 *                                  a program built for AVX2 without checking
 *                                  meets; it faults with SIGILL where the
 *                                  CPU really lacks AVX2)
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4])
{
	__asm__ volatile("cpuid"
			 : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
			 : "a"(leaf), "c"(sub));
}

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;

	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * The decision a CPUID-checking program makes: AVX2 only with OS support
 * (OSXSAVE, then XCR0 says the OS saves XMM and YMM state), as Go's runtime
 * and glibc check. "lax" leaves out the OSXSAVE check before XGETBV, as
 * some hand-written detection code does: on PVM XGETBV works in guest user
 * mode whatever OSXSAVE says, and returns the host's XCR0.
 */
static int avx2_usable(int lax)
{
	uint32_t r0[4], r1[4], r7[4];

	cpuid(0, 0, r0);
	if (r0[0] < 7)
		return 0;
	cpuid(1, 0, r1);
	if (!lax && !(r1[2] & (1u << 27))) /* OSXSAVE */
		return 0;
	if (!(r1[2] & (1u << 28))) /* AVX */
		return 0;
	if ((xgetbv0() & 6) != 6)
		return 0;
	cpuid(7, 0, r7);
	return !!(r7[1] & (1u << 5)); /* AVX2 */
}

static void report_cpuid(void)
{
	uint32_t r0[4], r1[4], r7[4] = { 0 }, rd[4] = { 0 };
	int osxsave;

	cpuid(0, 0, r0);
	cpuid(1, 0, r1);
	if (r0[0] >= 7)
		cpuid(7, 0, r7);
	if (r0[0] >= 0xd)
		cpuid(0xd, 0, rd);
	osxsave = !!(r1[2] & (1u << 27));
	printf("cpuid xsave=%d osxsave=%d avx=%d fma=%d avx2=%d avx512f=%d "
	       "leaf7_ebx=%08x leafd_eax=%08x xcr0=%s%llx avx2_usable=%d\n",
	       !!(r1[2] & (1u << 26)), osxsave, !!(r1[2] & (1u << 28)),
	       !!(r1[2] & (1u << 12)), !!(r7[1] & (1u << 5)),
	       !!(r7[1] & (1u << 16)), r7[1], rd[0], osxsave ? "" : "unread:",
	       osxsave ? (unsigned long long)xgetbv0() : 0ULL, avx2_usable(0));
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void report_cpuid_cost(void)
{
	uint32_t r[4];
	uint64_t start = now_ns();
	int i, n = 50;

	for (i = 0; i < n; i++)
		cpuid(1, 0, r);
	printf("cpuid_cost ns=%llu\n",
	       (unsigned long long)((now_ns() - start) / n));
}

/* A task that asked for CPUID faulting must still get its SIGSEGV. */
static void report_nocpuid(void)
{
	pid_t pid = fork();
	int status;

	if (pid == 0) {
		uint32_t r[4];

		if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0)
			_exit(3);
		cpuid(0, 0, r);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	if (WIFEXITED(status) && WEXITSTATUS(status) == 3)
		printf("nocpuid unsupported\n");
	else if (WIFSIGNALED(status))
		printf("nocpuid signal=%d\n", WTERMSIG(status));
	else
		printf("nocpuid exit=%d\n", WEXITSTATUS(status));
}

/*
 * One iteration: ymm0 = v, ymm1 = v + v, sched_yield() (the other process
 * runs on this CPU meanwhile), out = ymm0 + ymm1 = 3v. Written in assembly
 * so that the values really stay in registers across the system call (the
 * C ABI would spill them around a call).
 */
static void avx2_step(const uint32_t in[8], uint32_t out[8])
{
	long ax = SYS_sched_yield;

	__asm__ volatile("vmovdqu (%[in]), %%ymm0\n\t"
			 "vpaddd %%ymm0, %%ymm0, %%ymm1\n\t"
			 "syscall\n\t"
			 "vpaddd %%ymm1, %%ymm0, %%ymm2\n\t"
			 "vmovdqu %%ymm2, (%[out])\n\t"
			 "vzeroupper"
			 : "+a"(ax)
			 : [in] "r"(in), [out] "r"(out)
			 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2");
}

/* The same with 128-bit SSE registers: 4 lanes. */
static void sse_step(const uint32_t in[8], uint32_t out[8])
{
	long ax = SYS_sched_yield;

	__asm__ volatile("movdqu (%[in]), %%xmm0\n\t"
			 "movdqa %%xmm0, %%xmm1\n\t"
			 "paddd %%xmm0, %%xmm1\n\t"
			 "syscall\n\t"
			 "movdqa %%xmm1, %%xmm2\n\t"
			 "paddd %%xmm0, %%xmm2\n\t"
			 "movdqu %%xmm2, (%[out])"
			 : "+a"(ax)
			 : [in] "r"(in), [out] "r"(out)
			 : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2");
}

static int child(int id, int avx2, int iterations)
{
	uint32_t in[8], out[8];
	int lanes = avx2 ? 8 : 4;
	int i, lane;

	for (i = 0; i < iterations; i++) {
		/* Distinct per process, per lane and per iteration. */
		for (lane = 0; lane < 8; lane++)
			in[lane] = (uint32_t)id << 24 | (uint32_t)lane << 16 |
				   (uint32_t)i;
		memset(out, 0, sizeof(out));
		if (avx2)
			avx2_step(in, out);
		else
			sse_step(in, out);
		for (lane = 0; lane < lanes; lane++) {
			if (out[lane] != 3 * in[lane]) {
				printf("child id=%d path=%s wrong iteration=%d "
				       "lane=%d got=%08x want=%08x\n",
				       id, avx2 ? "avx2" : "sse", i, lane,
				       out[lane], 3 * in[lane]);
				return 1;
			}
		}
	}
	printf("child id=%d path=%s ok iterations=%d\n", id,
	       avx2 ? "avx2" : "sse", iterations);
	return 0;
}

int main(int argc, char **argv)
{
	int force = argc > 1 && strcmp(argv[1], "--force-avx2") == 0;
	int lax = argc > 1 && strcmp(argv[1], "--lax") == 0;
	int opt = force || lax;
	int iterations = argc > 1 + opt ? atoi(argv[1 + opt]) : 2000;
	int avx2, id, failed = 0;
	cpu_set_t one;
	pid_t pids[2];

	setvbuf(stdout, NULL, _IOLBF, 0);
	report_cpuid();
	report_cpuid_cost();
	report_nocpuid();
	avx2 = force || avx2_usable(lax);

	/* Both processes on one CPU, so they interleave at each yield. */
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	if (sched_setaffinity(0, sizeof(one), &one) != 0)
		perror("sched_setaffinity");
	for (id = 1; id <= 2; id++) {
		pids[id - 1] = fork();
		if (pids[id - 1] < 0) {
			perror("fork");
			return 2;
		}
		if (pids[id - 1] == 0)
			_exit(child(id, avx2, iterations));
	}
	for (id = 0; id < 2; id++) {
		int status;

		waitpid(pids[id], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			if (WIFSIGNALED(status))
				printf("child id=%d signal=%d\n", id + 1,
				       WTERMSIG(status));
			failed = 1;
		}
	}
	printf("result %s\n", failed ? "wrong" : "ok");
	return failed;
}
