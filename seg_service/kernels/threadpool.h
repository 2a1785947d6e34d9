// A small persistent thread pool for the kernels' parallel loops.
//
// Why not OpenMP: an OpenMP region waits at its end for every team thread, even one that has not
// been scheduled yet, so on a busy or shared CPU a two-thread call can stall for a whole scheduler
// time slice. Here items are claimed from atomic counters and a call returns as soon as all items
// are *done*; a helper that wakes late finds nothing left and goes back to sleep. Each thread takes
// the items of its own contiguous share first (the same share op after op, so it re-reads the rows
// it wrote from its own cache), then what is left of the others'. On Linux a helper woken from
// sleep (after a pause between frames) is kept off the caller's current CPU, so that it does not
// wait behind the caller there (threadpool.cpp, steer_sleeping_helpers). It also needs no
// compiler flag and survives fork() (a child process just runs its items on the calling thread).
#pragma once

#include <cstdint>
#include <type_traits>

namespace segk {

using ItemFn = void (*)(void* ctx, int64_t item);

// Runs fn(ctx, i) for every i in [0, items), on the calling thread plus up to threads - 1 helpers.
// Concurrent callers are safe: while the pool serves one call, others run on their own thread.
void parallel_for(int threads, int64_t items, ItemFn fn, void* ctx);

// Convenience wrapper for a lambda / functor.
template <typename F>
void parallel_for(int threads, int64_t items, F&& body) {
    parallel_for(
        threads, items, [](void* ctx, int64_t i) { (*static_cast<std::remove_reference_t<F>*>(ctx))(i); },
        const_cast<void*>(static_cast<const void*>(&body)));
}

// Number of processors this process may run on (sched affinity where available), >= 1.
int available_processors();

// Threads for a call of `work` units when each thread should get at least `min_per_thread` of them:
// 1 .. requested. A share per thread rather than one threshold for the whole call, so that a small
// op goes to two threads but not to sixteen. Between the calls of a frame the helpers are awake
// (they spin after each call), so the shares are sized to a few microseconds of work: below that,
// handing a helper its items costs as much as it saves.
inline int threads_for(double work, double min_per_thread, int requested) {
    const double fit = work / min_per_thread;
    if (requested <= 1 || fit < 2.0) return 1;
    return fit >= requested ? requested : static_cast<int>(fit);
}

}  // namespace segk
