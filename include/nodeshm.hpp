/*
 * nodeshm.hpp - header-only C++ (C++17; std::span with C++20) RAII over the C ABI of nodeshm.h.
 *
 *   #include <mpi.h>           // first: the MPI_Comm overloads need it
 *   #include <nodeshm.hpp>
 *
 *   nodeshm::manager rm(MPI_COMM_WORLD);                                  // collective
 *   auto alloc = rm.make_resource("SHARED::tables",                       // collective
 *                                 nodeshm::traits(64 << 20).scope(NODESHM_SCOPE_SOCKET));
 *   auto table = alloc.allocate<double>("eos", n);    // same name, same memory; released on scope exit
 *   for (double &x : table.span()) x = 0;              // C++20; table.data(), table.size() in C++17
 *   { nodeshm::lock_guard held(alloc); ... }           // the allocator's robust user lock
 *   MPI_Barrier(alloc.comm());
 *
 * Every failure throws nodeshm::error (a std::runtime_error) carrying the status code (code())
 * and nodeshm_last_error()'s message. Objects are move-only and release what they own in their
 * destructors: a block releases its reference, an allocator its handle, the manager itself.
 * Destroy them before MPI_Finalize (blocks before their allocator), as with any MPI object.
 */
#ifndef NODESHM_HPP
#define NODESHM_HPP

#include <nodeshm.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#if __cplusplus >= 202002L && __has_include(<span>)
#include <span>
#define NODESHM_HAVE_SPAN 1
#endif

namespace nodeshm {

/* A failed call: the status code and the message nodeshm gave. */
class error : public std::runtime_error {
  public:
    error(int code, const std::string &what_failed)
        : std::runtime_error(what_failed + ": " + nodeshm_strerror(code) + ": " + nodeshm_last_error()),
          code_(code) {}
    /* The NODESHM_E* status code. */
    int code() const noexcept { return code_; }

  private:
    int code_;
};

namespace detail {
inline void check(int rc, const char *what) {
    if (rc != NODESHM_OK) throw error(rc, what);
}
} // namespace detail

/* An allocator's traits: arena size, then options, chainable. */
class traits {
  public:
    explicit traits(std::uint64_t size) { detail::check(nodeshm_traits_create(size, &t_), "nodeshm_traits_create"); }
    traits(const traits &) = delete;
    traits &operator=(const traits &) = delete;
    traits(traits &&o) noexcept : t_(std::exchange(o.t_, nullptr)) {}
    traits &operator=(traits &&o) noexcept {
        std::swap(t_, o.t_);
        return *this;
    }
    ~traits() { nodeshm_traits_destroy(t_); }

    traits &scope(int s) & { return set(nodeshm_traits_set_scope(t_, s), "scope"); }
    traits &unlink(int policy) & { return set(nodeshm_traits_set_unlink(t_, policy), "unlink"); }
    traits &mode(std::uint32_t m) & { return set(nodeshm_traits_set_mode(t_, m), "mode"); }
    traits &dir(const std::string &d) & { return set(nodeshm_traits_set_dir(t_, d.c_str()), "dir"); }
    traits &timeouts(double attach_s, double lock_s) & {
        return set(nodeshm_traits_set_timeouts(t_, attach_s, lock_s), "timeouts");
    }
    traits &numa(int policy) & { return set(nodeshm_traits_set_numa(t_, policy), "numa"); }
    traits &pages(int huge, bool prefault = false) & {
        return set(nodeshm_traits_set_pages(t_, huge, prefault ? 1 : 0), "pages");
    }
    /* The same on temporaries: traits(1 << 20).scope(...).numa(...) */
    traits &&scope(int s) && { return std::move(scope(s)); }
    traits &&unlink(int p) && { return std::move(unlink(p)); }
    traits &&mode(std::uint32_t m) && { return std::move(mode(m)); }
    traits &&dir(const std::string &d) && { return std::move(dir(d)); }
    traits &&timeouts(double a, double l) && { return std::move(timeouts(a, l)); }
    traits &&numa(int p) && { return std::move(numa(p)); }
    traits &&pages(int h, bool p = false) && { return std::move(pages(h, p)); }

