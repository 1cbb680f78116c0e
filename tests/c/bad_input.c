/* Feeds the C API bad input and checks the status codes and messages. Prints one line per
 * check and "N passed, M failed"; exits non-zero if any check failed. */
#include <mpi.h>
#include <nodeshm.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int passed, failed;

static void expect(const char *what, int rc, int code, const char *fragment) {
    const char *msg = nodeshm_last_error();
    int ok = rc == code && (fragment == NULL || strstr(msg, fragment) != NULL);
    printf("%s %s: rc=%d (%s) want %d: %s\n", ok ? "ok" : "FAILED", what, rc, nodeshm_strerror(rc),
           code, rc == NODESHM_OK ? "" : msg);
    if (ok) passed++; else failed++;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    nodeshm_manager_t *rm = NULL;
    nodeshm_traits_t *t = NULL;
    nodeshm_allocator_t *a = NULL;
    void *p = NULL;

    expect("manager with MPI_COMM_NULL", nodeshm_manager_create_c(MPI_COMM_NULL, &rm), NODESHM_EINVAL, "MPI_COMM_NULL");
    expect("manager into NULL", nodeshm_manager_create_c(MPI_COMM_WORLD, NULL), NODESHM_EINVAL, "out is NULL");
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    int world_f = (int)MPI_Comm_c2f(MPI_COMM_WORLD);
    /* A bad argument on one rank only: every rank gets the same error, nobody waits. */
    nodeshm_manager_t *rm1 = NULL;
    expect("manager into NULL on rank 1 only",
           nodeshm_manager_create(world_f, rank == 1 ? NULL : &rm1), NODESHM_EINVAL, "out is NULL (on rank 1)");
#if defined(OPEN_MPI)
    /* Open MPI lets an unknown Fortran handle be detected (MPICH's handles are plain casts). */
    expect("manager of an unknown Fortran handle", nodeshm_manager_create(123456, &rm1), NODESHM_EINVAL, "not a communicator");
#endif
    expect("manager", nodeshm_manager_create_c(MPI_COMM_WORLD, &rm), NODESHM_OK, NULL);
    expect("traits", nodeshm_traits_create(1 << 20, &t), NODESHM_OK, NULL);
    expect("bad scope", nodeshm_traits_set_scope(t, 7), NODESHM_EINVAL, "scope 7");
    expect("bad unlink policy", nodeshm_traits_set_unlink(t, -1), NODESHM_EINVAL, "unlink policy");
    expect("NULL traits", nodeshm_traits_set_mode(NULL, 0600), NODESHM_EINVAL, "traits is NULL");
    expect("bad NUMA policy", nodeshm_traits_set_numa(t, 9), NODESHM_EINVAL, "NUMA policy 9");
    expect("bad huge pages", nodeshm_traits_set_pages(t, 5, 0), NODESHM_EINVAL, "huge pages 5");
    expect("NUMA auto", nodeshm_traits_set_numa(t, NODESHM_NUMA_AUTO), NODESHM_OK, NULL);
    expect("prefault", nodeshm_traits_set_pages(t, NODESHM_HUGE_NEVER, 1), NODESHM_OK, NULL);
    expect("negative timeout", nodeshm_traits_set_timeouts(t, -1.0, 1.0), NODESHM_EINVAL, "attach timeout");

    expect("NULL manager", nodeshm_make_resource(NULL, "SHARED::x", t, &a), NODESHM_EINVAL, "manager is NULL");
    expect("NULL name", nodeshm_make_resource(rm, NULL, t, &a), NODESHM_EINVAL, "name is NULL");
    expect("name without SHARED::", nodeshm_make_resource(rm, "tables", t, &a), NODESHM_ENAME, "SHARED::");
    expect("NULL out on rank 1 only", nodeshm_make_resource(rm, "SHARED::one", t, rank == 1 ? NULL : &a),
           NODESHM_EINVAL, "out is NULL (on rank 1)");
    expect("NULL name on rank 1 only", nodeshm_make_resource(rm, rank == 1 ? NULL : "SHARED::one", t, &a),
           NODESHM_EINVAL, "name is NULL (on rank 1)");
    expect("NULL traits on rank 1 only", nodeshm_make_resource(rm, "SHARED::one", rank == 1 ? NULL : t, &a),
           NODESHM_EINVAL, "traits is NULL (on rank 1)");

    nodeshm_traits_t *zero = NULL;
    nodeshm_traits_create(0, &zero);
    expect("size 0 arena", nodeshm_make_resource(rm, "SHARED::zero", zero, &a), NODESHM_EINVAL, "size 0");
    nodeshm_traits_destroy(zero);

    expect("make_resource", nodeshm_make_resource(rm, "SHARED::c", t, &a), NODESHM_OK, NULL);
    expect("made twice", nodeshm_make_resource(rm, "SHARED::c", t, &a), NODESHM_EEXIST, "already exists");

    expect("NULL allocator", nodeshm_allocate(NULL, "b", 8, &p), NODESHM_EINVAL, "allocator is NULL");
    expect("NULL out pointer", nodeshm_allocate(a, "b", 8, NULL), NODESHM_EINVAL, "ptr is NULL");
    expect("block of size 0", nodeshm_allocate(a, "b", 0, &p), NODESHM_EINVAL, "size 0");
    expect("empty block name", nodeshm_allocate(a, "", 8, &p), NODESHM_ENAME, "1 to 255 bytes");
    expect("block larger than the arena", nodeshm_allocate(a, "huge", 1ull << 30, &p), NODESHM_ENOSPC, "arena full");
    expect("alignment not a power of two", nodeshm_allocate_aligned(a, "odd", 8, 48, &p), NODESHM_EINVAL, "power of two");

    expect("allocate", nodeshm_allocate(a, "b", 64, &p), NODESHM_OK, NULL);
    void *q = NULL;
    expect("same name other size", nodeshm_allocate(a, "b", 128, &q), NODESHM_ESIZE, "64 bytes");
    int local = 0;
    expect("deallocate a foreign pointer", nodeshm_deallocate(a, &local), NODESHM_ENOTHELD, "not inside this arena");
    expect("deallocate NULL", nodeshm_deallocate(a, NULL), NODESHM_EINVAL, "ptr is NULL");
    uint64_t size = 1;
    void *f = NULL;
    expect("find missing", nodeshm_find(a, "missing", &f, &size), NODESHM_OK, NULL);
    expect("find missing gives NULL and 0", (f == NULL && size == 0) ? 0 : -1, 0, NULL);
    expect("deallocate", nodeshm_deallocate(a, p), NODESHM_OK, NULL);
    expect("deallocate twice", nodeshm_deallocate(a, p), NODESHM_ENOTHELD, "holds no reference");
    expect("unlock without lock", nodeshm_unlock(a), NODESHM_ENOTHELD, "does not hold it");
    int died = -1;
    expect("lock", nodeshm_lock(a, &died), NODESHM_OK, NULL);
    expect("lock owner alive", died, 0, NULL);
    expect("unlock", nodeshm_unlock(a), NODESHM_OK, NULL);
    MPI_Barrier(MPI_COMM_WORLD); /* every rank released "b" before counting blocks */
    nodeshm_stats_t st;
    expect("stats into NULL", nodeshm_stats(a, NULL), NODESHM_EINVAL, "out is NULL");
    expect("stats", nodeshm_stats(a, &st), NODESHM_OK, NULL);
    expect("no live blocks", (int)st.live_blocks, 0, NULL);
    expect("coalesce NULL", nodeshm_coalesce(NULL), NODESHM_EINVAL, "allocator is NULL");
    expect("coalesce", nodeshm_coalesce(a), NODESHM_OK, NULL);
    nodeshm_allocator_t *again = NULL;
    expect("get_allocator", nodeshm_get_allocator(rm, "SHARED::c", &again), NODESHM_OK, NULL);
    expect("get_allocator gives a handle", again != NULL ? 0 : -1, 0, NULL);
    nodeshm_allocator_t *none = (nodeshm_allocator_t *)1;
    expect("get_allocator missing", nodeshm_get_allocator(rm, "SHARED::none", &none), NODESHM_OK, NULL);
    expect("get_allocator missing gives NULL", none == NULL ? 0 : -1, 0, NULL);
    expect("strerror", strcmp(nodeshm_strerror(NODESHM_ENOSPC), "arena full"), 0, NULL);

    nodeshm_allocator_release(again);
    expect("release NULL", nodeshm_allocator_release(NULL), NODESHM_OK, NULL);
    MPI_Finalize();
    /* After MPI_Finalize: an error, not an abort inside MPI; releasing handles still works. */
    int comm_f = 0;
    expect("allocator communicator after MPI_Finalize", nodeshm_allocator_comm(a, &comm_f), NODESHM_EFINALIZED, "finalized");
    expect("manager after MPI_Finalize", nodeshm_manager_create(world_f, &rm1), NODESHM_EFINALIZED, "finalized");
    expect("make_resource after MPI_Finalize", nodeshm_make_resource(rm, "SHARED::late", t, &a), NODESHM_EFINALIZED, "finalized");
    expect("release after MPI_Finalize", nodeshm_allocator_release(a), NODESHM_OK, NULL);
    expect("destroy manager after MPI_Finalize", nodeshm_manager_destroy(rm), NODESHM_OK, NULL);
    nodeshm_traits_destroy(t);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
