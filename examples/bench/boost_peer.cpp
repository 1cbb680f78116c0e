// Boost.Interprocess peer for the nodeshm benchmark: named allocation in one
// managed_shared_memory segment by P processes at once, as nodeshm's benchmark measures it.
//
//   boost_peer <processes> <samples> <live names> [<cpus of process 0> <cpus of process 1> ...]
//
// Forks <processes> children that meet at a barrier in the segment, then each calls
// find_or_construct<Object> (64 bytes) on "probe-<i>" for i < samples (the same names in every
// process, like nodeshm's "same names" case). One process alone also times find and destroy.
// Prints one JSON object per line: {"processes":P,"op":...,"median_ns":...,"p99_ns":...},
// the slowest process's median and p99 (nodeshm's reduction). The segment is removed at exit.
// The CPU lists ("0,2,5") pin process p to the CPUs of the rank p of the nodeshm job that runs
// it, so that the peer's processes share cores (or not) exactly as the ranks they are compared
// with; without them the processes inherit the caller's binding, which under a bound job is
// rank 0's one core.
#include <boost/interprocess/managed_shared_memory.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

namespace bip = boost::interprocess;
using clock_type = std::chrono::steady_clock;

// A 64-byte object, as nodeshm's benchmark allocates.
struct Object {
    char bytes[64];
};

struct Result {
    double median, p99;
};

// "0,2,5" as a CPU set; false when the list is not one.
static bool parse_cpus(const char *list, cpu_set_t *set) {
    CPU_ZERO(set);
    const char *p = list;
    while (*p) {
        char *end = nullptr;
        const long cpu = std::strtol(p, &end, 10);
        if (end == p || cpu < 0 || cpu >= CPU_SETSIZE) return false;
        CPU_SET(cpu, set);
        p = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0') return false;
    }
    return CPU_COUNT(set) > 0;
}

static Result percentiles(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    if (v.empty()) return {0, 0};
    return {v[(v.size() - 1) / 2], v[static_cast<size_t>((v.size() - 1) * 0.99)]};
}

struct Shared {
    std::atomic<int> arrived{0};
    std::atomic<int> go{0};
    // Per process: median and p99 of find_or_construct, find, destroy.
    double figures[64][6];
};

int main(int argc, char **argv) {
    if (argc < 4) {
        std::fprintf(stderr,
                     "usage: boost_peer <processes> <samples> <live names> [<cpu list per process>...]\n");
        return 2;
    }
    std::vector<cpu_set_t> pins(argc - 4);
    for (int i = 4; i < argc; ++i) {
        if (!parse_cpus(argv[i], &pins[i - 4])) {
            std::fprintf(stderr, "boost_peer: %s is not a CPU list like 0,2,5\n", argv[i]);
            return 2;
        }
    }
    const int procs = std::min(std::atoi(argv[1]), 64);
    const int samples = std::atoi(argv[2]);
    const int live = std::atoi(argv[3]);
    const std::string name = "nodeshm-bench-boost-" + std::to_string(getpid());
    bip::shared_memory_object::remove(name.c_str());
    {
        const size_t size = (size_t(live) + size_t(samples)) * 256 + (64u << 20);
        bip::managed_shared_memory segment(bip::create_only, name.c_str(), size);
        auto *shared = segment.construct<Shared>("shared")();
        for (int i = 0; i < live; ++i)
            segment.construct<Object>(("live-" + std::to_string(i)).c_str())();
        for (int p = 0; p < procs; ++p) {
            if (fork() == 0) {
                if (!pins.empty() &&
                    sched_setaffinity(0, sizeof(cpu_set_t), &pins[p % pins.size()]) != 0) {
                    std::perror("boost_peer: sched_setaffinity");
                    _exit(1);
                }
                bip::managed_shared_memory seg(bip::open_only, name.c_str());
                auto *s = seg.find<Shared>("shared").first;
                s->arrived.fetch_add(1);
                while (s->go.load() == 0) usleep(100);
                std::vector<double> make, find, destroy;
                for (int i = 0; i < samples; ++i) {
                    const std::string n = "probe-" + std::to_string(i);
                    auto t = clock_type::now();
                    auto *block = seg.find_or_construct<Object>(n.c_str())();
                    make.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t).count());
                    (void)block;
                    if (procs == 1) {
                        t = clock_type::now();
                        auto found = seg.find<Object>(n.c_str());
                        find.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t).count());
                        (void)found;
                        t = clock_type::now();
                        seg.destroy<Object>(n.c_str());
                        destroy.push_back(std::chrono::duration<double, std::nano>(clock_type::now() - t).count());
                    }
                }
                Result r[3] = {percentiles(make), percentiles(find), percentiles(destroy)};
                for (int k = 0; k < 3; ++k) {
                    s->figures[p][2 * k] = r[k].median;
                    s->figures[p][2 * k + 1] = r[k].p99;
                }
                _exit(0);
            }
        }
        while (shared->arrived.load() < procs) usleep(100);
        shared->go.store(1);
        int failed = 0;
        for (int p = 0; p < procs; ++p) {
            int status = 0;
            wait(&status);
            failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        }
        const char *ops[3] = {"find_or_construct", "find", "destroy"};
        for (int k = 0; k < (procs == 1 ? 3 : 1); ++k) {
            double median = 0, p99 = 0;
            for (int p = 0; p < procs; ++p) {
                median = std::max(median, shared->figures[p][2 * k]);
                p99 = std::max(p99, shared->figures[p][2 * k + 1]);
            }
            std::printf("{\"processes\":%d,\"op\":\"%s\",\"median_ns\":%.1f,\"p99_ns\":%.1f}\n",
                        procs, ops[k], median, p99);
        }
        if (failed) std::fprintf(stderr, "boost_peer: %d processes failed\n", failed);
        bip::shared_memory_object::remove(name.c_str());
        return failed ? 1 : 0;
    }
}
