/*
 * nodeshm.h - named shared-memory allocators for the MPI ranks of one node, socket or NUMA
 * domain. C99/C11, usable from C++ (extern "C").
 *
 * Every function returns a status: NODESHM_OK (0) or one of the NODESHM_E* codes below. The
 * message of the last failure on the calling thread is nodeshm_last_error(): it says what
 * happened, with the numbers, and what to do. No call crashes on bad input (NULL handles, bad
 * names, wrong sizes, foreign pointers): it returns a code.
 *
 * What is checked and what is not: NULL handles and pointers, names, sizes, options and
 * pointers not from this allocator are errors. A non-NULL handle that is not a live handle from
 * this library (freed, or garbage) is undefined behaviour, as for any C library. An invalid
 * Fortran communicator is an error where the MPI lets it be detected (Open MPI's MPI_Comm_f2c
 * returns no communicator for an unknown handle; MPICH's is a cast, and MPICH aborts the job).
 * In collective calls every argument check is agreed on by all ranks before anything else, so
 * a bad argument on one rank gives every rank the same error (naming that rank) and none waits;
 * the manager handle itself carries the communicator and must be valid on every rank. Calls
 * that need MPI return NODESHM_EFINALIZED before MPI_Init or after MPI_Finalize instead of
 * letting MPI abort; releasing handles after MPI_Finalize is allowed (their communicators are
 * then abandoned, not freed).
 *
 * Threads: allocate/find/deallocate on one allocator handle are safe from several threads of a
 * process, but creating, copying (nodeshm_get_allocator) and releasing handles is not; do that
 * from one thread, as MPI_THREAD_FUNNELED codes do.
 *
 * Communicators cross the boundary as Fortran handles (MPI_Fint) so the library works with
 * any MPI's C handle type; the inline helpers at the end take MPI_Comm when <mpi.h> is included
 * first.
 *
 *   nodeshm_manager_t *rm;   nodeshm_traits_t *t;   nodeshm_allocator_t *a;   void *p;
 *   nodeshm_manager_create(MPI_Comm_c2f(MPI_COMM_WORLD), &rm);        collective
 *   nodeshm_traits_create(64 << 20, &t);
 *   nodeshm_make_resource(rm, "SHARED::node_allocator", t, &a);       collective
 *   nodeshm_allocate(a, "table", 8 * n, &p);                           same name, same memory
 *   ...
 *   nodeshm_deallocate(a, p); nodeshm_allocator_release(a);
 *   nodeshm_traits_destroy(t); nodeshm_manager_destroy(rm);            before MPI_Finalize
 */
#ifndef NODESHM_H
#define NODESHM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes (stable; the Rust ErrorCode values). */
#define NODESHM_OK 0
#define NODESHM_EINVAL 1         /* invalid argument: NULL handle or pointer, size 0, bad option */
#define NODESHM_ENAME 2          /* invalid name (allocator names start with "SHARED::") */
#define NODESHM_ESIZE 3          /* the block exists with another size */
#define NODESHM_ENOSPC 4         /* the arena is full */
#define NODESHM_ENOTHELD 5       /* deallocating a pointer this process holds no reference to */
#define NODESHM_ETIMEDOUT 6      /* a wait ran past its timeout */
#define NODESHM_ENOTARENA 7      /* a file that is not an arena */
#define NODESHM_EVERSION 8       /* an arena of another layout version */
#define NODESHM_ENOBACKING 9     /* the backing directory (/dev/shm) cannot hold the arena */
#define NODESHM_EIO 10           /* an operating system call failed */
#define NODESHM_EEXIST 11        /* the name is taken */
#define NODESHM_EBINDING 12      /* a rank's CPU binding spans several sockets / NUMA nodes */
#define NODESHM_EMPI 13          /* an MPI call failed */
#define NODESHM_EUNSUPPORTED 14  /* not available in this build or on this system */
#define NODESHM_ECORRUPT 15      /* arena metadata is damaged */
#define NODESHM_EPLACEMENT 16    /* the requested memory placement cannot be honoured */
#define NODESHM_EINTERNAL 17     /* a bug in nodeshm (please report nodeshm_last_error()) */
#define NODESHM_EUNTRUSTED 18    /* the arena belongs to a user or group not trusted */
#define NODESHM_EFINALIZED 19    /* MPI is not initialised or already finalized */

