using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(KvmObserve.Benchmarks.DecodeAggregateBenchmark).Assembly).Run(args);
