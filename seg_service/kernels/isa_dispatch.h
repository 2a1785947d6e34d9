// Per-ISA compilation of the float kernels outside the binary convolutions (float_ops.cpp,
// input_prep.cpp, guided_filter.cpp): a loop body is written once as an inline function and
// wrapped in one function per ISA path with SEGK_TARGET, so the compiler vectorises each copy for
// its instruction set; for_current_isa picks the copy of the path in use (kernels.set_isa).
#pragma once

#include <string>

#include "kernels.h"

// Function-level target attribute (nothing off x86-64, where the scalar path is the only one chosen).
#if defined(__x86_64__) || defined(_M_X64)
#define SEGK_TARGET(isa) __attribute__((target(isa)))
#else
#define SEGK_TARGET(isa)
#endif

// For a body shared by the per-ISA wrappers: the compiler must inline it into each wrapper (a large
// body it would otherwise call, compiled once for the baseline ISA, which undoes the dispatch).
#define SEGK_ALWAYS_INLINE inline __attribute__((always_inline))

namespace segk {

// The variant compiled for the ISA path in use (the scalar one off x86-64).
template <typename Fn>
Fn for_current_isa([[maybe_unused]] Fn avx512, [[maybe_unused]] Fn avx2, Fn scalar) {
#if defined(__x86_64__) || defined(_M_X64)
    const std::string name = isa();
    if (name == "avx512") return avx512;
    if (name == "avx2") return avx2;
#endif
    return scalar;
}

}  // namespace segk
