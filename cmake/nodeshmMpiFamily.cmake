# nodeshm_mpi_family(<out-var> [<lang>]): the ABI family of the MPI that FindMPI found for <lang>
# (C unless given), read from
# the `mpi.h` it uses: "Open MPI", "MPICH" (the MPICH ABI: MPICH, Intel MPI, MVAPICH, Cray
# MPICH) or "unknown". The nodeshm package records the family it was built with and refuses a
# consumer that found the other one: their handle types differ (pointers against integers), and
# mixing them compiles and links but crashes at run time.
function(nodeshm_mpi_family out)
  set(lang C)
  if(ARGC GREATER 1)
    set(lang ${ARGV1})
  endif()
  set(family unknown)
  foreach(dir IN LISTS MPI_${lang}_INCLUDE_DIRS MPI_${lang}_HEADER_DIR)
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
