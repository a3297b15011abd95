using System.Buffers.Binary;
using KvmObserve.Aggregation;
using KvmObserve.Aggregation.Discovery;
using KvmObserve.Decoding.Format;
using KvmObserve.Sources.Tracefs;

namespace KvmObserve.Tests;

/// <summary>task:task_newtask records as Linux 6.x lays them out, read beside the kvm records of a tracefs instance.</summary>
public sealed class ThreadCreationsTests : IDisposable
{
    private const string Format = """
        name: task_newtask
        ID: 205
        format:
        	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
        	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
        	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
        	field:int common_pid;	offset:4;	size:4;	signed:1;

        	field:pid_t pid;	offset:8;	size:4;	signed:1;
        	field:char comm[16];	offset:12;	size:16;	signed:0;
        	field:u64 clone_flags;	offset:32;	size:8;	signed:0;
        	field:short oom_score_adj;	offset:40;	size:2;	signed:1;

        print fmt: "pid=%d comm=%s clone_flags=%llx oom_score_adj=%hd", REC->pid, REC->comm, REC->clone_flags, REC->oom_score_adj
        """;

    private readonly FakeProc _proc = new();

    public void Dispose() => _proc.Dispose();

    private static byte[] Record(int type, int creator, int child, ulong flags)
    {
        var r = new byte[44];
        BinaryPrimitives.WriteUInt16LittleEndian(r, (ushort)type);
        BinaryPrimitives.WriteInt32LittleEndian(r.AsSpan(4), creator);
        BinaryPrimitives.WriteInt32LittleEndian(r.AsSpan(8), child);
        BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(32), flags);
        return r;
    }

    [Fact]
    public void A_thread_made_in_a_vm_process_is_given_to_it_after_both_are_gone()
    {
        _proc.Vm(300, "qemu-system-x86", "/usr/bin/qemu-system-x86_64\0-name\0guest=brief\0");
        var registry = new VmRegistry(_proc.Root);
        registry.Learn(300);
        var shard = new Shard(0, 64) { Registry = registry };
        var creations = new ThreadCreations(EventFormatParser.Parse("task", Format));

        Assert.True(creations.TryHandle(Record(205, 300, 301, 0x3d0f00), shard));  // pthread_create's flags
        Assert.True(creations.TryHandle(Record(205, 300, 310, 0x1200011), shard)); // fork: another process
        Assert.False(creations.TryHandle(Record(77, 300, 302, 0x3d0f00), shard));  // a kvm record: not taken
        _proc.Exit(300);

        Assert.Equal("brief", registry.Resolve(301).Vm.Name);
        Assert.Equal("unknown", registry.Resolve(310).Vm.Name);
        Assert.Equal("unknown", registry.Resolve(302).Vm.Name);
    }
}
