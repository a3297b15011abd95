// Kernel tests share one kernel: exact counts, fd counts and overhead figures need them one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
