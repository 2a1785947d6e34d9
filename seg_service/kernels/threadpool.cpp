#include "threadpool.h"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace segk {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// Helpers spin this many rounds after a call before sleeping, so back-to-back layer calls do
// not pay a futex wake-up each (a few tens of microseconds).
constexpr int kSpinRounds = 20000;

// Each thread of a call first claims the items of its own contiguous share, in order, then
// helps with the others' shares. Consecutive ops split their maps the same way (items are runs of
// pixels in order), so a thread mostly reads the rows it wrote in the op before, from its own
// core's L2: the 64x80x32 float maps of a webcam-sized network are 655 KB each, and with items
// dealt out in turn every op read half its input from the other core. A helper that starts late
// or runs on a busier core still only leaves its unclaimed items to the others.
struct alignas(64) Share {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
};

// A helper's own state, reached by the helper through a stable pointer (the pool only appends).
struct Helper {
    int index = 0;
    bool asleep = false;  // waiting on the condvar (guarded by Pool::mu_)
#if defined(__linux__)
    pthread_t handle{};
    cpu_set_t home;  // the CPUs it may use as created (its creator's affinity then)
#endif
};

struct Task {
    ItemFn fn;
    void* ctx;
    int64_t items;
    int helpers_wanted;
    std::unique_ptr<Share[]> shares;  // one per thread: the caller's, then helper 0's, 1's, ...
    std::atomic<int64_t> done{0};
};

