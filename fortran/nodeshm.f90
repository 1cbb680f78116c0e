! nodeshm: named shared-memory allocators for the MPI ranks of one node, socket or NUMA domain.
! Fortran bindings over the C ABI (include/nodeshm.h) with iso_c_binding. Handles are type(c_ptr);
! communicators are default integers (Fortran MPI handles, as `use mpi` gives them). Every
! function returns a status (NODESHM_OK = 0); nodeshm_last_error() gives the message.
!
! Shared blocks become Fortran arrays with c_f_pointer:
!   rc = nodeshm_allocate(a, "table", int(8*n, c_int64_t), p)
!   call c_f_pointer(p, table, [n])
module nodeshm
  use iso_c_binding
  implicit none
  private :: c_string

  integer(c_int), parameter :: NODESHM_OK = 0
  integer(c_int), parameter :: NODESHM_SCOPE_NODE = 0, NODESHM_SCOPE_SOCKET = 1, NODESHM_SCOPE_NUMA = 2
  integer(c_int), parameter :: NODESHM_UNLINK_AFTER_ATTACH = 0, NODESHM_UNLINK_ON_LAST_DETACH = 1, &
                               NODESHM_UNLINK_NEVER = 2

  interface
    integer(c_int) function nodeshm_traits_create(size, t) bind(C, name="nodeshm_traits_create")
      import :: c_int, c_int64_t, c_ptr
      integer(c_int64_t), value :: size
      type(c_ptr), intent(out) :: t
    end function
    integer(c_int) function nodeshm_traits_set_scope(t, scope) bind(C, name="nodeshm_traits_set_scope")
      import :: c_int, c_ptr
      type(c_ptr), value :: t
      integer(c_int), value :: scope
    end function
    integer(c_int) function nodeshm_traits_set_unlink(t, policy) bind(C, name="nodeshm_traits_set_unlink")
      import :: c_int, c_ptr
      type(c_ptr), value :: t
      integer(c_int), value :: policy
    end function
    integer(c_int) function nodeshm_traits_destroy(t) bind(C, name="nodeshm_traits_destroy")
      import :: c_int, c_ptr
      type(c_ptr), value :: t
    end function
    integer(c_int) function nodeshm_manager_create(comm, m) bind(C, name="nodeshm_manager_create")
      import :: c_int, c_ptr
      integer(c_int), value :: comm
      type(c_ptr), intent(out) :: m
    end function
    integer(c_int) function nodeshm_manager_destroy(m) bind(C, name="nodeshm_manager_destroy")
      import :: c_int, c_ptr
      type(c_ptr), value :: m
    end function
    integer(c_int) function c_make_resource(m, name, t, a) bind(C, name="nodeshm_make_resource")
      import :: c_int, c_ptr, c_char
      type(c_ptr), value :: m, t
      character(kind=c_char), dimension(*), intent(in) :: name
      type(c_ptr), intent(out) :: a
    end function
    integer(c_int) function nodeshm_allocator_release(a) bind(C, name="nodeshm_allocator_release")
      import :: c_int, c_ptr
      type(c_ptr), value :: a
    end function
    integer(c_int) function c_allocate(a, name, bytes, p) bind(C, name="nodeshm_allocate")
      import :: c_int, c_ptr, c_char, c_int64_t
      type(c_ptr), value :: a
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_int64_t), value :: bytes
      type(c_ptr), intent(out) :: p
    end function
    integer(c_int) function nodeshm_deallocate(a, p) bind(C, name="nodeshm_deallocate")
      import :: c_int, c_ptr
      type(c_ptr), value :: a, p
    end function
    integer(c_int) function c_find(a, name, p, size) bind(C, name="nodeshm_find")
      import :: c_int, c_ptr, c_char, c_int64_t
      type(c_ptr), value :: a
      character(kind=c_char), dimension(*), intent(in) :: name
      type(c_ptr), intent(out) :: p
      integer(c_int64_t), intent(out) :: size
    end function
    integer(c_int) function nodeshm_actual_size(a, bytes) bind(C, name="nodeshm_actual_size")
      import :: c_int, c_ptr, c_int64_t
      type(c_ptr), value :: a
      integer(c_int64_t), intent(out) :: bytes
    end function
    integer(c_int) function nodeshm_allocator_comm(a, comm) bind(C, name="nodeshm_allocator_comm")
      import :: c_int, c_ptr
      type(c_ptr), value :: a
      integer(c_int), intent(out) :: comm
    end function
    integer(c_int) function nodeshm_lock(a, owner_died) bind(C, name="nodeshm_lock")
      import :: c_int, c_ptr
      type(c_ptr), value :: a
      integer(c_int), intent(out) :: owner_died
    end function
    integer(c_int) function nodeshm_unlock(a) bind(C, name="nodeshm_unlock")
      import :: c_int, c_ptr
      type(c_ptr), value :: a
    end function
    type(c_ptr) function c_last_error() bind(C, name="nodeshm_last_error")
      import :: c_ptr
    end function
    integer(c_size_t) function c_len(s) bind(C, name="strlen")
      import :: c_ptr, c_size_t
      type(c_ptr), value :: s
    end function
  end interface

contains

  pure function c_string(s) result(c)
    character(*), intent(in) :: s
    character(kind=c_char, len=len_trim(s) + 1) :: c
    c = trim(s) // c_null_char
  end function

  !> Collective over the manager's communicator: makes allocator `name` ("SHARED::...").
  integer(c_int) function nodeshm_make_resource(m, name, t, a)
    type(c_ptr), intent(in) :: m, t
    character(*), intent(in) :: name
    type(c_ptr), intent(out) :: a
    nodeshm_make_resource = c_make_resource(m, c_string(name), t, a)
  end function

  !> Block `name` of `bytes` bytes (same name, same memory on every rank of the scope).
  integer(c_int) function nodeshm_allocate(a, name, bytes, p)
    type(c_ptr), intent(in) :: a
    character(*), intent(in) :: name
    integer(c_int64_t), intent(in) :: bytes
    type(c_ptr), intent(out) :: p
    nodeshm_allocate = c_allocate(a, c_string(name), bytes, p)
  end function

  !> Block `name` if it exists (p = c_null_ptr otherwise), taking a reference.
  integer(c_int) function nodeshm_find(a, name, p, size)
    type(c_ptr), intent(in) :: a
    character(*), intent(in) :: name
    type(c_ptr), intent(out) :: p
    integer(c_int64_t), intent(out) :: size
    nodeshm_find = c_find(a, c_string(name), p, size)
  end function

  !> The message of the last failure on this thread.
  function nodeshm_last_error() result(msg)
    character(:), allocatable :: msg
    type(c_ptr) :: p
    character(kind=c_char), pointer :: chars(:)
    integer :: i, n
    p = c_last_error()
    n = int(c_len(p))
    allocate(character(n) :: msg)
    call c_f_pointer(p, chars, [n])
    do i = 1, n
      msg(i:i) = chars(i)
    end do
  end function

end module nodeshm
