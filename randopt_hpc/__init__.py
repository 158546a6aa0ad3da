from randopt_hpc.version import __version__ as __version__
