/* LD_PRELOAD shim for seg_bench.cpu_mask: the process, and every process it starts, sees a CPU
 * without AVX-512 (and, unless SEG_CPUID_KEEP_AVX_VNNI=1, without AVX-VNNI), so that every engine
 * (our kernels, numpy's BLAS, oneDNN, OpenVINO, MediaPipe's XNNPACK) picks the code path it would
 * pick on an AVX2-only CPU. How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, flag
 * cpuid_fault in /proc/cpuinfo) turns each CPUID instruction into a SIGSEGV; the handler runs the
 * real CPUID, clears the feature bits and steps over the instruction. Any other fault restores the
 * default action, so a real crash stays a crash.
 *
 * Limits: a program that installs its own SIGSEGV handler and later executes CPUID (Python's
 * faulthandler, on under pytest) dies on that CPUID. XGETBV is not intercepted (the OS still
 * saves the AVX-512 state); programs decide by the CPUID bits. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int keep_avx_vnni = 0;

static void real_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(subleaf));
}

/* Leaf 7 subleaf 0: EBX AVX512F, DQ, IFMA, PF, ER, CD, BW, VL; ECX VBMI, VBMI2, VNNI, BITALG,
 * VPOPCNTDQ; EDX 4VNNIW, 4FMAPS, VP2INTERSECT, FP16. Subleaf 1: EAX AVX-VNNI (4), AVX512_BF16 (5). */
static void hide(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
    if (leaf == 7 && subleaf == 0) {
        r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) |
                  (1u << 31));
        r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
    } else if (leaf == 7 && subleaf == 1) {
        r[0] &= ~(1u << 5);
        if (!keep_avx_vnni) r[0] &= ~(1u << 4);
    }
}

static void on_segv(int sig, siginfo_t* info, void* context) {
    (void)sig;
    (void)info;
    ucontext_t* uc = (ucontext_t*)context;
    const unsigned char* ip = (const unsigned char*)uc->uc_mcontext.gregs[REG_RIP];
    if (ip == NULL || ip[0] != 0x0f || ip[1] != 0xa2) { /* not CPUID: fault again, with the default action */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    const uint32_t leaf = (uint32_t)uc->uc_mcontext.gregs[REG_RAX];
    const uint32_t subleaf = (uint32_t)uc->uc_mcontext.gregs[REG_RCX];
    uint32_t r[4];
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    real_cpuid(leaf, subleaf, r);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    hide(leaf, subleaf, r);
    uc->uc_mcontext.gregs[REG_RAX] = r[0];
    uc->uc_mcontext.gregs[REG_RBX] = r[1];
    uc->uc_mcontext.gregs[REG_RCX] = r[2];
    uc->uc_mcontext.gregs[REG_RDX] = r[3];
    uc->uc_mcontext.gregs[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
    const char* keep = getenv("SEG_CPUID_KEEP_AVX_VNNI");
    keep_avx_vnni = keep != NULL && strcmp(keep, "1") == 0;
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_sigaction = on_segv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    /* kept by threads and fork, reset by exec: hence LD_PRELOAD, which every child inherits */
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        static const char message[] = "hide_cpu_features: CPUID faulting refused here: nothing is hidden\n";
        ssize_t ignored = write(2, message, sizeof(message) - 1);
        (void)ignored;
    }
}