    const nodeshm_traits_t *get() const noexcept { return t_; }

  private:
    traits &set(int rc, const char *what) {
        detail::check(rc, (std::string("nodeshm_traits_set_") + what).c_str());
        return *this;
    }
    nodeshm_traits_t *t_ = nullptr;
};

class allocator;

/* A named block of `size()` values of T, holding one reference; released on destruction. */
template <class T> class block {
    static_assert(std::is_trivially_copyable_v<T>, "blocks hold plain data (trivially copyable types)");

  public:
    block(const block &) = delete;
    block &operator=(const block &) = delete;
    block(block &&o) noexcept
        : a_(std::exchange(o.a_, nullptr)), p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
    block &operator=(block &&o) noexcept {
        std::swap(a_, o.a_);
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    ~block() {
        if (p_ != nullptr) nodeshm_deallocate(a_, p_);
    }

    T *data() const noexcept { return p_; }
    std::size_t size() const noexcept { return n_; }
    std::size_t size_bytes() const noexcept { return n_ * sizeof(T); }
    T &operator[](std::size_t i) const noexcept { return p_[i]; }
    T *begin() const noexcept { return p_; }
    T *end() const noexcept { return p_ + n_; }
#if defined(NODESHM_HAVE_SPAN)
    std::span<T> span() const noexcept { return {p_, n_}; }
#endif
    /* Releases the reference now (as the destructor would); throws on failure. */
    void release() {
        if (p_ != nullptr) detail::check(nodeshm_deallocate(a_, std::exchange(p_, nullptr)), "nodeshm_deallocate");
        n_ = 0;
    }

  private:
    friend class allocator;
    block(const nodeshm_allocator_t *a, void *p, std::size_t n) : a_(a), p_(static_cast<T *>(p)), n_(n) {}
    const nodeshm_allocator_t *a_;
    T *p_;
    std::size_t n_;
};

/* Holds the allocator's robust user lock; unlocks on destruction (on the same thread). */
class lock_guard {
  public:
    explicit lock_guard(const allocator &a);
    lock_guard(const lock_guard &) = delete;
    lock_guard &operator=(const lock_guard &) = delete;
    ~lock_guard() { nodeshm_unlock(a_); }
    /* True when the previous holder died holding the lock: what it guards may be half-written. */
    bool owner_died() const noexcept { return died_ != 0; }

  private:
    const nodeshm_allocator_t *a_;
    int died_ = 0;
};

/* A SHARED:: allocator handle; move-only, released on destruction (the arena goes with the
 * last handle on every rank). */
class allocator {
  public:
    allocator(const allocator &) = delete;
    allocator &operator=(const allocator &) = delete;
    allocator(allocator &&o) noexcept : a_(std::exchange(o.a_, nullptr)) {}
    allocator &operator=(allocator &&o) noexcept {
        std::swap(a_, o.a_);
        return *this;
    }
    ~allocator() { nodeshm_allocator_release(a_); }

    /* Block `name` of `count` values of T: created zeroed if new, else the existing one (same
     * byte size required). Independent, O(1). */
    template <class T = std::byte> block<T> allocate(const std::string &name, std::size_t count) const {
        void *p = nullptr;
        detail::check(nodeshm_allocate_aligned(a_, name.c_str(), std::uint64_t(count) * sizeof(T),
                                               alignof(T) > 64 ? alignof(T) : 64, &p),
                      "nodeshm_allocate");
        return block<T>(a_, p, count);
    }
    /* Block `name` if it exists (its size must be a whole number of T). */
    template <class T = std::byte> std::optional<block<T>> find(const std::string &name) const {
        void *p = nullptr;
        std::uint64_t bytes = 0;
        detail::check(nodeshm_find(a_, name.c_str(), &p, &bytes), "nodeshm_find");
        if (p == nullptr) return std::nullopt;
        if (bytes % sizeof(T) != 0) {
            nodeshm_deallocate(a_, p);
            throw error(NODESHM_ESIZE, "nodeshm_find of " + name + " (" + std::to_string(bytes) +
                                           " bytes is not a whole number of elements)");
        }
        return block<T>(a_, p, std::size_t(bytes / sizeof(T)));
    }
    nodeshm_stats_t stats() const {
        nodeshm_stats_t s{};
        detail::check(nodeshm_stats(a_, &s), "nodeshm_stats");
        return s;
    }
    /* Removed small names' blocks, kept for reuse, back to the heap (Umpire's coalesce). */
    void coalesce() const { detail::check(nodeshm_coalesce(a_), "nodeshm_coalesce"); }
    std::uint64_t actual_size() const {
        std::uint64_t n = 0;
        detail::check(nodeshm_actual_size(a_, &n), "nodeshm_actual_size");
        return n;
    }
    /* The ranks sharing this arena, as a Fortran handle (owned by the allocator). */
    int comm_f() const {
        int f = 0;
        detail::check(nodeshm_allocator_comm(a_, &f), "nodeshm_allocator_comm");
        return f;
    }
#if defined(MPI_VERSION)
    /* The ranks sharing this arena (owned by the allocator: do not free). */
    MPI_Comm comm() const { return MPI_Comm_f2c(MPI_Fint(comm_f())); }
#endif
    const nodeshm_allocator_t *get() const noexcept { return a_; }

  private:
    friend class manager;
    explicit allocator(nodeshm_allocator_t *a) : a_(a) {}
    nodeshm_allocator_t *a_;
};

inline lock_guard::lock_guard(const allocator &a) : a_(a.get()) {
    detail::check(nodeshm_lock(a_, &died_), "nodeshm_lock");
}

/* A communicator as a Fortran handle (MPI_Comm_c2f). A type of its own: MPICH's MPI_Comm is an
 * int, so an int overload would clash with the MPI_Comm one. */
struct fortran_comm {
    int value;
};

/* A resource manager over a communicator; move-only, destroyed with its destructor. */
class manager {
  public:
    /* Collective over the communicator given as a Fortran handle. */
    explicit manager(fortran_comm comm) {
        detail::check(nodeshm_manager_create(comm.value, &m_), "nodeshm_manager_create");
    }
#if defined(MPI_VERSION)
    /* Collective over `comm`. */
    explicit manager(MPI_Comm comm) : manager(fortran_comm{int(MPI_Comm_c2f(comm))}) {}
#endif
    manager(const manager &) = delete;
    manager &operator=(const manager &) = delete;
    manager(manager &&o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
    manager &operator=(manager &&o) noexcept {
        std::swap(m_, o.m_);
        return *this;
    }
    ~manager() { nodeshm_manager_destroy(m_); }

    /* Collective: allocator `name` ("SHARED::..."), the same error on every rank if it fails. */
    allocator make_resource(const std::string &name, const traits &t) const {
        nodeshm_allocator_t *a = nullptr;
        detail::check(nodeshm_make_resource(m_, name.c_str(), t.get(), &a), "nodeshm_make_resource");
        return allocator(a);
    }
    /* A new handle to allocator `name`, if it exists. Local. */
    std::optional<allocator> get_allocator(const std::string &name) const {
        nodeshm_allocator_t *a = nullptr;
        detail::check(nodeshm_get_allocator(m_, name.c_str(), &a), "nodeshm_get_allocator");
        if (a == nullptr) return std::nullopt;
        return allocator(a);
    }

  private:
    nodeshm_manager_t *m_ = nullptr;
};

} // namespace nodeshm

#endif /* NODESHM_HPP */