class Pool {
public:
    void run(int threads, int64_t items, ItemFn fn, void* ctx) {
        std::unique_lock<std::mutex> serving(serving_, std::try_to_lock);
        if (!serving.owns_lock()) {  // another call holds the pool: run this one alone
            for (int64_t i = 0; i < items; ++i) fn(ctx, i);
            return;
        }
        grow(threads - 1);
        auto task = std::make_shared<Task>();
        task->fn = fn;
        task->ctx = ctx;
        task->items = items;
        task->helpers_wanted = threads - 1;
        task->shares = std::make_unique<Share[]>(static_cast<size_t>(threads));
        for (int t = 0; t < threads; ++t) {
            task->shares[t].next.store(items * t / threads, std::memory_order_relaxed);
            task->shares[t].end = items * (t + 1) / threads;
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            steer_sleeping_helpers(threads - 1);
            task_ = task;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        work(*task, 0);
        for (int spin = 0; spin < kSpinRounds && task->done.load(std::memory_order_acquire) != items; ++spin)
            cpu_relax();
        std::unique_lock<std::mutex> lock(mu_);
        finished_.wait(lock, [&] { return task->done.load(std::memory_order_acquire) == items; });
        task_.reset();  // late helpers keep their own reference and find no items left
    }

private:
    void grow(int helpers) {
        while (static_cast<int>(helpers_.size()) < helpers) {
            auto helper = std::make_unique<Helper>();
            helper->index = static_cast<int>(helpers_.size());
#if defined(__linux__)
            CPU_ZERO(&helper->home);
            if (sched_getaffinity(0, sizeof(helper->home), &helper->home) != 0) CPU_ZERO(&helper->home);
#endif
            Helper* self = helper.get();
            std::thread thread([this, self] { helper_loop(*self); });
#if defined(__linux__)
            self->handle = thread.native_handle();
            char name[16];
            std::snprintf(name, sizeof(name), "seg-pool-%d", self->index);
            pthread_setname_np(self->handle, name);  // tells them apart in top -H, perf, /proc
#endif
            {
                std::lock_guard<std::mutex> lock(mu_);
                helpers_.push_back(std::move(helper));
            }
            thread.detach();  // the pool lives for the whole process
        }
    }

    // A helper woken after a pause between frames (it sleeps after kSpinRounds) was often left
    // waiting behind the caller on the caller's own CPU: measured on a 2-vCPU VM with 320x240 frames
    // 33 ms apart, it took part in 40-55 % of a frame's calls instead of 99 %, and two threads ran
    // slower than one. So before waking sleeping helpers, the caller takes its current CPU out of
    // their affinity: the rest of the caller's own mask, so a process's CPU limits still hold; or,
    // when the caller alone is held to that one CPU, the rest of the helper's mask as created, so that
    // pinning the calling thread does not pin its helpers there too; with no other CPU, nothing.
    // One syscall per sleeping helper, only when one sleeps, so back-to-back calls pay nothing. The
    // mask is not pinning: it is set again at the next wake, from wherever the caller then runs.
    void steer_sleeping_helpers(int helpers) {
#if defined(__linux__)
        const int cpu = sched_getcpu();
        if (cpu < 0 || cpu >= CPU_SETSIZE) return;
        bool mask_read = false;
        cpu_set_t callers;
        for (int h = 0; h < helpers && h < static_cast<int>(helpers_.size()); ++h) {
            Helper& helper = *helpers_[h];
            if (!helper.asleep) continue;
            if (!mask_read) {
                CPU_ZERO(&callers);
                if (sched_getaffinity(0, sizeof(callers), &callers) != 0) return;
                CPU_CLR(cpu, &callers);
                mask_read = true;
            }
            cpu_set_t mask = callers;
            if (CPU_COUNT(&mask) == 0) {
                mask = helper.home;
                CPU_CLR(cpu, &mask);
                if (CPU_COUNT(&mask) == 0) continue;  // one CPU in all: leave it be
            }
            pthread_setaffinity_np(helper.handle, sizeof(mask), &mask);  // best effort
        }
#else
        (void)helpers;  // elsewhere helpers go wherever the OS puts them
#endif
    }

    // Thread `slot`'s share first, then the following ones'.
    void work(Task& task, int slot) {
        const int shares = task.helpers_wanted + 1;
        for (int k = 0; k < shares; ++k) {
            Share& share = task.shares[(slot + k) % shares];
            for (;;) {
                const int64_t i = share.next.fetch_add(1, std::memory_order_relaxed);
                if (i >= share.end) break;
                task.fn(task.ctx, i);
                // The caller cannot return before this item is counted, so fn/ctx stay valid above.
                if (task.done.fetch_add(1, std::memory_order_acq_rel) + 1 == task.items) {
                    std::lock_guard<std::mutex> lock(mu_);
                    finished_.notify_all();
                }
            }
        }
    }

    // Helper `index` always takes share index + 1, so it gets the same rows op after op.
    void helper_loop(Helper& self) {
        const int index = self.index;
        uint64_t seen = generation_.load(std::memory_order_acquire);
        for (;;) {
            for (int spin = 0; spin < kSpinRounds && generation_.load(std::memory_order_acquire) == seen; ++spin)
                cpu_relax();
            std::shared_ptr<Task> task;
            {
                std::unique_lock<std::mutex> lock(mu_);
                self.asleep = true;
                wake_.wait(lock, [&] { return generation_.load(std::memory_order_relaxed) != seen; });
                self.asleep = false;
                seen = generation_.load(std::memory_order_relaxed);
                task = task_;
            }
            if (task && index < task->helpers_wanted) work(*task, index + 1);
        }
    }

    std::mutex serving_;  // one call at a time uses the helpers
    std::mutex mu_;
    std::condition_variable wake_, finished_;
    std::shared_ptr<Task> task_;
    std::atomic<uint64_t> generation_{0};
    std::vector<std::unique_ptr<Helper>> helpers_;  // guarded by mu_ (appended by grow)
};

long current_pid() {
#if defined(__unix__) || defined(__APPLE__)
    return static_cast<long>(getpid());
#else
    return 0;
#endif
}

// One pool per process; intentionally leaked (helpers sleep until exit). After fork() the child
// gets a fresh pool: the parent's helper threads do not exist there.
Pool& pool() {
    static std::mutex guard;
    static Pool* instance = nullptr;
    static long owner = 0;
    std::lock_guard<std::mutex> lock(guard);
    const long pid = current_pid();
    if (instance == nullptr || owner != pid) {
        instance = new Pool();
        owner = pid;
    }
    return *instance;
}

}  // namespace

void parallel_for(int threads, int64_t items, ItemFn fn, void* ctx) {
    if (threads <= 1 || items <= 1) {
        for (int64_t i = 0; i < items; ++i) fn(ctx, i);
        return;
    }
    pool().run(static_cast<int>(std::min<int64_t>(threads, items)), items, fn, ctx);
}

int available_processors() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace segk
