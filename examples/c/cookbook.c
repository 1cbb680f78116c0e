/* Umpire's shared-memory cookbook recipe with nodeshm: every rank allocates one name in a
 * node-scoped allocator, node rank 0 writes 0xDEADBEEF, a barrier, every rank checks. */
#include <mpi.h>
#include <nodeshm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define CHECK(call)                                                                   \
    do {                                                                              \
        int rc_ = (call);                                                             \
        if (rc_ != NODESHM_OK) {                                                      \
            fprintf(stderr, "%s failed: %s: %s\n", #call, nodeshm_strerror(rc_),       \
                    nodeshm_last_error());                                            \
            MPI_Abort(MPI_COMM_WORLD, 1);                                             \
        }                                                                             \
    } while (0)

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int world_rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);

    nodeshm_manager_t *rm;
    nodeshm_traits_t *traits;
    nodeshm_allocator_t *allocator;
    CHECK(nodeshm_manager_create_c(MPI_COMM_WORLD, &rm));
    CHECK(nodeshm_traits_create(64 << 20, &traits));
    CHECK(nodeshm_make_resource(rm, "SHARED::node_allocator", traits, &allocator));

    MPI_Comm node;
    CHECK(nodeshm_allocator_comm_c(allocator, &node));
    int node_rank, node_size;
    MPI_Comm_rank(node, &node_rank);
    MPI_Comm_size(node, &node_size);

    void *ptr;
    CHECK(nodeshm_allocate(allocator, "allocation_name_2", sizeof(uint64_t), &ptr));
    volatile uint64_t *value = (volatile uint64_t *)ptr;
    if (node_rank == 0) *value = 0xDEADBEEF;
    MPI_Barrier(node);
    uint64_t seen = *value;
    printf("%s rank %d (node rank %d of %d) read 0x%llx\n", seen == 0xDEADBEEF ? "ok" : "FAILED",
           world_rank, node_rank, node_size, (unsigned long long)seen);
    MPI_Barrier(node);

    CHECK(nodeshm_deallocate(allocator, ptr));
    CHECK(nodeshm_allocator_release(allocator));
    CHECK(nodeshm_traits_destroy(traits));
    CHECK(nodeshm_manager_destroy(rm));
    MPI_Finalize();
    return seen == 0xDEADBEEF ? 0 : 1;
}
