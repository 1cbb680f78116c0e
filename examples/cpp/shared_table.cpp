// A node-wide table in C++: node rank 0 fills it, every rank sums it, with RAII handles and
// exceptions; then the errors a C++ user meets, as exceptions with their codes.
#include <mpi.h>
#include <nodeshm.hpp>

#include <cstdint>
#include <cstdio>
#include <numeric>

static int run(int world_rank) {
    nodeshm::manager rm(MPI_COMM_WORLD);
    auto alloc = rm.make_resource("SHARED::cpp_table", nodeshm::traits(16 << 20).unlink(NODESHM_UNLINK_AFTER_ATTACH));
    MPI_Comm node = alloc.comm();
    int node_rank = 0, node_size = 0;
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_size(node, &node_size);

    const std::size_t n = 100000;
    int checks = 0;
    {
        auto table = alloc.allocate<double>("table", n);
        if (node_rank == 0) {
#if defined(NODESHM_HAVE_SPAN)
            for (double &x : table.span()) x = 1.0;
#else
            for (std::size_t i = 0; i < table.size(); i++) table.data()[i] = 1.0;
#endif
        }
        MPI_Barrier(node);
        double sum = std::accumulate(table.begin(), table.end(), 0.0);
        checks += sum == double(n);

        auto counter = alloc.allocate<std::uint64_t>("counter", 1); // held until the scope ends
        {
            nodeshm::lock_guard held(alloc);
            checks += !held.owner_died();
            counter[0] += 1; // a read-modify-write under the user lock
        }
        MPI_Barrier(node);
        auto found = alloc.find<std::uint64_t>("counter");
        checks += found.has_value() && (*found)[0] == std::uint64_t(node_size);
        checks += !alloc.find<double>("missing").has_value();

        try {
            alloc.allocate<double>("table", n + 1);
        } catch (const nodeshm::error &e) {
            checks += e.code() == NODESHM_ESIZE;
        }
        try {
            rm.make_resource("no-prefix", nodeshm::traits(1 << 20));
        } catch (const nodeshm::error &e) {
            checks += e.code() == NODESHM_ENAME; // the same on every rank: it is collective
        }
        checks += alloc.stats().live_blocks >= 2;
        MPI_Barrier(node);
    }
    bool ok = checks == 7;
    std::printf("%s rank %d (node rank %d of %d): %d of 7 checks\n", ok ? "ok" : "FAILED", world_rank, node_rank,
                node_size, checks);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int rc = 1;
    try {
        rc = run(rank);
    } catch (const nodeshm::error &e) {
        std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    }
    MPI_Finalize();
    return rc;
}
