/*
 * Preloaded (LD_PRELOAD) into a benchmark's ONNX Runtime process, makes the x86 CPU look
 * AVX2-only to it: AVX-512 (and AMX) are cleared from what CPUID reports, so ONNX Runtime's
 * kernels (MLAS chooses them from CPUID at start) take their AVX2/FMA path, as on an
 * AVX2-only CPU. `make bench-worker ISA=avx2` runs the worker's AVX2 kernels against that.
 *
 * How: the kernel's CPUID faulting (arch_prctl ARCH_SET_CPUID; the CPU flag `cpuid_fault`,
 * on Intel cores and in KVM guests) turns every CPUID instruction of the process into a
 * SIGSEGV; the handler here runs the real CPUID with faulting off for the moment, clears
 * the bits, writes the registers and steps past the instruction. Threads and children
 * inherit the faulting; an exec clears it (the preload sets it again).
 *
 * Not a sandbox: XGETBV still reports the AVX-512 register state as enabled (what MLAS,
 * numpy and glibc read as "the OS supports it" — they require the CPUID bits as well), and
 * code that never asks CPUID keeps whatever it chose. If the process cannot enable
 * faulting, it stops at once (exit 3) rather than run unhidden.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* CPUID leaf 7, subleaf 0. EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30,
 * VL 31. ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14. EDX: 4VNNIW 2, 4FMAPS 3,
 * VP2INTERSECT 8, AMX-BF16 22, FP16 23, AMX-TILE 24, AMX-INT8 25. */
#define HIDE_7_0_EBX ((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | \
                      (1u << 28) | (1u << 30) | (1u << 31))
#define HIDE_7_0_ECX ((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14))
#define HIDE_7_0_EDX ((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | \
                      (1u << 24) | (1u << 25))
/* Leaf 7, subleaf 1, EAX: AVX512_BF16 5. */
#define HIDE_7_1_EAX (1u << 5)

static long cpuid_faulting(int on) {
    /* ARCH_SET_CPUID's argument: 1 lets CPUID run, 0 makes it fault. */
    return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
}

static void say(const char *text) {
    ssize_t ignored = write(2, text, strlen(text));
    (void)ignored;
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    (void)info;
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *at = (const unsigned char *)regs[REG_RIP];
    if (at[0] != 0x0f || at[1] != 0xa2) {
        /* A real fault: let it happen again, unhandled. */
        signal(sig, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX];
    uint32_t a, b, c, d;
    cpuid_faulting(0);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    cpuid_faulting(1);
    if (leaf == 7 && sub == 0) {
        b &= ~HIDE_7_0_EBX;
        c &= ~HIDE_7_0_ECX;
        d &= ~HIDE_7_0_EDX;
    } else if (leaf == 7 && sub == 1) {
        a &= ~HIDE_7_1_EAX;
    }
    /* CPUID writes the low halves and clears the high ones. */
    regs[REG_RAX] = a;
    regs[REG_RBX] = b;
    regs[REG_RCX] = c;
    regs[REG_RDX] = d;
    regs[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGSEGV, &action, NULL) != 0 || cpuid_faulting(1) != 0) {
        say("hide_avx512: this CPU or kernel has no CPUID faulting (cpuid_fault); "
            "cannot hide AVX-512\n");
        _exit(3);
    }
}