/* Scopes: which ranks share one arena. */
#define NODESHM_SCOPE_NODE 0   /* all ranks of a node (default) */
#define NODESHM_SCOPE_SOCKET 1 /* the ranks bound inside one package */
#define NODESHM_SCOPE_NUMA 2   /* the ranks bound inside one NUMA node */

/* When the shm name leaves /dev/shm. */
#define NODESHM_UNLINK_AFTER_ATTACH 0  /* once every peer mapped it (default; crashes leak nothing) */
#define NODESHM_UNLINK_ON_LAST_DETACH 1
#define NODESHM_UNLINK_NEVER 2         /* persists for tools; remove with `nodeshm gc` */

/* NUMA placement of an arena's pages. */
#define NODESHM_NUMA_AUTO 0        /* bind to the socket/NUMA node; interleave for node scope (default) */
#define NODESHM_NUMA_FIRST_TOUCH 1
#define NODESHM_NUMA_BIND 2        /* an error if the kernel refuses */
#define NODESHM_NUMA_INTERLEAVE 3

/* Page size of an arena. */
#define NODESHM_HUGE_NEVER 0       /* base pages (default) */
#define NODESHM_HUGE_TRANSPARENT 1 /* madvise(MADV_HUGEPAGE); tmpfs mounted huge=advise|always */
#define NODESHM_HUGE_REQUIRED 2    /* hugetlbfs; an error naming the pages needed if too few are free */

typedef struct NodeshmManager nodeshm_manager_t;
typedef struct NodeshmAllocator nodeshm_allocator_t;
typedef struct NodeshmTraits nodeshm_traits_t;

/* Figures of one arena. */
typedef struct nodeshm_stats {
    uint64_t capacity;     /* bytes the heap can hand out */
    uint64_t used;         /* bytes in use, with per-block metadata */
    uint64_t free;         /* capacity - used */
    uint64_t largest_free; /* largest block still possible */
    uint64_t live_blocks;  /* named blocks alive */
    uint64_t requested;    /* sum of the sizes asked for */
    uint64_t high_water;   /* highest `used` seen */
    uint64_t recoveries;   /* lock owners found dead and repaired after */
} nodeshm_stats_t;

/* The message of the last failure on this thread ("" if none); valid until the next call. */
const char *nodeshm_last_error(void);
/* A short constant name for a status code. */
const char *nodeshm_strerror(int code);

/* Traits: arena size in bytes (> 0, rounded up to the page size, never grows), then options. */
int nodeshm_traits_create(uint64_t size, nodeshm_traits_t **out);
int nodeshm_traits_set_scope(nodeshm_traits_t *t, int scope);      /* NODESHM_SCOPE_* */
int nodeshm_traits_set_unlink(nodeshm_traits_t *t, int policy);    /* NODESHM_UNLINK_* */
int nodeshm_traits_set_mode(nodeshm_traits_t *t, uint32_t mode);   /* default 0600 */
int nodeshm_traits_set_dir(nodeshm_traits_t *t, const char *dir);  /* NULL: $NODESHM_SHM_DIR or /dev/shm */
int nodeshm_traits_set_timeouts(nodeshm_traits_t *t, double attach_s, double lock_s);
int nodeshm_traits_set_numa(nodeshm_traits_t *t, int policy);     /* NODESHM_NUMA_* */
/* NODESHM_HUGE_*, and prefault != 0 to map every page in every rank at creation. */
int nodeshm_traits_set_pages(nodeshm_traits_t *t, int huge, int prefault);
int nodeshm_traits_destroy(nodeshm_traits_t *t);                   /* NULL is fine */

