# nodeshm_mpi_family(<out-var>): the ABI family of the MPI that FindMPI found for C, read from
# the `mpi.h` it uses: "Open MPI", "MPICH" (the MPICH ABI: MPICH, Intel MPI, MVAPICH, Cray
# MPICH) or "unknown". The nodeshm package records the family it was built with and refuses a
# consumer that found the other one: their handle types differ (pointers against integers), and
# mixing them compiles and links but crashes at run time.
function(nodeshm_mpi_family out)
  set(family unknown)
  foreach(dir IN LISTS MPI_C_INCLUDE_DIRS MPI_C_HEADER_DIR)
    if(EXISTS "${dir}/mpi.h")
      file(STRINGS "${dir}/mpi.h" defines
           REGEX "^#[ \t]*define[ \t]+(OPEN_MPI|MPICH_VERSION|MPICH_NAME|I_MPI_VERSION)[ \t]")
      if(defines MATCHES "OPEN_MPI")
        set(family "Open MPI")
      elseif(defines MATCHES "MPICH|I_MPI")
        set(family "MPICH")
      endif()
      break()
    endif()
  endforeach()
  set(${out} "${family}" PARENT_SCOPE)
endfunction()
