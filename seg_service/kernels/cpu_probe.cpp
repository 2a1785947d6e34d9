// How long a cache line takes to travel between two CPUs and back (cpu_round_trip_ns).
//
// Every parallel call of the kernels hands items to a helper thread and waits for its "done",
// and the helper reads rows the caller wrote: each is a cache line moving between two CPUs. On a
// virtual machine the host decides where the guest's CPUs run, and it moves them: on this
// project's 2-core cloud VM the same round trip measured 70-140 ns (two cores of one die) and
// 360-1,900 ns (different dies) within minutes, and with the slow placement `predict` of the person
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

    auto pin = [](int cpu) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
    };
    // Its own cache line, so that nothing else shares it.
    struct alignas(64) Line {
        std::atomic<int64_t> value{0};
    };
    Line line;
    std::atomic<int> echo_state{0};  // 1: on its CPU, 2: could not get there (both would share one)
    std::atomic<bool> stop{false};
    // The echo thread starts before the caller is pinned, so it never waits for the caller's CPU.
    std::thread echo([&] {
        if (!pin(other)) {
            echo_state.store(2, std::memory_order_release);
            return;
        }
        echo_state.store(1, std::memory_order_release);
        // Answers every odd value with the next even one.
        for (int64_t want = 1;; want += 2) {
            while (line.value.load(std::memory_order_acquire) != want)
                if (stop.load(std::memory_order_relaxed)) return;
            line.value.store(want + 1, std::memory_order_release);
        }
    });
    while (echo_state.load(std::memory_order_acquire) == 0) {
    }
    // The caller is held to its CPU while it measures, then gets its own mask back.
    const bool pinned = pin(here);
    std::vector<double> per_batch;
    if (pinned && echo_state.load() == 1) {
        // A few batches at most per second: on a CPU shared with busy processes a round trip can
        // wait for a time slice, and the probe must not hold up whoever asked.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        int64_t next = 1;
        for (int b = 0; b < batches && (b == 0 || std::chrono::steady_clock::now() < deadline); ++b) {
            const auto start = std::chrono::steady_clock::now();
            for (int64_t i = 0; i < rounds; ++i, next += 2) {
                line.value.store(next, std::memory_order_release);
                while (line.value.load(std::memory_order_acquire) != next + 1) {
                }
            }
            const std::chrono::duration<double, std::nano> took = std::chrono::steady_clock::now() - start;
            per_batch.push_back(took.count() / static_cast<double>(rounds));
        }
    }
    stop.store(true, std::memory_order_relaxed);
    echo.join();
    pthread_setaffinity_np(pthread_self(), sizeof(allowed), &allowed);
    if (per_batch.empty()) return std::nan("");
    std::sort(per_batch.begin(), per_batch.end());
    return per_batch[per_batch.size() / 2];
#else
    (void)rounds;
    (void)batches;
    return std::nan("");
#endif
}

}  // namespace segk
