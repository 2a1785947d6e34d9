// How long a cache line takes to travel between two CPUs and back (cpu_round_trip_ns).
//
// Every parallel call of the kernels hands items to a helper thread and waits for its "done",
// and the helper reads rows the caller wrote: each is a cache line moving between two CPUs. On a
// virtual machine the host decides where the guest's CPUs run, and it moves them: on this
// project's 2-core cloud VM the same round trip measured 140 ns (two cores of one die) and
// 400-1,900 ns (different dies) within minutes, and with the slow placement `predict` of the person
// model ran slower on two threads than on one. Benchmarks print this figure so that a two-thread
// time can be read with it (docs/benchmarks.md).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "kernels.h"

namespace segk {

double cpu_round_trip_ns(int64_t rounds, int batches) {
#if defined(__linux__)
    if (rounds < 1 || batches < 1) return std::nan("");
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (pthread_getaffinity_np(pthread_self(), sizeof(allowed), &allowed) != 0) return std::nan("");
    const int here = sched_getcpu();
    int other = -1;
    for (int cpu = 0; cpu < CPU_SETSIZE && other < 0; ++cpu)
        if (cpu != here && CPU_ISSET(cpu, &allowed)) other = cpu;
    if (here < 0 || other < 0) return std::nan("");  // one CPU: nothing to measure

    // The caller is held to its CPU while it measures, then gets its own mask back.
    auto pin = [](int cpu) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
    };
    if (!pin(here)) return std::nan("");
    // Its own cache line, so that nothing else shares it.
    struct alignas(64) Line {
        std::atomic<int64_t> value{0};
    };
    Line line;
    std::atomic<bool> ready{false};
    const int64_t total = rounds * batches;
    std::thread echo([&] {
        pin(other);
        ready.store(true, std::memory_order_release);
        // Answers every odd value with the next even one.
        for (int64_t i = 0; i < total; ++i) {
            const int64_t want = 2 * i + 1;
            while (line.value.load(std::memory_order_acquire) != want) {
            }
            line.value.store(want + 1, std::memory_order_release);
        }
    });
    while (!ready.load(std::memory_order_acquire)) {
    }
    std::vector<double> per_batch;
    int64_t next = 1;
    for (int b = 0; b < batches; ++b) {
        const auto start = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < rounds; ++i, next += 2) {
            line.value.store(next, std::memory_order_release);
            while (line.value.load(std::memory_order_acquire) != next + 1) {
            }
        }
        const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
        per_batch.push_back(took.count() / static_cast<double>(rounds));
    }
    echo.join();
    pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
    std::sort(per_batch.begin(), per_batch.end());
    return per_batch[per_batch.size() / 2];
#else
    (void)rounds;
    (void)batches;
    return std::nan("");
#endif
}

}  // namespace segk
