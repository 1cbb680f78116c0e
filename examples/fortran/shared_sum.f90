! One shared array per node: node rank 0 fills it, every rank sums it.
program shared_sum
  use mpi
  use iso_c_binding
  use nodeshm
  implicit none
  integer, parameter :: n = 100000
  integer :: ierr, world_rank, node_comm, node_rank, node_size, i
  integer(c_int) :: rc
  type(c_ptr) :: rm, traits, alloc, p
  real(c_double), pointer :: a(:)
  real(c_double) :: total, expected

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, world_rank, ierr)
  rc = nodeshm_manager_create(MPI_COMM_WORLD, rm)
  if (rc /= NODESHM_OK) call fail("manager_create")
  rc = nodeshm_traits_create(int(16 * 1024 * 1024, c_int64_t), traits)
  rc = nodeshm_make_resource(rm, "SHARED::fortran", traits, alloc)
  if (rc /= NODESHM_OK) call fail("make_resource")
  rc = nodeshm_allocator_comm(alloc, node_comm)
  call MPI_Comm_rank(node_comm, node_rank, ierr)
  call MPI_Comm_size(node_comm, node_size, ierr)

  rc = nodeshm_allocate(alloc, "array", int(8 * n, c_int64_t), p)
  if (rc /= NODESHM_OK) call fail("allocate")
  call c_f_pointer(p, a, [n])
  if (node_rank == 0) then
    do i = 1, n
      a(i) = real(i, c_double)
    end do
  end if
  call MPI_Barrier(node_comm, ierr)
  total = sum(a)
  expected = real(n, c_double) * real(n + 1, c_double) / 2.0_c_double
  if (total == expected) then
    print '(a,i0,a,i0,a,i0,a,f0.1)', 'ok rank ', world_rank, ' (node rank ', node_rank, ' of ', &
      node_size, ') sum ', total
  else
    print '(a,i0,a,f0.1)', 'FAILED rank ', world_rank, ' sum ', total
  end if
  call MPI_Barrier(node_comm, ierr)

  rc = nodeshm_deallocate(alloc, p)
  rc = nodeshm_allocator_release(alloc)
  rc = nodeshm_traits_destroy(traits)
  rc = nodeshm_manager_destroy(rm)
  call MPI_Finalize(ierr)
  if (total /= expected) stop 1

contains
  subroutine fail(what)
    character(*), intent(in) :: what
    print '(a,a,a,a)', 'FAILED ', what, ': ', nodeshm_last_error()
    call MPI_Abort(MPI_COMM_WORLD, 1, ierr)
  end subroutine
end program
