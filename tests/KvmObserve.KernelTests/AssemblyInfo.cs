// Kernel tests share one kernel: exact counts, fd counts and overhead figures need them one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
// Tests that need a VM run in the test VM where this host has no /dev/kvm (VmHost/).
[assembly: TestFramework("KvmObserve.KernelTests.VmHost.VmTestFramework", "KvmObserve.KernelTests")]