/* Collective over `comm` (Fortran handle; MPI must be initialised): a resource manager. */
int nodeshm_manager_create(int comm_f, nodeshm_manager_t **out);
/* Destroys the manager (allocator handles stay valid). Call before MPI_Finalize. */
int nodeshm_manager_destroy(nodeshm_manager_t *m);

/* Collective over the manager's communicator: every rank passes the same name and traits and
 * gets the same result. One arena per scope instance; `*out` is a new allocator handle. */
int nodeshm_make_resource(const nodeshm_manager_t *m, const char *name, const nodeshm_traits_t *t,
                          nodeshm_allocator_t **out);
/* A new handle to an allocator already made, or *out = NULL if there is none. Local. */
int nodeshm_get_allocator(const nodeshm_manager_t *m, const char *name, nodeshm_allocator_t **out);
/* Releases a handle; the arena goes when all handles (all ranks) are released. */
int nodeshm_allocator_release(nodeshm_allocator_t *a);

/* Block `name` (1..255 bytes) of `bytes` bytes, 64-byte aligned; created zeroed if new, else
 * the existing block (same size required: NODESHM_ESIZE otherwise). Takes a reference.
 * Independent (not collective), O(1). */
int nodeshm_allocate(const nodeshm_allocator_t *a, const char *name, uint64_t bytes, void **ptr);
/* As nodeshm_allocate with `align` a power of two up to the page size. */
int nodeshm_allocate_aligned(const nodeshm_allocator_t *a, const char *name, uint64_t bytes,
                             uint64_t align, void **ptr);
/* Drops one reference; the last one anywhere frees the block. NODESHM_ENOTHELD for a pointer
 * this process holds no reference to (nothing changes then). */
int nodeshm_deallocate(const nodeshm_allocator_t *a, const void *ptr);
/* Block `name` if it exists (taking a reference, release with nodeshm_deallocate): *ptr and
 * *size (may be NULL) get it; *ptr = NULL and *size = 0 if there is none. */
int nodeshm_find(const nodeshm_allocator_t *a, const char *name, void **ptr, uint64_t *size);
/* Bytes in use in this rank's arena (Umpire's getActualSize). */
int nodeshm_actual_size(const nodeshm_allocator_t *a, uint64_t *out);
int nodeshm_stats(const nodeshm_allocator_t *a, nodeshm_stats_t *out);
/* Gives the blocks of removed small names (kept for the next name of their size, counted as
 * free) back to the heap, merged with their neighbours (Umpire's coalesce). Allocation does
 * it by itself when a block does not fit otherwise. */
int nodeshm_coalesce(const nodeshm_allocator_t *a);
/* The ranks sharing this arena, as a Fortran handle (owned by the allocator: do not free). */
int nodeshm_allocator_comm(const nodeshm_allocator_t *a, int *comm_f);
/* The allocator's user lock, robust and with a timeout: *owner_died (may be NULL) is 1 when the
 * previous holder died holding it. Unlock on the same thread. */
int nodeshm_lock(const nodeshm_allocator_t *a, int *owner_died);
int nodeshm_unlock(const nodeshm_allocator_t *a);

#ifdef __cplusplus
} /* extern "C" */
#endif

/* Helpers taking MPI_Comm, when <mpi.h> was included before this header. */
#if defined(MPI_VERSION)
static inline int nodeshm_manager_create_c(MPI_Comm comm, nodeshm_manager_t **out) {
    return nodeshm_manager_create((int)MPI_Comm_c2f(comm), out);
}
static inline int nodeshm_allocator_comm_c(const nodeshm_allocator_t *a, MPI_Comm *comm) {
    int f = 0;
    int rc = nodeshm_allocator_comm(a, &f);
    if (rc == NODESHM_OK) *comm = MPI_Comm_f2c((MPI_Fint)f);
    return rc;
}
#endif

#endif /* NODESHM_H */
