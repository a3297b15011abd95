using KvmObserve.Native.Kvm;

namespace KvmObserve.Tests;

/// <summary>Why no VM can run, told apart as a user can act on it: a node to create, or a kernel with no KVM backend.</summary>
public sealed class KvmDeviceTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("kvmobserve-kvmdevice-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    private string Node => Path.Combine(_root, "dev-kvm");
    private string Sys => Path.Combine(_root, "sys");

    [Fact]
    public void A_node_that_exists_is_no_problem()
    {
        File.WriteAllText(Node, "");
        Assert.Null(KvmDevice.Problem(Node, Sys));
    }

    [Fact]
    public void A_registered_device_without_its_node_says_how_to_create_it()
    {
        Directory.CreateDirectory(Path.Combine(Sys, "class", "misc", "kvm"));
        File.WriteAllText(Path.Combine(Sys, "class", "misc", "kvm", "dev"), "10:232\n");
        string problem = KvmDevice.Problem(Node, Sys)!;
        Assert.Contains("the kernel has a KVM device (10:232)", problem, StringComparison.Ordinal);
        Assert.Contains($"mknod {Node} c 10 232", problem, StringComparison.Ordinal);
        Assert.True(KvmDevice.Registered(Sys));
    }

    [Fact]
    public void No_registered_device_says_no_vm_can_run()
    {
        string problem = KvmDevice.Problem(Node, Sys)!;
        Assert.StartsWith($"{Node} is absent and the kernel registered no KVM device", problem, StringComparison.Ordinal);
        Assert.EndsWith("so no VM can run", problem, StringComparison.Ordinal);
        Assert.DoesNotContain("mknod", problem, StringComparison.Ordinal);
        Assert.False(KvmDevice.Registered(Sys));
    }
}
