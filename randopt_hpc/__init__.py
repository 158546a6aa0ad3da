from randopt_hpc.version import __version__
